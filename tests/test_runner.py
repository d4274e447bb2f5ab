"""The matrix runner's guarantees: a killed run resumes without running a finished cell or step
twice and without losing a row; a failing cell is recorded with its reason while the others
finish; concurrent runners on one directory and `--shard` split the cells without overlap;
every recorded artifact is a whole file.

Everything is tiny (one layer, 16 dimensions, a few thousand training tokens, 8 evaluation
prompts, no sentence-model metrics) so that each matrix trains in about a second.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from beyondmle.api import OBJECTIVES, ObjectiveDiverged, register_objective
from beyondmle.cells import expand, select_shard
from beyondmle.cli import build_parser
from beyondmle.objectives.mle import MLE, MLESettings
from beyondmle.results import ResultsDB, merge
from beyondmle.runner import run_spec
from beyondmle.spec import parse_spec

# Test-only objectives. Their behaviour is switched by these module-level flags rather than by
# their settings, so that switching it off leaves the cells (whose ids hash the settings) alone.
KILL_AT: dict[str, int] = {}  # tag -> the training step at which loss() raises KeyboardInterrupt
SIGTERM_AT: dict[str, int] = {}  # tag -> the training step at which loss() sends itself SIGTERM
FAULTS_ON = {"on": True}  # test_faulty raises (or returns NaN) only while this is True
SEEN: list[tuple[str, int]] = []  # (tag, step) of every loss() call of test_kill_after_steps


@dataclass(frozen=True)
class TaggedSettings(MLESettings):
    tag: str = ""


class KillAfterSteps(MLE):
    """MLE that records the steps it trains and raises KeyboardInterrupt (a Ctrl-C) at step
    KILL_AT[tag], or is sent SIGTERM (a preempted job) at step SIGTERM_AT[tag]."""

    Settings = TaggedSettings

    def loss(self, model, batch, state):
        SEEN.append((self.settings.tag, state.step))
        if KILL_AT.get(self.settings.tag) == state.step:
            raise KeyboardInterrupt
        if SIGTERM_AT.get(self.settings.tag) == state.step:
            # Lightning handles SIGTERM during fit; never let it reach the default handler,
            # which would end the test session.
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
                raise RuntimeError("Lightning installed no SIGTERM handler")
            os.kill(os.getpid(), signal.SIGTERM)
        return super().loss(model, batch, state)


@dataclass(frozen=True)
class FaultySettings(MLESettings):
    fault: str = ""  # '', 'boom', 'diverge' or 'nan'
    at_step: int = 0


class Faulty(MLE):
    """MLE that fails at step `at_step` in the way its `fault` setting names."""

    Settings = FaultySettings

    def loss(self, model, batch, state):
        out = super().loss(model, batch, state)
        if not FAULTS_ON["on"] or state.step < self.settings.at_step:
            return out
        if self.settings.fault == "boom":
            raise RuntimeError("boom")
        if self.settings.fault == "diverge":
            raise ObjectiveDiverged("the generator emits one token")
        if self.settings.fault == "nan":
            out.loss = out.loss * math.nan
        return out


TEST_OBJECTIVES = {"test_kill_after_steps": KillAfterSteps, "test_faulty": Faulty}


@pytest.fixture(scope="module", autouse=True)
def _test_objectives():
    """Register the test objectives for this module only, so that other tests listing every
    objective do not see them."""
    OBJECTIVES.load()
    for name, cls in TEST_OBJECTIVES.items():
        register_objective(name)(cls)
    yield
    for name in TEST_OBJECTIVES:
        OBJECTIVES.remove(name)


@pytest.fixture(autouse=True)
def _reset_flags():
    """Lightning answers a KeyboardInterrupt in fit() by ignoring SIGINT from then on and
    calling sys.exit(1); keep that from leaking into other tests."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for flags in (KILL_AT, SIGTERM_AT, SEEN):
        flags.clear()
    FAULTS_ON["on"] = True
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)
    for flags in (KILL_AT, SIGTERM_AT, SEEN):
        flags.clear()
    FAULTS_ON["on"] = True


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A small synthetic text corpus and a tokenizer cache shared by this module's specs."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    lines = [" ".join(rng.choices(words, k=rng.randint(5, 15))) for _ in range(400)]
    (d / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


METRICS = '["perplexity", "continuation", "distinct", "seq_rep"]'


def write_spec(
    path: Path,
    corpus_dir: Path,
    objectives: str,
    seeds: str = "[0]",
    budget_tokens: int = 2048,
    checkpoint_every_steps: int = 200,
) -> Path:
    """A tiny spec: batch 4 × block 32 = 128 tokens a step, so 2048 tokens are 16 steps."""
    path.write_text(
        f"""
[benchmark]
name = "tiny"
seeds = {seeds}

[[corpus]]
name = "text"
paths = ["{corpus_dir / "corpus.txt"}"]
vocab_size = 300
valid_fraction = 0.1
test_fraction = 0.1
cache_dir = "{corpus_dir / "cache"}"

[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32

[training]
budget_tokens = {budget_tokens}
batch_size = 4
precision = "32-true"
accelerator = "cpu"
val_every_steps = 1000
checkpoint_every_steps = {checkpoint_every_steps}

{objectives}

[decoding]
greedy = true
temperature = [1.0]

[evaluation]
num_samples = 8
prompt_tokens = 4
continuation_tokens = 8
self_bleu_samples = 8
batch_size = 8
metrics = {METRICS}
""",
        encoding="utf-8",
    )
    return path


KILL_OBJECTIVES = """
[[objective]]
name = "test_kill_after_steps"
[objective.sweep]
tag = ["a", "b", "c"]
"""


def _db(directory: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(directory / "results.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


def _status(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    return {r["id"]: r for r in conn.execute("SELECT * FROM cells")}


def _steps(conn: sqlite3.Connection, cell_id: str) -> dict[str, float]:
    rows = conn.execute("SELECT name, finished_at FROM steps WHERE cell_id = ?", (cell_id,))
    return {r["name"]: r["finished_at"] for r in rows}


def _metric_rows(conn: sqlite3.Connection, cell_id: str) -> list[tuple]:
    rows = conn.execute(
        "SELECT decoding, metric, value, fingerprint, warning FROM metrics WHERE cell_id = ? "
        "ORDER BY decoding, metric",
        (cell_id,),
    )
    return [tuple(r) for r in rows]


def _checkpoint_step(path: Path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["steps_done"]) == ckpt["global_step"]
    return ckpt["global_step"]


def assert_artifacts_whole(out: Path) -> None:
    """Every artifact row names an existing file, and every samples file parses fully."""
    conn = _db(out)
    rows = conn.execute("SELECT * FROM artifacts").fetchall()
    assert rows
    for row in rows:
        path = out / row["path"]
        assert path.is_file(), f"{row['kind']} artifact {row['path']} is missing"
        if row["kind"] == "samples":
            lines = path.read_text(encoding="utf-8").splitlines()
            assert len(lines) == 8  # one per evaluation prompt
            for line in lines:
                record = json.loads(line)
                assert {"prompt", "generation", "reference"} <= set(record)
                assert all(isinstance(record[k], str) for k in ("prompt", "generation"))
        elif row["kind"] == "checkpoint":
            torch.load(path, map_location="cpu", weights_only=False)
    # No cell has an artifact of a step it did not finish.
    for row in rows:
        steps = _steps(conn, row["cell_id"])
        if row["kind"] == "samples":
            assert any(s.startswith(f"decode:{row['decoding']}:") for s in steps)
        else:
            assert "train" in steps
    # Nothing half-written is left behind under a final name.
    assert not [p for p in out.rglob(".*.tmp*")]
    conn.close()


def test_resume_after_kill_mid_matrix(tmp_path, corpus_dir):
    spec = parse_spec(
        write_spec(tmp_path / "spec.toml", corpus_dir, KILL_OBJECTIVES, checkpoint_every_steps=2)
    )
    a, b, c = (cell.id for cell in expand(spec))
    out = tmp_path / "out"
    KILL_AT["b"] = 7  # checkpoints are written after steps 2, 4 and 6

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run_spec(spec, out)

    conn = _db(out)
    cells = _status(conn)
    assert cells[a]["status"] == "done"
    assert cells[b]["status"] == "pending", "an interrupted cell must go back to pending"
    assert cells[b]["claimed_by"] is None
    assert cells[c]["status"] == "pending"
    steps_a = _steps(conn, a)
    suffix = spec.evaluation.fingerprint()
    assert set(steps_a) == {
        "train",
        f"model-metrics:{suffix}",
        f"decode:greedy:{suffix}",
        f"decode:temperature=1:{suffix}",
    }
    metrics_a = _metric_rows(conn, a)
    decodings = {row[0] for row in metrics_a}
    names = {row[1] for row in metrics_a}
    assert decodings == {"", "greedy", "temperature=1"}
    assert {"ppl_test", "ppl_valid", "nll_continuation", "distinct_1"} <= names
    assert _steps(conn, b) == {} and _metric_rows(conn, b) == []
    assert _steps(conn, c) == {}
    last = out / "cells" / b / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert not (out / "cells" / b / "model.ckpt").exists()
    resumed_at = _checkpoint_step(last)
    assert 0 < resumed_at <= 7
    assert not (out / "cells" / c).exists()
    assert_artifacts_whole(out)
    conn.close()

    del KILL_AT["b"]
    SEEN.clear()
    summary = run_spec(spec, out)

    assert summary.skipped == [a]
    assert summary.done == [b, c]
    assert not summary.failed
    trained = Counter(tag for tag, _ in SEEN)
    assert trained["a"] == 0, "the finished cell trained again"
    b_steps = [step for tag, step in SEEN if tag == "b"]
    assert b_steps[0] == resumed_at, "cell b did not resume from its checkpoint"
    assert b_steps == list(range(resumed_at, 16))
    assert [step for tag, step in SEEN if tag == "c"] == list(range(16))

    conn = _db(out)
    cells = _status(conn)
    assert {cells[x]["status"] for x in (a, b, c)} == {"done"}
    assert _steps(conn, a) == steps_a
    assert _metric_rows(conn, a) == metrics_a
    keys = {(row[0], row[1]) for row in metrics_a}
    for cell_id in (a, b, c):
        rows = _metric_rows(conn, cell_id)
        assert len(rows) == len(keys) and {(r[0], r[1]) for r in rows} == keys
        assert set(_steps(conn, cell_id)) == set(steps_a)
    duplicates = conn.execute(
        "SELECT cell_id, decoding, metric, COUNT(*) FROM metrics "
        "GROUP BY cell_id, decoding, metric HAVING COUNT(*) > 1"
    ).fetchall()
    assert duplicates == []
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    assert_artifacts_whole(out)
    conn.close()


def test_resume_after_kill_during_evaluation(tmp_path, corpus_dir, monkeypatch):
    """A kill between two decodings loses only the decoding in flight."""
    objectives = '[[objective]]\nname = "test_kill_after_steps"\n'
    spec = parse_spec(write_spec(tmp_path / "spec.toml", corpus_dir, objectives))
    (cell,) = expand(spec)
    out = tmp_path / "out"
    from beyondmle import runner

    original = runner.Evaluator.sample_metrics

    def interrupted(self, decoding, samples):
        if decoding.label == "temperature=1":
            raise KeyboardInterrupt
        return original(self, decoding, samples)

    monkeypatch.setattr(runner.Evaluator, "sample_metrics", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_spec(spec, out)

    conn = _db(out)
    suffix = spec.evaluation.fingerprint()
    assert _status(conn)[cell.id]["status"] == "pending"
    before = _steps(conn, cell.id)
    assert set(before) == {"train", f"model-metrics:{suffix}", f"decode:greedy:{suffix}"}
    rows = _metric_rows(conn, cell.id)
    assert {r[0] for r in rows} == {"", "greedy"}
    assert_artifacts_whole(out)
    conn.close()

    monkeypatch.setattr(runner.Evaluator, "sample_metrics", original)
    SEEN.clear()
    summary = run_spec(spec, out)

    assert summary.done == [cell.id]
    assert SEEN == [], "the trained model was trained again"
    conn = _db(out)
    after = _steps(conn, cell.id)
    assert {k: after[k] for k in before} == before, "a finished step ran again"
    assert set(after) == set(before) | {f"decode:temperature=1:{suffix}"}
    assert [r for r in _metric_rows(conn, cell.id) if r[0] != "temperature=1"] == rows
    assert_artifacts_whole(out)
    conn.close()


def test_sigterm_during_training_gives_the_cell_back(tmp_path, corpus_dir):
    """A preempted job (SIGTERM, which Lightning turns into SIGTERMException, a SystemExit)
    leaves the cell pending, so the same command resumes it at once."""
    objectives = '[[objective]]\nname = "test_kill_after_steps"\n'
    spec = parse_spec(
        write_spec(tmp_path / "spec.toml", corpus_dir, objectives, checkpoint_every_steps=4)
    )
    (cell,) = expand(spec)
    out = tmp_path / "out"
    SIGTERM_AT[""] = 10

    with pytest.raises(SystemExit):
        run_spec(spec, out)

    conn = _db(out)
    row = _status(conn)[cell.id]
    assert (row["status"], row["claimed_by"], row["heartbeat"]) == ("pending", None, None)
    conn.close()
    resumed_at = _checkpoint_step(out / "cells" / cell.id / "checkpoints" / "last.ckpt")
    assert resumed_at == 8

    SIGTERM_AT.clear()
    SEEN.clear()
    summary = run_spec(spec, out)
    assert summary.done == [cell.id]
    assert [step for _, step in SEEN] == list(range(resumed_at, 16))
    assert_artifacts_whole(out)


def test_resumed_training_keeps_the_log_before_the_kill(tmp_path, corpus_dir):
    objectives = '[[objective]]\nname = "test_kill_after_steps"\n'
    spec = parse_spec(
        write_spec(
            tmp_path / "spec.toml",
            corpus_dir,
            objectives,
            budget_tokens=4096,  # 32 steps; the log has a row every 10
            checkpoint_every_steps=2,
        )
    )
    (cell,) = expand(spec)
    out = tmp_path / "out"
    log = out / "cells" / cell.id / "logs" / "metrics.csv"
    KILL_AT[""] = 25

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run_spec(spec, out)
    before = _train_log_steps(log)
    assert before == [9, 19]

    KILL_AT.clear()
    assert run_spec(spec, out).done == [cell.id]
    after = _train_log_steps(log)
    assert after[: len(before)] == before
    assert after == sorted(set(after)) and after[-1] == 31


FAULTY_OBJECTIVES = """
[[objective]]
name = "test_faulty"
at_step = 2
[objective.sweep]
fault = ["", "boom", "diverge", "nan"]
"""


def test_failing_cells_are_recorded_and_the_matrix_goes_on(tmp_path, corpus_dir):
    spec = parse_spec(write_spec(tmp_path / "spec.toml", corpus_dir, FAULTY_OBJECTIVES))
    ok, boom, diverge, nan = (cell.id for cell in expand(spec))
    out = tmp_path / "out"

    summary = run_spec(spec, out)

    assert summary.done == [ok]
    assert set(summary.failed) == {boom, diverge, nan}
    conn = _db(out)
    cells = _status(conn)
    assert cells[ok]["status"] == "done"
    for cell_id in (boom, diverge, nan):
        assert cells[cell_id]["status"] == "failed"
        assert cells[cell_id]["claimed_by"] is None
        assert cells[cell_id]["run_id"] is not None
        assert _steps(conn, cell_id) == {} and _metric_rows(conn, cell_id) == []
    assert "RuntimeError: boom" in cells[boom]["error"]
    assert cells[diverge]["error"] == "diverged: the generator emits one token"
    assert cells[nan]["error"].startswith("diverged: non-finite training loss nan at step 2")
    assert _metric_rows(conn, ok)
    conn.close()

    # Failed cells stay failed on a plain re-run ...
    FAULTS_ON["on"] = False
    summary = run_spec(spec, out)
    assert summary.done == [] and sorted(summary.skipped) == sorted([ok, boom, diverge, nan])
    conn = _db(out)
    assert [r["status"] for r in conn.execute("SELECT status FROM cells")].count("failed") == 3
    conn.close()

    # ... and run again with retry_failed (`--retry-failed`).
    summary = run_spec(spec, out, retry_failed=True)
    assert summary.skipped == [ok]
    assert summary.done == [boom, diverge, nan]
    conn = _db(out)
    cells = _status(conn)
    assert {r["status"] for r in cells.values()} == {"done"}
    assert all(r["error"] is None for r in cells.values())
    keys = {(r[0], r[1]) for r in _metric_rows(conn, ok)}
    for cell_id in (boom, diverge, nan):
        assert {(r[0], r[1]) for r in _metric_rows(conn, cell_id)} == keys
    conn.close()
    assert_artifacts_whole(out)


def test_retry_failed_flag_reaches_the_runner():
    args = build_parser().parse_args(["run", "spec.toml", "--retry-failed"])
    assert args.retry_failed is True
    assert build_parser().parse_args(["run", "spec.toml"]).retry_failed is False


CONCURRENT_OBJECTIVES = """
[[objective]]
name = "mle"
[objective.sweep]
label_smoothing = [0.0, 0.1]
"""


def _train_log_steps(path: Path) -> list[int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    step, loss = header.index("step"), header.index("train/loss")
    return [int(f[step]) for f in (line.split(",") for line in lines[1:]) if f[loss]]


@pytest.mark.slow  # two fresh interpreters importing torch and Lightning: ~15 s
def test_two_concurrent_runners_share_a_directory(tmp_path, corpus_dir):
    spec_path = write_spec(
        tmp_path / "spec.toml",
        corpus_dir,
        CONCURRENT_OBJECTIVES,
        seeds="[0, 1]",
        budget_tokens=16384,  # 128 steps: long enough for the runners to overlap
    )
    ids = [cell.id for cell in expand(parse_spec(spec_path))]
    assert len(ids) == 4
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "beyondmle.cli", "run", str(spec_path)]
    command += ["--out", str(out), "--no-report"]
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr[-3000:]

    # Each cell was claimed and run by exactly one of the two runners.
    running = Counter()
    for _, stderr in outputs:
        running.update(re.findall(r"\(([0-9a-f]{12})\): running(?:,|$)", stderr, re.MULTILINE))
    assert running == Counter(ids), running
    done_counts = [int(re.search(r"(\d+) cells done", stdout).group(1)) for stdout, _ in outputs]
    assert sum(done_counts) == 4

    conn = _db(out)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cells = _status(conn)
    assert set(cells) == set(ids)
    assert {r["status"] for r in cells.values()} == {"done"}
    assert all(r["claimed_by"] is None for r in cells.values())
    runs = conn.execute("SELECT run_id, finished_at FROM runs").fetchall()
    assert len(runs) == 2 and all(r["finished_at"] is not None for r in runs)
    assert {r["run_id"] for r in cells.values()} <= {r["run_id"] for r in runs}
    trains = conn.execute("SELECT cell_id, COUNT(*) FROM steps WHERE name = 'train' GROUP BY 1")
    assert dict(trains.fetchall()) == dict.fromkeys(ids, 1)
    conn.close()
    for cell_id in ids:
        # A second training of the same cell would append its steps to the same CSV log.
        steps = _train_log_steps(out / "cells" / cell_id / "logs" / "metrics.csv")
        assert steps and steps == sorted(set(steps)), (cell_id, steps)
    assert_artifacts_whole(out)


def test_shards_split_the_cells_disjointly(tmp_path, corpus_dir):
    parser = build_parser()
    assert parser.parse_args(["run", "s.toml", "--shard", "1/2"]).shard == (1, 2)
    assert parser.parse_args(["run", "s.toml"]).shard == (0, 1)
    for bad in ("2/2", "-1/2", "0/0", "1", "a/b"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "s.toml", "--shard", bad])

    objectives = '[[objective]]\nname = "mle"\n'
    spec = parse_spec(write_spec(tmp_path / "spec.toml", corpus_dir, objectives, seeds="[0, 1, 2]"))
    cells = [cell.id for cell in expand(spec)]
    for n in (1, 2, 3, 4):
        shards = [[c.id for c in select_shard(expand(spec), (i, n))] for i in range(n)]
        assert sorted(sum(shards, [])) == sorted(cells)

    dirs = [tmp_path / "shard0", tmp_path / "shard1"]
    for i, d in enumerate(dirs):
        summary = run_spec(spec, d, shard=(i, 2))
        assert not summary.failed and not summary.skipped
    seen = []
    for d in dirs:
        conn = _db(d)
        seen.append({r["id"] for r in conn.execute("SELECT id FROM cells WHERE status = 'done'")})
        assert conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == len(seen[-1])
        conn.close()
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(cells)
    assert len(seen[0]) == 2 and len(seen[1]) == 1

    merged = tmp_path / "merged"
    merge(merged, dirs).close()
    conn = _db(merged)
    assert {r["id"]: r["status"] for r in conn.execute("SELECT * FROM cells")} == dict.fromkeys(
        cells, "done"
    )
    conn.close()
    assert_artifacts_whole(merged)
    # Running the whole spec on the merged directory has nothing left to do.
    summary = run_spec(spec, merged)
    assert summary.done == [] and sorted(summary.skipped) == sorted(cells)
    db = ResultsDB(merged)
    assert db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_a_changed_decoding_grid_evaluates_finished_cells_again_without_training(
    tmp_path, corpus_dir
):
    objectives = '[[objective]]\nname = "mle"\n'
    path = write_spec(tmp_path / "spec.toml", corpus_dir, objectives)
    spec = parse_spec(path)
    (cell,) = expand(spec)
    run_spec(spec, tmp_path / "out")
    conn = _db(tmp_path / "out")
    trained = _steps(conn, cell.id)["train"]
    checkpoint = tmp_path / "out" / "cells" / cell.id / "model.ckpt"
    written = checkpoint.stat().st_mtime_ns
    conn.close()

    path.write_text(path.read_text().replace("temperature = [1.0]", "temperature = [0.7]"))
    summary = run_spec(parse_spec(path), tmp_path / "out")
    assert not summary.failed and not summary.skipped
    conn = _db(tmp_path / "out")
    steps = _steps(conn, cell.id)
    assert steps["train"] == trained and checkpoint.stat().st_mtime_ns == written
    assert {s.split(":")[1] for s in steps if s.startswith("decode:")} == {
        "greedy",
        "temperature=0.7",
    }
    decodings = {row[0] for row in _metric_rows(conn, cell.id)}
    assert decodings == {"", "greedy", "temperature=0.7"}  # the old decoding's rows are gone
    assert _status(conn)[cell.id]["status"] == "done"
    conn.close()
