"""`beyondmle run SPEC --dry-run`: the plan (cells, their status, steps, tokens, FLOPs and a
time estimate from a probe on this machine) without training or writing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import write_tiny_corpus

from beyondmle.cli import main
from beyondmle.plan import make_plan
from beyondmle.runner import run_spec
from beyondmle.spec import parse_spec

SPEC = """
[benchmark]
name = "plan"
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
[training]
budget_tokens = 1024
batch_size = 4
precision = "32-true"
accelerator = "cpu"
[[objective]]
name = "mle"
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


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    write_tiny_corpus(tmp_path)
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(corpus=tmp_path / "corpus.txt", cache=tmp_path / "cache"))
    return path


def test_the_plan_counts_steps_tokens_and_the_flops_of_mle_by_hand(spec_path, tmp_path) -> None:
    spec = parse_spec(spec_path)
    plans = make_plan(spec, tmp_path / "out", report=lambda _: None)
    assert [p.status for p in plans] == ["new", "new"]
    assert [p.steps for p in plans] == [8, 8]  # 1024 tokens / (batch 4 x block 32)
    assert [p.tokens for p in plans] == [1024, 1024]
    corpus_vocab = 300  # the byte-level BPE's, as the spec asks
    B, T, d, layers = 4, 32, 16, 1
    forward_blocks = layers * B * T * (24 * d * d + 4 * d * T)
    forward_loss = 2 * B * T * d * corpus_vocab
    per_step = 3 * (forward_blocks + forward_loss)  # forward, then backward = 2 x forward
    assert plans[0].flops == pytest.approx(8 * per_step, rel=0.02)
    assert all(p.train_seconds > 0 and p.eval_seconds > 0 for p in plans)
    assert not (tmp_path / "out").exists(), "a dry run wrote a results directory"


def test_the_plan_shows_what_is_already_done(spec_path, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    spec = parse_spec(spec_path)
    run_spec(spec, out)
    before = (out / "results.sqlite").read_bytes()
    assert main(["run", str(spec_path), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "cells: 2 (2 done, 0 to run)" in printed
    assert printed.count(" done ") == 2
    assert "estimated time for the 0 cells to run" in printed
    assert (out / "results.sqlite").read_bytes() == before


def test_the_evaluation_estimate_scales_one_batch_of_windows_to_every_perplexity_split(
    spec_path, monkeypatch
) -> None:
    """Each timed stretch reads as one second, so the estimate is the number of positions the
    perplexity pass scores over the timed batch's: windows of 32 advancing by the default
    stride 16 over valid and test, counted here by hand."""
    import itertools
    import math
    from dataclasses import replace

    import beyondmle.plan as plan
    from beyondmle.hf_model import build_model
    from beyondmle.metrics.likelihood import LIKELIHOOD_BATCH
    from beyondmle.model import ModelConfig
    from beyondmle.runner import load_corpora

    spec = parse_spec(spec_path)
    (corpus,) = load_corpora(spec).values()
    model = build_model(ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **spec.model))
    clock = itertools.count()
    monkeypatch.setattr(plan.time, "perf_counter", lambda: float(next(clock)))
    windows = 0
    for split in ("valid", "test"):
        n = len(corpus.stream(split))  # window k holds tokens 16k .. 16k + 32; the last, n - 1
        windows += 1 + max(0, math.ceil((n - 33) / 16))
    expected = windows * 32 / (LIKELIHOOD_BATCH * 32)
    assert plan.probe_likelihood(spec, corpus, model) == pytest.approx(expected)
    no_likelihood = replace(spec, evaluation=replace(spec.evaluation, metrics=["distinct"]))
    assert plan.probe_likelihood(no_likelihood, corpus, model) == 0.0
