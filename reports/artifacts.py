"""The sections built from the artifact files the database names: training curves from the
Lightning logs and generated samples side by side."""

from __future__ import annotations

import pandas as pd

from beyondmle.reports import plots
from beyondmle.reports.context import Context, per_corpus
from beyondmle.reports.document import BulletList, Figure, Paragraph, Samples, Section
from beyondmle.reports.load import DamagedFile, read_samples, read_train_log

N_PROMPTS = 3
MAX_SAMPLE_CHARS = 1500


def _done_cells(ctx: Context, corpus: str) -> pd.DataFrame:
    c = ctx.results.cells
    return c[(c["corpus"] == corpus) & (c["status"] == "done")].sort_values(["objective", "seed"])


def curves_section(ctx: Context) -> Section:
    def make(corpus: str) -> list:
        logs, problems = [], []
        for cell in _done_cells(ctx, corpus).itertuples():
            path = ctx.results.artifact_path(cell.id, "train_log")
            if path is None:
                continue
            try:
                log = read_train_log(path)
            except (OSError, ValueError, pd.errors.ParserError) as error:
                problems.append(f"{cell.objective} seed {cell.seed}: {path.name}: {error}")
                continue
            logs.append(log.assign(objective=cell.objective, seed=cell.seed))
        blocks = []
        if logs:
            data = pd.concat(logs, ignore_index=True)
            if not data.empty:
                blocks.append(
                    Figure(
                        plots.training_curves(data, ctx.colours),
                        f"curves{ctx.figure_suffix[corpus]}.png",
                        "training curves",
                        caption=(
                            "The same quantities for every objective, against tokens seen: the "
                            "teacher-forced NLL of the training batch (measured every 10 steps "
                            "in eval mode, before the update) and the validation NLL; one thin "
                            "line per seed, from each cell's Lightning metrics.csv."
                        ),
                    )
                )
                blocks.append(
                    Figure(
                        plots.objective_losses(data, ctx.colours),
                        f"curves-own{ctx.figure_suffix[corpus]}.png",
                        "each objective's own loss",
                        caption=(
                            "Each objective's own training loss, which measures different "
                            "things for different objectives and so is not compared across "
                            "them."
                        ),
                    )
                )
        if not blocks:
            blocks.append(Paragraph("No training logs were recorded for finished cells."))
        if problems:
            blocks.append(Paragraph("Training logs that could not be read:", note=True))
            blocks.append(BulletList(problems))
        return blocks

    return per_corpus(ctx, "Training curves", "curves", make)


def _clip(text: object) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= MAX_SAMPLE_CHARS else s[:MAX_SAMPLE_CHARS] + " […]"


def samples_section(ctx: Context) -> Section:
    def make(corpus: str) -> list:
        cells = _done_cells(ctx, corpus)
        a = ctx.results.artifacts
        sample_rows = a[(a["kind"] == "samples") & a["cell_id"].isin(set(cells["id"]))]
        if sample_rows.empty:
            return [Paragraph("No sample files were recorded for finished cells.")]
        decoding = ctx.headline[corpus]
        if decoding not in set(sample_rows["decoding"]):
            decoding = sample_rows["decoding"].value_counts().index[0]
        by_objective: dict[str, tuple[int, dict[int, dict]]] = {}
        problems = []
        for objective in ctx.objectives_in(corpus):
            for cell in cells[cells["objective"] == objective].sort_values("seed").itertuples():
                path = ctx.results.artifact_path(cell.id, "samples", decoding)
                if path is None:
                    continue
                try:
                    items = read_samples(path)
                except (OSError, DamagedFile) as error:
                    problems.append(
                        f"{objective} seed {cell.seed}: {error}. Its metrics were computed "
                        "before the damage and are kept; `beyondmle run SPEC --retry-failed` "
                        "on this directory writes the file again."
                    )
                    continue
                indexed = {}
                for i, item in enumerate(items):
                    key = item.get("index", i)
                    indexed.setdefault(key if isinstance(key, int) else i, item)
                by_objective[objective] = (cell.seed, indexed)
                break
        blocks = []
        if not by_objective:
            blocks.append(Paragraph(f"No readable sample file at decoding {decoding}."))
        else:
            first = next(iter(by_objective.values()))[1]
            indices = sorted(first)[:N_PROMPTS]
            seeds_used = ", ".join(f"{o}: seed {s}" for o, (s, _) in by_objective.items())
            blocks.append(
                Paragraph(
                    f"The first {len(indices)} prompts of the evaluation set, the human "
                    f"continuation and each objective's continuation at decoding {decoding}, "
                    f"from one seed per objective ({seeds_used}). Generated text is shown as "
                    f"text, cut at {MAX_SAMPLE_CHARS:,} characters."
                )
            )
            mismatch = False
            for index in indices:
                item = first[index]
                continuations = []
                for objective, (_, indexed) in by_objective.items():
                    other = indexed.get(index)
                    if other is None:
                        continuations.append((objective, "(no sample with this index)"))
                        continue
                    mismatch |= other.get("prompt") != item.get("prompt")
                    continuations.append((objective, _clip(other.get("generation"))))
                blocks.append(
                    Samples(
                        _clip(item.get("prompt")),
                        _clip(item.get("reference")),
                        continuations,
                        index=index,
                    )
                )
            if mismatch:
                blocks.append(
                    Paragraph(
                        "Warning: some objectives' sample files hold a different prompt at the "
                        "same index; the prompt shown is the first objective's.",
                    )
                )
        if problems:
            blocks.append(BulletList(problems))
        return blocks

    return per_corpus(ctx, "Samples", "samples", make)
