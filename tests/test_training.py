"""End to end on a tiny budget: a seed fixes every metric, a checkpoint reloads and generates
through the CLI, and `beyondmle list` shows the plugins."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
import torch

from beyondmle.api import available_corpora, available_objectives
from beyondmle.cli import main
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.runner import run_spec
from beyondmle.spec import parse_spec
from beyondmle.training import load_model

SPEC = """
[benchmark]
name = "tiny"
seeds = [0]

[[corpus]]
{corpus}

[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
dropout = 0.1

[training]
budget_tokens = 2000
batch_size = 4
precision = "{precision}"
accelerator = "cpu"
val_every_steps = 8
checkpoint_every_steps = 8

[[objective]]
name = "mle"

[decoding]
greedy = true
top_p = [0.9]

[evaluation]
prompt_tokens = 8
continuation_tokens = 16
num_samples = 8
self_bleu_samples = 8
eval_stride = 32
batch_size = 4  # small batches of 10k-word logits are several times faster on CPU
metrics = ["perplexity", "continuation", "repetition", "distinct", "self_bleu", "seq_rep"]
"""

METRIC_NAMES = {
    "": {
        *(f"{m}_{s}" for m in ("ppl", "ppl_word", "ppl_char", "bpb") for s in ("valid", "test")),
        "nll_continuation",
        "rep",
        "wrep",
        "uniq",
    },
    "greedy": {"distinct_1", "distinct_2", "distinct_3", "distinct_4", "self_bleu_4", "seq_rep_4"},
}
METRIC_NAMES["top_p=0.9"] = METRIC_NAMES["greedy"]


def run_twice(root: Path, corpus: str, precision: str) -> tuple[Path, Path]:
    spec_path = root / "spec.toml"
    spec_path.write_text(SPEC.format(corpus=corpus, precision=precision))
    outs = (root / "first", root / "second")
    for out in outs:
        summary = run_spec(parse_spec(spec_path), out)
        assert summary.failed == {}
        assert len(summary.done) == 1
    return outs


def metric_rows(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as db:
        return db.execute(
            "SELECT cell_id, decoding, metric, value, fingerprint, warning FROM metrics "
            "ORDER BY cell_id, decoding, metric"
        ).fetchall()


def cell_dir(out: Path) -> Path:
    (cell,) = (out / "cells").iterdir()
    return cell


@pytest.fixture(scope="module")
def ptb_runs(tmp_path_factory) -> tuple[Path, Path]:
    return run_twice(tmp_path_factory.mktemp("ptb"), 'name = "ptb"', "32-true")


def test_same_seed_gives_the_same_metrics_twice(ptb_runs):
    first, second = (metric_rows(out) for out in ptb_runs)
    by_decoding: dict[str, set[str]] = {}
    for _, decoding, metric, value, _, _ in first:
        by_decoding.setdefault(decoding, set()).add(metric)
        assert value is not None
    assert by_decoding == METRIC_NAMES
    assert first == second  # every value exactly equal, with its fingerprint


def test_same_seed_gives_the_same_weights_and_samples_twice(ptb_runs):
    cells = [cell_dir(out) for out in ptb_runs]
    assert cells[0].name == cells[1].name  # the same cell id
    models = [load_model(cell / "model.ckpt")[0] for cell in cells]
    for (name, a), (_, b) in zip(
        models[0].state_dict().items(), models[1].state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    for sample_file in ("greedy.jsonl", "top_p-0.9.jsonl"):
        texts = [(cell / "samples" / sample_file).read_text() for cell in cells]
        assert texts[0] == texts[1]
        assert len(texts[0].splitlines()) == 8


def test_training_consumes_the_token_budget(ptb_runs):
    _, _, hparams = load_model(cell_dir(ptb_runs[0]) / "model.ckpt")
    ckpt = torch.load(cell_dir(ptb_runs[0]) / "model.ckpt", weights_only=False)
    # 2,000 tokens at 4 x 32 tokens a step: 15 steps.
    assert int(ckpt["state_dict"]["steps_done"]) == 15
    assert hparams["objective"] == "mle"


def test_checkpoint_reloads_with_its_tokenizer(ptb_runs):
    model, tokenizer, hparams = load_model(cell_dir(ptb_runs[0]) / "model.ckpt")
    assert not model.training
    assert model.config.vocab_size == tokenizer.vocab_size == 10_003
    assert (model.config.block_size, model.config.n_embd, model.config.n_layer) == (32, 16, 1)
    assert hparams["corpus"] == {"name": "ptb"}
    assert tokenizer.decode(tokenizer.encode("the company")) == "the company"


def test_cli_generate_continues_a_prompt_from_a_checkpoint(ptb_runs, capsys):
    checkpoint = cell_dir(ptb_runs[0]) / "model.ckpt"
    args = ["generate", str(checkpoint), "--prompt", "the company", "--max-new-tokens", "6"]
    assert main([*args, "--greedy"]) == 0
    out = capsys.readouterr().out
    # The CLI's greedy continuation is the model's own (<eos> decodes to a newline).
    model, tokenizer, _ = load_model(checkpoint)
    ids = torch.tensor([tokenizer.encode("the company")])
    new = generate(model, ids, 6, DecodingConfig(greedy=True))[0]
    assert len(new) == 6
    assert out == f"the company {tokenizer.decode(new)}\n"
    # Sampling: --num continuations, reproducible with --seed.
    sample = [*args, "--num", "2", "--top-p", "0.9", "--seed", "3"]
    assert main(sample) == 0
    sampled = capsys.readouterr().out
    assert main(sample) == 0
    assert capsys.readouterr().out == sampled
    assert sampled.startswith("the company ")
    assert sampled.count("the company ") == 2
    assert sampled != out


def test_cli_list_prints_every_objective_and_corpus(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert set(available_objectives()) <= listed
    assert set(available_corpora()) == {"oracle", "peoples_daily", "ptb", "text"}
    assert {"oracle", "peoples_daily", "ptb", "text"} <= listed
    assert out.index("objectives:") < out.index("corpora:") < out.index("metrics:")


def test_bf16_mixed_training_is_deterministic_too(tmp_path):
    # A tiny text corpus keeps the evaluation cheap: bf16 autocast on CPU is slow.
    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "rug", "and", "then"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) for _ in range(300)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    corpus = (
        f'name = "text"\npaths = ["{tmp_path / "corpus.txt"}"]\nvocab_size = 300\n'
        f'cache_dir = "{tmp_path / "cache"}"'
    )
    first, second = run_twice(tmp_path, corpus, "bf16-mixed")
    rows = metric_rows(first)
    assert {(d, m) for _, d, m, *_ in rows} == {
        (d, m) for d, names in METRIC_NAMES.items() for m in names
    }
    assert rows == metric_rows(second)
    ckpt = torch.load(cell_dir(first) / "model.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["training"]["precision"] == "bf16-mixed"
    assert int(ckpt["state_dict"]["steps_done"]) == 15
