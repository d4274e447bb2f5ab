"""Training: one LightningModule wraps the shared model and an objective; the Trainer owns
the loop, precision, devices, checkpoints and logs.

Budgets are in training tokens (batch × block × devices × nodes per step), identical for every
objective, so objectives compare on equal data. Objectives that declare `warm_start` train
with the registered `mle` objective for the first `warm_start_fraction` of that budget, then
switch.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from beyondmle.api import (
    CausalLM,
    ObjectiveDiverged,
    Optimizers,
    Problem,
    Resources,
    Settings,
    SpecialTokens,
    TrainingState,
    get_objective,
    setting,
)
from beyondmle.data import derive_seed
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.hf_model import build_model
from beyondmle.model import Compute, ModelConfig
from beyondmle.precision import choose_precision
from beyondmle.rl import continuation_log_probs, kl_k3
from beyondmle.tokenization import Tokenizer, tokenizer_from_json

OWN_MODEL_OPTIMIZER = "model (objective's own)"
# "tokens": every objective trains on the same data; "flops": on the same compute
# (`budget_flops`, counted by `beyondmle.model.Compute`), however many tokens that takes.
BUDGETS = ("tokens", "flops")
TF_NLL_EVERY = 10  # steps between measurements of the batch's teacher-forced NLL
PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true", "bf16-true", "64-true")


@dataclass(frozen=True)
class TrainingConfig(Settings):
    """The spec's `[training]` table. `precision` is `auto` (the fastest this hardware really
    has, `beyondmle.precision`) or Lightning's (`bf16-mixed`, `32-true`, ...);
    `accelerator`, `devices` and `strategy` go to the Trainer unchanged, so the same spec runs on
    CPU or GPUs."""

    budget_tokens: int = setting(1_000_000, ge=1)
    batch_size: int = setting(32, ge=1)
    lr: float = setting(1e-3, gt=0.0)
    min_lr_ratio: float = setting(0.1, ge=0.0, le=1.0)
    warmup_fraction: float = setting(0.02, ge=0.0, le=1.0)
    weight_decay: float = setting(0.1, ge=0.0)
    beta1: float = setting(0.9, ge=0.0, le=1.0)
    beta2: float = setting(0.95, ge=0.0, le=1.0)
    grad_clip: float = setting(1.0, ge=0.0)
    precision: str = setting("auto", choices=PRECISIONS)
    val_every_steps: int = setting(200, ge=1)
    checkpoint_every_steps: int = setting(200, ge=1)
    accelerator: str = "auto"
    devices: int = setting(1, ge=1)
    num_nodes: int = setting(1, ge=1)
    strategy: str = "auto"
    loggers: list[str] = setting(default_factory=list)
    budget: str = setting("tokens", choices=BUDGETS)
    budget_flops: float | None = setting(None, gt=0.0)

    def cross_checks(self) -> list[Problem]:
        problems = []
        if self.budget == "flops" and self.budget_flops is None:
            problems.append(Problem("budget_flops", "a number of FLOPs (budget = 'flops')"))
        for name in self.loggers:
            if name not in LOGGERS:
                problems.append(Problem("loggers", f"names among {', '.join(LOGGERS)}", name))
            elif not LOGGERS[name]():
                problems.append(Problem("loggers", LOGGER_NEEDS[name], name))
        return problems

    @property
    def by_flops(self) -> bool:
        return self.budget == "flops"

    def tokens_per_step(self, block_size: int) -> int:
        """The global batch: `batch_size` rows per process, on every device of every node."""
        return self.batch_size * block_size * self.devices * self.num_nodes

    def total_steps(self, block_size: int) -> int:
        return max(1, self.budget_tokens // self.tokens_per_step(block_size))


def _installed(*modules: str) -> Callable[[], bool]:
    return lambda: any(importlib.util.find_spec(m) is not None for m in modules)


# Loggers beside the CSV log (which always stays: the report reads it), and what each needs.
LOGGERS = {"tensorboard": _installed("tensorboard", "tensorboardX"), "wandb": _installed("wandb")}
LOGGER_NEEDS = {
    "tensorboard": "an installed logger: 'tensorboard' needs tensorboard or tensorboardX "
    "(pip install beyondmle[tensorboard])",
    "wandb": "an installed logger: 'wandb' needs the wandb package (pip install wandb)",
}


def make_loggers(config: TrainingConfig, out_dir: Path, run_name: str) -> list:
    """Lightning's CSV logger (the record), plus the spec's `loggers`, each naming the run by
    its cell id. W&B runs offline: nothing leaves the machine unless the user syncs it."""
    loggers = [CSVLogger(out_dir, name="logs", version="")]
    for name in config.loggers:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(out_dir, name="tensorboard", version=run_name))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(
                WandbLogger(name=run_name, save_dir=str(out_dir), offline=True, id=run_name)
            )
    return loggers


@dataclass
class Probe:
    """The over-optimization probe (Gao et al. 2022): every `every_steps` steps, the policy
    continues the same `prompts` at temperature 1 with the same noise (common random numbers,
    so two probes differ only by the policy), and the proxy reward, the gold reward and the
    sequence KL to the reference are logged under `probe/`. Measurement, not training: its
    passes are not counted as training compute."""

    prompts: torch.Tensor
    length: int
    every_steps: int
    seed: int = 0


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ObjectiveModule(L.LightningModule):
    """The shared model trained under one objective. The model is `self.model`; the objective and
    any modules it owns (a discriminator, a reward model) are `self.objective`."""

    def __init__(
        self,
        model_config: dict,
        objective: str,
        objective_settings: dict,
        training: dict,
        special: dict,
        corpus: dict | None = None,
        tokenizer_json: str | None = None,
        seed: int = 0,
        init_checkpoint: str | None = None,
        resources: Resources | None = None,
        probe: Probe | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_json", "resources", "probe"])
        self.model_config = ModelConfig(**model_config)
        self.training_config = TrainingConfig(**training)
        self.model = build_model(self.model_config)
        cls = get_objective(objective)
        settings = cls.Settings(**objective_settings)
        special_tokens = SpecialTokens(**special)
        self.objective = cls(settings, self.model.info, special_tokens)
        # The objective's own draws (masks, noise, samples) come from this generator, saved
        # with the checkpoint, never from torch's global one (see `Objective.generator`).
        self.objective.generator.manual_seed(derive_seed(seed, "objective"))
        # Warm starts train with the registered MLE objective itself (default settings).
        mle = get_objective("mle")
        self.warm_objective = mle(mle.Settings(), self.model.info, special_tokens)
        # Frozen resources (a reference, a reward model, preference pairs) before any checkpoint
        # is restored, so modules an objective builds from them are restored too.
        self.resources = resources or Resources()
        if cls.uses:
            self.objective.attach(self.resources)
        self.probe = probe
        self.automatic_optimization = not cls.manual_optimization
        self.tokenizer_json = tokenizer_json
        self.total_steps = self.training_config.total_steps(self.model_config.block_size)
        self.warm_steps = int(settings.warm_start_fraction * self.total_steps)
        # Optimizer updates of the model so far; Lightning's global_step counts every optimizer
        # of a manual step, so the budget is tracked here and saved with the checkpoint.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # Compute spent on training (beyondmle.model.Compute): every model this module holds,
        # the objective's own (a discriminator) included; saved with the checkpoint.
        self.register_buffer("flops_done", torch.zeros((), dtype=torch.float64))
        self.register_buffer("forward_tokens_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("generated_tokens_done", torch.zeros((), dtype=torch.long))

    def counted_models(self) -> list[nn.Module]:
        """Every model whose passes count: this module's and the frozen resources' (the
        reference's and the reward model's passes are part of an RLHF step's cost)."""
        mine = [m for m in self.modules() if isinstance(getattr(m, "compute", None), Compute)]
        frozen = [
            m
            for r in self.resources.modules()
            for m in r.modules()
            if isinstance(getattr(m, "compute", None), Compute)
        ]
        return mine + [m for m in frozen if all(m is not k for k in mine)]

    def compute_spent(self) -> dict[str, float]:
        """Training compute so far: FLOPs, data (target) tokens, positions run forward and
        tokens generated."""
        tokens = int(self.steps_done) * self.training_config.tokens_per_step(
            self.model_config.block_size
        )
        return {
            "train_flops": float(self.flops_done),
            "train_tokens": float(tokens),
            "forward_tokens": float(self.forward_tokens_done),
            "generated_tokens": float(self.generated_tokens_done),
        }

    def on_fit_start(self) -> None:
        # A fine-tuning cell starts from its base; an objective may name its own warm start.
        path = self.hparams.init_checkpoint or self.objective.settings.warm_start_checkpoint
        if path and int(self.steps_done) == 0:
            model, _, _ = load_model(path, map_location=str(self.device))
            self.model.load_state_dict(model.state_dict())
        for module in self.resources.modules():
            module.to(self.device)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        if int(self.steps_done) % TF_NLL_EVERY == 0:
            self.log("train/tf_nll", self.teacher_forced_nll(batch), batch_size=batch.size(0))
        if self.probe is not None and int(self.steps_done) % self.probe.every_steps == 0:
            self.log_dict(self.run_probe(), batch_size=batch.size(0))
        models = self.counted_models()
        for m in models:
            m.compute.reset()
        loss = self._training_step(batch)
        self.flops_done += sum(m.compute.flops for m in models)
        self.forward_tokens_done += sum(m.compute.forward_tokens for m in models)
        self.generated_tokens_done += sum(m.compute.generated_tokens for m in models)
        return loss

    @torch.no_grad()
    def teacher_forced_nll(self, batch: torch.Tensor) -> torch.Tensor:
        """The NLL of the batch's next tokens given the gold prefix, before this step's update
        and without dropout: the one training curve every objective shares with MLE (an
        objective's own loss measures different things). Not counted as training compute."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model.next_token_loss(self.model.hidden_states(batch[:, :-1]), batch[:, 1:])
        finally:
            self.model.train(was_training)

    def on_train_end(self) -> None:
        if self.probe is not None and self.logger is not None:
            values = {k: float(v) for k, v in self.run_probe().items()}
            for logger in self.loggers:
                logger.log_metrics(values, step=int(self.steps_done))

    @torch.no_grad()
    def run_probe(self) -> dict[str, torch.Tensor]:
        """See `Probe`; KL(policy || reference) of the whole continuation, by the k1 and k3
        estimators (Schulman 2020) summed over its tokens."""
        probe, r = self.probe, self.resources
        prompts = probe.prompts.to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            generator = torch.Generator(device=self.device).manual_seed(probe.seed)
            rows = generate(
                self.model, prompts, probe.length, DecodingConfig(), generator=generator
            )
            sample = torch.tensor(rows, dtype=torch.long, device=self.device)
            log_p = continuation_log_probs(self.model, prompts, sample)
            out = {}
            if r.reference is not None:
                log_q = continuation_log_probs(r.reference, prompts, sample)
                out["probe/kl_k1"] = (log_p - log_q).sum(1).mean()
                out["probe/kl_k3"] = kl_k3(log_p, log_q).sum(1).mean()
            if r.reward is not None:
                out["probe/proxy_reward"] = r.reward(prompts, sample).mean()
            if r.gold is not None:
                out["probe/gold_reward"] = r.gold(prompts, sample).float().mean()
            return out
        finally:
            self.model.train(was_training)

    def budget_progress(self) -> float:
        """The share of the budget spent: tokens (steps) or FLOPs."""
        cfg = self.training_config
        if cfg.by_flops:
            return min(1.0, float(self.flops_done) / cfg.budget_flops)
        return min(1.0, int(self.steps_done) / self.total_steps)

    def budget_spent(self) -> bool:
        if self.training_config.by_flops:
            return float(self.flops_done) >= self.training_config.budget_flops
        return int(self.steps_done) >= self.total_steps

    def state_at(self, step: int) -> tuple[bool, TrainingState]:
        """Whether `step` is in the warm start, and the objective's view of it: progress over
        the objective's own share of the budget (steps, or FLOPs spent so far)."""
        if self.training_config.by_flops:
            f = self.objective.settings.warm_start_fraction
            spent = self.budget_progress()
            return spent < f, TrainingState(step=step, progress=max(0.0, (spent - f) / (1 - f)))
        own_steps = max(1, self.total_steps - self.warm_steps)
        progress = max(0.0, (step - self.warm_steps) / own_steps)
        return step < self.warm_steps, TrainingState(step=step, progress=progress)

    def _training_step(self, batch: torch.Tensor) -> torch.Tensor | None:
        step = int(self.steps_done)
        in_warm_start, state = self.state_at(step)
        self._state = (in_warm_start, state)
        if in_warm_start:
            out = self.warm_objective.loss(self.model, batch, state)
            loss, logs = out.loss, out.logs
        elif self.automatic_optimization:
            out = self.objective.loss(self.model, batch, state)
            loss, logs = out.loss, out.logs
        else:
            loss = None
            logs = self.objective.manual_step(self.model, batch, state, Optimizers(self._manual))
        if loss is not None and not torch.isfinite(loss):
            raise ObjectiveDiverged(f"non-finite training loss {loss.item()} at step {step}")
        if in_warm_start and not self.automatic_optimization:
            self._manual("model", loss)
        self.steps_done += 1
        self._log_step(loss, logs, batch.size(0))
        return loss if self.automatic_optimization else None

    def lr_factor(self, step: int) -> float:
        """The model's learning rate at `step` over the spec's `lr`: the objective's own
        schedule in its own phase where it has one, else warmup-cosine over the budget."""
        cfg = self.training_config
        in_warm_start, state = self.state_at(step)
        own = None if in_warm_start else self.objective.learning_rate(state)
        if own is not None:
            return own / cfg.lr
        if cfg.by_flops:  # the same schedule over the share of FLOPs spent
            spent = self.budget_progress()
            return cosine_with_warmup(
                spent * 10**6, 10**6, max(1, cfg.warmup_fraction * 10**6), cfg.min_lr_ratio
            )
        warmup = max(1, int(cfg.warmup_fraction * self.total_steps))
        return cosine_with_warmup(step, self.total_steps, warmup, cfg.min_lr_ratio)

    def _log_step(self, loss: torch.Tensor | None, logs: dict, batch_size: int) -> None:
        tokens = int(self.steps_done) * self.training_config.tokens_per_step(
            self.model_config.block_size
        )
        values = {f"train/{k}": v for k, v in logs.items()}
        if loss is not None:
            values["train/loss"] = loss.detach()
        values["train/tokens"] = float(tokens)
        self.log_dict(values, prog_bar=False, batch_size=batch_size)
        if loss is not None:
            self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)

    def _manual(self, name: str, loss: torch.Tensor) -> None:
        """One update of optimizer `name` under manual optimization (see `Optimizers`). In the
        objective's own phase "model" is its own model optimizer, if it declared one."""
        names = ["model", *self._extra_names]
        in_warm_start, state = self._state
        if name == "model" and self._own_model_optimizer and not in_warm_start:
            name = OWN_MODEL_OPTIMIZER
        opts = self.optimizers()
        opt = opts[names.index(name)] if isinstance(opts, list) else opts
        if name == OWN_MODEL_OPTIMIZER:
            own_lr = self.objective.learning_rate(state)
            for group in opt.optimizer.param_groups if hasattr(opt, "optimizer") else []:
                group["lr"] = own_lr if own_lr is not None else group["initial_lr_own"]
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip = self.training_config.grad_clip
        if clip:
            self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt.step()
        if name == "model" and getattr(self, "_scheduled_at", -1) != int(self.steps_done):
            # Once per training step: an objective may update the model several times in one
            # step (PPO's epochs), and the schedule is over steps.
            self._scheduled_at = int(self.steps_done)
            scheduler = self.lr_schedulers()
            (scheduler[0] if isinstance(scheduler, list) else scheduler).step()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self.model.next_token_loss(self.model.hidden_states(batch[:, :-1]), batch[:, 1:])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch.size(0), sync_dist=True)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.budget_spent():
            self.trainer.should_stop = True

    def configure_optimizers(self):
        cfg = self.training_config
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        extra = self.objective.configure_optimizers(cfg.lr, cfg.weight_decay)
        if "model" in extra or OWN_MODEL_OPTIMIZER in extra:
            raise ValueError(
                f"objective {self.hparams.objective!r} names an optimizer 'model' or "
                f"{OWN_MODEL_OPTIMIZER!r}"
            )
        own = self.objective.model_optimizer(list(self.model.parameters()))
        self._own_model_optimizer = own is not None
        if own is not None:
            if self.automatic_optimization:
                raise ValueError(
                    f"objective {self.hparams.objective!r} declares its own model optimizer; "
                    "that needs manual_optimization = True"
                )
            for group in own.param_groups:
                group["initial_lr_own"] = group["lr"]
            extra = {**extra, OWN_MODEL_OPTIMIZER: own}
        self._extra_names = list(extra)
        if self.automatic_optimization:
            if extra:
                raise ValueError(
                    f"objective {self.hparams.objective!r} owns optimizers {list(extra)}; "
                    "objectives with several optimizers must set manual_optimization = True"
                )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }
        return [optimizer, *extra.values()], [scheduler]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer_json
        checkpoint["objective_generator"] = self.objective.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer_json = checkpoint.get("tokenizer")
        if "objective_generator" in checkpoint:
            self.objective.generator.set_state(checkpoint["objective_generator"])


class ProgressLog(Callback):
    """Calls `report(done, total)` after every training step, for progress across a matrix."""

    def __init__(self, report) -> None:
        self.report = report

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.training_config.by_flops:  # a step count is not known beforehand
            self.report(round(1000 * module.budget_progress()), 1000)
        else:
            self.report(int(module.steps_done), module.total_steps)


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects beyond tensors and plain containers."""


def safe_load(path: str | Path, map_location="cpu") -> dict:
    """`torch.load` with `weights_only=True`: tensors, numbers, strings and containers only, so
    a results directory received from someone else cannot run code when it is read."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"checkpoint {path} was refused: it holds pickled Python objects{what}, which could "
            "run code when loaded; only tensors and plain values are read. Train the cell again "
            "(delete its directory), or load the file yourself only if you trust its source."
        ) from None


def save_weights(module: ObjectiveModule, path: str | Path) -> None:
    """A module's weights, hyperparameters and tokenizer, as `trainer.save_checkpoint(...,
    weights_only=True)` writes them, without a Trainer: for a model saved untrained."""
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary sibling and renamed into place, so a run killed
    mid-save leaves the previous checkpoint whole and the cell can still resume. They are
    read with `safe_load`, never as arbitrary pickles."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return safe_load(path, map_location if map_location is not None else "cpu")


class DistributedTeardown(Callback):
    """At the end of a multi-process fit: a barrier, then the process group is destroyed. gloo
    can abort a process that exits with its group alive; after this, rank 0 evaluates alone and
    the other ranks exit cleanly."""

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def cluster_environment():
    """Who says where the ranks are. A SLURM launch of several tasks: SLURM (its requeueing
    off: the launcher owns it). torchrun: torch elastic's variables. Anything else, a plain
    `python` included: Lightning's own, which spawns the other local ranks itself. SLURM
    variables alone do not make a SLURM launch: they leak into processes started inside an
    allocation, and Lightning would then wait for ranks that never come."""
    from lightning.pytorch.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return SLURMEnvironment(auto_requeue=False)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return TorchElasticEnvironment()
    return LightningEnvironment()


def build_trainer(
    config: TrainingConfig,
    out_dir: Path,
    manual_optimization: bool,
    callbacks: list[Callback] = (),
    enable_progress_bar: bool = True,
    precision: str | None = None,
    run_name: str = "run",
) -> L.Trainer:
    """A Trainer that stops on the token budget (the module sets `should_stop`), keeps a
    resumable `checkpoints/last.ckpt` and writes CSV logs to `logs/`. `precision` is the
    resolved one (default: `config.precision` resolved by `choose_precision`)."""
    if precision is None:
        precision = choose_precision(config.precision, config.accelerator).precision
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=config.checkpoint_every_steps,
    )
    return L.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=precision,
        max_epochs=-1,
        max_steps=-1,
        gradient_clip_val=None if manual_optimization else (config.grad_clip or None),
        val_check_interval=config.val_every_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        logger=make_loggers(config, out_dir, run_name),
        callbacks=[checkpoint, DistributedTeardown(), *callbacks],
        plugins=[AtomicCheckpointIO(), cluster_environment()],
        use_distributed_sampler=False,  # GlobalBatchSampler: one data order at any scale
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[CausalLM, Tokenizer, dict]:
    """The shared model, its tokenizer and the checkpoint's hyperparameters, from a checkpoint
    written by training. The objective's own modules are not needed to generate, so they are
    dropped."""
    ckpt = safe_load(path, map_location)
    hparams = ckpt["hyper_parameters"]
    model = build_model(ModelConfig(**hparams["model_config"]))
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    model.eval()
    if ckpt.get("tokenizer") is None:
        raise ValueError(f"checkpoint {path} holds no tokenizer")
    return model, tokenizer_from_json(ckpt["tokenizer"]), hparams
