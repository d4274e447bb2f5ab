"""Direct preference optimisation: the policy learns from the preference pairs themselves.

Rafailov et al. 2023 ("Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", Eq. 7):

    L = -E log sigmoid(beta [(log pi(y_w | x) - log pi_ref(y_w | x))
                             - (log pi(y_l | x) - log pi_ref(y_l | x))])

with summed log-probabilities of the continuations and the frozen reference (the MLE base).
It is the offline alternative to RLOO and PPO: it trains on the same pairs as the reward model,
and its budget is the same number of steps. Each step draws `batch_size` pairs at random (with
the objective's own generator; epochs over the pairs as the budget allows). beta = 0.1 is the
paper's value for its dialogue and summarisation runs (§6).

With the `human_over_model` source this is one iteration of SPIN (Chen et al. 2024, §4.1: the
human continuation over the starting model's, the same logistic loss with lambda = beta).
Dropout is off in the policy's passes, as TRL's DPO trainer does by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beyondmle.api import (
    CausalLM,
    Objective,
    ObjectiveOutput,
    ObjectiveSettings,
    TrainingState,
    register_objective,
    setting,
)
from beyondmle.rl import continuation_log_probs, dpo_loss, eval_mode


@dataclass(frozen=True)
class DPOSettings(ObjectiveSettings):
    """`beta`: the strength of the implicit KL leash (Rafailov et al., §4); larger stays
    closer to the reference."""

    beta: float = setting(0.1, gt=0.0)


@register_objective("dpo")
class DPO(Objective):
    """Direct preference optimisation on the preference pairs (Rafailov et al. 2023)."""

    Settings = DPOSettings
    uses = frozenset({"reference", "preference_pairs"})

    def sequence_log_probs(self, model, prompts, chosen, rejected) -> tuple:
        both = continuation_log_probs(
            model, torch.cat([prompts, prompts]), torch.cat([chosen, rejected])
        ).sum(dim=1)
        return both[: prompts.size(0)], both[prompts.size(0) :]

    def loss(self, model: CausalLM, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        pairs = self.resources.pairs
        index = torch.randint(len(pairs), (batch.size(0),), generator=self.generator)
        prompts, chosen, rejected = (
            t[index].to(batch.device) for t in (pairs.prompts, pairs.chosen, pairs.rejected)
        )
        with eval_mode(model):
            pol_w, pol_l = self.sequence_log_probs(model, prompts, chosen, rejected)
        with torch.no_grad():
            ref_w, ref_l = self.sequence_log_probs(
                self.resources.reference, prompts, chosen, rejected
            )
        loss = dpo_loss(pol_w, pol_l, ref_w, ref_l, self.settings.beta)
        margin = self.settings.beta * ((pol_w - ref_w) - (pol_l - ref_l)).detach()
        return ObjectiveOutput(
            loss,
            {
                "dpo_margin": margin.mean(),
                "dpo_accuracy": (margin > 0).float().mean(),
                "chosen_logratio": (pol_w - ref_w).detach().mean(),
                "rejected_logratio": (pol_l - ref_l).detach().mean(),
            },
        )
