"""A matrix beyond one process: one idempotent entry point per cell, per-cell result files, and
launchers that call it on this machine (`local`), on a SLURM cluster (`submitit`) or on a Ray
cluster (`ray`). The engines schedule; beyondmle only says what to run and merges what came
back.

`beyondmle run-cell SPEC --cell ID --out DIR` trains and evaluates one cell into
`DIR/cells/ID/result.sqlite`, a results database of that cell alone, written to a temporary file
and renamed into place when the cell ends (done or failed), so a reader on any machine sees it
whole or not at all. While it runs, the cell's rows live in `work.sqlite` beside it (no WAL: the
directory may be on a network filesystem) and `DIR/cells/ID/.lock` names its process (host, pid,
start) and is touched every 30 s. A second call for a finished cell does nothing; a call while a
live process holds the lock waits for it and returns its result; a lock whose process is gone
(on this host) or that has not been touched for `STALE_SECONDS` is taken over, and the cell
resumes from its last checkpoint. Calls for ranks other than 0 of a multi-process cell only
train.

`beyondmle run SPEC --launcher NAME` is the driver: it runs the cells stage by stage (shared
bases, then reward models, then the rest), shows the matrix's progress, merges each finished
cell's result file into `DIR/results.sqlite` (idempotent, so a restarted driver loses and
duplicates nothing) and builds the report at the end. What crosses machines is the cell
directory and its result file, never a shared SQLite database.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from beyondmle.cells import Cell, expand
from beyondmle.console import NORMAL, QUIET, RunConsole
from beyondmle.evaluation import metric_info
from beyondmle.results import (
    STALE_SECONDS,
    ResultsDB,
    claim_is_dead,
    merge_file,
    worker_id,
)
from beyondmle.runner import (
    RunSummary,
    claim_and_run,
    corpus_key,
    evaluation_steps,
    git_commit,
    load_corpora,
    package_versions,
    reopen_for_evaluation,
    train,
    with_dependencies,
)
from beyondmle.settings import Problem, Settings, build_settings, setting
from beyondmle.spec import Spec

RESULT_FILE = "result.sqlite"
WORK_FILE = "work.sqlite"
LOCK_FILE = ".lock"
TOUCH_SECONDS = 30.0
POLL_SECONDS = 2.0


class LaunchError(ValueError):
    """Bad launcher input, found before anything is submitted; one problem per line."""


class DependencyNotDone(RuntimeError):
    """A cell's base or reward model has no finished result yet."""


# -- one cell -------------------------------------------------------------------------------


def global_rank() -> int:
    """This process's rank in a multi-process cell (0 when alone), from the variables torchrun,
    Lightning and SLURM set."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ and _launched_with_ranks(key):
            return int(os.environ[key])
    return 0


def _launched_with_ranks(key: str) -> bool:
    # SLURM variables leak into plain processes (a notebook on a login node, a submitit task
    # of one process): only a SLURM launch of several tasks makes SLURM_PROCID a rank.
    if key == "SLURM_PROCID":
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return True


def result_status(cell_dir: Path) -> tuple[str | None, str | None]:
    """(status, error) of a cell's result file; (None, None) when it has none yet."""
    if not (cell_dir / RESULT_FILE).exists():
        return None, None
    rows = _result_rows(cell_dir, "SELECT status, error FROM cells WHERE id = ?")
    return (rows[0][0], rows[0][1]) if rows else (None, None)


def _evaluated(cell_dir: Path, steps: list[str]) -> bool:
    """Whether a cell's result file holds every evaluation step of the spec's current
    [evaluation] and [decoding] (changed settings name new steps, which run again)."""
    finished = {
        row[0] for row in _result_rows(cell_dir, "SELECT name FROM steps WHERE cell_id = ?")
    }
    return all(step in finished for step in steps)


def _result_rows(cell_dir: Path, sql: str) -> list[tuple]:
    """The rows of a query on the cell's own result file, read-only, the cell id bound."""
    conn = sqlite3.connect(f"file:{cell_dir / RESULT_FILE}?mode=ro", uri=True)
    try:
        return conn.execute(sql, (cell_dir.name,)).fetchall()
    finally:
        conn.close()


def _evaluated_elsewise(cell_dir: Path, cell: Cell, spec: Spec) -> bool:
    """Whether a cell's result file is finished but under other [evaluation] or [decoding]
    settings than the spec's."""
    status, _ = result_status(cell_dir)
    return status == "done" and not _evaluated(cell_dir, evaluation_steps(cell, spec))


def find_cell(spec: Spec, cell_id: str) -> Cell:
    cells = with_dependencies(expand(spec))
    for cell in cells:
        if cell.id == cell_id:
            return cell
    known = ", ".join(c.id for c in cells)
    raise LaunchError(f"{spec.path}: no cell {cell_id!r} in this spec; its cells: {known}")


class CellLock:
    """`DIR/cells/ID/.lock`: created exclusively, naming its process; touched while held."""

    def __init__(self, cell_dir: Path) -> None:
        self.path = cell_dir / LOCK_FILE
        self.worker = worker_id("run-cell")
        self._stop = threading.Event()

    def holder(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError:
            return None

    def stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return True
        return claim_is_dead(self.holder()) or age > STALE_SECONDS

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.stale():
                    return False
                self.path.unlink(missing_ok=True)  # a dead holder's lock: take it over
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.worker)
            threading.Thread(target=self._touch, daemon=True).start()
            return True
        return False

    def _touch(self) -> None:
        while not self._stop.wait(TOUCH_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self.holder() == self.worker:
            self.path.unlink(missing_ok=True)


def run_single_cell(
    spec: Spec,
    cell_id: str,
    out_dir: str | Path,
    retry_failed: bool = False,
    verbosity: int = NORMAL,
    wait: Callable[[float], None] = time.sleep,
) -> str:
    """`beyondmle run-cell`: see the module docstring. Returns the cell's status."""
    out_dir = Path(out_dir)
    cell = find_cell(spec, cell_id)
    cell_dir = out_dir / "cells" / cell.id
    corpora = load_corpora(spec)
    if global_rank() != 0:  # another rank of a multi-process cell: train, write nothing
        with RunConsole(1, QUIET).capture():
            train(cell, corpora[corpus_key(cell.corpus)], cell_dir, lambda: None, spec=spec)
        return "trained"
    status, _ = result_status(cell_dir)
    if status == "done" and _evaluated(cell_dir, evaluation_steps(cell, spec)):
        return status
    if status == "failed" and not retry_failed:
        return status
    for dependency in cell.dependencies:
        dep_status, _ = result_status(out_dir / "cells" / dependency.id)
        if dep_status != "done":
            raise DependencyNotDone(
                f"cell {cell.id} needs its {dependency.role} cell {dependency.id}, which has "
                f"{'no result yet' if dep_status is None else dep_status}; run that cell first"
            )
    lock = CellLock(cell_dir)
    while not lock.acquire():
        wait(POLL_SECONDS)  # another process runs it: its result is ours
        status, _ = result_status(cell_dir)
        if status is not None and not lock.path.exists():
            return status
    try:
        return _run_locked(spec, cell, corpora, out_dir, cell_dir, retry_failed, verbosity)
    finally:
        lock.release()


def _run_locked(spec, cell, corpora, out_dir, cell_dir, retry_failed, verbosity) -> str:
    db = ResultsDB(cell_dir, WORK_FILE, wal=False)
    try:
        # Unique even for two runs of the cell in one second (a rerun that only re-evaluates).
        run_id = f"cell-{cell.id}-{int(time.time())}-{uuid.uuid4().hex[:6]}"
        worker = worker_id(run_id)
        db.start_run(run_id, spec.path, spec.text, git_commit(), package_versions())
        preference = ["reward_model"] if spec.preferences else []
        db.record_metric_info(metric_info([*spec.evaluation.metrics, *preference]))
        db.register_cell(cell.id, cell.config, cell.corpus.name, cell.objective.label, cell.seed)
        reopen_for_evaluation(cell, spec, db)
        console = RunConsole(1, verbosity)
        summary = RunSummary(out_dir)
        with console.capture():
            claim_and_run(
                1, cell, spec, corpora, db, run_id, worker, out_dir, console, summary,
                retry_failed, ready=lambda dependency: True,
            )  # fmt: skip
            db.record_warnings(run_id, console.summary())
        db.finish_run(run_id)
        status = db.cell_status(cell.id)
        if status in ("done", "failed"):
            db.export(cell_dir / RESULT_FILE)
        return status or "pending"
    finally:
        db.close()


# -- launchers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSettings(Settings):
    """`local`: `run-cell` in subprocesses on this machine, `max_parallel` at a time."""

    max_parallel: int = setting(1, ge=1)


@dataclass(frozen=True)
class SubmititSettings(Settings):
    """`submitit`: a SLURM job array, one task per cell (`cluster = "local"` or `"debug"` runs
    the same on this machine). `gpus_per_task` GPUs per node; nodes and tasks per node follow
    the cell's `num_nodes` and `devices`. `time_min`, `partition`, `account`, `mem_gb`,
    `cpus_per_task`, `max_parallel` (the array's parallelism) and extra `sbatch` flags
    (`slurm_additional`, e.g. {qos = "high"}). Preempted or timed-out tasks are requeued by
    submitit (signal `USR2` 120 s before the end) and resume from their checkpoint; Lightning's
    own SLURM requeue is off, so requeueing has one owner."""

    cluster: str | None = setting(None, choices=(None, "slurm", "local", "debug"))
    partition: str | None = None
    account: str | None = None
    time_min: int = setting(240, ge=1)
    gpus_per_task: int = setting(0, ge=0)
    cpus_per_task: int = setting(2, ge=1)
    mem_gb: float | None = setting(None, gt=0.0)
    max_parallel: int = setting(16, ge=1)
    slurm_additional: dict = setting(default_factory=dict)


@dataclass(frozen=True)
class RaySettings(Settings):
    """`ray`: one Ray task per cell on the cluster at `address` (default: `RAY_ADDRESS`, else a
    local instance), with `num_gpus` / `num_cpus` per task and `max_retries`."""

    address: str | None = None
    num_gpus: float = setting(0.0, ge=0.0)
    num_cpus: float = setting(1.0, gt=0.0)
    max_retries: int = setting(2, ge=0)


LAUNCHERS: dict[str, type[Settings]] = {
    "local": LocalSettings,
    "submitit": SubmititSettings,
    "ray": RaySettings,
}


def launcher_settings(spec: Spec, name: str, overrides: dict | None = None) -> Settings:
    """The launcher's settings from the spec's `[launcher]` table and the CLI; every problem
    (an unknown launcher, a key it does not take, a multi-node cell it cannot place) raises
    `LaunchError` before anything is submitted."""
    if name not in LAUNCHERS:
        raise LaunchError(f"unknown launcher {name!r}; known: {', '.join(LAUNCHERS)} (--launcher)")
    cls = LAUNCHERS[name]
    table = {**spec.launcher, **(overrides or {})}
    known = {f.name for f in dataclasses.fields(cls)}
    lines = [
        f"{spec.path}: launcher.{key}: expected a key the {name!r} launcher takes "
        f"({', '.join(sorted(known))}), got {key!r}"
        for key in sorted(set(table) - known)
    ]
    settings, problems = build_settings(cls, {k: v for k, v in table.items() if k in known})
    lines += [_line(spec, p) for p in problems]
    nodes = max(c.training.num_nodes for c in expand(spec))
    if nodes > 1 and name != "submitit":
        lines.append(
            f"{spec.path}: training.num_nodes: expected 1 with the {name!r} launcher, which "
            f"places each cell on one machine (use --launcher submitit), got {nodes}"
        )
    if lines:
        raise LaunchError("\n".join(lines))
    return settings


def choose_launcher(spec: Spec, launcher: str | None, shard: tuple[int, int]) -> str | None:
    """The launcher `beyondmle run` uses: the one asked for; else `local` when a cell runs on
    several processes (its ranks start beside `run-cell`, never beside the whole matrix); else
    none, the matrix in this process. Refused under a multi-rank launch (torchrun, srun), where
    every rank would run the whole matrix, and with `--shard`, which launchers make moot."""
    if global_rank() != 0:
        raise LaunchError(
            "`beyondmle run` runs a whole matrix, once; under torchrun or srun with several "
            "ranks, launch one cell: beyondmle run-cell SPEC --cell ID --out DIR"
        )
    if launcher and shard != (0, 1):
        raise LaunchError("--shard splits a matrix run in one process; drop it with --launcher")
    processes = max(c.training.devices * c.training.num_nodes for c in expand(spec))
    if launcher is None and processes > 1:
        print(
            f"a cell runs on {processes} processes: each cell goes through run-cell "
            "(--launcher local)",
            file=sys.stderr,
        )
        return "local"
    return launcher


def _line(spec: Spec, problem: Problem) -> str:
    got = "" if problem.got is None else f", got {problem.got!r}"
    return f"{spec.path}: launcher.{problem.key}: expected {problem.expected}{got}"


class Handle:
    """A submitted cell: `done()` once its process or task has ended."""

    def __init__(self, cell: Cell, done: Callable[[], bool], error: Callable[[], str | None]):
        self.cell, self.done, self.error = cell, done, error


def _command(spec: Spec, cell: Cell, out_dir: Path, retry_failed: bool) -> list[str]:
    command = [sys.executable, "-m", "beyondmle.cli", "run-cell", spec.path]
    command += ["--cell", cell.id, "--out", str(out_dir), "--quiet"]
    return command + (["--retry-failed"] if retry_failed else [])


def threads_per_cell(parallel: int) -> int:
    """A cell's share of this machine's cores when `parallel` cells run on it at once. Each
    process would otherwise start one thread per core, and n processes spinning n threads each
    on n cores run several times slower than one after another."""
    return max(1, (os.cpu_count() or 1) // parallel)


def _submit_local(spec, settings: LocalSettings, cells, out_dir, retry_failed):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_cell(settings.max_parallel)))
    processes: dict[str, subprocess.Popen] = {}
    for cell in cells:
        log_dir = out_dir / "cells" / cell.id
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "launcher.log", "ab") as log:
            processes[cell.id] = subprocess.Popen(
                _command(spec, cell, out_dir, retry_failed), stdout=log, stderr=log, env=env
            )

    def error(cell: Cell) -> str | None:
        code = processes[cell.id].returncode
        return None if code == 0 else f"run-cell exited with {code}; see launcher.log"

    return [
        Handle(c, lambda c=c: processes[c.id].poll() is not None, lambda c=c: error(c))
        for c in cells
    ]


class CellTask:
    """What a submitit task runs: `run-cell` in-process. Checkpointable: on preemption or
    timeout submitit requeues the same call, which resumes the cell from its checkpoint."""

    def __init__(
        self, spec_path: str, out_dir: str, retry_failed: bool, threads: int | None = None
    ) -> None:
        self.spec_path, self.out_dir, self.retry_failed = spec_path, out_dir, retry_failed
        self.threads = threads  # on this machine (the local executor): its share of the cores

    def __call__(self, cell_id: str) -> str:
        from beyondmle.spec import parse_spec

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        distributed_environment()
        return run_single_cell(parse_spec(self.spec_path), cell_id, self.out_dir, self.retry_failed)

    def checkpoint(self, cell_id: str):
        import submitit

        return submitit.helpers.DelayedSubmission(self, cell_id)


def distributed_environment() -> None:
    """In a submitit task of several processes (SLURM's tasks, or the local executor's), export
    torch.distributed's variables (rank, world size, master address) the way submitit computes
    them, so every rank knows its place and only rank 0 writes."""
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _submit_submitit(spec, settings: SubmititSettings, cells, out_dir, retry_failed):
    import submitit

    executor = submitit.AutoExecutor(folder=out_dir / "submitit" / "%j", cluster=settings.cluster)
    here = executor.cluster != "slurm"
    training = cells[0].training
    parameters = {
        "timeout_min": settings.time_min,
        "nodes": training.num_nodes,
        "tasks_per_node": training.devices,
        "cpus_per_task": settings.cpus_per_task,
        "slurm_array_parallelism": settings.max_parallel,
        "slurm_signal_delay_s": 120,
    }
    if settings.gpus_per_task:
        parameters["gpus_per_node"] = settings.gpus_per_task
    if settings.mem_gb:
        parameters["mem_gb"] = settings.mem_gb
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    if settings.account:
        parameters["slurm_account"] = settings.account
    if settings.slurm_additional:
        parameters["slurm_additional_parameters"] = dict(settings.slurm_additional)
    executor.update_parameters(**parameters)
    threads = threads_per_cell(settings.max_parallel) if here else None
    task = CellTask(spec.path, str(out_dir), retry_failed, threads)
    jobs = executor.map_array(task, [c.id for c in cells])

    def error(job) -> str | None:
        try:
            exc = job.exception()
        except Exception as e:  # the job's result file is missing: it was killed
            return f"submitit job {job.job_id}: {e}"
        return None if exc is None else f"submitit job {job.job_id}: {exc}"

    return [
        Handle(c, job.done, lambda job=job: error(job)) for c, job in zip(cells, jobs, strict=True)
    ]


def _submit_ray(spec, settings: RaySettings, cells, out_dir, retry_failed):
    try:
        import ray
    except ImportError:
        raise LaunchError("the ray launcher needs Ray: pip install 'beyondmle[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=settings.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    remote = ray.remote(
        num_gpus=settings.num_gpus, num_cpus=settings.num_cpus, max_retries=settings.max_retries
    )(_ray_task)
    refs = [remote.remote(spec.path, c.id, str(out_dir), retry_failed) for c in cells]

    def done(ref) -> bool:
        ready, _ = ray.wait([ref], timeout=0)
        return bool(ready)

    def error(ref) -> str | None:
        try:
            ray.get(ref)
        except Exception as e:
            return f"ray task: {e}"
        return None

    return [
        Handle(c, lambda r=r: done(r), lambda r=r: error(r))
        for c, r in zip(cells, refs, strict=True)
    ]


def _ray_task(spec_path: str, cell_id: str, out_dir: str, retry_failed: bool) -> str:
    """`run-cell` as a child process of the Ray worker: Lightning's `ddp` starts a cell's other
    ranks by running the same command again, which must be `run-cell`, not the Ray worker."""
    from beyondmle.spec import parse_spec

    spec = parse_spec(spec_path)
    cell = find_cell(spec, cell_id)
    command = _command(spec, cell, Path(out_dir), retry_failed)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"run-cell exited with {done.returncode}: {done.stderr[-2000:]}")
    return result_status(Path(out_dir) / "cells" / cell_id)[0] or "pending"


SUBMIT = {"local": _submit_local, "submitit": _submit_submitit, "ray": _submit_ray}


# -- the driver -----------------------------------------------------------------------------


def stages(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped so that each runs after everything it depends on: depth 0 first."""
    depth: dict[str, int] = {}

    def of(cell: Cell) -> int:
        if cell.id not in depth:
            depth[cell.id] = 1 + max((of(d) for d in cell.dependencies), default=-1)
        return depth[cell.id]

    out: list[list[Cell]] = []
    for cell in cells:
        d = of(cell)
        while len(out) <= d:
            out.append([])
        out[d].append(cell)
    return out


def concurrency(launcher: str, settings: Settings) -> int | None:
    """How many cells the driver keeps submitted at once: `max_parallel` where nothing else
    limits them (this machine's processes, submitit's local executor, which ignores the array's
    parallelism); None where the engine does (SLURM's array throttle, Ray's resources)."""
    if launcher == "local":
        return settings.max_parallel
    if launcher == "submitit" and settings.cluster in ("local", "debug"):
        return settings.max_parallel
    if launcher == "submitit" and settings.cluster is None and not shutil.which("sbatch"):
        return settings.max_parallel  # AutoExecutor falls back to the local executor
    return None


def launch(
    spec: Spec,
    out_dir: str | Path,
    launcher: str,
    overrides: dict | None = None,
    retry_failed: bool = False,
    verbosity: int = NORMAL,
    stream=None,
) -> RunSummary:
    """Run the matrix through a launcher; see the module docstring."""
    settings = launcher_settings(spec, launcher, overrides)
    out_dir = Path(out_dir).resolve()
    cells = with_dependencies(expand(spec))
    load_corpora(spec)  # bad input fails here, before anything is submitted
    console = RunConsole(len(cells), verbosity, stream or sys.stderr)
    summary = RunSummary(out_dir)
    db = ResultsDB(out_dir, wal=False)  # the driver alone writes it; DIR may be on NFS
    try:
        run_id = f"driver-{int(time.time())}-{uuid.uuid4().hex[:6]}"
        db.start_run(run_id, spec.path, spec.text, git_commit(), package_versions())
        preference = ["reward_model"] if spec.preferences else []
        db.record_metric_info(metric_info([*spec.evaluation.metrics, *preference]))
        for cell in cells:
            db.register_cell(
                cell.id, cell.config, cell.corpus.name, cell.objective.label, cell.seed
            )
            reopen_for_evaluation(cell, spec, db)
        index = {c.id: i for i, c in enumerate(cells, start=1)}
        for stage in stages(cells):
            todo = []
            for cell in stage:
                if _evaluated_elsewise(out_dir / "cells" / cell.id, cell, spec):
                    todo.append(cell)  # run-cell evaluates it again under these settings
                    continue
                _collect(db, out_dir, cell, summary, console, index[cell.id], quiet=True)
                if cell.id not in summary.done and (retry_failed or cell.id not in summary.failed):
                    summary.failed.pop(cell.id, None)
                    todo.append(cell)
            if not todo:
                continue
            for cell in todo:
                console.cell(index[cell.id], f"{cell.describe()} ({cell.id})", "submitted")
            limit = concurrency(launcher, settings) or len(todo)
            handles: list[Handle] = []
            while todo or handles:
                if todo and len(handles) < limit:
                    batch, todo = todo[: limit - len(handles)], todo[limit - len(handles) :]
                    handles += SUBMIT[launcher](spec, settings, batch, out_dir, retry_failed)
                for handle in [h for h in handles if h.done()]:
                    handles.remove(handle)
                    _collect(db, out_dir, handle.cell, summary, console, index[handle.cell.id],
                             error=handle.error())  # fmt: skip
                time.sleep(POLL_SECONDS if handles else 0)
        db.finish_run(run_id)
    finally:
        db.close()
    return summary


def _collect(
    db: ResultsDB,
    out_dir: Path,
    cell: Cell,
    summary: RunSummary,
    console: RunConsole,
    index: int,
    error: str | None = None,
    quiet: bool = False,
) -> None:
    """Merge a cell's result file into the driver's database, once it has one."""
    cell_dir = out_dir / "cells" / cell.id
    status, cell_error = result_status(cell_dir)
    label = f"{cell.describe()} ({cell.id})"
    if status is not None:
        merge_file(db, cell_dir / RESULT_FILE)
    if status == "done":
        if cell.id not in summary.done:
            summary.done.append(cell.id)
            console.cell(index, label, "done")
        return
    if status == "failed" or error:
        reason = cell_error or error or "no result"
        with db.transaction() as c:
            c.execute(
                "UPDATE cells SET status = 'failed', error = ? WHERE id = ? AND status != 'done'",
                (reason, cell.id),
            )
        summary.failed[cell.id] = reason
        if not quiet or status == "failed":
            console.cell(index, label, f"FAILED: {reason.splitlines()[-1]}")
