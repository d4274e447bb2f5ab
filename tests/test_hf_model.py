"""A Hugging Face causal LM behind the model interface: tiny, randomly initialised GPT-2 and
Llama models built here (nothing is downloaded) give the same logits, loss and greedy
continuations through the adapter as through `transformers` itself, and reload from the
Hugging Face directory they save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from beyondmle.api import CausalLM
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.fused_loss import IGNORE
from beyondmle.hf_model import HFCausalLM, HFModelError

VOCAB, CONTEXT = 61, 48


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=CONTEXT, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(params=sorted(BUILDERS))
def model(request) -> HFCausalLM:
    torch.manual_seed(0)
    return HFCausalLM(BUILDERS[request.param]().eval())


def test_the_adapter_implements_the_model_interface(model) -> None:
    assert isinstance(model, CausalLM)
    assert model.info.vocab_size == VOCAB and model.info.context_length == CONTEXT
    assert model.info.width == 32 and model.info.heads == 4


def test_logits_match_the_models_own_forward(model) -> None:
    ids = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.hf(input_ids=ids).logits
        ours = model.logits(model.hidden_states(ids))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_fused_loss_is_the_cross_entropy_of_the_models_logits(model) -> None:
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    targets = torch.roll(ids, -1, dims=1)
    targets[0, :4] = IGNORE
    with torch.no_grad():
        logits = model.hf(input_ids=ids).logits
        expected = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        ours = model.next_token_loss(model.hidden_states(ids), targets)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_fused_loss_trains_the_weights_as_autograd_would(model) -> None:
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    targets = torch.roll(ids, -1, dims=1)
    model.next_token_loss(model.hidden_states(ids), targets).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits = model.hf(input_ids=ids).logits
    F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-5, rtol=1e-4)


def test_one_hot_distributions_embed_as_their_tokens(model) -> None:
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    soft = model.token_embeddings(F.one_hot(ids, VOCAB).float())
    with torch.no_grad():
        torch.testing.assert_close(
            model.hidden_states(embeddings=soft), model.hidden_states(ids), atol=1e-5, rtol=1e-5
        )


def test_cached_greedy_decoding_matches_transformers_generate(model) -> None:
    prompts = torch.randint(1, VOCAB, (4, 6), generator=torch.Generator().manual_seed(5))
    ours = generate(model, prompts, 20, DecodingConfig(greedy=True))
    theirs = model.hf.generate(
        prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=20,
        min_new_tokens=20, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    assert ours == theirs[:, prompts.size(1) :].tolist()
    assert ours == generate(model, prompts, 20, DecodingConfig(greedy=True), use_cache=False)


def test_a_saved_model_reloads_in_hugging_face_format(model, tmp_path: Path) -> None:
    model.save(tmp_path / "hf")
    again = HFCausalLM.from_directory(tmp_path / "hf")
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids))
    assert type(again.hf) is type(model.hf)


def test_a_directory_without_weights_is_refused_naming_it(tmp_path: Path) -> None:
    tiny_gpt2().config.save_pretrained(tmp_path)
    with pytest.raises(HFModelError, match=str(tmp_path)):
        HFCausalLM.from_directory(tmp_path)


def test_a_sequence_longer_than_the_context_is_refused(model) -> None:
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.hidden_states(torch.zeros(1, CONTEXT + 1, dtype=torch.long))


def test_compute_counts_about_six_flops_per_weight_and_trained_token(model) -> None:
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(7))
    model.next_token_loss(model.hidden_states(ids), torch.roll(ids, -1, dims=1)).backward()
    head = model.hf.get_output_embeddings().weight.numel()
    embeddings = {id(p) for p in (model.hf.get_output_embeddings().weight,
                                  model.hf.get_input_embeddings().weight)}  # fmt: skip
    weights = sum(
        p.numel() for n, p in model.hf.base_model.named_parameters()
        if id(p) not in embeddings and "wpe" not in n
    )  # fmt: skip
    tokens = ids.numel()
    lower = 6 * tokens * (weights + head)  # Kaplan et al.'s C = 6N per token, attention aside
    assert lower <= model.compute.flops <= 1.5 * lower
    assert model.compute.forward_tokens == tokens


def save_tokenizer(path: Path, eos: str | None = "<|endoftext|>") -> None:
    """A byte-level BPE trained here (nothing downloaded), saved as transformers saves one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    bpe.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos).save_pretrained(path)


def test_a_pretrained_tokenizer_adds_the_missing_special_tokens_and_round_trips(
    tmp_path: Path,
) -> None:
    from beyondmle.tokenization import PretrainedTokenizer, tokenizer_from_json

    save_tokenizer(tmp_path)
    tok = PretrainedTokenizer.from_directory(tmp_path)
    base = tok.hf.get_vocab_size(with_added_tokens=False)
    special = tok.special
    assert special.eos == tok.hf.token_to_id("<|endoftext|>") < base
    assert sorted([special.mask, special.sep, special.pad]) == [base, base + 1, base + 2]
    assert tok.vocab_size == base + 3
    text = "the cat ran <mask> in the park"  # text that spells a special token stays text
    ids = tok.encode(text)
    assert special.mask not in ids and tok.decode(ids) == text
    assert (
        tok.decode([*tok.encode("a dog"), special.eos, *tok.encode("the mat")]) == "a dog\nthe mat"
    )
    again = tokenizer_from_json(tok.to_json())
    assert again.encode(text) == ids and again.special == special


def test_a_tokenizer_without_an_eos_token_is_refused_naming_the_directory(tmp_path: Path) -> None:
    from beyondmle.tokenization import PretrainedTokenizer

    save_tokenizer(tmp_path, eos=None)
    with pytest.raises(ValueError, match=f"{tmp_path}: the tokenizer has no end-of-sequence"):
        PretrainedTokenizer.from_directory(tmp_path)
    with pytest.raises(ValueError, match="tokenizer.json"):
        PretrainedTokenizer.from_directory(tmp_path / "elsewhere")


def test_a_pad_token_that_is_the_eos_gets_a_token_of_its_own(tmp_path: Path) -> None:
    from beyondmle.tokenization import PretrainedTokenizer

    save_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["pad_token"] = config["eos_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    special = PretrainedTokenizer.from_directory(tmp_path).special
    assert len({special.eos, special.mask, special.sep, special.pad}) == 4


class _Unusable:
    """A tokenizer with another's identity (its JSON) that must not be asked to encode."""

    def __init__(self, tokenizer) -> None:
        self.eos_id, self.to_json = tokenizer.eos_id, tokenizer.to_json

    def encode(self, text: str) -> list[int]:
        raise AssertionError("the cached stream should have been read")


def test_a_retokenized_corpus_is_tokenized_once_and_read_back_from_disk(tmp_path: Path) -> None:
    from beyondmle.api import Corpus
    from beyondmle.tokenization import PretrainedTokenizer, WordTokenizer

    documents = {
        "train": ["the cat sat on the mat", "a dog ran"],
        "valid": ["the park"],
        "test": ["a cat ran in the park"],
    }
    words = sorted({w for docs in documents.values() for d in docs for w in d.split()})
    corpus = Corpus("tiny", WordTokenizer(words), documents, word_level=True)
    save_tokenizer(tmp_path / "bpe")
    bpe = PretrainedTokenizer.from_directory(tmp_path / "bpe")
    cache = tmp_path / "streams"
    expected = [*bpe.encode("the cat sat on the mat"), bpe.eos_id, *bpe.encode("a dog ran")]
    expected.append(bpe.eos_id)
    assert corpus.retokenized(bpe, cache).stream("train") == expected
    assert len(list(cache.glob("tiny-train-*.npy"))) == 1
    assert corpus.retokenized(_Unusable(bpe), cache).stream("train") == expected
    assert corpus.stream("train") != expected  # the original corpus keeps its own tokenizer
    other = {**documents, "train": ["the cat sat"]}
    assert Corpus("tiny", corpus.tokenizer, other, True).retokenized(bpe, cache).stream(
        "train"
    ) == [*bpe.encode("the cat sat"), bpe.eos_id]
    assert len(list(cache.glob("tiny-train-*.npy"))) == 2  # other text, another file
