"""Corpora, tokenizers and the data module: PTB's published splits, the user's text corpus
(splits, BPE on train only, the tokenizer cache), input errors, training blocks and the
evaluation's prompt / continuation windows."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from beyondmle.api import Corpus, CorpusError, load_corpus
from beyondmle.cli import main
from beyondmle.data import TokenBlocks, check_corpus_fits, prompt_continuation_pairs
from beyondmle.tokenization import BPETokenizer, WordTokenizer, tokenizer_from_json

# -- PTB -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ptb() -> Corpus:
    return load_corpus("ptb")


def test_ptb_split_streams_have_the_published_sizes(ptb):
    # Mikolov et al.'s PTB: 929k / 73k / 82k tokens, counting one <eos> per sentence.
    assert len(ptb.stream("train")) == 929_589
    assert len(ptb.stream("valid")) == 73_760
    assert len(ptb.stream("test")) == 82_430
    for split in ("train", "valid", "test"):
        stream = ptb.stream(split)
        assert stream[-1] == ptb.tokenizer.eos_id
        assert stream.count(ptb.tokenizer.eos_id) == len(ptb.documents[split])
        # On a word-level corpus the per-word count is the token count.
        assert ptb.num_words(split) == len(stream)


def test_ptb_vocabulary_is_the_10k_words_plus_reserved_specials(ptb):
    tokenizer = ptb.tokenizer
    reserved = {"<mask>", "<sep>", "<pad>"}
    words = set(tokenizer.words) - reserved
    assert len(words) == 10_000
    assert {"<eos>", "<unk>"} <= words
    assert tokenizer.vocab_size == 10_003
    assert len(set(tokenizer.words)) == tokenizer.vocab_size  # no duplicates


def test_ptb_held_out_splits_have_no_out_of_vocabulary_words(ptb):
    # Mikolov's preprocessing maps rare words to <unk> in the text itself, so no held-out word
    # falls back to the tokenizer's <unk>: every word is in the train vocabulary.
    index = ptb.tokenizer.index
    for split in ("valid", "test"):
        assert all(w in index for doc in ptb.documents[split] for w in doc.split())


def test_ptb_word_tokenizer_round_trips_a_document(ptb):
    doc = ptb.documents["valid"][0]
    ids = ptb.tokenizer.encode(doc)
    assert ptb.tokenizer.decode(ids) == doc
    assert ptb.tokenizer.decode([*ids, ptb.tokenizer.eos_id]) == doc + "\n"


# -- the text corpus -----------------------------------------------------------------------------

COMMON = "the cat sat on a mat and then it ran away"


def unique_words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(9)) for _ in range(n)]


def write_documents(path: Path, n: int = 40) -> list[str]:
    """n distinct paragraphs, each with its own made-up word repeated often enough for a BPE
    trained on it to make that word a single token."""
    docs = [f"{COMMON} " + " ".join([w] * 12) + f" {COMMON}" for w in unique_words(n)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return docs


def load_text(tmp_path: Path, paths: list[Path], **settings) -> Corpus:
    settings = {"valid_fraction": 0.1, "test_fraction": 0.1, "vocab_size": 800, **settings}
    return load_corpus(
        "text", paths=[str(p) for p in paths], cache_dir=str(tmp_path / "cache"), **settings
    )


def test_text_splits_are_disjoint_by_document_and_cover_the_corpus(tmp_path):
    docs = write_documents(tmp_path / "c.txt", 40)
    corpus = load_text(tmp_path, [tmp_path / "c.txt"])
    splits = corpus.documents
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [32, 4, 4]
    assert not set(splits["train"]) & set(splits["valid"])
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["valid"]) & set(splits["test"])
    assert sorted(splits["train"] + splits["valid"] + splits["test"]) == sorted(docs)


def test_text_split_is_deterministic_for_a_seed_and_changes_with_it(tmp_path):
    write_documents(tmp_path / "c.txt", 40)
    a = load_text(tmp_path, [tmp_path / "c.txt"], split_seed=3).documents
    b = load_text(tmp_path, [tmp_path / "c.txt"], split_seed=3).documents
    c = load_text(tmp_path, [tmp_path / "c.txt"], split_seed=4).documents
    assert a == b
    assert a["test"] != c["test"]
    assert sorted(sum(a.values(), [])) == sorted(sum(c.values(), []))


def test_bpe_is_trained_on_the_train_split_only(tmp_path):
    words = unique_words(40)
    write_documents(tmp_path / "c.txt", 40)
    corpus = load_text(tmp_path, [tmp_path / "c.txt"])
    tokenizer = corpus.tokenizer

    def words_of(split: str) -> list[str]:
        return [w for w in words if any(w in doc for doc in corpus.documents[split])]

    # Each train document's word (repeated 12 times) became one token...
    assert len(words_of("train")) == 32
    assert all(len(tokenizer.encode(" " + w)) == 1 for w in words_of("train"))
    # ...while the words seen only in valid or test did not: the BPE never saw them.
    held_out = words_of("valid") + words_of("test")
    assert len(held_out) == 8
    assert all(len(tokenizer.encode(" " + w)) > 1 for w in held_out)


def test_tokenizer_cache_is_reused_without_retraining(tmp_path, monkeypatch):
    write_documents(tmp_path / "c.txt", 40)
    first = load_text(tmp_path, [tmp_path / "c.txt"])
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("bpe-*.json")
    mtime = cached.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the BPE was trained again despite a cached tokenizer")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    second = load_text(tmp_path, [tmp_path / "c.txt"])
    assert second.tokenizer.to_json() == first.tokenizer.to_json()
    assert cached.stat().st_mtime_ns == mtime
    assert list((tmp_path / "cache" / "tokenizers").glob("bpe-*.json")) == [cached]


def test_tokenizer_cache_key_changes_with_content_and_settings(tmp_path):
    path = tmp_path / "c.txt"
    write_documents(path, 40)
    load_text(tmp_path, [path])
    load_text(tmp_path, [path], vocab_size=700)
    load_text(tmp_path, [path], split_seed=1)
    path.write_text(path.read_text() + "\none more paragraph at the end\n")
    load_text(tmp_path, [path])
    assert len(list((tmp_path / "cache" / "tokenizers").glob("bpe-*.json"))) == 4


def test_blank_line_separated_paragraphs_become_documents(tmp_path):
    path = tmp_path / "p.txt"
    paragraphs = [f"paragraph {i} line one\nparagraph {i} line two" for i in range(20)]
    # Separators: an empty line, a line of spaces and tabs, several blank lines.
    seps = ["\n\n", "\n  \t\n", "\n\n\n\n"]
    path.write_text("".join(p + seps[i % 3] for i, p in enumerate(paragraphs)), encoding="utf-8")
    corpus = load_text(tmp_path, [path], vocab_size=300)
    docs = corpus.documents
    assert sorted(docs["train"] + docs["valid"] + docs["test"]) == sorted(paragraphs)


def test_without_blank_lines_each_line_is_a_document(tmp_path):
    path = tmp_path / "l.txt"
    lines = [f"  line number {i} of the file  " for i in range(20)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = load_text(tmp_path, [path], vocab_size=300).documents
    assert sorted(docs["train"] + docs["valid"] + docs["test"]) == sorted(s.strip() for s in lines)


def test_documents_of_several_files_are_pooled(tmp_path):
    write_documents(tmp_path / "a.txt", 10)
    (tmp_path / "b.txt").write_text("\n".join(f"extra line {i}" for i in range(10)))
    docs = load_text(tmp_path, [tmp_path / "a.txt", tmp_path / "b.txt"], vocab_size=300).documents
    assert sum(len(d) for d in docs.values()) == 20


def test_bpe_round_trips_any_utf8_text(tmp_path):
    write_documents(tmp_path / "c.txt", 40)
    tokenizer = load_text(tmp_path, [tmp_path / "c.txt"]).tokenizer
    texts = [
        "the cat sat on a mat",
        "Héllo, wörld! 你好 🙂  double  spaces\ttab and trailing space ",
        "  leading spaces, and ünïcödé never seen in training",
        "angle <brackets> and <e o s> are text",
    ]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    restored = tokenizer_from_json(tokenizer.to_json())
    assert [restored.encode(t) for t in texts] == [tokenizer.encode(t) for t in texts]


@pytest.mark.parametrize("special", ["<eos>", "<mask>", "<sep>", "<pad>"])
def test_bpe_round_trips_text_that_spells_out_a_special_token(tmp_path, special):
    write_documents(tmp_path / "c.txt", 40)
    tokenizer = load_text(tmp_path, [tmp_path / "c.txt"]).tokenizer
    text = f"an html-like {special} tag in the user's text"
    ids = tokenizer.encode(text)
    assert getattr(tokenizer.special, special.strip("<>")) not in ids
    assert tokenizer.decode(ids) == text


def test_text_stream_decodes_to_the_documents_one_per_line(tmp_path):
    write_documents(tmp_path / "c.txt", 40)
    corpus = load_text(tmp_path, [tmp_path / "c.txt"])
    for split in ("train", "valid", "test"):
        text = "".join(doc + "\n" for doc in corpus.documents[split])
        assert corpus.tokenizer.decode(corpus.stream(split)) == text
        assert corpus.num_bytes(split) == len(text.encode("utf-8"))


# -- input errors --------------------------------------------------------------------------------


def corpus_error(tmp_path: Path, paths: list[Path]) -> str:
    with pytest.raises(CorpusError) as info:
        load_text(tmp_path, paths)
    return str(info.value)


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "nowhere.txt"
    assert corpus_error(tmp_path, [path]) == (
        f"corpus 'text': paths must be readable files ({path} does not exist)"
    )


def test_unreadable_path_is_reported(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    message = corpus_error(tmp_path, [folder])
    assert message == f"corpus 'text': paths must be readable files ({folder} is not a file)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_file_without_read_permission_is_reported(tmp_path):
    path = tmp_path / "secret.txt"
    write_documents(path)
    path.chmod(0)
    message = corpus_error(tmp_path, [path])
    assert message == f"corpus file {path} cannot be read: Permission denied"


@pytest.mark.parametrize("content", ["", "\n\n  \n\t\n"])
def test_empty_file_is_reported(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    assert corpus_error(tmp_path, [path]) == f"corpus 'text': the files {path} hold no documents"


def test_non_utf8_file_is_reported_with_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good text\nmore\xff\xfe text\n")  # 0xff is byte 14
    message = corpus_error(tmp_path, [path])
    assert message == f"corpus file {path} is not UTF-8 text: invalid byte at offset 14"


def test_every_missing_file_of_several_is_named(tmp_path):
    good, missing, gone = tmp_path / "good.txt", tmp_path / "missing.txt", tmp_path / "gone.txt"
    write_documents(good)
    assert corpus_error(tmp_path, [good, missing, gone]) == (
        f"corpus 'text': paths must be readable files ({missing} does not exist); "
        f"paths must be readable files ({gone} does not exist)"
    )


def test_no_paths_is_reported(tmp_path):
    assert corpus_error(tmp_path, []) == (
        "corpus 'text': paths must be a list of strings with at least 1 item, got []"
    )


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_documents_to_split_are_reported(tmp_path, n):
    path = tmp_path / "few.txt"
    path.write_text("\n".join(f"document {i}" for i in range(n)))
    message = corpus_error(tmp_path, [path])
    assert message.startswith(f"corpus 'text': {n} documents in {path} are too few to split")
    assert "valid (1) and test (1)" in message


def test_three_documents_are_enough_to_split(tmp_path):
    path = tmp_path / "three.txt"
    path.write_text("one doc\ntwo doc\nthree doc\n")
    docs = load_text(tmp_path, [path], vocab_size=270).documents
    assert [len(docs[s]) for s in ("train", "valid", "test")] == [1, 1, 1]


def test_unknown_corpus_is_reported():
    known = "oracle, peoples_daily, ptb, text"
    with pytest.raises(CorpusError, match=rf"unknown corpus 'wiki'; known: {known}"):
        load_corpus("wiki")


def word_corpus(train: list[str], valid: list[str], test: list[str]) -> Corpus:
    words = sorted({w for doc in train + valid + test for w in doc.split()})
    documents = {"train": train, "valid": valid, "test": test}
    return Corpus("tiny", WordTokenizer(words), documents, word_level=True)


def test_corpus_too_small_for_the_block_size_is_reported():
    # Train: 2 documents of 4 words + <eos> each = 10 tokens.
    corpus = word_corpus(["a b c d", "e f g h"], ["a b c d e f"], ["a b c d e f"])
    check_corpus_fits(corpus, block_size=9, window=7)  # 10 tokens = one block of 9 + 1
    with pytest.raises(CorpusError) as info:
        check_corpus_fits(corpus, block_size=10, window=7)
    message = str(info.value)
    assert "corpus 'tiny': the train split has 10 tokens" in message
    assert "block_size + 1 = 11" in message


@pytest.mark.parametrize("split", ["valid", "test"])
def test_held_out_split_too_small_for_the_evaluation_window_is_reported(split):
    small = ["a b c d e"]  # 6 tokens with <eos>
    big = ["a b c d e f g h"]
    held_out = (small, big) if split == "valid" else (big, small)
    corpus = word_corpus(["a b c d e f g h"] * 4, *held_out)
    check_corpus_fits(corpus, block_size=8, window=6)
    with pytest.raises(CorpusError, match=rf"the {split} split has 6 tokens, fewer than one "):
        check_corpus_fits(corpus, block_size=8, window=7)


def test_cli_run_reports_a_bad_corpus_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8\n")
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f"""
[benchmark]
seeds = [0]
[[corpus]]
name = "text"
paths = ["{bad}"]
cache_dir = "{tmp_path / "cache"}"
[model]
n_layer = 1
n_embd = 16
n_head = 2
block_size = 32
[evaluation]
prompt_tokens = 8
continuation_tokens = 8
[[objective]]
name = "mle"
"""
    )
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: corpus file {bad} is not UTF-8 text")
    assert not out.exists()


# -- training blocks and evaluation windows ------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 2, 4, 5, 10, 20])
def test_token_blocks_make_every_token_but_the_first_a_target_exactly_once(block_size):
    tokens = list(range(100, 121))  # 21 tokens: 20 targets, divisible by every block size here
    blocks = TokenBlocks(tokens, block_size)
    assert len(blocks) == 20 // block_size
    rows = [blocks[i] for i in range(len(blocks))]
    assert all(row.shape == (block_size + 1,) for row in rows)
    targets = [t for row in rows for t in row[1:].tolist()]
    inputs = [t for row in rows for t in row[:-1].tolist()]
    assert targets == tokens[1:]
    assert inputs == tokens[:-1]


def test_token_blocks_drop_a_tail_shorter_than_a_block():
    tokens = list(range(23))  # 22 targets; blocks of 5 cover 20 of them
    blocks = TokenBlocks(tokens, 5)
    assert len(blocks) == 4
    targets = [t for i in range(len(blocks)) for t in blocks[i][1:].tolist()]
    assert targets == list(range(1, 21))
    assert len(set(targets)) == len(targets)


def test_token_blocks_of_a_stream_shorter_than_a_block_are_empty():
    assert len(TokenBlocks(list(range(5)), 5)) == 0
    assert len(TokenBlocks(list(range(6)), 5)) == 1


def test_prompt_continuation_pairs_cut_consecutive_windows():
    tokens = list(range(52))  # 7 windows of 3 + 4 tokens, 3 tokens left over
    pairs = prompt_continuation_pairs(tokens, 3, 4)
    assert pairs.prompts.shape == (7, 3)
    assert pairs.continuations.shape == (7, 4)
    assert pairs.prompts.dtype == pairs.continuations.dtype == torch.long
    for i in range(7):
        assert pairs.prompts[i].tolist() == [7 * i, 7 * i + 1, 7 * i + 2]
        assert pairs.continuations[i].tolist() == [7 * i + 3, 7 * i + 4, 7 * i + 5, 7 * i + 6]


def test_prompt_continuation_pairs_respect_max_pairs():
    pairs = prompt_continuation_pairs(list(range(52)), 3, 4, max_pairs=2)
    assert pairs.prompts.tolist() == [[0, 1, 2], [7, 8, 9]]
    assert pairs.continuations.tolist() == [[3, 4, 5, 6], [10, 11, 12, 13]]
    # More pairs asked for than there are windows: all windows.
    assert prompt_continuation_pairs(list(range(52)), 3, 4, max_pairs=100).prompts.shape == (7, 3)


def test_prompt_continuation_pairs_of_a_too_short_stream_are_empty():
    pairs = prompt_continuation_pairs(list(range(6)), 3, 4)
    assert pairs.prompts.shape == (0, 3)
    assert pairs.continuations.shape == (0, 4)
