"""A Hugging Face model as the shared model in a real matrix: tiny, randomly initialised GPT-2
and Llama models with their own tokenizer, saved to disk here (nothing is downloaded), train a
few steps under every from-scratch objective, are scored with every metric, generate, and reload
from their checkpoints; bad `[model] hf` input is refused before anything trains."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
import torch
from test_hf_model import save_tokenizer, tiny_gpt2, tiny_llama
from test_rlhf import FINETUNE, OBJECTIVES, PREFERENCES
from tiny import write_tiny_corpus
from transformers import AutoModelForCausalLM

from beyondmle.cells import expand
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.hf_model import HFCausalLM
from beyondmle.runner import run_spec
from beyondmle.spec import SpecError, parse_spec
from beyondmle.tokenization import PretrainedTokenizer
from beyondmle.training import load_model

SPEC = """
[benchmark]
name = "hf-{kind}"
seeds = [0]

[[corpus]]
name = "text"
paths = ["{corpus}"]
vocab_size = 300

[model]
hf = "{model}"
block_size = {block}

[training]
budget_tokens = 1_536
batch_size = 4
lr = 1e-3
val_every_steps = 6
checkpoint_every_steps = 6

[[objective]]
name = "mle"

[[objective]]
name = "scheduled_sampling"

[[objective]]
name = "adversarial"
sample_length = 8
collapse_patience = 1000

[[objective]]
name = "denoising"

[[objective]]
name = "unlikelihood"
prefix_len = 8
continuation_len = 8

[decoding]
greedy = true
top_p = [0.9]

[evaluation]
prompt_tokens = 8
continuation_tokens = 8
num_samples = 12
self_bleu_samples = 12
batch_size = 12
metrics = ["perplexity", "distinct", "self_bleu", "seq_rep", "mauve"]
featurizer = "char-tfidf"
"""


def save_model(kind: str, path: Path) -> Path:
    """A tiny random model of `kind` with a tokenizer trained here, as `save_pretrained` saves."""
    save_tokenizer(path)
    vocab = PretrainedTokenizer.from_directory(path).hf.get_vocab_size(with_added_tokens=False)
    torch.manual_seed(0)
    model = {"gpt2": tiny_gpt2, "llama": tiny_llama}[kind]()
    model.resize_token_embeddings(vocab)
    model.config.eos_token_id = model.config.bos_token_id = 0
    model.save_pretrained(path)
    return path


def write_spec(tmp: Path, kind: str, block: int = 32, model: Path | None = None) -> Path:
    model = model or save_model(kind, tmp / f"{kind}-model")
    corpus = write_tiny_corpus(tmp)
    spec = tmp / "spec.toml"
    spec.write_text(SPEC.format(kind=kind, corpus=corpus, model=model, block=block))
    return spec


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_run(request, tmp_path_factory) -> tuple[Path, list, Path]:
    tmp = tmp_path_factory.mktemp(request.param)
    spec = parse_spec(write_spec(tmp, request.param))
    out = tmp / "out"
    summary = run_spec(spec, out)
    assert not summary.failed, summary.failed
    return out, expand(spec), tmp / f"{request.param}-model"


@pytest.mark.slow
def test_every_objective_trains_a_hugging_face_model_and_is_scored(hf_run) -> None:
    out, cells, _ = hf_run
    with sqlite3.connect(out / "results.sqlite") as db:
        status = dict(db.execute("SELECT id, status FROM cells"))
        rows = db.execute("SELECT objective, decoding, metric, value FROM metrics").fetchall()
    assert set(status.values()) == {"done"} and status.keys() == {c.id for c in cells}
    metrics = {(o, d, m): v for o, d, m, v in rows}
    for cell in cells:
        label = cell.objective.label
        assert math.isfinite(metrics[(label, "", "ppl_test")]), label
        assert math.isfinite(metrics[(label, "", "bpb_test")]), label
        for decoding in ("greedy", "top_p=0.9"):
            for name in ("mauve", "distinct_4", "self_bleu_4", "seq_rep_4"):
                assert math.isfinite(metrics[(label, decoding, name)]), (label, decoding, name)


@pytest.mark.slow
def test_a_trained_hugging_face_model_reloads_and_generates(hf_run) -> None:
    out, cells, model_dir = hf_run
    for cell in cells:
        model, tokenizer, _ = load_model(out / "cells" / cell.id / "model.ckpt")
        assert isinstance(model, HFCausalLM)
        assert tokenizer.encode("w1 w2") == PretrainedTokenizer.from_directory(model_dir).encode(
            "w1 w2"
        )
        prompts = torch.tensor([tokenizer.encode("w1 w2 w3")])
        (row,) = generate(model, prompts, 5, DecodingConfig(greedy=True))
        assert len(row) == 5
        exported = AutoModelForCausalLM.from_pretrained(out / "cells" / cell.id / "hf")
        with torch.no_grad():
            torch.testing.assert_close(exported(prompts).logits, model(prompts))


def test_the_dry_run_plans_a_hugging_face_model(tmp_path: Path) -> None:
    from beyondmle.plan import make_plan

    spec = parse_spec(write_spec(tmp_path, "gpt2"))
    plans = make_plan(spec, tmp_path / "out", report=lambda _: None)
    assert plans and all(p.status == "new" and p.eval_seconds > 0 for p in plans)
    assert not (tmp_path / "out").exists(), "a dry run wrote a results directory"


def test_a_model_directory_without_weights_is_refused_before_training(tmp_path: Path) -> None:
    empty = tmp_path / "no-weights"
    save_tokenizer(empty)
    tiny_gpt2().config.save_pretrained(empty)
    with pytest.raises(SpecError, match=r"model\.hf.*weights"):
        parse_spec(write_spec(tmp_path, "gpt2", model=empty))


def test_the_models_window_is_the_specs_block_size(hf_run) -> None:
    out, cells, _ = hf_run
    model, _, _ = load_model(out / "cells" / cells[0].id / "model.ckpt")
    assert model.info.context_length == 32 < model.hf.config.max_position_embeddings


def test_a_context_shorter_than_the_window_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"model\.hf.*context \(48\) holds block_size = 64"):
        parse_spec(write_spec(tmp_path, "gpt2", block=64))


def test_a_pretrained_model_cannot_learn_an_oracle_corpus(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "gpt2")
    oracle = '[[corpus]]\nname = "oracle"\nsequence_length = 16\n'
    text = spec.read_text()
    text = text[: text.index("[[corpus]]")] + oracle + text[text.index("[model]") :]
    spec.write_text(text)
    with pytest.raises(SpecError, match=r"corpus\[0\]\.name: expected a corpus a pretrained"):
        parse_spec(spec)


def test_other_weights_at_the_same_path_make_other_cells(tmp_path: Path) -> None:
    import os

    spec_path = write_spec(tmp_path, "gpt2")
    before = [cell.id for cell in expand(parse_spec(spec_path))]
    (weights,) = (tmp_path / "gpt2-model").glob("*.safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    after = [cell.id for cell in expand(parse_spec(spec_path))]
    assert len(before) == len(after) == 5 and not set(before) & set(after)


def test_evaluate_scores_a_pretrained_model_as_it_is(tmp_path: Path, capsys) -> None:
    from beyondmle.cli import main

    spec = write_spec(tmp_path, "llama")
    assert main(["evaluate", str(tmp_path / "llama-model"), "--spec", str(spec), "--json"]) == 0
    import json

    rows = {(r["decoding"], r["metric"]): r["value"] for r in json.loads(capsys.readouterr().out)}
    assert math.isfinite(rows[("", "ppl_test")]) and math.isfinite(rows[("", "bpb_test")])
    assert ("greedy", "distinct_4") in rows and ("top_p=0.9", "mauve") in rows


@pytest.mark.slow
def test_evaluate_scores_a_trained_cell_from_its_checkpoint(hf_run, capsys) -> None:
    import json

    from beyondmle.cli import main

    out, cells, _ = hf_run
    cell_dir = out / "cells" / cells[0].id
    args = ["evaluate", str(cell_dir), "--json", "--spec", str(out.parent / "spec.toml")]
    assert main(args) == 0
    rows = {r["metric"]: r["value"] for r in json.loads(capsys.readouterr().out)}
    with sqlite3.connect(out / "results.sqlite") as db:
        (stored,) = db.execute(
            "SELECT value FROM metrics WHERE cell_id = ? AND metric = 'ppl_test'", (cells[0].id,)
        ).fetchone()
    assert rows["ppl_test"] == pytest.approx(stored, rel=1e-6)


def pretrained_base_spec(tmp: Path, training: str = "budget_tokens = 1_536") -> Path:
    """The tiny GPT-2 fine-tuned under MLE and unlikelihood from itself as loaded."""
    text = write_spec(tmp, "gpt2").read_text().replace("budget_tokens = 1_536", training)
    start, end = text.index("[[objective]]"), text.index("[decoding]")
    objectives = (
        '[[objective]]\nname = "mle"\n\n'
        '[[objective]]\nname = "unlikelihood"\nprefix_len = 8\ncontinuation_len = 8\n\n'
    )
    regime = '[regime]\nkind = "finetune"\nbase = "pretrained"\n\n'
    (tmp / "spec.toml").write_text(text[:start] + regime + objectives + text[end:])
    return tmp / "spec.toml"


def test_a_pretrained_base_is_evaluated_as_loaded_and_fine_tuned_from(tmp_path: Path) -> None:
    spec = parse_spec(pretrained_base_spec(tmp_path))
    cells = expand(spec)
    assert [c.role for c in cells] == ["pretrained", "train", "train"]
    assert all(c.base == cells[0] for c in cells[1:])
    summary = run_spec(spec, tmp_path / "out")
    assert not summary.failed, summary.failed
    cell_dir = tmp_path / "out" / "cells" / cells[0].id
    assert not (cell_dir / "logs").exists(), "the pretrained base trained"
    base, _, _ = load_model(cell_dir / "model.ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2-model").state_dict()
    kept = base.hf.state_dict()
    assert kept.keys() == loaded.keys()  # the embeddings grown by the corpus's special tokens
    assert all(torch.equal(kept[k][: len(loaded[k])], loaded[k]) for k in loaded)
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as db:
        rows = db.execute("SELECT cell_id, metric, value FROM metrics WHERE decoding = ''")
        ppl = {c: v for c, m, v in rows if m == "ppl_test"}
        computed = dict(db.execute("SELECT cell_id, COUNT(*) FROM cell_compute GROUP BY cell_id"))
    assert set(ppl) == {c.id for c in cells}  # before fine-tuning, and after under each
    assert len({round(v, 6) for v in ppl.values()}) == 3
    assert cells[0].id not in computed and {c.id for c in cells[1:]} <= computed.keys()


def test_a_pretrained_base_grows_the_same_embedding_rows_on_every_run(tmp_path: Path) -> None:
    from beyondmle.runner import keep_pretrained, load_corpora

    spec = parse_spec(pretrained_base_spec(tmp_path))
    base = expand(spec)[0]
    (corpus,) = load_corpora(spec).values()
    saved = []
    for unrelated_seed in (1, 2):  # whatever drew from the global generator before
        torch.manual_seed(unrelated_seed)
        keep_pretrained(base, corpus, tmp_path / str(unrelated_seed))
        saved.append(load_model(tmp_path / str(unrelated_seed) / "model.ckpt")[0].state_dict())
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])


def test_a_pretrained_base_keeps_its_id_when_the_fine_tuning_changes(tmp_path: Path) -> None:
    first = expand(parse_spec(pretrained_base_spec(tmp_path)))
    second = expand(parse_spec(pretrained_base_spec(tmp_path, "budget_tokens = 3_072")))
    assert first[0].id == second[0].id
    assert not {c.id for c in first[1:]} & {c.id for c in second[1:]}


def test_the_dry_run_plans_no_training_for_a_pretrained_base(tmp_path: Path) -> None:
    from beyondmle.plan import make_plan

    plans = make_plan(parse_spec(pretrained_base_spec(tmp_path)), tmp_path / "out", report=print)
    assert [p.cell.role for p in plans] == ["pretrained", "train", "train"]
    assert (plans[0].steps, plans[0].flops, plans[0].train_seconds) == (0, 0.0, 0.0)
    assert all(p.steps > 0 and p.flops > 0 for p in plans[1:])
    assert all(p.eval_seconds > 0 for p in plans)


def test_cells_of_the_shared_gpt_keep_their_ids_and_evaluation_steps() -> None:
    """Ids and step names computed before `[model] hf` existed (commit 1f75074) stay valid, so
    upgrading never retrains or re-evaluates a finished cell."""
    from beyondmle.evaluation import EvaluationConfig

    spec = parse_spec(Path(__file__).parent.parent / "benchmarks" / "oracle-modes.toml")
    assert [c.id for c in expand(spec)][:2] == ["042970e0b9db", "2754800f8195"]
    assert spec.evaluation.fingerprint() == "05b23de2"
    assert EvaluationConfig().fingerprint() == EvaluationConfig(featurizer="minilm").fingerprint()


@pytest.mark.slow
def test_a_hugging_face_model_learns_from_preferences(tmp_path: Path) -> None:
    """The reward model's trunk and every policy method run on a Hugging Face model: the base
    fine-tunes it, a reward model is built on it and reloads as one, and RLOO, PPO and DPO train
    against it and are measured."""
    from beyondmle.reward import REWARD_FILE, load_reward_model

    text = write_spec(tmp_path, "gpt2").read_text()
    start, end = text.index("[[objective]]"), text.index("[decoding]")
    text = text[:start] + FINETUNE + PREFERENCES + OBJECTIVES + "\n" + text[end:]
    text = text.replace('"mauve"]', '"mauve", "reward", "policy_kl", "reward_model"]')
    (tmp_path / "spec.toml").write_text(text)
    spec = parse_spec(tmp_path / "spec.toml")
    summary = run_spec(spec, tmp_path / "out")
    assert not summary.failed, summary.failed
    cells = expand(spec)
    assert [c.role for c in cells] == ["base", "reward", "train", "train", "train", "train"]
    reward = load_reward_model(tmp_path / "out" / "cells" / cells[1].id / REWARD_FILE)
    assert isinstance(reward.trunk, HFCausalLM)
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as db:
        rows = db.execute("SELECT objective, decoding, metric, value FROM metrics")
        values = {(o, d, m): v for o, d, m, v in rows}
    assert 0.0 <= values[("reward-model", "", "reward_accuracy")] <= 1.0
    for cell in cells[2:]:  # MLE's control and the three methods
        label = cell.objective.label
        assert values[(label, "", "kl_k3")] >= 0, label
        assert math.isfinite(values[(label, "top_p=0.9", "proxy_reward")]), label
        policy, _, _ = load_model(tmp_path / "out" / "cells" / cell.id / "model.ckpt")
        assert isinstance(policy, HFCausalLM)
