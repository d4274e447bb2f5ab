"""The preference contract: where the (prompt, chosen, rejected) pairs of RLHF come from.

A preference source is a plugin, registered like an objective or a corpus:

    @register_preference_source("my_source")
    class MySource(PreferenceSource):
        Settings = MySettings           # a dataclass of PreferenceSettings, filled by the spec
        def pairs(self, n, split): ...  # PreferencePairs of n pairs from `split`
        def gold_reward(self, prompts, continuations): ...  # optional: a known true reward

A source gets a `PreferenceContext`: the reference policy's sampler (the MLE base), the corpus
(and its oracle, where it has one), the prompt and continuation lengths and its own random
generator. It labels pairs with a known amount of noise where that applies, so a user knows how
clean the preferences the reward model learns from are.

A reward function is the simplest gold reward, a registered function of the decoded text:

    @register_reward_function("length")
    def length(text: str) -> float: ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from beyondmle.api.registry import Registry
from beyondmle.settings import Problem, Settings, setting

__all__ = [
    "PREFERENCE_SOURCES",
    "REWARD_FUNCTIONS",
    "PreferenceContext",
    "PreferencePairs",
    "PreferenceSettings",
    "PreferenceSource",
    "get_preference_source",
    "get_reward_function",
    "register_preference_source",
    "register_reward_function",
]


@dataclass(frozen=True)
class PreferenceSettings(Settings):
    """Settings every source has, and the reward model's training (Ouyang et al. 2022, §3.5:
    one epoch over the pairs; here `reward_epochs`). `pairs` train the reward model (and DPO);
    `heldout_pairs` measure its accuracy. Sources add their own fields."""

    pairs: int = setting(2000, ge=2)
    heldout_pairs: int = setting(500, ge=2)
    reward_epochs: int = setting(1, ge=1)
    reward_batch_size: int = setting(32, ge=1)
    reward_lr: float = setting(5e-5, gt=0.0)
    probe_prompts: int = setting(64, ge=1)  # prompts of the over-optimization probe
    probe_every_steps: int = setting(5, ge=1)


@dataclass
class PreferencePairs:
    """`n` preference pairs: prompts (n, P), chosen and rejected continuations (n, L), and,
    where the source knows it, the gold reward of each side (n,)."""

    prompts: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    gold_chosen: torch.Tensor | None = None
    gold_rejected: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompts.size(0)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors, so the pairs load with `weights_only=True`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor]) -> PreferencePairs:
        return cls(**data)

    def subset(self, index: torch.Tensor) -> PreferencePairs:
        return PreferencePairs(
            **{k: v[index] for k, v in dataclasses.asdict(self).items() if v is not None}
        )


@dataclass
class PreferenceContext:
    """What a source may use.

    - `sample(prompts, length)`: continuations (n, length) drawn from the reference policy at
      temperature 1 with the source's generator (KV-cached);
    - `windows(split, n)`: prompts (n, P) and the human continuations (n, L) of `split`, the
      corpus's consecutive windows as the evaluation cuts them;
    - `oracle`: the corpus's oracle (`beyondmle.oracles.Oracle`), None on real text;
    - `decode(ids)`: text of a token list; `bos`: the start token.
    """

    sample: Callable[[torch.Tensor, int], torch.Tensor]
    windows: Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]
    decode: Callable[[list[int]], str]
    prompt_tokens: int
    continuation_tokens: int
    generator: torch.Generator
    oracle: Any = None
    bos: int = 0


class PreferenceSource:
    """Base class of preference sources; see the module docstring."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[PreferenceSettings]] = PreferenceSettings
    needs_oracle: ClassVar[bool] = False

    def __init__(self, settings: PreferenceSettings, context: PreferenceContext) -> None:
        self.settings = settings
        self.context = context

    def pairs(self, n: int, split: str) -> PreferencePairs:
        raise NotImplementedError(f"preference source {self.name!r} must implement pairs()")

    def gold_reward(
        self, prompts: torch.Tensor, continuations: torch.Tensor
    ) -> torch.Tensor | None:
        """The true reward (n,) of each continuation, where the source defines one."""
        return None

    @classmethod
    def check_corpus(cls, has_oracle: bool) -> list[Problem]:
        if cls.needs_oracle and not has_oracle:
            return [Problem("source", f"a corpus with an oracle for source {cls.name!r}")]
        return []


def _check_source(name: str, cls: object) -> type[PreferenceSource]:
    if not (isinstance(cls, type) and issubclass(cls, PreferenceSource)):
        raise TypeError(f"preference source {name!r}: {cls!r} is not a PreferenceSource")
    if not issubclass(cls.Settings, PreferenceSettings):
        raise TypeError(f"preference source {name!r}: Settings must extend PreferenceSettings")
    if cls.pairs is PreferenceSource.pairs:
        raise TypeError(f"preference source {name!r} must implement pairs()")
    cls.name = name
    return cls


def _check_function(name: str, fn: object) -> Callable[[str], float]:
    if not callable(fn):
        raise TypeError(f"reward function {name!r}: {fn!r} is not callable")
    return fn


PREFERENCE_SOURCES: Registry[type[PreferenceSource]] = Registry(
    "preference source", "beyondmle.preferences", _check_source
)
REWARD_FUNCTIONS: Registry[Callable[[str], float]] = Registry(
    "reward function", "beyondmle.reward_functions", _check_function
)


def register_preference_source(name: str) -> Callable:
    """Class decorator: register a `PreferenceSource` subclass under `name`."""
    return PREFERENCE_SOURCES.register(name)


def get_preference_source(name: str) -> type[PreferenceSource]:
    return PREFERENCE_SOURCES.get(name)


def register_reward_function(name: str) -> Callable:
    """Function decorator: register `text -> float` as a gold reward under `name`."""
    return REWARD_FUNCTIONS.register(name)


def get_reward_function(name: str) -> Callable[[str], float]:
    return REWARD_FUNCTIONS.get(name)
