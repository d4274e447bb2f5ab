"""The causal-LM featurizer (hidden states of any Hugging Face model through the adapter): its
batching does not change a text's features, mean pooling is the mean of the model's own hidden
states, and a pretrained model's features let MAUVE tell Chinese text from its characters
shuffled. (The character n-gram featurizer's MAUVE tests are in test_featurizers.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_featurizers import halves_and_shuffled, peoples_daily_paragraphs
from test_hf_gguf import SMOLLM2, needs_smollm2
from test_hf_matrix import save_model

from beyondmle.api import get_featurizer
from beyondmle.hf_model import HFCausalLM
from beyondmle.tokenization import PretrainedTokenizer


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return save_model("gpt2", tmp_path_factory.mktemp("tiny-lm"))


def test_lm_features_do_not_depend_on_the_batch(tiny_lm) -> None:
    featurizer = get_featurizer("causal-lm", model=str(tiny_lm), pooling="last", batch_size=3)
    texts = ["the cat sat", "a dog ran in the park", "w1", "on the mat the cat sat down"]
    together = featurizer.encode(texts)
    alone = np.concatenate([featurizer.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=1e-5)


def test_mean_pooling_is_the_mean_of_the_models_hidden_states(tiny_lm) -> None:
    featurizer = get_featurizer("causal-lm", model=str(tiny_lm), pooling="mean")
    text = "a dog ran in the park"
    model = HFCausalLM.from_directory(tiny_lm).eval()
    ids = torch.tensor([PretrainedTokenizer.from_directory(tiny_lm).encode(text)])
    with torch.no_grad():
        expected = model.hidden_states(ids)[0].mean(0).numpy()
    np.testing.assert_allclose(featurizer.encode([text])[0], expected, atol=1e-5, rtol=1e-5)


@needs_smollm2
@pytest.mark.slow
def test_pretrained_lm_features_separate_chinese_from_its_characters_shuffled(tmp_path) -> None:
    """SmolLM2-135M's mean-pooled states (a model trained mostly on English, reading Chinese as
    bytes) still see that shuffled characters form no words; two halves of the text stay alike.
    Measured with 200 paragraphs of 60 characters per side: 0.975 against 0.169."""
    from beyondmle.hf_model import from_gguf

    featurizer = get_featurizer(
        "causal-lm", model=str(from_gguf(SMOLLM2, cache_dir=tmp_path)), pooling="mean"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # a 135M model, not a tiny one
    try:
        same, shuffled = halves_and_shuffled(featurizer, peoples_daily_paragraphs(200, skip=2000))
    finally:
        torch.set_num_threads(threads)
    assert same > 0.9
    assert shuffled < 0.5
