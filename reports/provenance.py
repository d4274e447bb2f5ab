"""The bookkeeping sections: overview, warnings, cells and failures, provenance (runs, cell
times, package versions, metric fingerprints, the spec)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from beyondmle.reports import analysis, catalogue
from beyondmle.reports import formatting as fmt
from beyondmle.reports.context import Context, decoding_name
from beyondmle.reports.document import (
    BulletList,
    Cell,
    Details,
    Paragraph,
    Preformatted,
    Section,
    Table,
)
from beyondmle.reports.load import DamagedFile, read_samples, sort_decodings


def warnings_section(ctx: Context) -> Section:
    section = Section("Warnings", "warnings")
    section.blocks += _damaged_files(ctx)
    section.blocks += _run_warnings(ctx)
    done = set(ctx.results.cells.loc[ctx.results.cells["status"] == "done", "id"])
    m = ctx.results.metrics
    w = m[m["warning"].notna() & (m["warning"].astype(str) != "") & m["cell_id"].isin(done)]
    if w.empty:
        section.blocks.append(Paragraph("No metric carried a warning."))
        return section
    rows = []
    for (corpus, metric, warning), g in w.groupby(["corpus", "metric", "warning"], sort=True):
        objectives = [o for o in ctx.order if o in set(g["objective"])]
        decodings = sort_decodings(g["decoding"])
        rows.append(
            [
                Cell(corpus),
                Cell(catalogue.info(metric).display),
                Cell(str(warning)),
                Cell(", ".join(objectives)),
                Cell(", ".join(decoding_name(d) for d in decodings)),
                Cell(str(len(g))),
            ]
        )
    section.blocks.append(
        Paragraph("Warnings recorded with metric values (marked † in the tables).", note=True)
    )
    section.blocks.append(
        Table(
            ["corpus", "metric", "warning", "objectives", "decodings", "values"],
            rows,
            numeric_from=5,
        )
    )
    return section


def _damaged_files(ctx: Context) -> list:
    """Sample files the database names that are missing or cut short."""
    a = ctx.results.artifacts
    problems = []
    for r in a[a["kind"] == "samples"].sort_values(["cell_id", "decoding"]).itertuples():
        path = ctx.results.artifact_path(r.cell_id, "samples", r.decoding)
        try:
            read_samples(path)
        except (OSError, DamagedFile) as error:
            problems.append(f"cell {r.cell_id}, {decoding_name(r.decoding)}: {error}")
    if not problems:
        return []
    return [
        Paragraph(
            "Damaged files: their metrics were computed before the damage and are kept; "
            "`beyondmle run SPEC --retry-failed` on this directory writes them again.",
        ),
        BulletList(problems),
    ]


def _run_warnings(ctx: Context) -> list:
    """Every distinct warning the runs printed once on the console, with how often it came."""
    w = ctx.results.run_warnings
    if w.empty:
        return [Paragraph("The runs recorded no warnings on the console.")]
    totals = w.groupby(["category", "message"], sort=False)["count"].sum()
    totals = totals.sort_values(ascending=False, kind="stable")
    rows = [
        [Cell(category), Cell(message), Cell(str(int(count)))]
        for (category, message), count in totals.items()
    ]
    return [
        Paragraph(
            "Warnings during the runs (each was printed once on the console; the count is how "
            "often it came).",
            note=True,
        ),
        Table(["source", "warning", "count"], rows, numeric_from=2),
    ]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no error text)"


def cells_section(ctx: Context) -> Section:
    section = Section("Cells and failures", "cells")
    c = ctx.results.cells
    if c.empty:
        section.blocks.append(Paragraph("The database holds no cells."))
        return section
    counts = c.groupby(["corpus", "objective", "status"]).size().unstack(fill_value=0)
    statuses = [s for s in ("done", "failed", "running", "pending") if s in counts.columns]
    rows = []
    for (corpus, objective), r in counts.iterrows():
        row = [Cell(corpus), Cell(objective)]
        for s in statuses:
            n = int(r[s])
            tone = "bad" if s == "failed" and n else "muted" if n == 0 else ""
            row.append(Cell(str(n), tone=tone))
        rows.append(row)
    section.blocks.append(
        Table(["corpus", "objective", *statuses], rows, caption="Cells by status", numeric_from=2)
    )
    unfinished = c[c["status"].isin(["running", "pending"])]
    if not unfinished.empty:
        section.blocks.append(
            Paragraph(
                f"{len(unfinished)} cell(s) are not finished; their partial metrics are left "
                "out of every table.",
                note=True,
            )
        )
    failed = c[c["status"] == "failed"].sort_values(["corpus", "objective", "seed"])
    if failed.empty:
        section.blocks.append(Paragraph("No cell failed."))
        return section
    section.blocks.append(
        Paragraph(f"{len(failed)} cell(s) failed; their metrics are left out of every table:")
    )
    rows = [
        [
            Cell(r.corpus),
            Cell(r.objective),
            Cell(str(r.seed)),
            Cell(r.id[:12], title=r.id),
            Cell(_last_line(r.error), tone="bad"),
        ]
        for r in failed.itertuples()
    ]
    section.blocks.append(
        Table(["corpus", "objective", "seed", "cell", "error"], rows, numeric_from=99)
    )
    for r in failed.itertuples():
        section.blocks.append(
            Details(
                f"Full error: {r.objective}, seed {r.seed}, cell {r.id}",
                [Preformatted(str(r.error or "(no error text)"))],
            )
        )
    return section


def provenance_section(ctx: Context) -> Section:
    section = Section("Provenance", "provenance")
    runs = ctx.results.runs.sort_values("started_at")
    if runs.empty:
        section.blocks.append(Paragraph("No run was recorded in the database."))
    else:
        rows = [
            [
                Cell(r.run_id),
                Cell(fmt.timestamp(r.started_at)),
                Cell(fmt.timestamp(r.finished_at)),
                Cell(
                    fmt.duration(r.finished_at - r.started_at)
                    if fmt.finite(r.finished_at)
                    else "unfinished"
                ),
                Cell(r.host),
                Cell(r.git_commit or "unknown"),
                Cell(r.spec_path),
            ]
            for r in runs.itertuples()
        ]
        section.blocks.append(
            Table(
                ["run", "started", "finished", "took", "host", "git commit", "spec"],
                rows,
                caption="Runs",
                numeric_from=99,
            )
        )
    section.blocks.append(_cell_times(ctx))
    section.blocks += _hardware(ctx)
    section.blocks += _versions(runs)
    section.blocks += _fingerprints(ctx)
    for spec_text, group in runs.groupby("spec_text", sort=False):
        ids = ", ".join(group["run_id"])
        paths = ", ".join(sorted(set(group["spec_path"])))
        section.blocks.append(
            Section(f"Spec {paths}", f"spec-{group.index[0]}", level=3, blocks=[
                Paragraph(f"Used by run(s) {ids}.", note=True),
                Preformatted(str(spec_text)),
            ])
        )  # fmt: skip
    return section


def _cell_times(ctx: Context) -> Table:
    c = ctx.results.cells.copy()
    c["wall"] = c["finished_at"] - c["started_at"]
    rows = []
    for (corpus, objective), g in c.groupby(["corpus", "objective"], sort=True):
        done = g[g["status"] == "done"]
        rows.append(
            [
                Cell(corpus),
                Cell(objective),
                Cell(str(len(done))),
                Cell(fmt.duration(done["train_seconds"].mean())),
                Cell(fmt.duration(done["train_seconds"].sum(min_count=1))),
                Cell(fmt.duration(done["wall"].mean())),
                Cell(fmt.timestamp(g["finished_at"].max())),
            ]
        )
    return Table(
        [
            "corpus",
            "objective",
            "done",
            "mean training time",
            "total training time",
            "mean cell time",
            "last finished",
        ],
        rows,
        caption="Cell run times (training time as recorded; cell time from claim to finish)",
        numeric_from=2,
    )


def _hardware(ctx: Context) -> list:
    """The precision each cell trained in, why, and on which CPU."""
    p = ctx.results.cell_provenance
    if p.empty:
        return []
    wide = p.pivot_table(index="cell_id", columns="key", values="value", aggfunc="first")
    keys = [k for k in ("precision", "precision_reason", "cpu") if k in wide.columns]
    if not keys:
        return []
    cells = ctx.results.cells.set_index("id")
    wide = wide[keys].join(cells[["objective"]], how="left")
    rows = []
    for values, g in wide.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        objectives = sorted(set(g["objective"].dropna()))
        rows.append(
            [*(Cell(str(v)) for v in values), Cell(str(len(g))), Cell(", ".join(objectives))]
        )
    headers = {"precision": "precision", "precision_reason": "why", "cpu": "CPU"}
    return [
        Table(
            [*(headers[k] for k in keys), "cells", "objectives"],
            rows,
            caption='Training precision and hardware (precision = "auto" picks bf16 only where '
            "the hardware runs it natively)",
            numeric_from=99,
        )
    ]


def _versions(runs: pd.DataFrame) -> list:
    parsed = []
    for r in runs.itertuples():
        try:
            versions = json.loads(r.versions)
        except (TypeError, ValueError):
            versions = {"(unreadable)": str(r.versions)}
        if not isinstance(versions, dict):
            versions = {"versions": versions}
        parsed.append((r.run_id, versions))
    if not parsed:
        return []
    packages = sorted({k for _, v in parsed for k in v})
    same = all(v == parsed[0][1] for _, v in parsed)
    if same:
        columns = ["package", "version"]
        rows = [[Cell(p), Cell(_text(parsed[0][1].get(p)))] for p in packages]
    else:
        columns = ["package", *[run for run, _ in parsed]]
        rows = [[Cell(p), *[Cell(_text(v.get(p))) for _, v in parsed]] for p in packages]
    caption = "Package versions" + ("" if same else " (they differ between runs)")
    return [Table(columns, rows, caption=caption, numeric_from=99)]


def _text(value) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _fingerprints(ctx: Context) -> list:
    f = ctx.results.fingerprints
    if f.empty:
        return [Paragraph("No metric fingerprints were recorded.")]
    done = set(ctx.results.cells.loc[ctx.results.cells["status"] == "done", "id"])
    m = ctx.results.metrics
    used = m[m["cell_id"].isin(done)].groupby("fingerprint")["cell_id"].nunique()
    rows = [
        [
            Cell(r.fingerprint),
            Cell(r.metric),
            Cell(r.version),
            Cell(str(int(used.get(r.fingerprint, 0)))),
            Cell(r.settings),
        ]
        for r in f.sort_values(["metric", "fingerprint"]).itertuples()
    ]
    multi = f.groupby("metric")["fingerprint"].nunique()
    blocks = [
        Table(
            ["fingerprint", "metric", "version", "finished cells", "settings"],
            rows,
            caption="Metric fingerprints (what each metric's settings were)",
            numeric_from=99,
        )
    ]
    clash = sorted(multi[multi > 1].index)
    if clash:
        blocks.append(
            Paragraph(
                "Warning: these metrics were computed under more than one setting, so their "
                f"values may not compare across cells: {', '.join(clash)}."
            )
        )
    return blocks


def _featurizers(ctx: Context) -> str:
    """The featurizers the distributional metrics were computed with (from their fingerprints:
    a score is only comparable with scores of the same featurizer)."""
    f = ctx.results.fingerprints
    if f.empty:
        return "—"
    names = set()
    for settings in f.loc[f["metric"].isin(["mauve", "fed"]), "settings"]:
        value = json.loads(settings) if isinstance(settings, str) else settings
        if isinstance(value, dict) and value.get("featurizer"):
            names.add(str(value["featurizer"]))
    return ", ".join(sorted(names)) or "— (MAUVE and FED were not computed)"


def overview_section(ctx: Context, generated_at: float) -> Section:
    c = ctx.results.cells
    status = c["status"].value_counts()
    parts = [f"{int(status.get(s, 0))} {s}" for s in ("done", "failed", "running", "pending")]
    decodings = analysis.decodings_of(ctx.seeds)
    seeds = sorted(set(c["seed"]))
    items = [
        f"Results directory: {Path(ctx.results.directory).resolve()}",
        f"Cells: {len(c)} ({', '.join(parts)})",
        f"Corpora: {', '.join(ctx.corpora) or '—'}",
        f"Objectives: {', '.join(ctx.order) or '—'}"
        + (f" (baseline: {ctx.baseline})" if ctx.baseline else " (no MLE baseline)"),
        f"Seeds: {', '.join(str(s) for s in seeds) or '—'}",
        f"Decodings: {', '.join(decodings) or '—'}",
        f"Sentence features for MAUVE and FED: {_featurizers(ctx)}",
        "Headline decoding: "
        + (", ".join(f"{d or '—'} ({k})" for k, d in ctx.headline.items()) or "—"),
        f"Report generated: {fmt.timestamp(generated_at)}",
    ]
    section = Section("Overview", "overview", [BulletList(items)])
    failed = int(status.get("failed", 0))
    if failed:
        section.blocks.append(
            Paragraph(f"{failed} cell(s) failed: see 'Cells and failures' for the errors.")
        )
    return section
