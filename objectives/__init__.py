"""Training objectives as plugins: the `Objective` contract, the registry and the built-ins."""

from objectives.base import (
    Objective,
    ObjectiveDiverged,
    ObjectiveOutput,
    ObjectiveSettings,
    Optimizers,
    SpecialTokens,
    TrainingState,
    token_nll,
)
from objectives.registry import available_objectives, get_objective, register_objective

__all__ = [
    "Objective",
    "ObjectiveDiverged",
    "ObjectiveOutput",
    "ObjectiveSettings",
    "Optimizers",
    "SpecialTokens",
    "TrainingState",
    "available_objectives",
    "get_objective",
    "register_objective",
    "token_nll",
]
