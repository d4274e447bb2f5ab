"""The results database: `DIR/results.sqlite`, the one place the report reads from.

SQLite in WAL mode, one transaction per finished step, so after a kill every row belongs to a
finished step. Several runner processes on one machine may share a directory: a cell is claimed
in a transaction before it runs, so no two runners run the same cell. Across machines SQLite on
a network filesystem is unsafe (its locks and WAL need one host), so each machine writes its own
directory and `merge` combines them, idempotently.

Tables:
- `runs`: one row per `beyondmle run` invocation: the spec, versions, git commit, host, times.
- `cells`: one row per trained model: id (a hash of the resolved config), the config as JSON,
  corpus / objective label / seed, status (`pending`, `running`, `done`, `failed`), the claim,
  times and the error text of a failed cell.
- `steps`: the finished steps of a cell (`train`, `likelihood`, `decode:<decoding label>`).
- `metrics`: long form, one value per (cell, decoding, metric); decoding is `''` for metrics
  that do not depend on decoding (perplexity, rep/wrep). Each value carries the fingerprint of
  its metric settings and an optional warning.
- `fingerprints`: what a fingerprint stands for (metric, version, settings JSON).
- `artifacts`: files of a cell, by kind (`checkpoint`, `samples`, `train_log`), with paths
  relative to the results directory.
- `cell_provenance`: facts about how a cell ran (key, value): the precision it trained in and
  why, the CPU.
- `replicates`: a metric's values over the shared prompt resamples (a JSON list; replicate r
  is the same prompts in every cell), for intervals over prompts and paired differences.
- `cell_compute`: what training a cell cost (key, value): `train_flops` (forward and backward,
  extra passes, generation and an objective's own models included), `train_tokens` (the data's
  target tokens), `forward_tokens`, `generated_tokens`.
- `run_warnings`: every distinct warning a run printed or silenced, with how often it came.
- `metric_info`: what each stored metric means, as its metric declared it: display name,
  direction (1 higher is better, 0 lower, NULL none), per decoding or per model, number
  format. The report reads metrics' meanings from here, never from code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from beyondmle.evaluation import FingerprintRow, MetricInfoRow, MetricRow

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    spec_path TEXT NOT NULL,
    spec_text TEXT NOT NULL,
    git_commit TEXT,
    versions TEXT NOT NULL,
    host TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    corpus TEXT NOT NULL,
    objective TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    claimed_by TEXT,
    heartbeat REAL,
    started_at REAL,
    finished_at REAL,
    train_seconds REAL,
    error TEXT,
    run_id TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    cell_id TEXT NOT NULL,
    name TEXT NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (cell_id, name)
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_id TEXT NOT NULL,
    corpus TEXT NOT NULL,
    objective TEXT NOT NULL,
    seed INTEGER NOT NULL,
    decoding TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    fingerprint TEXT NOT NULL,
    warning TEXT,
    PRIMARY KEY (cell_id, decoding, metric)
);
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint TEXT PRIMARY KEY,
    metric TEXT NOT NULL,
    version TEXT NOT NULL,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metric_info (
    metric TEXT PRIMARY KEY,
    metric_group TEXT NOT NULL,
    display TEXT NOT NULL,
    higher_is_better INTEGER,
    per_decoding INTEGER NOT NULL,
    format TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cell_provenance (
    cell_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (cell_id, key)
);
CREATE TABLE IF NOT EXISTS replicates (
    cell_id TEXT NOT NULL,
    decoding TEXT NOT NULL,
    metric TEXT NOT NULL,
    vals TEXT NOT NULL,
    PRIMARY KEY (cell_id, decoding, metric)
);
CREATE TABLE IF NOT EXISTS cell_compute (
    cell_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (cell_id, key)
);
CREATE TABLE IF NOT EXISTS run_warnings (
    run_id TEXT NOT NULL,
    category TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, category, message)
);
CREATE TABLE IF NOT EXISTS artifacts (
    cell_id TEXT NOT NULL,
    decoding TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (cell_id, decoding, kind)
);
"""

# A running cell whose heartbeat is older than this is taken to belong to a dead runner. On the
# runner's own host a claim is checked directly: a claim whose process is gone is stale at once.
STALE_SECONDS = 600.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or None
    if no such process runs. With the boot id, (pid, start) names a process even after its
    pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def this_host() -> str:
    return f"{socket.gethostname()}/{_boot_id()}"


def worker_id(run_id: str) -> str:
    """host/boot|pid|process start|run: a claim that can be checked for life on its host."""
    pid = os.getpid()
    return f"{this_host()}|{pid}|{process_start(pid) or '?'}|{run_id}"


def claim_is_dead(worker: str | None) -> bool:
    """Whether a claim belongs to a process known to be gone: on this host (same boot), its
    pid runs no more or runs another process. Claims from other hosts are never judged here;
    their heartbeat decides."""
    if not worker or worker.count("|") != 3:
        return False
    host, pid, start, _ = worker.split("|")
    if host != this_host() or start == "?" or not Path("/proc/self/stat").exists():
        return False
    return process_start(int(pid)) != start


class ResultsError(RuntimeError):
    """A results directory that cannot be used as it is; the message says what to do."""


class ResultsDB:
    """A results directory's database. Every write is one short transaction."""

    def __init__(
        self, directory: str | Path, filename: str = "results.sqlite", wal: bool = True
    ) -> None:
        """`wal=False` for a file one process writes on a filesystem that may be shared
        between machines (a cell's own result file): WAL needs memory shared on one host."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / filename
        self.wal = wal
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            raise ResultsError(
                f"{self.path} cannot be read as a results database ({e}); it was probably cut "
                "short or damaged by an interrupted copy, and nothing in it was changed. Restore "
                "it from a copy, or move it aside and run the same command again: each cell "
                "whose model.ckpt is whole is then evaluated again without training."
            ) from None

    def _open(self) -> None:
        self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout=60000")
        check = self.conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            self.conn.close()
            raise sqlite3.DatabaseError(f"integrity check: {check}")
        self.conn.execute(f"PRAGMA journal_mode={'WAL' if self.wal else 'DELETE'}")
        self.conn.execute("PRAGMA synchronous=FULL")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def close(self) -> None:
        self.conn.close()

    def export(self, path: str | Path) -> None:
        """A consistent copy of the database at `path`, written to a temporary sibling, synced
        and renamed into place: a reader on any machine sees the old file or the new one whole."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        copy = sqlite3.connect(tmp)
        try:
            self.conn.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` takes the write lock up front, so concurrent runners queue."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # runs
    def start_run(
        self, run_id: str, spec_path: str, spec_text: str, git_commit: str | None, versions: dict
    ) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO runs VALUES (?, ?, NULL, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    time.time(),
                    spec_path,
                    spec_text,
                    git_commit,
                    json.dumps(versions),
                    socket.gethostname(),
                ),
            )

    def finish_run(self, run_id: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET finished_at = ? WHERE run_id = ?", (time.time(), run_id))

    def record_metric_info(self, rows: list[MetricInfoRow]) -> None:
        """Store what each metric means (its declared outputs)."""
        with self.transaction() as c:
            for r in rows:
                higher = None if r.higher_is_better is None else int(r.higher_is_better)
                c.execute(
                    "INSERT OR REPLACE INTO metric_info VALUES (?, ?, ?, ?, ?, ?)",
                    (r.metric, r.group, r.display, higher, int(r.per_decoding), r.format),
                )

    def record_provenance(self, cell_id: str, facts: dict[str, str]) -> None:
        with self.transaction() as c:
            for key, value in facts.items():
                c.execute(
                    "INSERT OR REPLACE INTO cell_provenance VALUES (?, ?, ?)",
                    (cell_id, key, str(value)),
                )

    def record_warnings(self, run_id: str, warnings: list[tuple[str, str, int]]) -> None:
        """The distinct warnings of a run with their counts (replacing earlier counts)."""
        with self.transaction() as c:
            for category, message, count in warnings:
                c.execute(
                    "INSERT OR REPLACE INTO run_warnings VALUES (?, ?, ?, ?)",
                    (run_id, category, message, count),
                )

    # cells
    def register_cell(
        self, cell_id: str, config: dict, corpus: str, objective: str, seed: int
    ) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO cells (id, config, corpus, objective, seed, status) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                (cell_id, json.dumps(config, sort_keys=True), corpus, objective, seed),
            )

    def claim(self, cell_id: str, worker: str, retry_failed: bool = False) -> bool:
        """Mark a cell running for `worker` unless it is done, failed (unless retried) or
        running under a live claim. True when this worker got it."""
        with self.transaction() as c:
            row = c.execute(
                "SELECT status, claimed_by, heartbeat FROM cells WHERE id = ?", (cell_id,)
            ).fetchone()
            if row is None or row["status"] == "done":
                return False
            if row["status"] == "failed" and not retry_failed:
                return False
            live = row["heartbeat"] is not None and time.time() - row["heartbeat"] < STALE_SECONDS
            live = live and not claim_is_dead(row["claimed_by"])
            if row["status"] == "running" and row["claimed_by"] != worker and live:
                return False
            c.execute(
                "UPDATE cells SET status = 'running', claimed_by = ?, heartbeat = ?, "
                "started_at = COALESCE(started_at, ?), error = NULL WHERE id = ?",
                (worker, time.time(), time.time(), cell_id),
            )
            return True

    def heartbeat(self, cell_id: str, worker: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE cells SET heartbeat = ? WHERE id = ? AND claimed_by = ?",
                (time.time(), cell_id, worker),
            )

    def release(self, cell_id: str) -> None:
        """Give a claimed cell back unfinished (the runner was interrupted)."""
        self._make_pending(cell_id, "running")

    def reopen(self, cell_id: str) -> None:
        """Make a finished cell pending again (its evaluation is to be redone)."""
        self._make_pending(cell_id, "done")

    def _make_pending(self, cell_id: str, status: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE cells SET status = 'pending', claimed_by = NULL, heartbeat = NULL "
                "WHERE id = ? AND status = ?",
                (cell_id, status),
            )

    def finish_cell(self, cell_id: str, run_id: str, train_seconds: float | None) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE cells SET status = 'done', finished_at = ?, run_id = ?, "
                "train_seconds = COALESCE(?, train_seconds), claimed_by = NULL WHERE id = ?",
                (time.time(), run_id, train_seconds, cell_id),
            )

    def fail_cell(self, cell_id: str, run_id: str, error: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE cells SET status = 'failed', finished_at = ?, run_id = ?, error = ?, "
                "claimed_by = NULL WHERE id = ?",
                (time.time(), run_id, error, cell_id),
            )

    def cell_status(self, cell_id: str) -> str | None:
        row = self.conn.execute("SELECT status FROM cells WHERE id = ?", (cell_id,)).fetchone()
        return None if row is None else row["status"]

    def drop_steps(self, cell_id: str, names: list[str]) -> None:
        """Forget finished steps of a cell (their metric rows and artifacts too), so that a
        rerun does them again; `train` takes every step of the cell with it."""
        with self.transaction() as c:
            if "train" in names:
                for table in _CELL_TABLES:
                    c.execute(f"DELETE FROM {table} WHERE cell_id = ?", (cell_id,))
                return
            for name in names:
                decoding = (
                    name.split(":")[1]
                    if name.startswith("decode:")
                    else ""
                    if name.startswith("model-metrics:")
                    else None
                )
                c.execute("DELETE FROM steps WHERE cell_id = ? AND name = ?", (cell_id, name))
                if decoding is not None:
                    for table in ("metrics", "artifacts", "replicates"):
                        c.execute(
                            f"DELETE FROM {table} WHERE cell_id = ? AND decoding = ?",
                            (cell_id, decoding),
                        )

    def finished_steps(self, cell_id: str) -> list[str]:
        return [
            r[0] for r in self.conn.execute("SELECT name FROM steps WHERE cell_id = ?", (cell_id,))
        ]

    def artifacts_of(self, cell_id: str) -> list[tuple[str, str, str]]:
        """(decoding, kind, path relative to the directory) of a cell's artifacts."""
        return [
            tuple(r)
            for r in self.conn.execute(
                "SELECT decoding, kind, path FROM artifacts WHERE cell_id = ?", (cell_id,)
            )
        ]

    # steps, metrics and artifacts
    def step_done(self, cell_id: str, name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM steps WHERE cell_id = ? AND name = ?", (cell_id, name)
        ).fetchone()
        return row is not None

    def record_step(
        self,
        cell_id: str,
        name: str,
        metrics: list[MetricRow] = (),
        fingerprints: list[FingerprintRow] = (),
        artifacts: dict[tuple[str, str], str] | None = None,
        train_seconds: float | None = None,
        compute: dict[str, float] | None = None,
    ) -> None:
        """Write a finished step with all its rows in one transaction: all or nothing."""
        with self.transaction() as c:
            for key, value in (compute or {}).items():
                c.execute(
                    "INSERT OR REPLACE INTO cell_compute VALUES (?, ?, ?)", (cell_id, key, value)
                )
            cell = c.execute(
                "SELECT corpus, objective, seed FROM cells WHERE id = ?", (cell_id,)
            ).fetchone()
            for f in fingerprints:
                c.execute(
                    "INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?, ?)",
                    (f.fingerprint, f.metric, f.version, json.dumps(f.settings, sort_keys=True)),
                )
            for m in metrics:
                c.execute(
                    "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cell_id,
                        cell["corpus"],
                        cell["objective"],
                        cell["seed"],
                        m.decoding,
                        m.metric,
                        m.value,
                        m.fingerprint,
                        m.warning,
                    ),
                )
            for m in metrics:
                if m.replicates is not None:
                    c.execute(
                        "INSERT OR REPLACE INTO replicates VALUES (?, ?, ?, ?)",
                        (cell_id, m.decoding, m.metric, json.dumps(list(m.replicates))),
                    )
            for (decoding, kind), path in (artifacts or {}).items():
                c.execute(
                    "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)",
                    (cell_id, decoding, kind, path),
                )
            if train_seconds is not None:
                c.execute(
                    "UPDATE cells SET train_seconds = ? WHERE id = ?", (train_seconds, cell_id)
                )
            c.execute("INSERT OR REPLACE INTO steps VALUES (?, ?, ?)", (cell_id, name, time.time()))
            c.execute("UPDATE cells SET heartbeat = ? WHERE id = ?", (time.time(), cell_id))


# The tables whose rows belong to one cell, by `cell_id`.
_CELL_TABLES = (
    "steps",
    "metrics",
    "artifacts",
    "cell_provenance",
    "cell_compute",
    "replicates",
)


def merge_file(db: ResultsDB, source: Path, source_dir: Path | None = None) -> None:
    """Merge the rows of one results file into `db` (see `merge`). `source_dir`: the results
    directory the file belongs to, whose cell directories are copied where they differ from
    `db`'s; None for a cell's own result file, whose directory is already in place."""
    db.conn.execute("ATTACH DATABASE ? AS src", (str(source),))
    try:
        # A cell's rows and files all come from one attempt. A cell finished in the source
        # replaces an unfinished one here, files first (a merge killed in between is redone);
        # any other cell already here keeps its own rows, and gets none of the source's.
        replaced = [
            row[0]
            for row in db.conn.execute(
                "SELECT id FROM main.cells WHERE status != 'done' AND id IN "
                "(SELECT id FROM src.cells WHERE status = 'done')"
            )
        ]
        if source_dir is not None:
            for cell_id in replaced:
                target = db.directory / "cells" / cell_id
                shutil.rmtree(target, ignore_errors=True)
                if (source_dir / "cells" / cell_id).is_dir():
                    shutil.copytree(source_dir / "cells" / cell_id, target)
        with db.transaction() as c:
            present = {
                row[0]
                for row in c.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")
            }  # a schema-1 source lacks the tables added since
            for cell_id in replaced:
                for table in _CELL_TABLES:
                    c.execute(f"DELETE FROM main.{table} WHERE cell_id = ?", (cell_id,))
                c.execute("DELETE FROM main.cells WHERE id = ?", (cell_id,))
            for table in _CELL_TABLES:
                if table not in present:
                    continue
                c.execute(
                    f"INSERT OR IGNORE INTO main.{table} SELECT * FROM src.{table} "
                    "WHERE cell_id NOT IN (SELECT id FROM main.cells)"
                )
            for table in ("runs", "cells", "fingerprints", "metric_info", "run_warnings"):
                if table in present:
                    c.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM src.{table}")
    finally:
        db.conn.execute("DETACH DATABASE src")


def merge(destination: str | Path, sources: list[str | Path]) -> ResultsDB:
    """Copy the rows and cell artifacts of other results directories into `destination`.

    Idempotent: a cell already there keeps its rows and files, unless it is unfinished and the
    source finished it: then the source's cell replaces it whole (rows and directory). Cell
    directories already there are not copied again.
    """
    db = ResultsDB(destination)
    for source in sources:
        source = Path(source)
        if source.resolve() == db.directory.resolve():
            continue
        if not (source / "results.sqlite").exists():
            raise FileNotFoundError(f"{source} is not a results directory (no results.sqlite)")
        merge_file(db, source / "results.sqlite", source)
        for cell_dir in sorted((source / "cells").glob("*")):
            target = db.directory / "cells" / cell_dir.name
            if not target.exists():
                shutil.copytree(cell_dir, target)
    return db
