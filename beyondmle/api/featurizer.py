"""The featurizer contract: text to feature vectors, for the distributional metrics.

MAUVE (Pillutla et al. 2021, NeurIPS, §4) and the Fréchet embedding distance compare
distributions of sentence *features*, so the featurizer is part of the metric's definition: a
score is only comparable with scores computed with the same featurizer. A featurizer declares a
`version` and the options that change its output (`output_options`); both are part of every
cached vector's key and of the metrics' fingerprints.

    @register_featurizer("my_featurizer")
    class MyFeaturizer:
        version = "1"
        dim = 256
        def __init__(self, **options): self.output_options = {...}
        def encode(self, texts: list[str]) -> np.ndarray: ...   # (len(texts), dim) float32

A featurizer that learns from data (a TF-IDF vocabulary) also defines `fit(texts)`: the
evaluation pass calls it with the human texts only, before encoding either side, and the
featurizer names what it was fitted on in its `output_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from beyondmle.api.registry import Registry

__all__ = [
    "DEFAULT_FEATURIZER",
    "FEATURIZERS",
    "Featurizer",
    "FeaturizerUnavailableError",
    "available_featurizers",
    "get_featurizer",
    "register_featurizer",
]


DEFAULT_FEATURIZER = "minilm"  # where neither the spec nor the corpus names one


class Featurizer(Protocol):
    """What a featurizer plugin provides; see the module docstring."""

    name: str
    version: str
    dim: int
    output_options: Mapping[str, object]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return float32 features of shape ``(len(texts), dim)``."""
        ...


class FeaturizerUnavailableError(RuntimeError):
    """A featurizer's model or package is not available locally (nothing is ever downloaded)."""


def _check_featurizer(name: str, cls: object) -> type:
    if not isinstance(cls, type):
        raise TypeError(f"featurizer {name!r}: {cls!r} is not a class")
    if not isinstance(getattr(cls, "version", None), str):
        raise TypeError(f"featurizer {cls.__qualname__} needs a string class attribute 'version'")
    if not callable(getattr(cls, "encode", None)):
        raise TypeError(f"featurizer {cls.__qualname__} needs an 'encode' method")
    cls.name = name
    return cls


FEATURIZERS: Registry[type] = Registry("featurizer", "beyondmle.featurizers", _check_featurizer)


def register_featurizer(name: str) -> Callable:
    """Class decorator: register a featurizer class under `name` (and set `cls.name`)."""
    return FEATURIZERS.register(name)


def available_featurizers() -> tuple[str, ...]:
    """Names of the registered featurizers, sorted."""
    return tuple(FEATURIZERS.names())


def get_featurizer(name: str, **options: Any) -> Featurizer:
    """Instantiate the featurizer registered as ``name`` with its constructor ``options``."""
    return FEATURIZERS.get(name)(**options)
