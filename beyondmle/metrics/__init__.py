"""The metrics layer's public functions: plain inputs in, numbers out (the stable API).

    from beyondmle.metrics import distinct_n, self_bleu, seq_rep_n, mauve, fed, perplexity

The evaluation pass computes them through the metric registry (`beyondmle.api.metric`); the
registered adapters are in `beyondmle.metrics.builtin`.
"""

from beyondmle.metrics.distributional import MauveResult, fed, mauve
from beyondmle.metrics.diversity import distinct_n, ngram_entropy, self_bleu, zipf_coefficient
from beyondmle.metrics.likelihood import Likelihood, continuation_scores, perplexity
from beyondmle.metrics.repetition import next_token_repetition, seq_rep_n

__all__ = [
    "Likelihood",
    "MauveResult",
    "continuation_scores",
    "distinct_n",
    "fed",
    "mauve",
    "next_token_repetition",
    "ngram_entropy",
    "perplexity",
    "self_bleu",
    "seq_rep_n",
    "zipf_coefficient",
]
