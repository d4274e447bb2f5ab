"""The loggers a researcher already reads: Lightning's CSV log always (the record the report
reads), TensorBoard or W&B (offline) on request, each run named by its cell id."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from beyondmle.api import SettingsError
from beyondmle.model import ModelConfig
from beyondmle.training import ObjectiveModule, TrainingConfig, build_trainer

SPECIAL = {"eos": 0, "mask": 1, "sep": 2, "pad": 3}


def train_a_few_steps(tmp_path: Path, loggers: list[str]) -> Path:
    model = ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)
    training = TrainingConfig(
        budget_tokens=4 * 8 * 4, batch_size=4, precision="32-true", loggers=loggers
    )
    module = ObjectiveModule(asdict(model), "mle", {}, asdict(training), SPECIAL)
    trainer = build_trainer(training, tmp_path, False, enable_progress_bar=False, run_name="abc123")
    trainer.log_every_n_steps = 1
    trainer.fit(module, DataLoader(torch.randint(4, 32, (16, 9)), batch_size=4))
    return tmp_path


@pytest.mark.skipif(
    not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")),
    reason="needs tensorboard or tensorboardX (pip install beyondmle[tensorboard])",
)
def test_tensorboard_logs_beside_the_csv_record_under_the_cell_id(tmp_path: Path) -> None:
    out = train_a_few_steps(tmp_path, ["tensorboard"])
    events = list((out / "tensorboard" / "abc123").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    csv = (out / "logs" / "metrics.csv").read_text()
    assert "train/loss" in csv.splitlines()[0]


def test_without_loggers_only_the_csv_record_is_written(tmp_path: Path) -> None:
    out = train_a_few_steps(tmp_path, [])
    assert (out / "logs" / "metrics.csv").is_file()
    assert not (out / "tensorboard").exists()


def test_an_unknown_logger_is_refused_before_training() -> None:
    with pytest.raises(SettingsError, match="loggers must be names among tensorboard, wandb"):
        TrainingConfig(loggers=["mlflow"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_its_package_is_refused_naming_the_package() -> None:
    with pytest.raises(SettingsError, match=r"'wandb' needs the wandb package \(pip install"):
        TrainingConfig(loggers=["wandb"])
