"""A runner killed without unwinding (SIGKILL, the OOM killer, a lost machine) leaves its cell
claimed. The claim names the host, the pid and the process's start time, so a rerun on the same
host sees at once that the process is gone, takes the cell and resumes it: the rerun finishes
every cell, with the same metric keys as a run never interrupted and no duplicates."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny import write_tiny_corpus

from beyondmle.results import claim_is_dead, process_start, this_host, worker_id

SCRIPT = """
import os, signal, sys
from dataclasses import dataclass

from beyondmle.api import MetricValue, Output, register_metric, register_objective, setting
from beyondmle.objectives.mle import MLE, MLESettings
from beyondmle.runner import run_spec
from beyondmle.spec import parse_spec

KILL_TAG = os.environ.get("KILL_TAG", "")
KILL_STEP = int(os.environ.get("KILL_STEP", "-1"))
KILL_EVAL_CALL = int(os.environ.get("KILL_EVAL_CALL", "-1"))
CALLS = [0]


@dataclass(frozen=True)
class Tagged(MLESettings):
    tag: str = ""


@register_objective("test_sigkill")
class SigKill(MLE):
    Settings = Tagged

    def loss(self, model, batch, state):
        if self.settings.tag == KILL_TAG and state.step == KILL_STEP:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().loss(model, batch, state)


@register_metric(
    "test_sigkill_metric", version="1", needs={"samples"}, per_decoding=True,
    outputs=[Output("sample_count", "samples", higher_is_better=None)],
)
def count(inputs):
    CALLS[0] += 1
    if CALLS[0] == KILL_EVAL_CALL:
        os.kill(os.getpid(), signal.SIGKILL)
    return [MetricValue("sample_count", float(len(inputs.samples)))]


summary = run_spec(parse_spec(sys.argv[1]), sys.argv[2])
print("DONE", len(summary.done), "SKIPPED", len(summary.skipped), "FAILED", len(summary.failed))
"""

SPEC = """
[benchmark]
name = "kill"
seeds = [0]
[[corpus]]
name = "text"
paths = ["{corpus}"]
vocab_size = 300
valid_fraction = 0.1
test_fraction = 0.1
cache_dir = "{cache}"
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
[training]
budget_tokens = 2048
batch_size = 4
precision = "32-true"
accelerator = "cpu"
val_every_steps = 1000
checkpoint_every_steps = 2
[[objective]]
name = "test_sigkill"
[objective.sweep]
tag = ["a", "b", "c"]
[decoding]
greedy = true
temperature = [1.0]
[evaluation]
num_samples = 8
prompt_tokens = 4
continuation_tokens = 8
self_bleu_samples = 8
batch_size = 8
metrics = ["perplexity", "distinct", "test_sigkill_metric"]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("kill")
    write_tiny_corpus(d)
    spec = d / "spec.toml"
    spec.write_text(SPEC.format(corpus=d / "corpus.txt", cache=d / "cache"), encoding="utf-8")
    (d / "runner.py").write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    return d, spec


def run(setup: tuple[Path, Path], out: Path, **kill: str) -> subprocess.CompletedProcess:
    d, spec = setup
    env = {**os.environ, "KILL_TAG": "", "KILL_STEP": "-1", "KILL_EVAL_CALL": "-1", **kill}
    return subprocess.run(
        [sys.executable, str(d / "runner.py"), str(spec), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def keys(out: Path) -> tuple[dict[str, str], list[tuple]]:
    conn = sqlite3.connect(out / "results.sqlite")
    status = dict(conn.execute("SELECT objective, status FROM cells"))
    rows = conn.execute(
        "SELECT c.objective, m.decoding, m.metric FROM metrics m JOIN cells c ON c.id = m.cell_id "
        "ORDER BY 1, 2, 3"
    ).fetchall()
    conn.close()
    return status, rows


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory) -> list[tuple]:
    out = tmp_path_factory.mktemp("whole") / "out"
    result = run(setup, out)
    assert result.returncode == 0, result.stderr
    status, rows = keys(out)
    assert set(status.values()) == {"done"}
    return rows


def assert_killed_then_resumed(setup, out: Path, uninterrupted: list[tuple], **kill) -> None:
    killed = run(setup, out, **kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    status, _ = keys(out)
    assert "running" in status.values(), "the kill must leave a claimed cell behind"

    rerun = run(setup, out)  # at once: no waiting for a heartbeat to go stale
    assert rerun.returncode == 0, rerun.stderr
    assert "skipped (running)" not in rerun.stderr
    status, rows = keys(out)
    assert set(status.values()) == {"done"}
    assert rows == uninterrupted  # same keys, none twice


@pytest.mark.slow
def test_sigkill_during_training_resumes_at_once(setup, uninterrupted, tmp_path) -> None:
    assert_killed_then_resumed(setup, tmp_path / "out", uninterrupted, KILL_TAG="b", KILL_STEP="7")


@pytest.mark.slow
def test_sigkill_during_evaluation_resumes_at_once(setup, uninterrupted, tmp_path) -> None:
    # Two decodings per cell: the third call is the first decoding of the second cell.
    assert_killed_then_resumed(setup, tmp_path / "out", uninterrupted, KILL_EVAL_CALL="3")


def test_a_claim_of_a_live_process_is_alive_and_of_a_finished_one_dead() -> None:
    assert not claim_is_dead(worker_id("run"))  # this process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    start = "123456"  # a start time no live process with that pid has
    assert claim_is_dead(f"{this_host()}|{child.pid}|{start}|run")
    assert claim_is_dead(f"{this_host()}|{os.getpid()}|{start}|run"), "pid reused by another"
    assert process_start(os.getpid()) is not None


def test_a_claim_from_another_host_is_left_to_its_heartbeat() -> None:
    assert not claim_is_dead(f"elsewhere/abcd1234|{os.getpid() + 1}|1|run")
    assert not claim_is_dead(None)
    assert not claim_is_dead("an-old-style-claim:123:run")
