"""Maximum-likelihood estimation: the baseline every report compares against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beyondmle.model import GPT
from objectives.base import Objective, ObjectiveOutput, ObjectiveSettings, TrainingState, token_nll
from objectives.registry import register_objective


@dataclass(frozen=True)
class MLESettings(ObjectiveSettings):
    """`label_smoothing` mixes the one-hot target with a uniform distribution (Szegedy et al.
    2016, "Rethinking the Inception Architecture", §7); 0 gives the plain negative
    log-likelihood."""

    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@register_objective("mle")
class MLE(Objective):
    """Next-token cross-entropy, i.e. the negative log-likelihood of the data under the model
    with teacher forcing (the "maximum likelihood" objective of Bengio et al. 2003, "A Neural
    Probabilistic Language Model", §2)."""

    Settings = MLESettings

    def loss(self, model: GPT, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        if self.settings.label_smoothing:
            loss = token_nll(model(batch[:, :-1]), batch[:, 1:], self.settings.label_smoothing)
        else:
            loss = model.nll(batch[:, :-1], batch[:, 1:])
        return ObjectiveOutput(loss=loss, logs={"nll": loss.detach()})
