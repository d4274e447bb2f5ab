"""The matrix runner: spec → cells → data + model + objective → Trainer → checkpoint →
generations → metrics → results DB.

Each cell runs in steps (train, model metrics, one step per decoding), each recorded in one
transaction with the files it names written whole beforehand, so a killed run loses at most the
step in flight. Re-running the same command skips finished cells and steps and resumes training
from the cell's last checkpoint. A cell that raises (or whose objective reports divergence) is
recorded as failed with its reason, and the matrix goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TextIO

import lightning as L
import torch

from beyondmle.api import (
    Corpus,
    ObjectiveDiverged,
    Resources,
    fingerprint,
    get_metric,
    get_preference_source,
    load_corpus,
)
from beyondmle.cells import Cell, expand, select_shard
from beyondmle.console import NORMAL, VERBOSE, RunConsole, captured_stderr
from beyondmle.data import LanguageDataModule, check_corpus_fits, derive_seed
from beyondmle.evaluation import (
    Evaluator,
    FingerprintRow,
    MetricRow,
    PreferenceInputs,
    metric_info,
    sample_file_name,
    tokenizer_fingerprint,
)
from beyondmle.hf_model import HFCausalLM, export_hugging_face, model_directory
from beyondmle.model import ModelConfig
from beyondmle.paths import atomic_write_text
from beyondmle.precision import choose_precision, describe_cpu
from beyondmle.results import ResultsDB, worker_id
from beyondmle.reward import (
    PAIRS_FILE,
    REWARD_FILE,
    policy_resources,
    probe_prompts,
    train_reward_model,
)
from beyondmle.spec import CorpusSpec, Spec
from beyondmle.tokenization import PretrainedTokenizer
from beyondmle.training import (
    ObjectiveModule,
    Probe,
    ProgressLog,
    build_trainer,
    load_model,
    save_weights,
)

PACKAGES = (
    "beyondmle",
    "torch",
    "lightning",
    "tokenizers",
    "nltk",
    "mauve-text",
    "sentence-transformers",
    "numpy",
    "pandas",
)


class CellInterrupted(RuntimeError):
    """Training stopped before its budget without an error (the run was interrupted)."""


@dataclass
class RunSummary:
    results_dir: Path
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def load_corpora(spec: Spec) -> dict[str, Corpus]:
    """Load and check every corpus before anything trains: bad input fails the whole run."""
    corpora = {}
    model = ModelConfig(**spec.model)
    window = spec.evaluation.prompt_tokens + spec.evaluation.continuation_tokens
    for cs in spec.corpora:
        corpus = load_corpus(cs.name, **cs.settings)
        directory = model_directory(model)
        if directory is not None:  # a pretrained model reads the text with its own tokenizer
            corpus = corpus.retokenized(PretrainedTokenizer.from_directory(directory))
        check_corpus_fits(corpus, model.block_size, window)
        corpora[corpus_key(cs)] = corpus
    return corpora


def corpus_key(corpus: CorpusSpec) -> str:
    return json.dumps([corpus.name, corpus.settings], sort_keys=True)


def run_spec(
    spec: Spec,
    out_dir: str | Path,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = False,
    verbosity: int = NORMAL,
    stream: TextIO | None = None,
) -> RunSummary:
    out_dir = Path(out_dir)
    cells = select_shard(expand(spec), shard)
    console = RunConsole(len(cells), verbosity, stream or sys.stderr, costs=_costs(cells))
    with console.capture():
        corpora = load_corpora(spec)
        db = ResultsDB(out_dir)
        run_id = uuid.uuid4().hex[:12]
        worker = worker_id(run_id)
        db.start_run(run_id, spec.path, spec.text, git_commit(), package_versions())
        preference_metrics = ["reward_model"] if spec.preferences else []
        db.record_metric_info(metric_info([*spec.evaluation.metrics, *preference_metrics]))
        for cell in with_dependencies(cells):
            db.register_cell(
                cell.id, cell.config, cell.corpus.name, cell.objective.label, cell.seed
            )
        summary = RunSummary(out_dir)
        for cell in cells:
            _heal_or_fail(cell, db, out_dir, run_id, retry_failed, console)
            reopen_for_evaluation(cell, spec, db)
        try:
            for index, cell in enumerate(cells, start=1):
                claim_and_run(
                    index,
                    cell,
                    spec,
                    corpora,
                    db,
                    run_id,
                    worker,
                    out_dir,
                    console,
                    summary,
                    retry_failed,
                )
        finally:
            db.record_warnings(run_id, console.summary())
        db.finish_run(run_id)
        db.close()
    return summary


def _costs(cells: list[Cell]) -> list[tuple[str, float]]:
    """Each cell's kind for the matrix ETA (its role, objective and budget) and its tokens."""
    return [
        (
            f"{c.role}/{c.objective.label}/{c.training.budget_tokens}",
            float(c.training.budget_tokens),
        )
        for c in cells
    ]


def claim_and_run(
    index: int,
    cell: Cell,
    spec: Spec,
    corpora: dict[str, Corpus],
    db: ResultsDB,
    run_id: str,
    worker: str,
    out_dir: Path,
    console: RunConsole,
    summary: RunSummary,
    retry_failed: bool,
    ready: Callable[[Cell], bool] | None = None,
) -> None:
    """Claim, train, evaluate and record one cell; a crash is recorded, never raised. Its
    dependencies are made ready first (`ready`, default: run here or awaited)."""
    label = f"{cell.describe()} ({cell.id})"
    for dependency in cell.dependencies:
        if ready is not None:
            dependency_ready = ready(dependency)
        else:
            dependency_ready = _dependency_ready(
                dependency, spec, corpora, db, run_id, worker, out_dir, console, summary,
                retry_failed,
            )  # fmt: skip
        if not dependency_ready:
            reason = (
                f"the {dependency.role} cell {dependency.id} it needs failed; run again with "
                "--retry-failed"
            )
            if db.claim(cell.id, worker, retry_failed):
                db.fail_cell(cell.id, run_id, reason)
                summary.failed[cell.id] = reason
            console.cell(index, label, f"FAILED: {reason}")
            return
    if not db.claim(cell.id, worker, retry_failed):
        summary.skipped.append(cell.id)
        console.cell(index, label, f"skipped ({db.cell_status(cell.id)})")
        return
    console.cell(index, label, "running")
    try:
        train_seconds = run_cell(
            cell, spec, corpora[corpus_key(cell.corpus)], db, worker, out_dir, console, index
        )
    except (KeyboardInterrupt, SystemExit, CellInterrupted):
        # Lightning turns a Ctrl-C inside `trainer.fit` into `sys.exit(1)`: give the cell
        # back either way, or a re-run would skip it until its claim went stale.
        db.release(cell.id)
        raise
    except Exception as e:  # one cell's crash must not lose the others' results
        reason = _failure_reason(e)
        db.fail_cell(cell.id, run_id, reason)
        summary.failed[cell.id] = reason
        console.cell_finished(index)
        console.cell(index, label, f"FAILED: {reason.splitlines()[-1]}")
        return
    db.finish_cell(cell.id, run_id, train_seconds)
    summary.done.append(cell.id)
    console.cell_finished(index)
    console.cell(index, label, "done")


def whole_checkpoint(path: Path) -> bool:
    """A checkpoint file that exists and whose zip archive reads back whole (CRCs checked)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def whole_samples(path: Path) -> bool:
    """A samples file whose every line is a JSON record (not cut short by a copy)."""
    try:
        with open(path, encoding="utf-8") as f:
            return all(isinstance(json.loads(line), dict) for line in f if line.strip())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def damaged_steps(db: ResultsDB, cell: Cell, out_dir: Path) -> dict[str, str]:
    """Finished steps of a cell whose files are gone or damaged: step -> what is wrong."""
    steps = set(db.finished_steps(cell.id))
    damaged = {}
    weights = REWARD_FILE if cell.role == "reward" else "model.ckpt"
    checkpoint = out_dir / "cells" / cell.id / weights
    if "train" in steps and not whole_checkpoint(checkpoint):
        what = "is damaged" if checkpoint.exists() else "is missing"
        damaged["train"] = f"{checkpoint} {what}, though the cell's training is recorded as done"
    for decoding, kind, relative in db.artifacts_of(cell.id):
        if kind != "samples" or whole_samples(out_dir / relative):
            continue
        for step in steps:
            if step.startswith(f"decode:{decoding}:"):
                damaged[step] = f"{out_dir / relative} is missing or cut short"
    return damaged


def evaluation_steps(cell: Cell, spec: Spec) -> list[str]:
    """The evaluation steps a finished cell has under the spec's [evaluation] and [decoding]:
    named by their fingerprint, so changed settings name new steps."""
    if cell.role == "reward":
        return []
    suffix = spec.evaluation.fingerprint()
    return [f"model-metrics:{suffix}", *(f"decode:{d.label}:{suffix}" for d in spec.decodings)]


def reopen_for_evaluation(cell: Cell, spec: Spec, db: ResultsDB) -> None:
    """A finished cell whose evaluation under the spec's current settings is missing (its
    [evaluation] or [decoding] changed since) is reopened: the evaluation steps of the old
    settings and their rows are dropped, the training is kept, so the run evaluates the trained
    model again without retraining it."""
    if db.cell_status(cell.id) != "done":
        return
    finished = db.finished_steps(cell.id)
    wanted = evaluation_steps(cell, spec)
    if all(step in finished for step in wanted):
        return
    db.drop_steps(cell.id, [s for s in finished if s != "train" and s not in wanted])
    db.reopen(cell.id)


def _heal_or_fail(
    cell: Cell, db: ResultsDB, out_dir: Path, run_id: str, retry_failed: bool, console: RunConsole
) -> None:
    """A cell whose recorded files are gone or damaged is marked failed, saying which file and
    what to do; with --retry-failed its damaged steps are forgotten, so they run again. No other
    cell is touched."""
    damaged = damaged_steps(db, cell, out_dir)
    if not damaged:
        return
    if retry_failed:
        db.drop_steps(cell.id, list(damaged))
        if "train" in damaged:
            weights = REWARD_FILE if cell.role == "reward" else "model.ckpt"
            (out_dir / "cells" / cell.id / weights).unlink(missing_ok=True)
        db.fail_cell(cell.id, run_id, "damaged files; redone by --retry-failed")
        return
    redo = "trains it again" if "train" in damaged else "writes those samples again"
    reason = (
        "; ".join(sorted(set(damaged.values())))
        + f". Run the same command with --retry-failed (it {redo}), or delete "
        f"{out_dir / 'cells' / cell.id} and its rows."
    )
    db.fail_cell(cell.id, run_id, reason)
    console.warn("results", f"cell {cell.id}: {reason}")


DEPENDENCY_POLL_SECONDS = 5.0


def with_dependencies(cells: list[Cell]) -> list[Cell]:
    """The cells and every cell they depend on, dependencies first, each once."""
    out: list[Cell] = []
    for cell in cells:
        for c in [*with_dependencies(cell.dependencies), cell]:
            if c not in out:
                out.append(c)
    return out


def _dependency_ready(
    needed: Cell,
    spec: Spec,
    corpora: dict[str, Corpus],
    db: ResultsDB,
    run_id: str,
    worker: str,
    out_dir: Path,
    console: RunConsole,
    summary: RunSummary,
    retry_failed: bool,
) -> bool:
    """Make sure a cell another depends on (a fine-tuning cell's base, a reward model) is done:
    done already, run here now (also when another shard listed it), or awaited while another
    runner runs it. False when it failed."""
    waiting = False
    while True:
        status = db.cell_status(needed.id)
        if status == "done":
            return True
        if status == "failed" and not retry_failed:
            return False
        if db.claim(needed.id, worker, retry_failed):
            db.release(needed.id)
            claim_and_run(
                0, needed, spec, corpora, db, run_id, worker, out_dir, console, summary, True
            )
            continue
        if not waiting:
            console.cell(0, f"{needed.describe()} ({needed.id})", "waiting for another runner")
            waiting = True
        time.sleep(DEPENDENCY_POLL_SECONDS)


def _failure_reason(e: Exception) -> str:
    if isinstance(e, ObjectiveDiverged):
        return f"diverged: {e}"
    return "".join(traceback.format_exception(e, limit=-8)).strip()


def run_cell(
    cell: Cell,
    spec: Spec,
    corpus: Corpus,
    db: ResultsDB,
    worker: str,
    out_dir: Path,
    console: RunConsole | None = None,
    index: int = 1,
) -> float | None:
    """Train (or resume) and evaluate one cell; returns the training time of this call."""
    if cell.role == "reward":
        return run_reward_cell(cell, spec, corpus, db, out_dir)
    cell_dir = out_dir / "cells" / cell.id
    config = {
        **cell.config,
        "objective_label": cell.objective.label,
        "evaluation": asdict(spec.evaluation),
        "decodings": [asdict(d) | {"label": d.label} for d in spec.decodings],
    }
    atomic_write_text(cell_dir / "config.json", json.dumps(config, indent=2, sort_keys=True))
    train_seconds = None
    if not db.step_done(cell.id, "train") and whole_checkpoint(cell_dir / "model.ckpt"):
        # Training finished (model.ckpt is written last, atomically) but the database does not
        # know it: a database moved aside or restored. Evaluate the model; do not retrain it.
        db.record_step(
            cell.id,
            "train",
            artifacts={
                ("", "checkpoint"): f"cells/{cell.id}/model.ckpt",
                ("", "train_log"): f"cells/{cell.id}/logs/metrics.csv",
            },
        )
    if not db.step_done(cell.id, "train"):
        start = time.monotonic()
        artifacts = {("", "checkpoint"): f"cells/{cell.id}/model.ckpt"}
        if cell.role == "pretrained":  # its pretraining's compute is not this benchmark's
            db.record_provenance(cell.id, {"cpu": describe_cpu()})
            keep_pretrained(cell, corpus, cell_dir)
            compute = None
        else:
            choice = choose_precision(cell.training.precision, cell.training.accelerator)
            db.record_provenance(
                cell.id,
                {
                    "precision": choice.precision,
                    "precision_reason": choice.reason,
                    "cpu": describe_cpu(),
                },
            )
            compute = train(
                cell,
                corpus,
                cell_dir,
                lambda: db.heartbeat(cell.id, worker),
                console,
                index,
                choice.precision,
                spec,
            )
            artifacts[("", "train_log")] = f"cells/{cell.id}/logs/metrics.csv"
        train_seconds = time.monotonic() - start
        db.record_step(
            cell.id, "train", artifacts=artifacts, train_seconds=train_seconds, compute=compute
        )
    model, tokenizer, _ = load_model(cell_dir / "model.ckpt")
    if isinstance(model, HFCausalLM) and not (cell_dir / "hf" / "config.json").exists():
        export_hugging_face(model, tokenizer, cell_dir / "hf")  # loads in transformers as is
    evaluator = Evaluator(
        model, corpus, spec.evaluation, _preference_inputs(cell, spec, corpus, out_dir)
    )
    step, *decode_steps = evaluation_steps(cell, spec)
    if not db.step_done(cell.id, step):
        rows, fingerprints = evaluator.model_metrics()
        db.record_step(cell.id, step, rows, fingerprints)
    for decoding, step in zip(spec.decodings, decode_steps, strict=True):
        if db.step_done(cell.id, step):
            continue
        samples = evaluator.generate(decoding, cell.seed)
        relative = f"cells/{cell.id}/samples/{sample_file_name(decoding.label)}"
        evaluator.write_samples(out_dir / relative, samples)
        with captured_stderr(console):  # faiss's k-means prints its warnings on stderr
            rows, fingerprints = evaluator.sample_metrics(decoding, samples)
        db.record_step(cell.id, step, rows, fingerprints, {(decoding.label, "samples"): relative})
        db.heartbeat(cell.id, worker)
    return train_seconds


def _resources(cell: Cell, spec: Spec, corpus: Corpus, out_dir: Path):
    """The frozen resources of a fine-tuning cell in a run with preferences (reference, reward
    model, pairs, gold reward) and the held-out pairs; (None, None) otherwise."""
    scorer = cell.reward or cell.scorer
    if cell.base is None or scorer is None:
        return None, None
    evaluation = spec.evaluation
    return policy_resources(
        out_dir / "cells" / cell.base.id / "model.ckpt",
        out_dir / "cells" / scorer.id,
        scorer.objective.name,
        scorer.objective.settings,
        corpus,
        evaluation.prompt_tokens,
        evaluation.continuation_tokens,
        scorer.seed,
    )


def _preference_inputs(
    cell: Cell, spec: Spec, corpus: Corpus, out_dir: Path
) -> PreferenceInputs | None:
    resources, heldout = _resources(cell, spec, corpus, out_dir)
    if resources is None:
        return None
    scorer = cell.reward or cell.scorer
    return PreferenceInputs(
        resources.reference, resources.reward, resources.gold, heldout, scorer.id
    )


def run_reward_cell(
    cell: Cell, spec: Spec, corpus: Corpus, db: ResultsDB, out_dir: Path
) -> float | None:
    """Draw a reward cell's preference pairs and train its reward model
    (`beyondmle.reward`); its measurements are stored as the cell's `reward_model` values."""
    cell_dir = out_dir / "cells" / cell.id
    atomic_write_text(cell_dir / "config.json", json.dumps(cell.config, indent=2, sort_keys=True))
    if db.step_done(cell.id, "train"):
        return None
    start = time.monotonic()
    choice = choose_precision(cell.training.precision, cell.training.accelerator)
    db.record_provenance(
        cell.id,
        {"precision": choice.precision, "precision_reason": choice.reason, "cpu": describe_cpu()},
    )
    measured, compute = train_reward_model(
        cell.objective.name,
        cell.objective.settings,
        out_dir / "cells" / cell.base.id / "model.ckpt",
        corpus,
        spec.evaluation.prompt_tokens,
        spec.evaluation.continuation_tokens,
        cell.training,
        cell.seed,
        cell_dir,
        choice.precision,
    )
    metric = get_metric("reward_model")
    settings = {"tokenizer": tokenizer_fingerprint(corpus.tokenizer), "reward_model": cell.id}
    fp = fingerprint(metric.name, metric.version, settings)
    rows = [MetricRow("", name, value, fp) for name, value in measured.items()]
    seconds = time.monotonic() - start
    db.record_step(
        cell.id,
        "train",
        rows,
        [FingerprintRow(fp, metric.name, metric.version, settings)],
        artifacts={
            ("", "reward_model"): f"cells/{cell.id}/{REWARD_FILE}",
            ("", "pairs"): f"cells/{cell.id}/{PAIRS_FILE}",
        },
        train_seconds=seconds,
        compute=compute,
    )
    return seconds


def objective_module(
    cell: Cell,
    corpus: Corpus,
    init: str | None = None,
    resources: Resources | None = None,
    probe: Probe | None = None,
) -> ObjectiveModule:
    """The LightningModule of a cell: its model (from `init` when it fine-tunes) under its
    objective, with the corpus's tokenizer."""
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **cell.model)
    return ObjectiveModule(
        model_config=asdict(model_config),
        objective=cell.objective.name,
        objective_settings=cell.objective.settings,
        training=asdict(cell.training),
        special=asdict(corpus.tokenizer.special),
        corpus=cell.config["corpus"],
        tokenizer_json=corpus.tokenizer.to_json(),
        seed=cell.seed,
        init_checkpoint=init,
        resources=resources,
        probe=probe,
    )


def keep_pretrained(cell: Cell, corpus: Corpus, cell_dir: Path) -> None:
    """A pretrained base cell's "training": the model as loaded, written as `model.ckpt` in
    the form training writes, so it is evaluated and fine-tuned from like a trained base. The
    seed fixes the rows the embeddings grow by for the corpus's special tokens."""
    torch.manual_seed(derive_seed(cell.seed, "model-init"))
    save_weights(objective_module(cell, corpus), cell_dir / "model.ckpt")


def train(
    cell: Cell,
    corpus: Corpus,
    cell_dir: Path,
    heartbeat,
    console: RunConsole | None = None,
    index: int = 1,
    precision: str | None = None,
    spec: Spec | None = None,
) -> dict[str, float]:
    """Train a cell's model to its token budget, write `model.ckpt` atomically, and return
    what training cost (`ObjectiveModule.compute_spent`). With the `spec`, a cell in a run with
    preferences gets its frozen resources and the over-optimization probe."""
    # Separate streams (`derive_seed`): the initialisation, the data order, the objective's own
    # draws and the training noise (dropout) of two objectives under one seed do not depend on
    # what the other objective draws, so their comparison is paired by construction.
    torch.manual_seed(derive_seed(cell.seed, "model-init"))
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **cell.model)
    init = None
    if cell.base is not None:
        init = str(cell_dir.parent / cell.base.id / "model.ckpt")
    resources, _ = _resources(cell, spec, corpus, cell_dir.parent.parent) if spec else (None, None)
    probe = None
    if resources is not None and resources.reward is not None:
        scorer = cell.reward or cell.scorer
        source = get_preference_source(scorer.objective.name)
        settings = source.Settings(**scorer.objective.settings)
        probe = Probe(
            probe_prompts(
                corpus,
                spec.evaluation.prompt_tokens,
                spec.evaluation.continuation_tokens,
                settings.probe_prompts,
            ),
            spec.evaluation.continuation_tokens,
            settings.probe_every_steps,
            seed=derive_seed(0, "probe"),
        )
    module = objective_module(cell, corpus, init, resources, probe)
    data = LanguageDataModule(
        corpus,
        model_config.block_size,
        cell.training.batch_size,
        order_seed=derive_seed(cell.seed, "data-order"),
    )
    L.seed_everything(derive_seed(cell.seed, "training") % 2**32, workers=True, verbose=False)
    last_beat = [time.monotonic()]
    tokens_per_step = cell.training.tokens_per_step(model_config.block_size)
    started: list[tuple[float, int]] = []

    def beat(done: int, total: int) -> None:
        if time.monotonic() - last_beat[0] > 30:
            heartbeat()
            last_beat[0] = time.monotonic()
        if console is not None:
            if not started:
                started.append((time.monotonic(), done))
            t0, d0 = started[0]
            rate = (done - d0) * tokens_per_step / max(time.monotonic() - t0, 1e-9)
            console.progress(index, "training step", done, total, f"{rate:,.0f} tokens/s")

    trainer = build_trainer(
        cell.training,
        cell_dir,
        module.objective.manual_optimization,
        [ProgressLog(beat)],
        enable_progress_bar=console is not None and console.verbosity >= VERBOSE,
        precision=precision,
        run_name=cell.id,
    )
    last = cell_dir / "checkpoints" / "last.ckpt"
    log = cell_dir / "logs" / "metrics.csv"
    # Only rank 0 keeps the log (Lightning's CSV logger writes there alone).
    earlier = _set_aside(log) if last.exists() and trainer.is_global_zero else None
    try:
        trainer.fit(module, data, ckpt_path=last if last.exists() else None, weights_only=True)
    finally:
        if earlier is not None:
            _stitch_log(earlier, log)
    if not module.budget_spent():
        raise CellInterrupted(
            f"training of cell {cell.id} stopped at step {int(module.steps_done)} of "
            f"{module.total_steps}; run the same command again to resume"
        )
    # The weights, hyperparameters and tokenizer (no optimizer state); atomic: AtomicCheckpointIO.
    trainer.save_checkpoint(cell_dir / "model.ckpt", weights_only=True)
    return module.compute_spent()


def _set_aside(log: Path) -> Path | None:
    """Lightning's CSV logger starts a fresh metrics.csv; keep the rows logged before an
    interruption so the training curve of a resumed cell stays whole. Rows set aside by an
    attempt that was killed before it could stitch them back are stitched first."""
    for leftover in sorted(log.parent.glob("metrics.before-*.csv")):
        _stitch_log(leftover, log)
    if not log.exists():
        return None
    earlier = log.with_name(f"metrics.before-{int(time.time() * 1000)}.csv")
    os.replace(log, earlier)
    return earlier


def _stitch_log(earlier: Path, log: Path) -> None:
    """metrics.csv = the earlier rows up to where the resumed run starts, then the new rows."""
    import pandas as pd

    old = pd.read_csv(earlier)
    if log.exists() and log.stat().st_size:
        new = pd.read_csv(log)
        if len(new):
            old = old[old["step"] < new["step"].min()]
        old = pd.concat([old, new], ignore_index=True)
    atomic_write_text(log, old.to_csv(index=False))
    earlier.unlink()
