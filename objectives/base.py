"""The `Objective` contract: what a training objective must say and do.

An objective is the only thing that differs between the benchmark's cells: every objective
trains the same `beyondmle.model.GPT` and is scored the same way. An objective declares

- its settings, a dataclass (`Settings`) whose fields the spec's `[[objective]]` table fills;
  the spec is checked against it before anything trains;
- the loss for a batch (`loss`), or, with `manual_optimization = True`, a whole training step
  (`manual_step`) for objectives that juggle several optimizers (a GAN's discriminator, an RL
  reward model), as Lightning's manual optimization intends;
- the extra modules it owns (assigned as attributes: it is an `nn.Module`, so they are saved in
  the checkpoint) and their optimizers (`configure_optimizers`);
- whether it starts from an MLE-trained model (`warm_start`): the trainer then runs plain MLE
  for the first `warm_start_fraction` of the token budget (or loads `warm_start_checkpoint`),
  so every objective still consumes the same number of training tokens.

Objectives receive batches of token blocks (B, T + 1): inputs are `batch[:, :-1]`, next-token
targets `batch[:, 1:]`. They never import the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from beyondmle.model import GPT, ModelConfig


class ObjectiveDiverged(RuntimeError):
    """Raised by an objective that detects a collapsed or diverged run (a NaN loss, a
    discriminator that wins outright, a generator that emits one token). The runner records the
    cell as failed with this message instead of evaluating garbage."""


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens every tokenizer reserves, for objectives that need them."""

    eos: int
    mask: int
    sep: int
    pad: int


@dataclass(frozen=True)
class ObjectiveSettings:
    """Settings every objective has; subclasses add their own fields with defaults."""

    warm_start_fraction: float = 0.0
    warm_start_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.warm_start_fraction < 1.0:
            raise ValueError(
                f"warm_start_fraction must be in [0, 1), got {self.warm_start_fraction}"
            )


@dataclass(frozen=True)
class TrainingState:
    """Where training stands, for objectives with schedules (sampling rates, temperatures)."""

    step: int
    progress: float  # share of the objective's own token budget consumed, in [0, 1]


@dataclass
class ObjectiveOutput:
    """A batch's loss and the scalars to log under `train/<name>`."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


class Optimizers:
    """What `manual_step` gets to update parameters: named optimizers, one call per update.

    `step(name, loss)` zeroes that optimizer's gradients, backpropagates `loss` (through
    Lightning, so precision and distributed strategies apply), clips gradients and steps the
    optimizer and its learning-rate schedule. The shared model's optimizer is `"model"`.
    """

    def __init__(self, step: Callable[[str, torch.Tensor], None]) -> None:
        self._step = step

    def step(self, name: str, loss: torch.Tensor) -> None:
        self._step(name, loss)


class Objective(nn.Module):
    """Base class of all objectives; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[ObjectiveSettings]] = ObjectiveSettings
    manual_optimization: ClassVar[bool] = False
    warm_start: ClassVar[bool] = False

    def __init__(
        self, settings: ObjectiveSettings, model_config: ModelConfig, special: SpecialTokens
    ) -> None:
        super().__init__()
        self.settings = settings
        self.model_config = model_config
        self.special = special

    def loss(self, model: GPT, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        """The training loss of one batch (B, T + 1), for automatic optimization."""
        raise NotImplementedError(f"objective {self.name!r} must implement loss()")

    def manual_step(
        self, model: GPT, batch: torch.Tensor, state: TrainingState, optimizers: Optimizers
    ) -> dict[str, float | torch.Tensor]:
        """One whole training step under manual optimization; returns the scalars to log."""
        raise NotImplementedError(f"objective {self.name!r} must implement manual_step()")

    def configure_optimizers(
        self, lr: float, weight_decay: float
    ) -> dict[str, torch.optim.Optimizer]:
        """Optimizers for the modules this objective owns, by name (never `"model"`)."""
        return {}


def token_nll(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean next-token negative log-likelihood of targets (B, T) under logits (B, T, V).

    Targets equal to -100 are ignored, as in `F.cross_entropy`.
    """
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )
