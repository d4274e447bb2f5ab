"""Training and generation speed of the shared model through the real Lightning path.

    python benchmarks/speed.py [--seconds 10] [--precision bf16-mixed]

Prints tokens/s of training (4 layers, 4 heads, width 256, context 128, batch 32, vocabulary
10k, bf16 autocast), this machine's bf16 matrix-multiply peak measured in the same run, the
model-FLOPs utilization (MFU), and KV-cached generation against recomputing the whole context
every step (context 512: 128-token prompts, 256 new tokens). Then the sampling step alone, on
PTB-sized rows (vocabulary 10k): our inverse-CDF draw against `torch.multinomial`, and the
radix row sort behind top-p against a float sort per row, at the batch of evaluation (64) and
of scheduled sampling's training pass (2048 = 32 x 64 positions).

FLOPs per token = 6·N + 12·L·T·d, N = parameters excluding position embeddings (nanoGPT's
`estimate_mfu`, after Kaplan et al. 2020 and the PaLM paper, App. B).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from beyondmle.decoding import DecodingConfig, generate, sample_categorical, sort_rows_descending
from beyondmle.model import GPT, ModelConfig
from beyondmle.training import ObjectiveModule, TrainingConfig

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
    probs = (2.5 * torch.randn(batch, vocab, generator=generator)).softmax(dim=-1)
    return {
        "multinomial": best_ms(lambda: torch.multinomial(probs, 1, generator=generator)),
        "ours": best_ms(lambda: sample_categorical(probs, generator)),
        "float sort": best_ms(lambda: torch.sort(probs, dim=-1, descending=True)),
        "radix sort": best_ms(lambda: sort_rows_descending(probs)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()
    torch.manual_seed(0)

    peak_dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float32
    peak_before = matmul_peak(peak_dtype)
    tokens_per_s, config, n_params = train_speed(args.seconds, args.precision)
    peak_after = matmul_peak(peak_dtype)
    # The higher of two measurements: a conservative denominator on a noisy shared machine.
    peak = max(peak_before, peak_after)
    flops_per_token = 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd
    mfu = tokens_per_s * flops_per_token / peak
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {args.precision}"
    )
    print(
        f"model: {config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, "
        f"context {config.block_size}, batch 32, vocabulary {config.vocab_size}, "
        f"N = {n_params / 1e6:.2f}M parameters without positions"
    )
    print(f"training:        {tokens_per_s:,.0f} tokens/s")
    print(
        f"matmul peak:     {peak / 1e9:,.0f} GFLOP/s ({peak_dtype}, 2048x2048, the higher of "
        f"{peak_before / 1e9:,.0f} before and {peak_after / 1e9:,.0f} after training)"
    )
    print(f"FLOPs per token: 6*N + 12*L*T*d = {flops_per_token / 1e6:.1f} MFLOP")
    print(f"MFU:             {mfu:.3f}  (target >= 0.55)")

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


if __name__ == "__main__":
    main()
