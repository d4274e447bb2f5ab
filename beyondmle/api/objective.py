"""The `Objective` contract: what a training objective must say and do.

An objective is the only thing that differs between the benchmark's cells: every objective
trains the same shared model and is scored the same way. An objective declares

- its settings, a dataclass (`Settings`, a subclass of `ObjectiveSettings`) whose fields the
  spec's `[[objective]]` table fills; ranges are declared on the fields with `setting(...)`,
  so the spec is checked against them before anything trains;
- the loss for a batch (`loss`), or, with `manual_optimization = True`, a whole training step
  (`manual_step`) for objectives that juggle several optimizers (a GAN's discriminator, an RL
  reward model), as Lightning's manual optimization intends;
- the extra modules it owns (assigned as attributes: it is an `nn.Module`, so they are saved in
  the checkpoint) and their optimizers (`configure_optimizers`);
- whether it starts from an MLE-trained model (`warm_start`): the trainer then runs the `mle`
  objective for the first `warm_start_fraction` of the token budget (or loads
  `warm_start_checkpoint`), so every objective still consumes the same number of tokens;
- what it uses beyond the batch (`uses`, a subset of `USES`): a frozen reference policy, a
  reward model, preference pairs. The trainer hands them over once, before training, through
  `attach(Resources)`; the spec refuses an objective whose resources its run cannot give
  (no reference without the fine-tuning regime or a `warm_start_checkpoint`, no reward model
  without a `[[preferences]]` table).

Objectives receive batches of token blocks (B, T + 1): inputs are `batch[:, :-1]`, next-token
targets `batch[:, 1:]`. They reach the model only through the model interface
(`beyondmle.api.CausalLM`), so they train any model that implements it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from beyondmle.api.lm import CausalLM, ModelInfo
from beyondmle.api.registry import Registry
from beyondmle.settings import Problem, Settings, setting
from beyondmle.tokenization import SpecialTokens

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveDiverged",
    "ObjectiveOutput",
    "ObjectiveSettings",
    "Optimizers",
    "Resources",
    "USES",
    "SpecialTokens",
    "TrainingState",
    "available_objectives",
    "get_objective",
    "register_objective",
    "token_nll",
]


class ObjectiveDiverged(RuntimeError):
    """Raised by an objective that detects a collapsed or diverged run (a NaN loss, a
    discriminator that wins outright, a generator that emits one token). The runner records the
    cell as failed with this message instead of evaluating garbage."""


@dataclass(frozen=True)
class ObjectiveSettings(Settings):
    """Settings every objective has; subclasses add their own fields with defaults."""

    warm_start_fraction: float = setting(0.0, ge=0.0, lt=1.0)
    warm_start_checkpoint: str | None = None


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


USES = frozenset({"reference", "reward_model", "preference_pairs"})


@dataclass
class Resources:
    """What the trainer gives an objective beyond its batches (see `Objective.uses`). All of it
    is frozen: never trained, not saved with the objective, but its passes count as compute.

    - reference: the reference policy (a `CausalLM`: the MLE base it fine-tunes from);
    - reward: the proxy reward (n,) of continuations (n, L) after prompts (n, P), from
      `reward_model`, the learned reward model (a module with a scalar head);
    - pairs: the training preference pairs (`beyondmle.api.PreferencePairs`);
    - gold: the true reward (n,) of continuations where the preference source knows one.
    """

    reference: Any = None
    reward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    reward_model: nn.Module | None = None
    pairs: Any = None
    gold: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.reference, self.reward_model) if isinstance(m, nn.Module)]


class Objective(nn.Module):
    """Base class of all objectives; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[ObjectiveSettings]] = ObjectiveSettings
    manual_optimization: ClassVar[bool] = False
    warm_start: ClassVar[bool] = False
    uses: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, settings: ObjectiveSettings, model: ModelInfo, special: SpecialTokens
    ) -> None:
        super().__init__()
        self.settings = settings
        self.model_info = model
        self.special = special
        # The objective's own randomness: pass it to every draw (torch.rand(..., generator=),
        # sampling, noise). The trainer seeds it from the cell's seed and checkpoints it, so an
        # objective's draws never shift the data order or another objective's stream.
        self.generator = torch.Generator()
        self.resources = Resources()

    @classmethod
    def check_with(cls, settings: ObjectiveSettings, model: dict) -> list[Problem]:
        """Problems of these settings with the spec's `[model]` table (a rollout longer than
        the context, say), found before anything trains; none by default."""
        return []

    def attach(self, resources: Resources) -> None:
        """Receive the frozen resources named in `uses`, once, before training (and before a
        checkpoint is restored, so modules built from them here are restored too)."""
        self.resources = resources

    def loss(self, model: CausalLM, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        """The training loss of one batch (B, T + 1), for automatic optimization."""
        raise NotImplementedError(f"objective {self.name!r} must implement loss()")

    def manual_step(
        self, model: CausalLM, batch: torch.Tensor, state: TrainingState, optimizers: Optimizers
    ) -> dict[str, float | torch.Tensor]:
        """One whole training step under manual optimization; returns the scalars to log."""
        raise NotImplementedError(f"objective {self.name!r} must implement manual_step()")

    def configure_optimizers(
        self, lr: float, weight_decay: float
    ) -> dict[str, torch.optim.Optimizer]:
        """Optimizers for the modules this objective owns, by name (never `"model"`)."""
        return {}

    def model_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        """The shared model's optimizer for this objective's own phase (after any warm start),
        when its paper prescribes one (ScratchGAN's Adam with beta1 = 0.5, say); None: the
        trainer's AdamW throughout. Needs `manual_optimization`."""
        return None

    def learning_rate(self, state: TrainingState) -> float | None:
        """The model's learning rate at this step of the objective's own phase, for objectives
        that run their own schedule (a fine-tuning phase, a GAN's constant rate); None: the
        trainer's warmup-cosine schedule."""
        return None


def token_nll(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean next-token negative log-likelihood of targets (B, T) under logits (B, T, V).

    Targets equal to -100 are ignored, as in `F.cross_entropy`. Objectives that need no
    logits for other reasons use `model.next_token_loss` instead, which forms none.
    """
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def _check_objective(name: str, cls: object) -> type[Objective]:
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"objective {name!r}: {cls!r} is not a subclass of Objective")
    settings = cls.Settings
    if not (dataclasses.is_dataclass(settings) and issubclass(settings, ObjectiveSettings)):
        raise TypeError(f"objective {name!r}: Settings must be a dataclass of ObjectiveSettings")
    if not set(cls.uses) <= USES:
        unknown = ", ".join(sorted(set(cls.uses) - USES))
        raise TypeError(f"objective {name!r} uses {unknown}; known: {', '.join(sorted(USES))}")
    method = "manual_step" if cls.manual_optimization else "loss"
    if getattr(cls, method) is getattr(Objective, method):
        raise TypeError(f"objective {name!r} must implement {method}()")
    cls.name = name
    return cls


OBJECTIVES: Registry[type[Objective]] = Registry(
    "objective", "beyondmle.objectives", _check_objective
)


def register_objective(name: str) -> Callable:
    """Class decorator: register an `Objective` subclass under `name`."""
    return OBJECTIVES.register(name)


def get_objective(name: str) -> type[Objective]:
    return OBJECTIVES.get(name)


def available_objectives() -> dict[str, type[Objective]]:
    return OBJECTIVES.items()
