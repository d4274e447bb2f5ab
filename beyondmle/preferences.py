"""The built-in preference sources and reward functions (the contract: `beyondmle.api`).

- `oracle`: on the oracle tier, the gold reward is defined from the oracle (by default the
  mean log-probability per token it gives the continuation). Two continuations of the
  reference policy are labelled by Bradley-Terry with a temperature: a is chosen over b with
  probability sigmoid((g_a - g_b) / label_temperature), so the labels are as noisy as the user
  sets them (human raters agree with each other 63-77% of the time; Ouyang et al. 2022,
  §5.1). The share of labels that agree with the gold order is recorded with the reward model.
- `human_over_model`: on any corpus, the human continuation is preferred over the reference
  policy's sample for the same prompt (SPIN, Chen et al. 2024, §4: the self-play pairs of one
  iteration, whose opponent is the starting model). No labels are needed, and none is noisy.
- `reward_function`: a registered function of the decoded text is the gold reward, and pairs
  are labelled from it by Bradley-Terry as for `oracle`: a reward whose hacking the user can
  see, because they chose it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beyondmle.api import (
    PreferenceContext,
    PreferencePairs,
    PreferenceSettings,
    PreferenceSource,
    Problem,
    get_reward_function,
    register_preference_source,
    register_reward_function,
    setting,
)
from beyondmle.api.preferences import REWARD_FUNCTIONS

GOLDS = ("mean_log_prob", "min_log_prob")


def bradley_terry_labels(
    gold_a: torch.Tensor, gold_b: torch.Tensor, temperature: float, generator
) -> torch.Tensor:
    """True where a is chosen: P(a over b) = sigmoid((g_a - g_b) / temperature)."""
    p = torch.sigmoid((gold_a - gold_b) / temperature)
    return torch.rand(p.shape, generator=generator) < p


def _labelled(
    prompts: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ga, gb, temperature, generator
) -> PreferencePairs:
    pick_a = bradley_terry_labels(ga, gb, temperature, generator)
    m = pick_a[:, None]
    return PreferencePairs(
        prompts=prompts,
        chosen=torch.where(m, a, b),
        rejected=torch.where(m, b, a),
        gold_chosen=torch.where(pick_a, ga, gb),
        gold_rejected=torch.where(pick_a, gb, ga),
    )


class _LabelledSource(PreferenceSource):
    """Two reference samples per prompt, labelled by Bradley-Terry on the gold reward."""

    def pairs(self, n: int, split: str) -> PreferencePairs:
        c: PreferenceContext = self.context
        prompts, _ = c.windows(split, n)
        a = c.sample(prompts, c.continuation_tokens)
        b = c.sample(prompts, c.continuation_tokens)
        ga, gb = self.gold_reward(prompts, a), self.gold_reward(prompts, b)
        return _labelled(prompts, a, b, ga, gb, self.settings.label_temperature, c.generator)


@dataclass(frozen=True)
class OracleSourceSettings(PreferenceSettings):
    """`gold`: mean_log_prob (the oracle's mean log-probability per continuation token) or
    min_log_prob (its least likely token: a gold that punishes a single slip);
    `label_temperature`: the Bradley-Terry temperature of the labels, in the gold's units."""

    gold: str = setting("mean_log_prob", choices=GOLDS)
    label_temperature: float = setting(0.1, gt=0.0)


@register_preference_source("oracle")
class OracleSource(_LabelledSource):
    """Reference samples labelled by Bradley-Terry on a gold reward from the oracle."""

    Settings = OracleSourceSettings
    needs_oracle = True

    @torch.no_grad()
    def gold_reward(self, prompts: torch.Tensor, continuations: torch.Tensor) -> torch.Tensor:
        oracle = self.context.oracle
        ids = torch.cat([prompts, continuations], dim=1).cpu()
        log_probs = oracle.token_log_probs(ids)[:, -continuations.size(1) :]
        if self.settings.gold == "min_log_prob":
            return log_probs.min(dim=1).values
        return log_probs.mean(dim=1)


@register_preference_source("human_over_model")
class HumanOverModel(PreferenceSource):
    """The human continuation preferred over the reference policy's sample (SPIN)."""

    def pairs(self, n: int, split: str) -> PreferencePairs:
        c: PreferenceContext = self.context
        prompts, human = c.windows(split, n)
        return PreferencePairs(prompts, human, c.sample(prompts, c.continuation_tokens))


@dataclass(frozen=True)
class RewardFunctionSettings(PreferenceSettings):
    """`function`: a registered reward function of the text; `label_temperature` as for
    `oracle`, in the function's units."""

    function: str = "lexical"
    label_temperature: float = setting(0.05, gt=0.0)

    def cross_checks(self) -> list[Problem]:
        if self.function not in REWARD_FUNCTIONS:
            known = ", ".join(REWARD_FUNCTIONS.names())
            return [Problem("function", f"a registered reward function ({known})", self.function)]
        return []


@register_preference_source("reward_function")
class RewardFunctionSource(_LabelledSource):
    """Reference samples labelled by Bradley-Terry on a registered function of the text."""

    Settings = RewardFunctionSettings

    def gold_reward(self, prompts: torch.Tensor, continuations: torch.Tensor) -> torch.Tensor:
        fn = get_reward_function(self.settings.function)
        texts = [self.context.decode(row) for row in continuations.tolist()]
        return torch.tensor([float(fn(t)) for t in texts])


@register_reward_function("lexical")
def lexical(text: str) -> float:
    """The share of distinct words among the words: 1 for text that never repeats a word."""
    words = text.split()
    return len(set(words)) / len(words) if words else 0.0


@register_reward_function("length")
def length(text: str) -> float:
    """Words before the first line break (the end of the first sentence on PTB): a reward a
    policy can hack by never ending its sentence."""
    return float(len(text.split("\n", 1)[0].split()))
