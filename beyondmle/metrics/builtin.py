"""The built-in metrics, registered for the evaluation pass through the same entry points as
any plugin's. Each adapts a plain function of this package (the public API) to `EvalInputs`
and declares what each of its values means; the definitions and citations live with the
functions."""

from __future__ import annotations

import random

import torch

from beyondmle.api.metric import EvalInputs, MetricValue, Output, register_metric
from beyondmle.metrics.distributional import fed, mauve
from beyondmle.metrics.diversity import distinct_n, ngram_entropy, self_bleu, zipf_coefficient
from beyondmle.metrics.likelihood import continuation_scores, perplexity
from beyondmle.metrics.repetition import next_token_repetition, seq_rep_n

# Teacher-forced passes materialise (batch, T, V) logits; small batches keep them in cache,
# which on CPU was ~4x faster than 64 windows at a time (PTB, 10k vocabulary).
LIKELIHOOD_BATCH = 8
# What changes a metric computed on the generated token lists alone.
SAMPLE_SETTINGS = ("tokenizer", "num_samples", "continuation_tokens")


@register_metric(
    "perplexity",
    version="1",
    needs={"model", "heldout"},
    per_decoding=False,
    settings=("tokenizer", "block_size", "eval_stride"),
    outputs=[
        Output(f"{kind}_{split}", f"{words}{split} {what}", higher_is_better=False)
        for kind, words, what in (
            ("ppl", "", "perplexity"),
            ("ppl_word", "word-level ", "perplexity"),
            ("bpb", "", "bits per byte"),
        )
        for split in ("test", "valid")
    ],
)
def perplexity_metric(inputs: EvalInputs) -> list[MetricValue]:
    out = []
    corpus = inputs.heldout
    for split in ("valid", "test"):
        result = perplexity(
            inputs.model,
            corpus.stream(split),
            inputs.block_size,
            stride=inputs.settings["eval_stride"],
            words=corpus.num_words(split),
            num_bytes=corpus.num_bytes(split),
            batch_size=LIKELIHOOD_BATCH,
        )
        out += [
            MetricValue(f"ppl_{split}", result.perplexity),
            MetricValue(f"ppl_word_{split}", result.perplexity_per_word),
            MetricValue(f"bpb_{split}", result.bits_per_byte),
        ]
    return out


@register_metric(
    "continuation",
    version="1",
    needs={"model", "references"},
    per_decoding=False,
    settings=("tokenizer", "prompt_tokens", "continuation_tokens", "num_samples", "rep_window"),
    outputs=[
        Output("nll_continuation", "continuation NLL", higher_is_better=False),
        Output("rep", "rep", higher_is_better=False),
        Output("wrep", "wrep", higher_is_better=False),
        Output("uniq", "uniq", higher_is_better=True, format=",.0f"),
    ],
)
def continuation_metric(inputs: EvalInputs) -> list[MetricValue]:
    """NLL of the human continuations given their prompts, and rep / wrep / uniq of the
    teacher-forced next-token predictions, the window being the model's context."""
    prompts = torch.tensor(inputs.prompts)
    references = torch.tensor(inputs.references)
    nll, predictions = continuation_scores(inputs.model, prompts, references, LIKELIHOOD_BATCH)
    contexts = torch.cat([prompts, references], 1).tolist()
    window = inputs.settings["rep_window"] or inputs.block_size
    rep = next_token_repetition(predictions.tolist(), inputs.references, contexts, window)
    return [
        MetricValue("nll_continuation", nll.nll / nll.tokens),
        *(MetricValue(name, float(value)) for name, value in rep.items()),
    ]


@register_metric(
    "distinct",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=SAMPLE_SETTINGS,
    outputs=[Output(f"distinct_{n}", f"distinct-{n}", higher_is_better=True) for n in range(1, 5)],
)
def distinct_metric(inputs: EvalInputs) -> list[MetricValue]:
    return [MetricValue(f"distinct_{n}", distinct_n(inputs.samples, n)) for n in range(1, 5)]


@register_metric(
    "self_bleu",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=("tokenizer", "self_bleu_samples", "sample_seed", "continuation_tokens"),
    outputs=[Output("self_bleu_4", "Self-BLEU-4", higher_is_better=False)],
)
def self_bleu_metric(inputs: EvalInputs) -> list[MetricValue]:
    """Self-BLEU-4 on a fixed-size subset drawn with a fixed seed, so values compare across
    cells whatever the number of generations."""
    samples = inputs.samples
    k = inputs.settings["self_bleu_samples"]
    if len(samples) > k:
        samples = random.Random(inputs.settings["sample_seed"]).sample(samples, k)
    warning = None
    if len(samples) < k:
        warning = f"Self-BLEU-4 on {len(samples)} samples, fewer than the {k} asked for"
    return [MetricValue("self_bleu_4", self_bleu(samples, 4), warning)]


@register_metric(
    "seq_rep",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=SAMPLE_SETTINGS,
    outputs=[Output("seq_rep_4", "seq-rep-4", higher_is_better=False)],
)
def seq_rep_metric(inputs: EvalInputs) -> list[MetricValue]:
    return [MetricValue("seq_rep_4", seq_rep_n(inputs.samples, 4))]


@register_metric(
    "entropy",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=SAMPLE_SETTINGS,
    outputs=[Output("entropy_4", "entropy-4", higher_is_better=True)],
)
def entropy_metric(inputs: EvalInputs) -> list[MetricValue]:
    return [MetricValue("entropy_4", ngram_entropy(inputs.samples, 4))]


@register_metric(
    "zipf",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=SAMPLE_SETTINGS,
    outputs=[Output("zipf", "Zipf coefficient", higher_is_better=None)],
)
def zipf_metric(inputs: EvalInputs) -> list[MetricValue]:
    """Undefined (stored as NULL with a warning) when the samples hold one distinct token, as
    degenerate greedy continuations can."""
    if len({token for sample in inputs.samples for token in sample}) < 2:
        return [MetricValue("zipf", None, "Zipf coefficient undefined: one distinct token")]
    return [MetricValue("zipf", zipf_coefficient(inputs.samples))]


@register_metric(
    "mauve",
    version="1",
    needs={"features"},
    per_decoding=True,
    settings=(
        "tokenizer",
        "featurizer",
        "num_samples",
        "continuation_tokens",
        "mauve_seeds",
        "mauve_scaling",
    ),
    outputs=[
        Output("mauve", "MAUVE", higher_is_better=True),
        Output("mauve_std", "MAUVE std", higher_is_better=None),
    ],
)
def mauve_metric(inputs: EvalInputs) -> list[MetricValue]:
    result = mauve(
        inputs.p_features,
        inputs.q_features,
        seeds=tuple(inputs.settings["mauve_seeds"]),
        scaling=inputs.settings["mauve_scaling"],
    )
    warning = "; ".join(result.warnings) or None
    return [
        MetricValue("mauve", result.mean, warning),
        MetricValue("mauve_std", result.std, warning),
    ]


@register_metric(
    "fed",
    version="1",
    needs={"features"},
    per_decoding=True,
    settings=("tokenizer", "featurizer", "num_samples", "continuation_tokens"),
    outputs=[Output("fed", "FED", higher_is_better=False)],
)
def fed_metric(inputs: EvalInputs) -> list[MetricValue]:
    return [MetricValue("fed", fed(inputs.p_features, inputs.q_features))]
