"""The metric contract: a metric group declares what it needs, which settings change its
value, and what each value it yields means.

A metric group (e.g. `distinct`, which yields distinct_1..4) is registered with

- `needs`: a subset of `NEEDS` ("model", "heldout", "samples", "references", "features",
  "oracle", "reference", "reward"): the evaluation pass builds only what the chosen metrics
  need (no MiniLM load without MAUVE/FED), and the spec refuses a metric its corpus or its
  preferences cannot feed;
- `per_decoding`: whether it is computed for each decoding setting or once per trained model;
- `settings`: the evaluation settings that change its value. The fingerprint stored beside
  each value hashes the metric's name, version and those settings, so values computed under
  different settings are never compared by accident;
- `outputs`: one `Output` per value it yields: display name, which direction is better, and
  number format. The evaluation stores them with the results, and the report reads them from
  there, so a new metric is ranked and named in the report without a line of report code.

    @register_metric("my_metric", version="1", needs={"samples"}, per_decoding=True,
                     settings=("tokenizer",),
                     outputs=[Output("my_value", "my value", higher_is_better=True)])
    def my_metric(inputs: EvalInputs) -> list[MetricValue]:
        return [MetricValue("my_value", ...)]
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from beyondmle.api.registry import Registry

NEEDS = frozenset(
    {"model", "heldout", "samples", "references", "features", "oracle", "reference", "reward"}
)

__all__ = [
    "METRICS",
    "NEEDS",
    "EvalInputs",
    "Metric",
    "MetricValue",
    "Output",
    "available_metrics",
    "fingerprint",
    "get_metric",
    "register_metric",
]


@dataclass(frozen=True)
class Output:
    """What one metric value means: its display name, whether higher is better (None: no
    direction, e.g. Zipf's coefficient) and a Python format spec for the report ('' lets the
    report choose three or four significant figures)."""

    name: str
    display: str
    higher_is_better: bool | None
    format: str = ""


@dataclass(frozen=True)
class MetricValue:
    """A value, undefined (None) with the reason in `warning`, and optionally its replicates
    over resampled prompts (one per row of `EvalInputs.resamples`), from which the report's
    intervals cover the prompts as well as the seeds."""

    name: str
    value: float | None
    warning: str | None = None
    replicates: tuple[float, ...] | None = None


@dataclass
class EvalInputs:
    """What the evaluation pass hands to metrics; only the fields a metric needs are filled.

    - model: the trained model (`beyondmle.api.CausalLM`); heldout: a `Corpus`;
    - samples: generated continuations as token lists; units: the same continuations in the
      units the corpus's diversity is counted in, where those are not its tokens (Unicode code
      points of the characters, spaces dropped, for Chinese: `Corpus.diversity_units`), else
      None; references: the human continuations
      (token lists, the same length as the samples), with `prompts` before them;
    - p_features / q_features: sentence features of the human and generated continuations;
    - resamples: counts (R, N) of each prompt in each of R prompt resamples, the same in every
      cell (`beyondmle.metrics.resampling`); None when no replicates are asked for;
    - oracle: the corpus's oracle (`beyondmle.oracles`), for metrics against a known truth;
      decoding: the decoding setting of the samples; bos: the start token (`<eos>`);
    - reference: the reference policy a fine-tuned model started from (the MLE base);
      reward / gold: the proxy (learned) and true reward (n,) of continuations after prompts
      (gold None where the preference source has none); heldout_pairs: preference pairs the
      reward model never saw (`PreferencePairs`);
    - shared: a memo that lives as long as the evaluation of one trained model, so metrics
      that need the same expensive intermediate (the oracle's and the model's log-probabilities
      on the same sequences) compute it once (`shared_result`). Keys name everything the value
      depends on besides the model, e.g. the decoding label.
    """

    settings: dict
    model: Any = None
    heldout: Any = None
    block_size: int = 0
    prompts: list[list[int]] = field(default_factory=list)
    references: list[list[int]] = field(default_factory=list)
    samples: list[list[int]] = field(default_factory=list)
    units: list[list[int]] | None = None
    p_features: Any = None
    q_features: Any = None
    resamples: Any = None
    oracle: Any = None
    decoding: Any = None
    bos: int = 0
    reference: Any = None
    reward: Any = None
    gold: Any = None
    heldout_pairs: Any = None
    shared: dict = field(default_factory=dict)

    @property
    def diversity_samples(self) -> list[list[int]]:
        """The samples as the diversity metrics count them: `units` where given, else tokens."""
        return self.units if self.units is not None else self.samples

    def shared_result(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """`compute()`, once per key for the model under evaluation."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]


@dataclass(frozen=True)
class Metric:
    name: str
    version: str
    needs: frozenset[str]
    per_decoding: bool
    settings: tuple[str, ...]
    outputs: tuple[Output, ...]
    compute: Callable[[EvalInputs], list[MetricValue]]

    def fingerprint_settings(self, settings: dict) -> dict:
        return {key: settings[key] for key in self.settings}

    def fingerprint(self, settings: dict) -> str:
        return fingerprint(self.name, self.version, self.fingerprint_settings(settings))

    def output(self, name: str) -> Output:
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(
            f"metric {self.name!r} yielded {name!r}, which it does not declare in its outputs "
            f"({', '.join(o.name for o in self.outputs)})"
        )


def fingerprint(name: str, version: str, settings: dict) -> str:
    """A short hash of a metric's identity and every setting that changes its value."""
    blob = json.dumps([name, version, settings], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_metric(name: str, obj: object) -> Metric:
    metric = getattr(obj, "__beyondmle_metric__", obj)
    if not isinstance(metric, Metric):
        raise TypeError(
            f"metric {name!r}: {obj!r} is neither a Metric nor a function decorated with "
            "register_metric"
        )
    if metric.name != name:
        raise ValueError(f"metric registered as {metric.name!r} cannot be loaded as {name!r}")
    return metric


METRICS: Registry[Metric] = Registry("metric", "beyondmle.metrics", _check_metric)


def register_metric(
    name: str,
    *,
    version: str,
    needs: set[str],
    per_decoding: bool,
    outputs: Sequence[Output],
    settings: tuple[str, ...] = (),
) -> Callable:
    """Function decorator: register a metric group (see the module docstring)."""
    if not set(needs) <= NEEDS:
        raise ValueError(f"metric {name!r}: unknown needs {sorted(set(needs) - NEEDS)}")
    if not outputs:
        raise ValueError(f"metric {name!r} must declare at least one output")
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"metric {name!r} declares an output twice: {names}")

    def decorate(fn: Callable[[EvalInputs], list[MetricValue]]) -> Callable:
        if len(inspect.signature(fn).parameters) != 1:
            raise TypeError(f"metric {name!r}: compute must take one argument (EvalInputs)")
        metric = Metric(
            name, version, frozenset(needs), per_decoding, tuple(settings), tuple(outputs), fn
        )
        fn.__beyondmle_metric__ = metric  # type: ignore[attr-defined]
        METRICS.add(name, fn)
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def available_metrics() -> dict[str, Metric]:
    return METRICS.items()
