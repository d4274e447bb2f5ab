"""The People's Daily corpus: the annotators' tags and word boundaries stripped, articles rebuilt
from headlines, split by article, and declared Chinese, so diversity counts characters and MAUVE
uses a featurizer for any language."""

from __future__ import annotations

import re

import pytest

from beyondmle.api import load_corpus
from beyondmle.corpora import peoples_daily_articles

TAGGED = """迈向/v  充满/v  希望/n  的/u  新/a  世纪/n
（/w  一九九七年/t  十二月/t  ）/w
同胞/n  们/k  、/w  朋友/n  们/k  ：/w
在/p  新年/t  之际/f  ，/w  我/r  十分/m  高兴/a  。/w
北京/ns  举行/v  新年/t  音乐会/n
党/n  和/c  国家/n  领导人/n  出席/v  了/u  音乐会/n  。/w
"""


def test_tags_and_segmentation_spaces_are_stripped_and_articles_start_at_headlines() -> None:
    assert peoples_daily_articles(TAGGED) == [
        "迈向充满希望的新世纪\n（一九九七年十二月）\n同胞们、朋友们：\n在新年之际，我十分高兴。",
        "北京举行新年音乐会\n党和国家领导人出席了音乐会。",
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus("peoples_daily", cache_dir=str(tmp_path_factory.mktemp("tokenizers")))


def test_the_corpus_is_chinese_plain_text_split_by_article(corpus) -> None:
    docs = corpus.documents
    assert corpus.language == "zh" and corpus.featurizer == "char-tfidf"
    assert corpus.diversity_units == "characters" and not corpus.word_level
    assert sum(len(d) for d in docs.values()) == 3205
    assert not set(docs["train"]) & set(docs["test"]) and not set(docs["valid"]) & set(docs["test"])
    text = "".join(docs["train"])
    assert not re.search(r"/[a-zA-Z]{1,3}(\s|$)", text)  # no `word/tag` left
    assert "  " not in text  # no segmentation spaces
    assert any(d.startswith("迈向充满希望的新世纪") for split in docs.values() for d in split)


def test_the_tokenizer_round_trips_chinese_text(corpus) -> None:
    article = corpus.documents["test"][0]
    ids = corpus.tokenizer.encode(article)
    assert corpus.tokenizer.decode(ids) == article
    assert len(ids) < len(article)  # the BPE merges characters


def test_the_split_follows_its_seed(tmp_path) -> None:
    a = load_corpus("peoples_daily", split_seed=1, cache_dir=str(tmp_path))
    b = load_corpus("peoples_daily", split_seed=1, cache_dir=str(tmp_path))
    c = load_corpus("peoples_daily", split_seed=2, cache_dir=str(tmp_path))
    assert a.documents["test"] == b.documents["test"] != c.documents["test"]
