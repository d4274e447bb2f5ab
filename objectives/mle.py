"""Maximum-likelihood estimation: the baseline every report compares against."""

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
    token_nll,
)


@dataclass(frozen=True)
class MLESettings(ObjectiveSettings):
    """`label_smoothing` mixes the one-hot target with a uniform distribution (Szegedy et al.
    2016, "Rethinking the Inception Architecture", §7); 0 gives the plain negative
    log-likelihood."""

    label_smoothing: float = setting(0.0, ge=0.0, lt=1.0)


@register_objective("mle")
class MLE(Objective):
    """Next-token cross-entropy, i.e. the negative log-likelihood of the data under the model
    with teacher forcing (the "maximum likelihood" objective of Bengio et al. 2003, "A Neural
    Probabilistic Language Model", §2)."""

    Settings = MLESettings

    def loss(self, model: CausalLM, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        hidden = model.hidden_states(batch[:, :-1])  # (B, T, C)
        if self.settings.label_smoothing:
            loss = token_nll(model.logits(hidden), batch[:, 1:], self.settings.label_smoothing)
        else:
            loss = model.next_token_loss(hidden, batch[:, 1:])
        return ObjectiveOutput(loss=loss, logs={"nll": loss.detach()})
