"""A damaged results directory is caught, not crashed on: a cut-short results.sqlite, a missing
model.ckpt behind a finished training step, a samples file cut mid-line, and a checkpoint that
holds pickled code. Each gives an error naming the file and what to do, and no other cell's
results are touched."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from tiny import write_tiny_corpus

from beyondmle.cli import main
from beyondmle.reports import build_report
from beyondmle.reports.render import md_escape
from beyondmle.runner import run_spec
from beyondmle.spec import parse_spec
from beyondmle.training import UnsafeCheckpointError, load_model

SPEC = """
[benchmark]
name = "damage"
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
[training]
budget_tokens = 1024
batch_size = 4
precision = "32-true"
accelerator = "cpu"
[[objective]]
name = "mle"
[decoding]
greedy = true
temperature = [1.0]
[evaluation]
num_samples = 8
prompt_tokens = 4
continuation_tokens = 8
self_bleu_samples = 8
batch_size = 8
metrics = ["perplexity", "distinct"]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A spec and a finished results directory of it (two cells), copied for each test."""
    d = tmp_path_factory.mktemp("damage")
    write_tiny_corpus(d)
    spec = d / "spec.toml"
    spec.write_text(SPEC.format(corpus=d / "corpus.txt", cache=d / "cache"), encoding="utf-8")
    out = d / "out"
    summary = run_spec(parse_spec(spec), out)
    assert len(summary.done) == 2
    return spec, out


@pytest.fixture
def copy(finished, tmp_path) -> tuple[Path, Path]:
    spec, out = finished
    target = tmp_path / "out"
    shutil.copytree(out, target)
    return spec, target


def rows(out: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(out / "results.sqlite")
    result: dict[str, list[tuple]] = {}
    for cell_id, decoding, metric, value in conn.execute(
        "SELECT cell_id, decoding, metric, value FROM metrics ORDER BY 1, 2, 3"
    ):
        result.setdefault(cell_id, []).append((decoding, metric, value))
    conn.close()
    return result


def cells(out: Path) -> dict[str, tuple[str, str | None]]:
    conn = sqlite3.connect(out / "results.sqlite")
    result = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, status, error FROM cells")}
    conn.close()
    return result


def test_a_cut_short_database_is_refused_naming_the_file(copy, capsys) -> None:
    spec, out = copy
    db = out / "results.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    assert main(["run", str(spec), "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert f"error: {db} cannot be read as a results database" in err
    assert "move it aside and run the same command again" in err
    assert db.read_bytes() == data[: len(data) // 3]  # nothing was written


def test_a_database_moved_aside_is_rebuilt_without_retraining(copy) -> None:
    spec, out = copy
    before = rows(out)
    (out / "results.sqlite").rename(out / "results.damaged")
    for extra in out.glob("results.sqlite-*"):
        extra.unlink()
    summary = run_spec(parse_spec(spec), out)
    assert len(summary.done) == 2
    conn = sqlite3.connect(out / "results.sqlite")
    trained = conn.execute("SELECT COUNT(*) FROM cells WHERE train_seconds IS NOT NULL").fetchone()
    conn.close()
    assert trained[0] == 0, "a cell with a whole model.ckpt was trained again"
    assert rows(out) == before


def test_a_missing_checkpoint_fails_only_its_cell_until_retried(copy) -> None:
    spec, out = copy
    before = rows(out)
    first, second = sorted(before)
    conn = sqlite3.connect(out / "results.sqlite")  # the second cell's evaluation is unfinished
    conn.execute("DELETE FROM steps WHERE cell_id = ? AND name LIKE 'decode:%'", (second,))
    conn.execute("UPDATE cells SET status = 'pending' WHERE id = ?", (second,))
    conn.commit()
    conn.close()
    checkpoint = out / "cells" / second / "model.ckpt"
    checkpoint.unlink()

    summary = run_spec(parse_spec(spec), out)

    status = cells(out)
    assert status[first] == ("done", None)
    assert status[second][0] == "failed"
    assert f"{checkpoint} is missing" in status[second][1]
    assert "--retry-failed (it trains it again)" in status[second][1]
    assert sorted(summary.skipped) == [first, second]
    assert rows(out)[first] == before[first]

    summary = run_spec(parse_spec(spec), out, retry_failed=True)
    assert summary.done == [second]
    assert checkpoint.is_file()
    assert {k: [r[:2] for r in v] for k, v in rows(out).items()} == {
        k: [r[:2] for r in v] for k, v in before.items()
    }
    assert rows(out)[first] == before[first]


def test_a_samples_file_cut_mid_line_is_named_and_written_again(copy) -> None:
    spec, out = copy
    before = rows(out)
    first, second = sorted(before)
    samples = out / "cells" / second / "samples" / "greedy.jsonl"
    text = samples.read_text()
    samples.write_text(text[: text.index("\n", len(text) // 2) - 5])  # cut inside a record

    build_report(out)  # the report names the damage instead of crashing
    report = (out / "report" / "report.md").read_text()
    assert md_escape(f"{samples}: line") in report and "is not a whole JSON record" in report

    run_spec(parse_spec(spec), out)
    status = cells(out)
    assert status[first] == ("done", None)
    assert status[second][0] == "failed"
    assert f"{samples} is missing or cut short" in status[second][1]
    assert "it writes those samples again" in status[second][1]

    run_spec(parse_spec(spec), out, retry_failed=True)
    assert cells(out)[second] == ("done", None)
    assert samples.read_text().count("\n") == 8
    assert rows(out) == before  # the same samples and metrics again: the decoding is seeded


class Pwned:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / ".pwned",))


def test_a_checkpoint_holding_a_pickled_object_is_refused(copy, tmp_path, capsys) -> None:
    spec, out = copy
    first, second = sorted(rows(out))
    marker = Path(__file__).parent / ".pwned"
    marker.unlink(missing_ok=True)
    good = torch.load(out / "cells" / second / "model.ckpt", weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({**good, "payload": Pwned()}, evil)

    with pytest.raises(UnsafeCheckpointError, match=f"checkpoint {evil} was refused"):
        load_model(evil)
    assert main(["generate", str(evil), "--prompt", "w1 w2"]) == 2
    assert f"error: checkpoint {evil} was refused" in capsys.readouterr().err

    # Planted in a results directory: the cell fails with the message; nothing runs.
    shutil.copy(evil, out / "cells" / second / "model.ckpt")
    conn = sqlite3.connect(out / "results.sqlite")
    conn.execute("DELETE FROM steps WHERE cell_id = ? AND name LIKE 'decode:%'", (second,))
    conn.execute("UPDATE cells SET status = 'pending' WHERE id = ?", (second,))
    conn.commit()
    conn.close()
    run_spec(parse_spec(spec), out)
    status = cells(out)
    assert status[second][0] == "failed" and "was refused" in status[second][1]
    assert status[first] == ("done", None)
    assert not marker.exists(), "loading the planted checkpoint ran its code"
