"""The metric registry: each metric declares what it needs and which settings change its value.

A metric group (e.g. `distinct`, which yields distinct_1..4) is registered with

- `needs`: a subset of {"model", "heldout", "samples", "references", "features"}: the
  evaluation pass builds only what the chosen metrics need (no MiniLM load without MAUVE/FED);
- `per_decoding`: whether it is computed for each decoding setting or once per trained model;
- `settings`: the evaluation settings that change its value. The fingerprint stored beside
  each value hashes the metric's name, version and those settings, so values computed under
  different settings are never compared by accident.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NEEDS = frozenset({"model", "heldout", "samples", "references", "features"})


@dataclass(frozen=True)
class MetricValue:
    name: str
    value: float | None  # None: undefined for these inputs, with the reason in `warning`
    warning: str | None = None


@dataclass
class EvalInputs:
    """What the evaluation pass hands to metrics; only the fields a metric needs are filled.

    - model: the trained model (idx -> logits); heldout: a `beyondmle.corpora.Corpus`;
    - samples: generated continuations as token lists; references: the human continuations
      (token lists, the same length as the samples), with `prompts` before them;
    - p_features / q_features: sentence features of the human and generated continuations.
    """

    settings: dict
    model: Any = None
    heldout: Any = None
    block_size: int = 0
    prompts: list[list[int]] = field(default_factory=list)
    references: list[list[int]] = field(default_factory=list)
    samples: list[list[int]] = field(default_factory=list)
    p_features: Any = None
    q_features: Any = None


@dataclass(frozen=True)
class Metric:
    name: str
    version: str
    needs: frozenset[str]
    per_decoding: bool
    settings: tuple[str, ...]
    compute: Callable[..., list[MetricValue]]

    def fingerprint_settings(self, settings: dict) -> dict:
        return {key: settings[key] for key in self.settings}

    def fingerprint(self, settings: dict) -> str:
        return fingerprint(self.name, self.version, self.fingerprint_settings(settings))


def fingerprint(name: str, version: str, settings: dict) -> str:
    """A short hash of a metric's identity and every setting that changes its value."""
    blob = json.dumps([name, version, settings], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, *, version: str, needs: set[str], per_decoding: bool, settings: tuple[str, ...] = ()
) -> Callable:
    if not needs <= NEEDS:
        raise ValueError(f"metric {name!r}: unknown needs {sorted(needs - NEEDS)}")

    def decorate(fn: Callable[..., list[MetricValue]]) -> Callable[..., list[MetricValue]]:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        _METRICS[name] = Metric(name, version, frozenset(needs), per_decoding, settings, fn)
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    try:
        return _METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(_METRICS)}") from None


def available_metrics() -> dict[str, Metric]:
    return dict(_METRICS)
