"""The smoke matrices, as CI runs them: every registered objective trains on a tiny model without
NaNs, is evaluated with every metric, and its checkpoint reloads and generates; the report
builds from the results. smoke.toml trains from scratch; smoke-rlhf.toml holds the objectives
that need a reference policy and a reward model, so it runs the fine-tuning regime."""

import math
import sqlite3
from pathlib import Path

import pytest
import torch

from beyondmle.api import available_objectives
from beyondmle.cells import expand
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.reports import build_report
from beyondmle.runner import run_spec
from beyondmle.spec import parse_spec
from beyondmle.training import load_model

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SMOKES = (BENCHMARKS / "smoke.toml", BENCHMARKS / "smoke-rlhf.toml")


@pytest.fixture(scope="module", params=SMOKES, ids=lambda path: path.stem)
def smoke_run(request, tmp_path_factory) -> tuple[Path, list]:
    spec = parse_spec(request.param)
    out = tmp_path_factory.mktemp(request.param.stem)
    summary = run_spec(spec, out)
    assert not summary.failed, summary.failed
    return out, [cell for cell in expand(spec) if cell.role != "reward"]


@pytest.mark.slow
def test_the_smoke_specs_cover_every_registered_objective() -> None:
    names = {objective.name for smoke in SMOKES for objective in parse_spec(smoke).objectives}
    assert names == set(available_objectives())


@pytest.mark.slow
def test_every_objective_trains_and_is_scored_without_nans(smoke_run) -> None:
    out, cells = smoke_run
    with sqlite3.connect(out / "results.sqlite") as db:
        status = dict(db.execute("SELECT id, status FROM cells"))
        rows = db.execute("SELECT objective, decoding, metric, value FROM metrics").fetchall()
    assert set(status.values()) == {"done"}
    assert status.keys() >= {cell.id for cell in cells}
    for cell in cells:
        losses = (out / "cells" / cell.id / "logs" / "metrics.csv").read_text()
        assert "nan" not in losses.lower(), cell.describe()
    metrics = {(objective, decoding, metric): value for objective, decoding, metric, value in rows}
    for cell in cells:
        label = cell.objective.label
        for name in ("ppl_test", "bpb_test", "rep"):
            assert math.isfinite(metrics[(label, "", name)]), (label, name)
        for decoding in ("greedy", "top_p=0.9"):
            for name in ("mauve", "fed", "distinct_4", "self_bleu_4", "seq_rep_4"):
                assert math.isfinite(metrics[(label, decoding, name)]), (label, decoding, name)


@pytest.mark.slow
def test_every_checkpoint_reloads_and_generates(smoke_run) -> None:
    out, cells = smoke_run
    for cell in cells:
        model, tokenizer, hparams = load_model(out / "cells" / cell.id / "model.ckpt")
        assert hparams["objective"] == cell.objective.name
        prompt = torch.tensor([tokenizer.encode("the company said")])
        new = generate(
            model, prompt, 5, DecodingConfig(top_p=0.9), generator=torch.Generator().manual_seed(0)
        )[0]
        assert len(new) == 5
        assert isinstance(tokenizer.decode(new), str)


@pytest.mark.slow
def test_report_builds_from_the_smoke_results(smoke_run) -> None:
    out, cells = smoke_run
    index = build_report(out)
    html = index.read_text()
    for cell in cells:
        assert cell.objective.label in html
    assert (index.parent / "report.md").exists()
