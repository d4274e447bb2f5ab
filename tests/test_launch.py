"""Beyond one process: `run-cell` as the one idempotent entry point, per-cell result files
merged idempotently, and the launchers (local subprocesses, submitit's local executor, Ray)
that call it; bad launcher input refused before anything is submitted."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import write_tiny_corpus

from beyondmle.cells import expand
from beyondmle.launch import (
    LOCK_FILE,
    RESULT_FILE,
    DependencyNotDone,
    LaunchError,
    launch,
    launcher_settings,
    result_status,
    run_single_cell,
    stages,
)
from beyondmle.spec import parse_spec
from beyondmle.training import cluster_environment

SPEC = """
[benchmark]
name = "launch"
seeds = [0, 1]
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
dropout = 0.0
{regime}
[training]
budget_tokens = 256
batch_size = 4
precision = "32-true"
accelerator = "cpu"
{training}
[[objective]]
name = "mle"
[[objective]]
name = "denoising"
[decoding]
greedy = true
[evaluation]
num_samples = 8
prompt_tokens = 4
continuation_tokens = 8
self_bleu_samples = 8
batch_size = 8
bootstrap_replicates = 10
metrics = ["perplexity", "distinct"]
{launcher}
"""

FINETUNE = """
[regime]
kind = "finetune"
[base]
budget_tokens = 512
batch_size = 4
precision = "32-true"
accelerator = "cpu"
"""


@pytest.fixture
def write(tmp_path: Path):
    write_tiny_corpus(tmp_path)

    def spec(regime: str = "", training: str = "", launcher: str = "") -> Path:
        path = tmp_path / "spec.toml"
        path.write_text(
            SPEC.format(
                corpus=tmp_path / "corpus.txt", cache=tmp_path / "cache", regime=regime,
                training=training, launcher=launcher,
            )
        )  # fmt: skip
        return path

    return spec


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_run_cell_writes_one_result_file_and_a_second_call_does_nothing(write, tmp_path) -> None:
    spec = parse_spec(write())
    cell = expand(spec)[0]
    out = tmp_path / "out"
    assert run_single_cell(spec, cell.id, out) == "done"
    result = out / "cells" / cell.id / RESULT_FILE
    assert result_status(result.parent) == ("done", None)
    assert rows(result, "SELECT id, status FROM cells") == [(cell.id, "done")]
    metrics = rows(result, "SELECT COUNT(*) FROM metrics")[0][0]
    assert metrics > 0 and not (result.parent / LOCK_FILE).exists()
    stamp = result.stat().st_mtime_ns
    assert run_single_cell(spec, cell.id, out) == "done"
    assert result.stat().st_mtime_ns == stamp  # untouched: nothing ran again


def test_run_cell_evaluates_a_finished_cell_again_when_the_decodings_change(
    write, tmp_path
) -> None:
    path = write()
    spec = parse_spec(path)
    cell = expand(spec)[0]
    out = tmp_path / "out"
    assert run_single_cell(spec, cell.id, out) == "done"
    checkpoint = out / "cells" / cell.id / "model.ckpt"
    written = checkpoint.stat().st_mtime_ns
    path.write_text(path.read_text().replace("greedy = true", "greedy = true\ntop_p = [0.9]"))
    spec = parse_spec(path)
    assert run_single_cell(spec, cell.id, out) == "done"
    result = out / "cells" / cell.id / RESULT_FILE
    decodings = {r[0] for r in rows(result, "SELECT DISTINCT decoding FROM metrics")}
    assert decodings == {"", "greedy", "top_p=0.9"}
    assert checkpoint.stat().st_mtime_ns == written  # evaluated again, not trained again


def test_a_dead_holders_lock_is_taken_over(write, tmp_path) -> None:
    spec = parse_spec(write())
    cell = expand(spec)[0]
    cell_dir = tmp_path / "out" / "cells" / cell.id
    cell_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid whose process is gone, on this host
    from beyondmle.results import process_start, this_host

    (cell_dir / LOCK_FILE).write_text(f"{this_host()}|{dead.pid}|{process_start(os.getpid())}|x")
    assert run_single_cell(spec, cell.id, tmp_path / "out") == "done"


def test_a_cell_whose_base_has_no_result_is_refused(write, tmp_path) -> None:
    spec = parse_spec(write(regime=FINETUNE))
    cells = expand(spec)
    assert [len(s) for s in stages(cells)] == [1, 4]
    with pytest.raises(DependencyNotDone, match="needs its base cell"):
        run_single_cell(spec, cells[1].id, tmp_path / "out")


def test_slurm_variables_alone_do_not_make_a_slurm_launch(write, tmp_path, monkeypatch) -> None:
    for key, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_NODELIST": "node[01-02]",
        "SLURM_JOB_NAME": "bash",
    }.items():
        monkeypatch.setenv(key, value)
    from lightning.pytorch.plugins.environments import LightningEnvironment

    assert isinstance(cluster_environment(), LightningEnvironment)
    spec = parse_spec(write())
    assert run_single_cell(spec, expand(spec)[0].id, tmp_path / "out") == "done"


def counts(out: Path) -> tuple[int, int, int]:
    db = out / "results.sqlite"
    return (
        rows(db, "SELECT COUNT(*) FROM cells WHERE status = 'done'")[0][0],
        rows(db, "SELECT COUNT(*) FROM metrics")[0][0],
        rows(db, "SELECT COUNT(*) FROM (SELECT cell_id, decoding, metric FROM metrics "
                 "GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)")[0][0],
    )  # fmt: skip


def test_the_local_launcher_runs_every_stage_and_merges_idempotently(write, tmp_path) -> None:
    spec = parse_spec(write(regime=FINETUNE))
    out = tmp_path / "out"
    summary = launch(spec, out, "local", {"max_parallel": 2})
    assert not summary.failed and len(summary.done) == 5
    done, metrics, duplicated = counts(out)
    files = sorted((out / "cells").glob(f"*/{RESULT_FILE}"))
    assert (done, duplicated) == (5, 0) and len(files) == 5
    assert metrics == sum(rows(f, "SELECT COUNT(*) FROM metrics")[0][0] for f in files)
    again = launch(spec, out, "local", {"max_parallel": 2})
    assert not again.failed and counts(out) == (done, metrics, 0)
    from beyondmle.cli import main

    assert main(["merge", str(out)]) == 0
    assert counts(out) == (done, metrics, 0)

    # A new decoding grid: the finished cells are evaluated again, and the driver's database
    # holds the new evaluation, not the old one.
    spec_path = Path(spec.path)
    spec_path.write_text(spec_path.read_text().replace("greedy = true", "temperature = [1.0]"))
    regraded = launch(parse_spec(spec_path), out, "local", {"max_parallel": 2})
    assert not regraded.failed and len(regraded.done) == 5
    decodings = {
        r[0] for r in rows(out / "results.sqlite", "SELECT DISTINCT decoding FROM metrics")
    }
    assert decodings == {"", "temperature=1"}


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_submitit_runs_the_smoke_matrix_and_a_killed_driver_and_task_restart_without_loss(
    tmp_path,
) -> None:
    """The driver and one running task are killed with SIGKILL once a cell has finished; the
    other task lives on, orphaned. The restarted driver waits for the live one (its lock), takes
    over the dead one's cell (its process is gone) and ends with every cell done, once."""
    pytest.importorskip("submitit")
    smoke = Path(__file__).parent.parent / "benchmarks" / "smoke.toml"
    out = tmp_path / "out"
    command = [sys.executable, "-m", "beyondmle.cli", "run", str(smoke), "--out", str(out)]
    command += ["--launcher", "submitit", "--max-parallel", "2", "--quiet", "--no-report"]
    driver = subprocess.Popen(command, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list((out / "cells").glob(f"*/{RESULT_FILE}")) and time.time() < deadline:
            time.sleep(0.5)
        assert list((out / "cells").glob(f"*/{RESULT_FILE}")), "no cell finished in time"
        tasks = children(driver.pid)
        assert tasks, "no running task to kill"
        os.kill(tasks[0], signal.SIGKILL)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        restarted = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert restarted.returncode == 0, restarted.stderr[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):  # any orphaned task of the first driver
            os.killpg(driver.pid, signal.SIGKILL)
    cells = {c.id for c in expand(parse_spec(smoke))}
    assert counts(out)[0] == len(cells) == 6 and counts(out)[2] == 0
    assert {p.parent.name for p in (out / "cells").glob(f"*/{RESULT_FILE}")} == cells


def test_the_ray_launcher_on_a_local_instance(write, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install .[ray])")
    spec = parse_spec(write(launcher="[launcher]\nnum_cpus = 1\nmax_retries = 0"))
    try:
        summary = launch(spec, tmp_path / "out", "ray")
    finally:
        ray.shutdown()  # the local instance's processes would otherwise outlive the test
    assert not summary.failed and len(summary.done) == 4


def test_an_unknown_launcher_is_refused(write) -> None:
    with pytest.raises(LaunchError, match="unknown launcher 'slurm'; known: local, submitit, ray"):
        launcher_settings(parse_spec(write()), "slurm")


def test_a_launcher_key_the_launcher_does_not_take_is_refused(write) -> None:
    spec = parse_spec(write(launcher='[launcher]\npartition = "gpu"'))
    with pytest.raises(LaunchError, match=r"launcher.partition: expected a key the 'local'"):
        launcher_settings(spec, "local")
    assert launcher_settings(spec, "submitit").partition == "gpu"


def test_several_nodes_need_a_launcher_that_places_them(write) -> None:
    spec = parse_spec(write(training="num_nodes = 2"))
    with pytest.raises(LaunchError, match="training.num_nodes: expected 1 with the 'local'"):
        launcher_settings(spec, "local")
    settings = launcher_settings(spec, "submitit")
    assert settings.cluster is None
    cell = expand(spec)[0]
    assert cell.training.tokens_per_step(32) == 4 * 32 * 2  # the global batch counts nodes


# one cell over two processes (gloo DDP on CPU)

DDP = 'devices = 2\nstrategy = "ddp"\nval_every_steps = 2\ncheckpoint_every_steps = 100'


def run_cell_process(path: Path, cell_id: str, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "beyondmle.cli", "run-cell", str(path), "--cell", cell_id]
    return subprocess.run(
        [*command, "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300
    )


def val_curve(out: Path, cell_id: str) -> list[float]:
    import pandas as pd

    log = pd.read_csv(out / "cells" / cell_id / "logs" / "metrics.csv")
    return log["val/loss"].dropna().tolist()


@pytest.mark.slow
def test_a_two_process_cell_matches_one_process_at_the_same_global_batch(write, tmp_path) -> None:
    import torch

    from beyondmle.evaluation import Evaluator
    from beyondmle.runner import corpus_key, load_corpora
    from beyondmle.training import load_model

    budget = "budget_tokens = 2560"
    two = tmp_path / "two.toml"
    two.write_text(write(training=DDP).read_text().replace("budget_tokens = 256", budget))
    one = tmp_path / "one.toml"
    one.write_text(
        write(training="val_every_steps = 2\ncheckpoint_every_steps = 100")
        .read_text()
        .replace("budget_tokens = 256", budget)
        .replace("batch_size = 4\nprecision", "batch_size = 8\nprecision")
    )
    cells = {name: expand(parse_spec(p))[0] for name, p in (("one", one), ("two", two))}
    assert cells["two"].training.tokens_per_step(32) == cells["one"].training.tokens_per_step(32)
    for name, path in (("one", one), ("two", two)):
        done = run_cell_process(path, cells[name].id, tmp_path / name)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (
        val_curve(tmp_path / "one", cells["one"].id),
        val_curve(tmp_path / "two", cells["two"].id),
    )
    assert len(a) == len(b) == 5  # 10 steps of the same global batch, validated every 2
    # The same rows in every global batch (GlobalBatchSampler), gradients averaged over ranks:
    # the curves agree up to the order of floating-point sums.
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4, (a, b)
    assert a[-1] < a[0] - 0.1 and b[-1] < b[0] - 0.1

    # Rank 0 evaluated alone: the stored numbers are one process's evaluation of the checkpoint.
    spec = parse_spec(two)
    cell_dir = tmp_path / "two" / "cells" / cells["two"].id
    model, _, _ = load_model(cell_dir / "model.ckpt")
    corpus = load_corpora(spec)[corpus_key(cells["two"].corpus)]
    with torch.no_grad():
        expected, _ = Evaluator(model, corpus, spec.evaluation).model_metrics()
    stored = dict(
        rows(cell_dir / RESULT_FILE, "SELECT metric, value FROM metrics WHERE decoding = ''")
    )
    assert {r.metric: r.value for r in expected} == pytest.approx(stored, rel=1e-6)
    one_process = dict(
        rows(
            tmp_path / "one" / "cells" / cells["one"].id / RESULT_FILE,
            "SELECT metric, value FROM metrics WHERE decoding = ''",
        )
    )
    assert stored == pytest.approx(one_process, rel=1e-4)  # the same model, trained either way
    assert rows(
        cell_dir / RESULT_FILE, "SELECT value FROM cell_compute WHERE key = 'train_tokens'"
    ) == [(2560.0,)]


@pytest.mark.slow
def test_a_two_process_cell_exits_cleanly_20_times_in_20(write, tmp_path) -> None:
    path = write(training=DDP)
    cell = expand(parse_spec(path))[0]
    codes = []
    for attempt in range(20):
        done = run_cell_process(path, cell.id, tmp_path / f"out{attempt}")
        codes.append((done.returncode, done.stderr[-500:] if done.returncode else ""))
    assert [c for c, _ in codes] == [0] * 20, [e for c, e in codes if c]


def test_a_multi_process_cell_goes_through_run_cell_and_a_rank_cannot_run_a_matrix(
    write, monkeypatch
) -> None:
    from beyondmle.launch import choose_launcher

    one, two = parse_spec(write()), parse_spec(write(training=DDP))
    assert choose_launcher(one, None, (0, 1)) is None
    assert choose_launcher(two, None, (0, 1)) == "local"
    assert choose_launcher(two, "submitit", (0, 1)) == "submitit"
    with pytest.raises(LaunchError, match="--shard"):
        choose_launcher(one, "local", (1, 2))
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(LaunchError, match="beyondmle run-cell SPEC --cell ID"):
        choose_launcher(one, None, (0, 1))


def test_the_driver_throttles_where_the_engine_does_not(write, monkeypatch) -> None:
    from beyondmle.launch import concurrency, threads_per_cell

    spec = parse_spec(write(launcher='[launcher]\nmax_parallel = 3\ncluster = "local"'))
    assert concurrency("submitit", launcher_settings(spec, "submitit")) == 3
    slurm = parse_spec(write(launcher='[launcher]\nmax_parallel = 3\ncluster = "slurm"'))
    assert concurrency("submitit", launcher_settings(slurm, "submitit")) is None
    assert concurrency("ray", launcher_settings(parse_spec(write()), "ray")) is None
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [threads_per_cell(n) for n in (1, 2, 3, 32)] == [16, 8, 5, 1]


@pytest.mark.slow
def test_torchrun_launches_the_same_cell_and_only_rank_0_writes(write, tmp_path) -> None:
    path = write(training=DDP)
    cell = expand(parse_spec(path))[0]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "beyondmle.cli", "run-cell", str(path), "--cell", cell.id]
    done = subprocess.run(
        [*command, "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(done.stdout.split("\n")[:-1]) == sorted(
        [f"cell {cell.id}: done", f"cell {cell.id}: trained"]
    )  # rank 0 trained, evaluated and wrote; rank 1 trained only
    result = out / "cells" / cell.id / RESULT_FILE
    assert result_status(result.parent) == ("done", None)
    assert rows(result, "SELECT value FROM cell_compute WHERE key = 'train_tokens'") == [(256.0,)]


@pytest.mark.slow
def test_a_two_process_cell_under_submitits_local_executor_writes_once(write, tmp_path) -> None:
    pytest.importorskip("submitit")
    spec = parse_spec(write(training=DDP, launcher='[launcher]\ncluster = "local"'))
    summary = launch(spec, tmp_path / "out", "submitit")
    assert not summary.failed and len(summary.done) == 4
    assert counts(tmp_path / "out")[0] == 4 and counts(tmp_path / "out")[2] == 0
