"""Speed of the metrics layer, in one run.

- Self-BLEU-4: nltk's `sentence_bleu` loop against `beyondmle.metrics.self_bleu` at N samples of
  about 20 tokens from a Zipfian vocabulary (so n-grams collide as in text); every per-sample
  score must agree within 1e-9; ours is also timed at 2N and 4N to show linear growth. nltk runs
  once; ours, best of three.
- MAUVE featurization throughput: MiniLM sentences/s on 1,000 PTB sentences (no cache).
- The whole evaluation of one cell: a PTB model of the quick preset's size, the default
  evaluation (1,000 prompts, every metric) under one decoding setting.

    python benchmarks/metrics_speed.py [--n-samples 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

try:
    from beyondmle.metrics.diversity import self_bleu
except ModuleNotFoundError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from beyondmle.metrics.diversity import self_bleu

VOCABULARY_SIZE = 5000
MEAN_LENGTH = 20
ORDER = 4
TOLERANCE = 1e-9
OUR_REPEATS = 3

T = TypeVar("T")


def zipfian_samples(n_samples: int, seed: int) -> list[list[int]]:
    """Samples of 15 to 25 tokens, token r drawn with probability proportional to 1 / r."""
    rng = np.random.default_rng(seed)
    probabilities = 1 / np.arange(1, VOCABULARY_SIZE + 1)
    probabilities /= probabilities.sum()
    lengths = rng.integers(MEAN_LENGTH - 5, MEAN_LENGTH + 6, size=n_samples)
    return [
        rng.choice(VOCABULARY_SIZE, size=length, p=probabilities).tolist() for length in lengths
    ]


def nltk_self_bleu(samples: list[list[int]]) -> list[float]:
    smoothing = SmoothingFunction().method1
    return [
        sentence_bleu(
            [other for j, other in enumerate(samples) if j != i],
            sample,
            weights=(1 / ORDER,) * ORDER,
            smoothing_function=smoothing,
        )
        for i, sample in enumerate(samples)
    ]


def timed(function: Callable[[], T], repeats: int = 1) -> tuple[T, float]:
    """The result of `function` and its fastest time over `repeats` runs, the least noisy."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    samples = zipfian_samples(args.n_samples, args.seed)
    expected, nltk_seconds = timed(lambda: nltk_self_bleu(samples))
    (mean, scores), our_seconds = timed(
        lambda: self_bleu(samples, ORDER, per_sample=True), repeats=OUR_REPEATS
    )
    worst = max(abs(ours - theirs) for ours, theirs in zip(scores, expected, strict=True))
    print(f"N={args.n_samples}: Self-BLEU-{ORDER} = {mean:.6f}, max |ours - nltk| = {worst:.3g}")
    print(f"  nltk loop: {nltk_seconds:8.3f} s")
    print(f"  ours:      {our_seconds:8.3f} s   ({nltk_seconds / our_seconds:.0f}x faster)")
    for factor in (2, 4):
        n_samples = factor * args.n_samples
        larger = zipfian_samples(n_samples, args.seed + factor)
        _, seconds = timed(lambda larger=larger: self_bleu(larger, ORDER), repeats=OUR_REPEATS)
        print(
            f"  ours at N={n_samples}: {seconds:8.3f} s   "
            f"({seconds / our_seconds:.1f}x the N={args.n_samples} time)"
        )
    if worst > TOLERANCE:
        raise SystemExit(f"scores disagree with NLTK by {worst:.3g} > {TOLERANCE}")
    featurization_speed()
    cell_evaluation_time()


def featurization_speed() -> None:
    from beyondmle.api import load_corpus
    from beyondmle.metrics.featurizers import get_featurizer

    sentences = load_corpus("ptb").documents["test"][:1000]
    featurizer = get_featurizer("minilm")
    featurizer.encode(sentences[:8])  # load the model outside the timing
    _, seconds = timed(lambda: featurizer.encode(sentences))
    print(
        f"MiniLM featurization: {len(sentences) / seconds:,.0f} sentences/s "
        f"({len(sentences)} PTB sentences in {seconds:.2f} s)"
    )


def cell_evaluation_time() -> None:
    import tempfile

    import torch

    from beyondmle.api import load_corpus
    from beyondmle.decoding import DecodingConfig
    from beyondmle.evaluation import EvaluationConfig, Evaluator
    from beyondmle.model import GPT, ModelConfig

    corpus = load_corpus("ptb")
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=corpus.tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=128
        )
    ).eval()
    with tempfile.TemporaryDirectory() as cache:
        config = EvaluationConfig(prompt_tokens=16, continuation_tokens=40, feature_cache=cache)
        start = time.perf_counter()
        evaluator = Evaluator(model, corpus, config)
        evaluator.model_metrics()
        after_model = time.perf_counter()
        decoding = DecodingConfig(top_p=0.9)
        samples = evaluator.generate(decoding, seed=0)
        after_generation = time.perf_counter()
        evaluator.sample_metrics(decoding, samples)
        end = time.perf_counter()
    print(
        f"one cell's evaluation ({config.num_samples} prompts, every metric, one decoding): "
        f"{end - start:.1f} s = model metrics {after_model - start:.1f} s + generation "
        f"{after_generation - after_model:.1f} s + sample metrics "
        f"{end - after_generation:.1f} s (MiniLM load included)"
    )


if __name__ == "__main__":
    main()
