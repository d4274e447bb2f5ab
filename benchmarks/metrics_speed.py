"""How much faster leave-one-out Self-BLEU is than NLTK's loop, and that it grows linearly.

NLTK scores each of N samples against the N - 1 others, so its cost grows as N squared;
`beyondmle.metrics.diversity.self_bleu` gets the same numbers from per-n-gram top-two counts
in one pass. This times both at N samples of about 20 tokens drawn from a Zipfian vocabulary
(so that n-grams collide as in text), checks that every per-sample score agrees within 1e-9,
and then times ours alone at 2N and 4N. NLTK runs once; ours, best of three.

    python benchmarks/self_bleu_speed.py [--n-samples 1000]
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


if __name__ == "__main__":
    main()
