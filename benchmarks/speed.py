"""Training and generation speed of the shared model through the real Lightning path.

    python benchmarks/speed.py [--seconds 10] [--precision auto]

Prints the CPU kind and the precision `auto` chose (and why), then:
- training tokens/s of the kernel path (4 layers, 4 heads, width 256, context 128, batch 32,
  vocabulary 10k, no dropout, synthetic batches) and of the real path: `ptb-mle.toml`'s model
  (dropout 0.2) on PTB through the data module, with validation and checkpoints measured and
  charged at that preset's cadence, so any gap between the two stays visible;
- this machine's fp32 and bf16 matrix-multiply peaks, measured in the same run, and the
  model-FLOPs utilization (MFU) against the best peak the hardware offers (the higher of the
  two), and against the peak of the precision trained in;
- KV-cached generation against recomputing the whole context every step;
- the sampling step alone, on PTB-sized rows (vocabulary 10k): our inverse-CDF draw against
  `torch.multinomial`, the row sorts (radix and float), and a whole top-p 0.9 draw, which
  samples by rejection and sorts nothing.

FLOPs per token = 6·N + 12·L·T·d, N = parameters excluding position embeddings (nanoGPT's
`estimate_mfu`, after Kaplan et al. 2020 and the PaLM paper, App. B).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from beyondmle.api import load_corpus
from beyondmle.data import LanguageDataModule
from beyondmle.decoding import (
    DecodingConfig,
    generate,
    next_token,
    sample_categorical,
    sort_rows_descending,
)
from beyondmle.model import GPT, ModelConfig
from beyondmle.precision import choose_precision, describe_cpu
from beyondmle.spec import parse_spec
from beyondmle.training import ObjectiveModule, TrainingConfig, build_trainer

PRESET = Path(__file__).with_name("ptb-mle.toml")

SPECIAL = {"eos": 0, "mask": 1, "sep": 2, "pad": 3}


class StepTimer(Callback):
    """Times training steps after a warm-up, and stops the run after `seconds`."""

    def __init__(self, warmup_steps: int, seconds: float) -> None:
        self.warmup_steps, self.seconds = warmup_steps, seconds
        self.start: float | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.warmup_steps:
            self.start = time.perf_counter()
        elif self.start is not None:
            self.steps += 1
            if time.perf_counter() - self.start > self.seconds:
                self.elapsed = time.perf_counter() - self.start
                trainer.should_stop = True


class RealPathTimer(Callback):
    """Times the real loop: each training step, the gap between steps (data loading, logging,
    and at checkpoint steps the save), and each validation; stops after `seconds`."""

    def __init__(self, warmup_steps: int, seconds: float, checkpoint_every: int, val_every: int):
        self.warmup_steps, self.seconds = warmup_steps, seconds
        self.every, self.val_every = checkpoint_every, val_every
        self.steps: list[float] = []
        self.gaps: list[float] = []
        self.checkpoint_gaps: list[float] = []
        self.validations: list[float] = []
        self.begin: float | None = None
        self.last_end: float | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.last_end is not None and batch_idx > self.warmup_steps:
            gap = now - self.last_end
            if batch_idx % self.val_every:  # validation resets the clock: see below
                (self.checkpoint_gaps if batch_idx % self.every == 0 else self.gaps).append(gap)
        self.step_start = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.last_end = time.perf_counter()
        if batch_idx >= self.warmup_steps:
            self.steps.append(self.last_end - self.step_start)
            self.begin = self.begin or self.step_start
            if self.last_end - self.begin > self.seconds:
                trainer.should_stop = True

    def on_validation_start(self, trainer, module) -> None:
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        self.validations.append(time.perf_counter() - self.val_start)
        self.last_end = time.perf_counter()  # the gap after validation is not loading time


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def real_path_speed(seconds: float, precision: str) -> dict[str, float]:
    """The preset's model and data through `build_trainer`, validating and checkpointing every
    `cadence` steps so both are measured; their cost is then charged at the preset's cadence."""
    spec = parse_spec(PRESET)
    corpus = load_corpus("ptb")
    model = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **spec.model)
    cadence, val_cadence = 5, 7
    training = replace(
        spec.training,
        precision=precision,
        val_every_steps=val_cadence,
        checkpoint_every_steps=cadence,
    )
    module = ObjectiveModule(
        asdict(model), "mle", {}, asdict(training), asdict(corpus.tokenizer.special)
    )
    data = LanguageDataModule(corpus, model.block_size, training.batch_size)
    timer = RealPathTimer(3, seconds, checkpoint_every=cadence, val_every=val_cadence)
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(training, Path(out), False, [timer], False, precision=precision)
        trainer.fit(module, data)
    tokens = training.batch_size * model.block_size
    step, gap = median(timer.steps), median(timer.gaps)
    checkpoint = max(0.0, median(timer.checkpoint_gaps) - gap)
    validation = median(timer.validations)
    per_step = (
        step
        + gap
        + checkpoint / spec.training.checkpoint_every_steps
        + validation / spec.training.val_every_steps
    )
    return {
        "tokens_per_s": tokens / per_step,
        "step": step,
        "gap": gap,
        "checkpoint": checkpoint,
        "validation": validation,
        "val_every": spec.training.val_every_steps,
        "checkpoint_every": spec.training.checkpoint_every_steps,
        "dropout": model.dropout,
    }


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, seconds: float = 2.0) -> float:
    """Achieved FLOP/s of square matrix multiplies under autocast, the denominator of MFU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(3):
            a @ b
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def train_speed(seconds: float, precision: str) -> tuple[float, ModelConfig, int]:
    config = ModelConfig(
        vocab_size=10_000, block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0.0
    )
    training = TrainingConfig(budget_tokens=10**9, batch_size=32, precision=precision)
    module = ObjectiveModule(asdict(config), "mle", {}, asdict(training), SPECIAL)
    data = torch.randint(4, config.vocab_size, (64 * 32, config.block_size + 1))
    loader = DataLoader(
        TensorDataset(data),
        batch_size=32,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda rows: torch.stack([r[0] for r in rows]),
    )
    timer = StepTimer(warmup_steps=5, seconds=seconds)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=-1,
        max_epochs=-1,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    tokens_per_s = timer.steps * 32 * config.block_size / timer.elapsed
    return tokens_per_s, config, module.model.num_params()


def generation_speed(batch: int, prompt: int, new: int) -> tuple[float, float]:
    config = ModelConfig(
        vocab_size=10_000, block_size=prompt + new, n_layer=4, n_head=4, n_embd=256, dropout=0.0
    )
    model = GPT(config).eval()
    prompts = torch.randint(4, config.vocab_size, (batch, prompt))
    greedy = DecodingConfig(greedy=True)
    rates = []
    for use_cache in (True, False):
        start = time.perf_counter()
        generate(model, prompts, new, greedy, use_cache=use_cache)
        rates.append(batch * new / (time.perf_counter() - start))
    return rates[0], rates[1]


def best_ms(function, repeats: int = 20) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def sampling_speed(batch: int, vocab: int = 10_000) -> dict[str, float]:
    """Milliseconds per call (best of 20) of each sampling primitive on (batch, vocab) rows."""
    generator = torch.Generator().manual_seed(0)
    logits = 2.5 * torch.randn(batch, vocab, generator=generator)
    probs = logits.softmax(dim=-1)
    top_p = DecodingConfig(top_p=0.9)
    return {
        "multinomial": best_ms(lambda: torch.multinomial(probs, 1, generator=generator)),
        "ours": best_ms(lambda: sample_categorical(probs, generator)),
        "float sort": best_ms(lambda: torch.sort(probs, dim=-1, descending=True)),
        "radix sort": best_ms(lambda: sort_rows_descending(probs)),
        "nucleus": best_ms(lambda: next_token(logits, top_p, generator)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    choice = choose_precision(args.precision, "cpu")
    precision = choice.precision

    peaks_before = {d: matmul_peak(d) for d in (torch.float32, torch.bfloat16)}
    tokens_per_s, config, n_params = train_speed(args.seconds, precision)
    real = real_path_speed(args.seconds, precision)
    peaks_after = {d: matmul_peak(d) for d in (torch.float32, torch.bfloat16)}
    # The higher of two measurements each: a conservative denominator on a noisy machine.
    peaks = {d: max(peaks_before[d], peaks_after[d]) for d in peaks_before}
    best = max(peaks.values())
    own = peaks[torch.bfloat16 if precision.startswith("bf16") else torch.float32]
    flops_per_token = 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd
    print(f"CPU: {describe_cpu()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"precision: {precision} ({choice.reason})")
    print(
        f"model: {config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, "
        f"context {config.block_size}, batch 32, vocabulary {config.vocab_size}, "
        f"N = {n_params / 1e6:.2f}M parameters without positions"
    )
    print(f"training, kernel path (no dropout, synthetic batches): {tokens_per_s:,.0f} tokens/s")
    print(
        f"training, real path ({PRESET.name}: dropout {real['dropout']}, PTB data module, "
        f"validation every {real['val_every']} and checkpoint every "
        f"{real['checkpoint_every']} steps): {real['tokens_per_s']:,.0f} tokens/s"
    )
    print(
        f"  per step: {1e3 * real['step']:.0f} ms training, {1e3 * real['gap']:.1f} ms between "
        f"steps; a validation {1e3 * real['validation']:.0f} ms, a checkpoint "
        f"{1e3 * real['checkpoint']:.0f} ms"
    )
    print(
        f"matmul peaks:    fp32 {peaks[torch.float32] / 1e9:,.0f}, bf16 "
        f"{peaks[torch.bfloat16] / 1e9:,.0f} GFLOP/s (2048x2048, the higher of before and after)"
    )
    print(f"FLOPs per token: 6*N + 12*L*T*d = {flops_per_token / 1e6:.1f} MFLOP")
    print(
        f"MFU:             {tokens_per_s * flops_per_token / best:.3f} against the best peak "
        f"({best / 1e9:,.0f} GFLOP/s); {tokens_per_s * flops_per_token / own:.3f} against "
        f"{precision}'s own"
    )

    cached, recomputed = generation_speed(batch=8, prompt=128, new=256)
    print("generation, 8 prompts x 128 tokens, 256 new tokens, context 384:")
    print(f"  KV cache:      {cached:,.0f} tokens/s")
    print(f"  recompute:     {recomputed:,.0f} tokens/s")
    print(f"  speed-up:      {cached / recomputed:.1f}x  (target >= 5x)")

    for batch in (64, 2048):
        t = sampling_speed(batch)
        print(f"sampling, {batch} rows x 10k tokens (ms per call, best of 20):")
        print(
            f"  draw:          torch.multinomial {t['multinomial']:.2f}, ours {t['ours']:.2f} "
            f"({t['multinomial'] / t['ours']:.1f}x)"
        )
        print(
            f"  top-p sort:    float per row {t['float sort']:.2f}, radix {t['radix sort']:.2f} "
            f"({t['float sort'] / t['radix sort']:.1f}x)"
        )
        print(f"  top-p 0.9 draw by rejection, no sort: {t['nucleus']:.2f}")


if __name__ == "__main__":
    main()
