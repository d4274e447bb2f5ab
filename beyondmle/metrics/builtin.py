"""The built-in metrics, registered for the evaluation pass through the same entry points as
any plugin's. Each adapts a plain function of this package (the public API) to `EvalInputs`
and declares what each of its values means; the definitions and citations live with the
functions."""

from __future__ import annotations

import math
import random

import torch

from beyondmle.api.corpus import CHARACTER_LANGUAGES
from beyondmle.api.metric import EvalInputs, MetricValue, Output, register_metric
from beyondmle.metrics.distributional import fed, mauve
from beyondmle.metrics.diversity import distinct_n, ngram_entropy, self_bleu, zipf_coefficient
from beyondmle.metrics.likelihood import (
    LIKELIHOOD_BATCH,
    StreamScores,
    continuation_scores,
    score_stream,
)
from beyondmle.metrics.repetition import next_token_repetition, seq_rep_n, seq_rep_values
from beyondmle.metrics.resampling import (
    distinct_replicates,
    entropy_replicates,
    mean_replicates,
    ratio_replicates,
    zipf_replicates,
)

# What changes a metric computed on the generated token lists alone.
SAMPLE_SETTINGS = ("tokenizer", "num_samples", "continuation_tokens")


def _tuple(replicates) -> tuple[float, ...] | None:
    return None if replicates is None else tuple(float(x) for x in replicates)


def _replicated(function, inputs: EvalInputs, samples, *args) -> tuple[float, ...] | None:
    """`function(samples, *args, resamples)` when replicates are asked for, else None."""
    if inputs.resamples is None:
        return None
    return _tuple(function(samples, *args, inputs.resamples))


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
            ("ppl_char", "character-level ", "perplexity"),
            ("bpb", "", "bits per byte"),
        )
        for split in ("test", "valid")
    ],
)
def perplexity_metric(inputs: EvalInputs) -> list[MetricValue]:
    """Perplexity per token, and in units that compare across tokenizers: per word (Mikolov's
    PTB convention; none for languages written without spaces, which have no words to count),
    per character (spaces aside, one per `<eos>`) and bits per byte. On the splits the
    evaluation asks for (`perplexity_splits`)."""
    out = []
    corpus = inputs.heldout
    for split in inputs.settings.get("perplexity_splits", ("valid", "test")):
        result = _stream_scores(inputs, split).likelihood
        out += [
            MetricValue(f"ppl_{split}", result.perplexity),
            MetricValue(f"ppl_word_{split}", result.perplexity_per_word),
            MetricValue(f"ppl_char_{split}", math.exp(result.nll / corpus.num_characters(split))),
            MetricValue(f"bpb_{split}", result.bits_per_byte),
        ]
    return out


def _stream_scores(inputs: EvalInputs, split: str) -> StreamScores:
    """The sliding-window pass over a held-out split, shared: on the test split the same pass
    gives perplexity and the argmax predictions that rep / wrep / uniq score."""
    corpus = inputs.heldout
    stride = inputs.settings["eval_stride"]

    def compute() -> StreamScores:
        spaced = corpus.language not in CHARACTER_LANGUAGES
        return score_stream(
            inputs.model,
            corpus.stream(split),
            inputs.block_size,
            stride=stride,
            words=corpus.num_words(split) if spaced else None,
            num_bytes=corpus.num_bytes(split),
            batch_size=LIKELIHOOD_BATCH,
            predictions=split == "test",
        )

    return inputs.shared_result(("stream", split, inputs.block_size, stride), compute)


@register_metric(
    "continuation",
    version="2",
    needs={"model", "references"},
    per_decoding=False,
    settings=("tokenizer", "prompt_tokens", "continuation_tokens", "num_samples"),
    outputs=[Output("nll_continuation", "continuation NLL", higher_is_better=False)],
)
def continuation_metric(inputs: EvalInputs) -> list[MetricValue]:
    """Mean NLL per token of the human continuations given their prompts."""
    prompts = torch.tensor(inputs.prompts)
    references = torch.tensor(inputs.references)
    scored = continuation_scores(inputs.model, prompts, references, LIKELIHOOD_BATCH)
    value = scored.likelihood.nll / scored.likelihood.tokens
    replicates = None
    if inputs.resamples is not None:
        lengths = [len(r) for r in inputs.references]
        replicates = ratio_replicates(scored.row_nll.numpy(), lengths, inputs.resamples)
    return [MetricValue("nll_continuation", value, replicates=_tuple(replicates))]


@register_metric(
    "repetition",
    version="2",
    needs={"model", "heldout"},
    per_decoding=False,
    settings=("tokenizer", "block_size", "rep_window", "eval_stride"),
    outputs=[
        Output("rep", "rep", higher_is_better=False),
        Output("wrep", "wrep", higher_is_better=False),
        Output("uniq", "uniq", higher_is_better=True, format=",.0f"),
    ],
)
def repetition_metric(inputs: EvalInputs) -> list[MetricValue]:
    """rep/l, wrep/l and uniq as Welleck et al. (2020, §6, Table 2) score them: the model reads
    the whole test stream and predicts each next token (argmax); rep/l is the share of
    predictions found among the l previous gold tokens of the stream (l = `rep_window`, 128 as
    theirs), wrep/l the share both wrong and repeated, uniq the distinct predictions. The
    predictions come from perplexity's sliding-window pass (one pass serves both), so each is
    made with at least block_size - eval_stride tokens of context; Welleck et al. read
    WikiText-103 in disjoint blocks of 1,536 tokens, and at this benchmark's contexts a sliding
    window is the closer match to their long context. The test split is the whole population
    here, not a sample of it, so these vary over seeds only."""
    tokens = inputs.heldout.stream("test")
    predictions = _stream_scores(inputs, "test").predictions
    window = inputs.settings["rep_window"]
    rep = next_token_repetition([predictions.tolist()], [tokens[1:]], [tokens], window)
    return [MetricValue(name, float(value)) for name, value in rep.items()]


@register_metric(
    "distinct",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=(*SAMPLE_SETTINGS, "diversity_units"),
    outputs=[Output(f"distinct_{n}", f"distinct-{n}", higher_is_better=True) for n in range(1, 5)],
)
def distinct_metric(inputs: EvalInputs) -> list[MetricValue]:
    """distinct-n (Li et al. 2016) in the corpus's diversity units: tokens, or characters for
    languages written without spaces."""
    return [
        MetricValue(
            f"distinct_{n}",
            distinct_n(inputs.diversity_samples, n),
            replicates=_replicated(distinct_replicates, inputs, inputs.diversity_samples, n),
        )
        for n in range(1, 5)
    ]


@register_metric(
    "self_bleu",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=(
        "tokenizer",
        "self_bleu_samples",
        "sample_seed",
        "continuation_tokens",
        "diversity_units",
    ),
    outputs=[Output("self_bleu_4", "Self-BLEU-4", higher_is_better=False)],
)
def self_bleu_metric(inputs: EvalInputs) -> list[MetricValue]:
    """Self-BLEU-4 on a fixed-size subset drawn with a fixed seed, so values compare across
    cells whatever the number of generations; in the corpus's diversity units (characters for
    Chinese, as character-level BLEU is the usual choice there)."""
    samples = inputs.diversity_samples
    k = inputs.settings["self_bleu_samples"]
    chosen = list(range(len(samples)))
    if len(chosen) > k:
        chosen = random.Random(inputs.settings["sample_seed"]).sample(chosen, k)
    warning = None
    if len(chosen) < k:
        warning = f"Self-BLEU-4 on {len(chosen)} samples, fewer than the {k} asked for"
    value, per_sample = self_bleu([samples[i] for i in chosen], 4, per_sample=True)
    replicates = None
    if inputs.resamples is not None:  # each sample's leave-one-out BLEU, resampled
        replicates = mean_replicates(per_sample, inputs.resamples[:, chosen])
    return [MetricValue("self_bleu_4", value, warning, _tuple(replicates))]


@register_metric(
    "seq_rep",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=SAMPLE_SETTINGS,
    outputs=[Output("seq_rep_4", "seq-rep-4", higher_is_better=False)],
)
def seq_rep_metric(inputs: EvalInputs) -> list[MetricValue]:
    values = seq_rep_values(inputs.samples, 4)
    replicates = None
    if inputs.resamples is not None:
        replicates = mean_replicates(values, inputs.resamples)
    return [MetricValue("seq_rep_4", seq_rep_n(inputs.samples, 4), replicates=_tuple(replicates))]


@register_metric(
    "entropy",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=SAMPLE_SETTINGS,
    outputs=[Output("entropy_4", "entropy-4", higher_is_better=True)],
)
def entropy_metric(inputs: EvalInputs) -> list[MetricValue]:
    replicates = _replicated(entropy_replicates, inputs, inputs.samples, 4)
    return [MetricValue("entropy_4", ngram_entropy(inputs.samples, 4), replicates=replicates)]


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
    replicates = _replicated(zipf_replicates, inputs, inputs.samples)
    return [MetricValue("zipf", zipf_coefficient(inputs.samples), replicates=replicates)]


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
