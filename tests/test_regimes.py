"""Two regimes and two budgets. Fine-tuning: a shared MLE base is its own cell, trained once and
evaluated like any other; every objective, MLE included, starts from its weights. Equal
compute: `budget = "flops"` stops each objective at the same FLOPs, however many tokens."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from tiny import write_tiny_corpus

from beyondmle.cells import BASE_LABEL, expand
from beyondmle.runner import run_spec
from beyondmle.spec import SpecError, parse_spec
from beyondmle.training import load_model

SPEC = """
[benchmark]
name = "regime"
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
{training}
batch_size = 4
precision = "32-true"
accelerator = "cpu"
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
metrics = ["perplexity", "distinct"]
"""

FINETUNE = """
[regime]
kind = "finetune"
[base]
budget_tokens = 2048
batch_size = 4
precision = "32-true"
accelerator = "cpu"
"""


@pytest.fixture
def write(tmp_path: Path):
    write_tiny_corpus(tmp_path)

    def spec(regime: str = "", training: str = "budget_tokens = 512") -> Path:
        path = tmp_path / "spec.toml"
        text = SPEC.format(
            corpus=tmp_path / "corpus.txt", cache=tmp_path / "cache", regime=regime,
            training=training,
        )  # fmt: skip
        path.write_text(text)
        return path

    return spec


def test_one_shared_base_is_trained_once_and_every_objective_starts_from_it(write, tmp_path):
    spec = parse_spec(write(FINETUNE))
    cells = expand(spec)
    bases = [c for c in cells if c.role == "base"]
    assert len(bases) == 1 and cells[0] is bases[0]
    assert bases[0].objective.label == BASE_LABEL and bases[0].seed == 0
    assert all(c.base == bases[0] for c in cells[1:]) and len(cells) == 5

    seen = []
    import beyondmle.training as training

    original = training.ObjectiveModule.on_fit_start

    def spy(self):
        original(self)
        seen.append((self.hparams.init_checkpoint, self.model.wte.weight.detach().clone()))

    training.ObjectiveModule.on_fit_start = spy
    try:
        summary = run_spec(spec, tmp_path / "out")
    finally:
        training.ObjectiveModule.on_fit_start = original
    assert len(summary.done) == 5 and not summary.failed
    base_ckpt = tmp_path / "out" / "cells" / bases[0].id / "model.ckpt"
    base_weights = load_model(base_ckpt)[0].wte.weight
    assert seen[0][0] is None  # the base starts from scratch
    starts = seen[1:]
    assert [Path(p) for p, _ in starts] == [base_ckpt] * 4
    assert all(torch.equal(w, base_weights) for _, w in starts)
    conn = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    labels = sorted(r[0] for r in conn.execute("SELECT objective FROM cells"))
    assert labels == sorted([BASE_LABEL, "mle", "mle", "denoising", "denoising"])
    assert (
        conn.execute("SELECT COUNT(*) FROM metrics WHERE objective = ?", (BASE_LABEL,)).fetchone()[
            0
        ]
        > 0
    )


def test_one_base_per_seed_on_request(write):
    spec = parse_spec(
        write(FINETUNE.replace('kind = "finetune"', 'kind = "finetune"\nbase_per_seed = true'))
    )
    bases = [c for c in expand(spec) if c.role == "base"]
    assert sorted(b.seed for b in bases) == [0, 1]


def test_finetune_without_a_base_table_is_refused(write):
    with pytest.raises(SpecError, match=r"\[base\]: expected a table"):
        parse_spec(write('[regime]\nkind = "finetune"'))
    with pytest.raises(SpecError, match=r"\[base\]: expected no table"):
        parse_spec(write("[base]\nbudget_tokens = 10"))


def test_a_flops_budget_stops_every_objective_at_the_same_compute(write, tmp_path):
    spec = parse_spec(write(training='budget = "flops"\nbudget_flops = 2e8\nbudget_tokens = 10'))
    summary = run_spec(spec, tmp_path / "out")
    assert len(summary.done) == 4
    conn = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    rows = conn.execute(
        "SELECT c.objective, k.key, k.value FROM cell_compute k JOIN cells c ON c.id = k.cell_id"
    ).fetchall()
    flops = {(o, v) for o, k, v in rows if k == "train_flops"}
    tokens = {o: v for o, k, v in rows if k == "train_tokens"}
    for _, value in flops:
        assert 2e8 <= value < 2e8 * 1.2  # stopped at the first step past the budget
    assert tokens["denoising"] < tokens["mle"], "denoising's longer rows buy fewer tokens"


def test_a_flops_budget_needs_its_number(write):
    with pytest.raises(SpecError, match="budget_flops: expected a number of FLOPs"):
        parse_spec(write(training='budget = "flops"'))


PRETRAINED = '[regime]\nkind = "finetune"\nbase = "pretrained"'


def test_a_pretrained_base_needs_a_pretrained_model(write):
    with pytest.raises(SpecError, match=r"model\.hf: expected a pretrained model"):
        parse_spec(write(PRETRAINED))


def test_a_pretrained_base_trains_no_base_table_and_serves_every_seed(write):
    with pytest.raises(SpecError) as error:
        parse_spec(write(PRETRAINED + "\nbase_per_seed = true\n[base]\nbudget_tokens = 10"))
    assert r"[base]: expected no table: [regime] base = 'pretrained'" in str(error.value)
    assert "regime.base_per_seed: expected false" in str(error.value)


def test_a_pretrained_base_is_only_for_fine_tuning(write):
    with pytest.raises(SpecError, match=r"regime\.base: expected 'trained' unless kind"):
        parse_spec(write('[regime]\nbase = "pretrained"'))


def test_the_regime_note_names_a_pretrained_base_evaluated_as_loaded():
    import json

    import pandas as pd

    from beyondmle.reports.analysis import regime_note

    base = {"id": "b", "seed": 0}
    cells = pd.DataFrame(
        {
            "id": ["b", "f0", "f1"],
            "seed": [0, 0, 1],
            "config": [
                json.dumps({"role": "pretrained"}),
                json.dumps({"base": base}),
                json.dumps({"base": base}),
            ],
        }
    )
    note = regime_note(cells)
    assert "pretrained model (cell b), evaluated as loaded" in note
    cells.loc[0, "config"] = json.dumps({"role": "base"})
    assert "one shared MLE base (cell b)" in regime_note(cells)
