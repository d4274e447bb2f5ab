"""The results database on its own: exclusive claims with stale-claim takeover, all-or-nothing
steps, and an idempotent merge in which a finished cell wins over an unfinished one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from beyondmle import results
from beyondmle.results import FingerprintRow, MetricRow, ResultsDB, merge

TABLES = ("runs", "cells", "steps", "metrics", "fingerprints", "artifacts")


@pytest.fixture
def db(tmp_path):
    db = ResultsDB(tmp_path / "out")
    db.register_cell("c1", {"seed": 0}, "text", "mle", 0)
    yield db
    db.close()


def _cell(db: ResultsDB, cell_id: str) -> sqlite3.Row:
    return db.conn.execute("SELECT * FROM cells WHERE id = ?", (cell_id,)).fetchone()


def _counts(db: ResultsDB) -> dict[str, int]:
    return {t: db.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def test_schema_and_wal(db):
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert _cell(db, "c1")["status"] == "pending"
    # Registering again (a re-run) keeps the existing row and its status.
    db.claim("c1", "w1")
    db.register_cell("c1", {"seed": 0}, "text", "mle", 0)
    assert _cell(db, "c1")["status"] == "running"


def test_claim_is_exclusive_until_the_claim_goes_stale(db, tmp_path, monkeypatch):
    other = ResultsDB(tmp_path / "out")  # a second runner on the same directory
    try:
        assert db.claim("c1", "w1")
        assert not other.claim("c1", "w2"), "a live claim was taken over"
        assert _cell(db, "c1")["claimed_by"] == "w1"
        assert db.claim("c1", "w1"), "the claiming worker may claim again"

        # The heartbeat keeps the claim alive ...
        now = [results.time.time()]
        monkeypatch.setattr(results.time, "time", lambda: now[0])
        now[0] += results.STALE_SECONDS - 1
        db.heartbeat("c1", "w1")
        now[0] += results.STALE_SECONDS - 1
        assert not other.claim("c1", "w2")
        # ... until it is older than STALE_SECONDS: the runner is taken to be dead.
        now[0] += 2
        assert other.claim("c1", "w2")
        row = _cell(db, "c1")
        assert (row["status"], row["claimed_by"]) == ("running", "w2")
        # The dead runner's heartbeat no longer touches the cell, nor can it take it back.
        heartbeat = row["heartbeat"]
        now[0] += 1
        db.heartbeat("c1", "w1")
        assert _cell(db, "c1")["heartbeat"] == heartbeat
        assert not db.claim("c1", "w1")
    finally:
        other.close()


def test_claim_without_a_heartbeat_is_stale(db):
    db.claim("c1", "w1")
    db.conn.execute("UPDATE cells SET heartbeat = NULL WHERE id = 'c1'")
    assert db.claim("c1", "w2")


def test_claim_respects_done_failed_and_release(db):
    assert not db.claim("missing", "w1")
    db.claim("c1", "w1")
    db.release("c1")
    row = _cell(db, "c1")
    assert (row["status"], row["claimed_by"], row["heartbeat"]) == ("pending", None, None)
    assert db.claim("c1", "w2"), "a released cell is free for anyone"

    db.fail_cell("c1", "run-1", "boom")
    assert (_cell(db, "c1")["status"], _cell(db, "c1")["error"]) == ("failed", "boom")
    assert not db.claim("c1", "w3")
    assert db.claim("c1", "w3", retry_failed=True)
    assert (_cell(db, "c1")["status"], _cell(db, "c1")["error"]) == ("running", None)

    db.finish_cell("c1", "run-2", 1.5)
    row = _cell(db, "c1")
    assert (row["status"], row["claimed_by"], row["train_seconds"]) == ("done", None, 1.5)
    assert not db.claim("c1", "w4")
    assert not db.claim("c1", "w4", retry_failed=True)
    db.release("c1")  # releasing only ever touches running cells
    assert _cell(db, "c1")["status"] == "done"


def test_record_step_writes_everything(db):
    db.claim("c1", "w1")
    db.record_step(
        "c1",
        "decode:greedy",
        [MetricRow("greedy", "distinct_1", 0.5, "fp1"), MetricRow("greedy", "zipf", None, "fp2")],
        [FingerprintRow("fp1", "distinct", "1", {"n": 1})],
        {("greedy", "samples"): "cells/c1/samples/greedy.jsonl"},
        train_seconds=2.0,
    )
    assert db.step_done("c1", "decode:greedy")
    rows = db.conn.execute("SELECT * FROM metrics ORDER BY metric").fetchall()
    assert [(r["corpus"], r["objective"], r["seed"], r["metric"], r["value"]) for r in rows] == [
        ("text", "mle", 0, "distinct_1", 0.5),
        ("text", "mle", 0, "zipf", None),
    ]
    assert _counts(db) | {"runs": 0} == {
        "runs": 0,
        "cells": 1,
        "steps": 1,
        "metrics": 2,
        "fingerprints": 1,
        "artifacts": 1,
    }
    assert _cell(db, "c1")["train_seconds"] == 2.0


def test_record_step_is_all_or_nothing(db):
    db.claim("c1", "w1")
    before = _counts(db)
    with pytest.raises(sqlite3.Error):
        db.record_step(
            "c1",
            "model-metrics",
            [
                MetricRow("", "ppl_valid", 12.0, "fp1"),
                MetricRow("", "ppl_test", object(), "fp1"),  # not storable: fails mid-step
            ],
            [FingerprintRow("fp1", "perplexity", "1", {})],
            {("", "checkpoint"): "cells/c1/model.ckpt"},
            train_seconds=3.0,
        )
    assert _counts(db) == before
    assert not db.step_done("c1", "model-metrics")
    assert _cell(db, "c1")["train_seconds"] is None
    # Another connection sees nothing either, and the failed step left no open transaction.
    other = sqlite3.connect(db.path)
    assert other.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
    other.close()
    assert not db.conn.in_transaction
    db.record_step("c1", "model-metrics", [MetricRow("", "ppl_valid", 12.0, "fp1")])
    assert db.step_done("c1", "model-metrics")


def test_transaction_rolls_back_on_interrupt(db):
    with pytest.raises(KeyboardInterrupt), db.transaction() as c:
        c.execute("UPDATE cells SET status = 'done' WHERE id = 'c1'")
        raise KeyboardInterrupt
    assert _cell(db, "c1")["status"] == "pending"
    assert not db.conn.in_transaction


# merge


def _write_cell(
    directory: Path,
    cell_id: str,
    status: str,
    value: float = 1.0,
    decodings: tuple[str, ...] = ("greedy",),
    run_id: str = "run",
) -> None:
    """A cell as the runner leaves it: a done cell has its train, metrics and decode steps with
    their files; a pending or failed one what it got to."""
    db = ResultsDB(directory)
    if db.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
        db.start_run(run_id, "spec.toml", "", None, {})
    db.register_cell(cell_id, {"id": cell_id}, "text", "mle", 0)
    cell_dir = directory / "cells" / cell_id
    (cell_dir / "logs").mkdir(parents=True, exist_ok=True)
    (cell_dir / "model.ckpt").write_text(f"model {value}")
    (cell_dir / "logs" / "metrics.csv").write_text(f"step\n{value}\n")
    db.record_step(
        cell_id,
        "train",
        artifacts={
            ("", "checkpoint"): f"cells/{cell_id}/model.ckpt",
            ("", "train_log"): f"cells/{cell_id}/logs/metrics.csv",
        },
    )
    fp = [FingerprintRow("fp", "perplexity", "1", {})]
    db.record_step(cell_id, "model-metrics", [MetricRow("", "ppl_test", value, "fp")], fp)
    for decoding in decodings:
        relative = f"cells/{cell_id}/samples/{decoding}.jsonl"
        (directory / relative).parent.mkdir(exist_ok=True)
        (directory / relative).write_text(f'{{"value": {value}}}\n')
        db.record_step(
            cell_id,
            f"decode:{decoding}",
            [MetricRow(decoding, "distinct_1", value, "fp")],
            fp,
            {(decoding, "samples"): relative},
        )
    if status == "done":
        db.claim(cell_id, "w")
        db.finish_cell(cell_id, run_id, 1.0)
    elif status == "failed":
        db.claim(cell_id, "w")
        db.fail_cell(cell_id, run_id, "boom")
    db.close()


def _rows(directory: Path, cell_id: str) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(directory / "results.sqlite")
    out = {
        "cells": conn.execute("SELECT status, run_id FROM cells WHERE id = ?", (cell_id,)),
        "steps": conn.execute("SELECT name FROM steps WHERE cell_id = ? ORDER BY 1", (cell_id,)),
        "metrics": conn.execute(
            "SELECT decoding, metric, value FROM metrics WHERE cell_id = ? ORDER BY 1, 2",
            (cell_id,),
        ),
        "artifacts": conn.execute(
            "SELECT decoding, kind, path FROM artifacts WHERE cell_id = ? ORDER BY 1, 2",
            (cell_id,),
        ),
    }
    out = {k: [tuple(r) for r in v] for k, v in out.items()}
    conn.close()
    return out


def _assert_artifacts_exist(directory: Path) -> None:
    conn = sqlite3.connect(directory / "results.sqlite")
    for (path,) in conn.execute("SELECT path FROM artifacts"):
        assert (directory / path).is_file(), path
    conn.close()


def test_merge_is_idempotent_and_copies_cell_directories(tmp_path):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    _write_cell(a, "c1", "done", 1.0, run_id="run-a")
    _write_cell(a, "c2", "failed", 2.0, run_id="run-a")
    _write_cell(b, "c3", "done", 3.0, run_id="run-b")

    db = merge(dest, [a, b])
    first = _counts(db)
    db.close()
    assert first == {
        "runs": 2,
        "cells": 3,
        "steps": 9,
        "metrics": 6,
        "fingerprints": 1,
        "artifacts": 9,
    }
    for cell_id, source in (("c1", a), ("c2", a), ("c3", b)):
        assert _rows(dest, cell_id) == _rows(source, cell_id)
        assert (dest / "cells" / cell_id / "model.ckpt").read_text() == (
            source / "cells" / cell_id / "model.ckpt"
        ).read_text()
    _assert_artifacts_exist(dest)

    for _ in range(2):
        db = merge(dest, [a, b, dest])  # merging again, and into itself, changes nothing
        assert _counts(db) == first
        assert db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    assert sorted(p.name for p in (dest / "cells").iterdir()) == ["c1", "c2", "c3"]


def test_merge_refuses_a_directory_without_results(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a results directory"):
        merge(tmp_path / "dest", [tmp_path / "empty"])


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_merge_done_cell_replaces_an_unfinished_one(tmp_path, status):
    """The destination got part of the way through a cell (another attempt, its own files and
    values); the source finished it. The merged cell is the source's, whole: its status, its
    rows and its files, with nothing left over from the unfinished attempt."""
    source, dest = tmp_path / "source", tmp_path / "dest"
    _write_cell(dest, "c1", status, value=1.0, decodings=("greedy", "top_k-5"), run_id="run-d")
    _write_cell(source, "c1", "done", value=2.0, decodings=("greedy",), run_id="run-s")

    merge(dest, [source]).close()

    assert _rows(dest, "c1") == _rows(source, "c1")
    assert (dest / "cells" / "c1" / "model.ckpt").read_text() == "model 2.0"
    assert (dest / "cells" / "c1" / "samples" / "greedy.jsonl").read_text() == '{"value": 2.0}\n'
    _assert_artifacts_exist(dest)

    # Idempotent, and a later merge of the unfinished attempt does not undo it.
    merge(dest, [source]).close()
    other = tmp_path / "other"
    _write_cell(other, "c1", status, value=3.0, decodings=("greedy", "top_k-5"), run_id="run-o")
    merge(dest, [other]).close()
    assert _rows(dest, "c1") == _rows(source, "c1")
    assert (dest / "cells" / "c1" / "model.ckpt").read_text() == "model 2.0"


def test_merge_keeps_a_done_cell_over_an_unfinished_source(tmp_path):
    source, dest = tmp_path / "source", tmp_path / "dest"
    _write_cell(dest, "c1", "done", value=1.0, run_id="run-d")
    _write_cell(source, "c1", "failed", value=2.0, decodings=("greedy", "top_k-5"))
    expected = _rows(dest, "c1")

    merge(dest, [source]).close()

    assert _rows(dest, "c1") == expected
    assert (dest / "cells" / "c1" / "model.ckpt").read_text() == "model 1.0"
    _assert_artifacts_exist(dest)
