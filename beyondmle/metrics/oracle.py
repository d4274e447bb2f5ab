"""Metrics against a known truth: on an oracle corpus (`beyondmle.oracles`) the data's
distribution is known exactly, so quality, coverage, exposure bias and mode dropping are
measured, not estimated. Each value comes with the standard error of its Monte-Carlo mean over
sequences (`*_se`) and replicates over the shared prompt resamples, so the report's intervals
need no special case.

- `oracle_quality` (per decoding): NLL-oracle, the oracle's mean -log p per token of the
  model's continuations (quality, as in SeqGAN / Texygen; Caccia et al. 2020 sweep it against
  NLL-test over temperatures), and the reverse KL per token E_q[log q - log p] on them, q being
  the decoding's own distribution (the model's softmax after temperature, top-k and top-p).
- `oracle_coverage` (per model): NLL-test, the model's NLL per token of held-out oracle
  sequences (coverage), the oracle's entropy rate H on the same tokens, and the forward KL per
  token NLL-test - H (both on the same tokens, so the difference is paired).
- `exposure_bias` (per decoding): Arora et al. 2022, "Why Exposure Bias Matters", §3
  (Definitions 3.1-3.3, Eqs. 5-8): the per-step error is KL(oracle || model) of the next-token
  laws at a prefix. eps_l is its mean over the first l steps along oracle continuations (teacher
  forcing); R_l its sum along the model's own continuations (at the decoding); AccErr_l =
  R_l - l eps_l and %ExAccErr_l = 100 AccErr_l / (l eps_l), reported at l = a quarter, half,
  three quarters and all of the continuation. The model's law in the KL is its softmax at
  temperature 1 (the decoding only chooses the prefixes), as in the authors' code. A model
  with no error at all (eps = R = 0, the oracle itself) has %ExAccErr 0.
- `modes` (per decoding, mixture oracles): the model samples `num_samples` sequences from the
  start token alone (a prompt would reveal the mode); each sample's exact posterior over the
  components p(k | x) ∝ w_k p_k(x) gives the implied weights w^_k (mean posterior), their total
  variation from w, and the components dropped (w^_k < w_k / 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from beyondmle.api.metric import EvalInputs, MetricValue, Output, register_metric
from beyondmle.decoding import DecodingConfig, filter_logits, generate
from beyondmle.metrics.resampling import mean_summary

BATCH = 32
LENGTH_POINTS = (0.25, 0.5, 0.75, 1.0)  # shares of the continuation for %ExAccErr
MAX_COMPONENTS = 8


def _values(name: str, per_sequence: np.ndarray, inputs: EvalInputs) -> list[MetricValue]:
    """The mean over sequences, its replicates, and its standard error as `<name>_se`."""
    mean, replicates, se = mean_summary(per_sequence, inputs.resamples)
    return [MetricValue(name, mean, replicates=replicates), MetricValue(f"{name}_se", se)]


def _decoded_log_probs(logits: torch.Tensor, decoding: DecodingConfig) -> torch.Tensor:
    """log q of the decoding's distribution (…, V): greedy puts all mass on the argmax."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    if decoding.greedy:
        q = torch.full_like(flat, -math.inf)
        q.scatter_(1, flat.argmax(-1, keepdim=True), 0.0)
    else:
        q = torch.log_softmax(filter_logits(flat, decoding), dim=-1)
    return q.view_as(logits)


def _sequences(inputs: EvalInputs, with_samples: bool) -> torch.Tensor:
    prompts = torch.tensor(inputs.prompts)
    tail = inputs.samples if with_samples else inputs.references
    return torch.cat([prompts, torch.tensor(tail)], dim=1)


def _taken(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return log_probs.gather(-1, ids[..., None]).squeeze(-1).double()


@dataclass(frozen=True)
class Scores:
    """Per-token scores of one set of sequences (prompt + continuation), from one forward pass
    of the oracle and one of the model over them. Each row is a sequence.

    - oracle_lp / model_lp: log p(x_t | x_<t) of every token but the first, under the oracle
      and under the model at temperature 1 (N, T - 1);
    - step_kl: KL(oracle || model) of the next-token laws at each continuation position (N, m);
    - decoded_lp: log q(x_t | x_<t) of the continuation under the decoding's own distribution
      (N, m); only for the model's samples (None on references).
    """

    oracle_lp: torch.Tensor
    model_lp: torch.Tensor
    step_kl: torch.Tensor
    decoded_lp: torch.Tensor | None


@torch.no_grad()
def _score(inputs: EvalInputs, seqs: torch.Tensor, decoding: DecodingConfig | None) -> Scores:
    """The scores of `seqs`, in batches: the full-vocabulary laws (B, T, V) never outlive their
    batch. The KL's terms are float32 (both laws are float32 log-softmaxes) summed in float64."""
    k = len(inputs.prompts[0])
    oracle_lp, model_lp, step_kl, decoded_lp = [], [], [], []
    for i in range(0, len(seqs), BATCH):
        part = seqs[i : i + BATCH]
        context, targets = part[:, :-1], part[:, 1:]
        p = inputs.oracle.next_log_probs(context).float()  # (B, T - 1, V)
        logits = inputs.model.logits(inputs.model.hidden_states(context)).float()
        q = torch.log_softmax(logits, dim=-1)
        oracle_lp.append(_taken(p, targets))
        model_lp.append(_taken(q, targets))
        p_c, q_c = p[:, k - 1 :], q[:, k - 1 :]
        step_kl.append((p_c.exp() * (p_c - q_c)).sum(dim=-1, dtype=torch.float64))
        if decoding is not None:
            decoded = _decoded_log_probs(logits[:, k - 1 :], decoding)
            decoded_lp.append(_taken(decoded, targets[:, k - 1 :]))
    return Scores(
        torch.cat(oracle_lp),
        torch.cat(model_lp),
        torch.cat(step_kl),
        torch.cat(decoded_lp) if decoding is not None else None,
    )


def _reference_scores(inputs: EvalInputs) -> Scores:
    """Scores of the held-out oracle sequences: the same for every decoding, computed once."""
    return inputs.shared_result(
        ("oracle_scores", "references"),
        lambda: _score(inputs, _sequences(inputs, with_samples=False), None),
    )


def _sample_scores(inputs: EvalInputs) -> Scores:
    """Scores of the model's continuations at this decoding, shared by NLL-oracle, the reverse
    KL and exposure bias."""
    return inputs.shared_result(
        ("oracle_scores", "samples", inputs.decoding.label),
        lambda: _score(inputs, _sequences(inputs, with_samples=True), inputs.decoding),
    )


@register_metric(
    "oracle_quality",
    version="1",
    needs={"model", "oracle", "samples"},
    per_decoding=True,
    settings=("tokenizer", "num_samples", "prompt_tokens", "continuation_tokens", "sample_seed"),
    outputs=[
        Output("nll_oracle", "NLL-oracle", higher_is_better=False),
        Output("nll_oracle_se", "NLL-oracle s.e.", higher_is_better=None),
        Output("reverse_kl", "reverse KL per token", higher_is_better=False),
        Output("reverse_kl_se", "reverse KL s.e.", higher_is_better=None),
    ],
)
def oracle_quality_metric(inputs: EvalInputs) -> list[MetricValue]:
    k = len(inputs.prompts[0])
    scores = _sample_scores(inputs)
    oracle_lp = scores.oracle_lp[:, k - 1 :]  # the continuation's tokens
    return [
        *_values("nll_oracle", (-oracle_lp.mean(dim=1)).numpy(), inputs),
        *_values("reverse_kl", (scores.decoded_lp - oracle_lp).mean(dim=1).numpy(), inputs),
    ]


@register_metric(
    "oracle_coverage",
    version="1",
    needs={"model", "oracle", "references"},
    per_decoding=False,
    settings=("tokenizer", "num_samples", "prompt_tokens", "continuation_tokens", "sample_seed"),
    outputs=[
        Output("nll_test", "NLL-test", higher_is_better=False),
        Output("nll_test_se", "NLL-test s.e.", higher_is_better=None),
        Output("oracle_entropy", "oracle entropy per token", higher_is_better=None),
        Output("oracle_entropy_se", "oracle entropy s.e.", higher_is_better=None),
        Output("forward_kl", "forward KL per token", higher_is_better=False),
        Output("forward_kl_se", "forward KL s.e.", higher_is_better=None),
    ],
)
def oracle_coverage_metric(inputs: EvalInputs) -> list[MetricValue]:
    scores = _reference_scores(inputs)  # held-out oracle sequences, every token
    s = (-scores.model_lp.mean(dim=1)).numpy()
    o = (-scores.oracle_lp.mean(dim=1)).numpy()
    return [
        *_values("nll_test", s, inputs),
        *_values("oracle_entropy", o, inputs),
        *_values("forward_kl", s - o, inputs),
    ]


@register_metric(
    "exposure_bias",
    version="1",
    needs={"model", "oracle", "samples"},
    per_decoding=True,
    settings=("tokenizer", "num_samples", "prompt_tokens", "continuation_tokens", "sample_seed"),
    outputs=[
        *[
            Output(f"ex_acc_err_{round(100 * f)}", f"%ExAccErr at {round(100 * f)}% length",
                   higher_is_better=False)
            for f in LENGTH_POINTS
        ],
        Output("acc_err", "AccErr (whole continuation)", higher_is_better=False),
        Output("per_step_error", "per-step error eps (teacher forcing)", higher_is_better=False),
        Output("regret_per_step", "per-step error on own prefixes R/l", higher_is_better=False),
    ],
)  # fmt: skip
def exposure_bias_metric(inputs: EvalInputs) -> list[MetricValue]:
    oracle_kl = _reference_scores(inputs).step_kl  # (N, m) on the oracle's own prefixes
    model_kl = _sample_scores(inputs).step_kl  # (N, m) on the model's prefixes
    m = oracle_kl.size(1)
    out = []
    for share in LENGTH_POINTS:
        length = max(1, round(share * m))
        eps = oracle_kl[:, :length].mean()  # eps_<=l: mean per-step error, teacher forcing
        regret = model_kl[:, :length].sum(dim=1).mean()  # R_<=l on the model's prefixes
        acc = regret - length * eps
        if eps > 0:
            value = float(100 * acc / (length * eps))
        else:  # a model without error on the oracle's prefixes: any error on its own is excess
            value = 0.0 if regret <= 1e-12 else math.inf
        out.append(MetricValue(f"ex_acc_err_{round(100 * share)}", value))
    eps_all = float(oracle_kl.mean())
    regret_all = float(model_kl.sum(dim=1).mean())
    out += [
        MetricValue("acc_err", regret_all - m * eps_all),
        MetricValue("per_step_error", eps_all),
        MetricValue("regret_per_step", regret_all / m),
    ]
    return out


@register_metric(
    "modes",
    version="1",
    needs={"model", "oracle"},
    per_decoding=True,
    settings=("tokenizer", "num_samples", "prompt_tokens", "continuation_tokens", "sample_seed"),
    outputs=[
        Output("mode_tv", "mode weights total variation", higher_is_better=False),
        Output("modes_dropped", "modes dropped (w^ < w/2)", higher_is_better=False, format=".0f"),
        *[
            Output(f"mode_weight_{i}", f"implied weight of mode {i}", higher_is_better=None)
            for i in range(1, MAX_COMPONENTS + 1)
        ],
        *[
            Output(f"mode_weight_{i}_se", f"implied weight {i} s.e.", higher_is_better=None)
            for i in range(1, MAX_COMPONENTS + 1)
        ],
        *[
            Output(f"mode_target_{i}", f"oracle weight of mode {i}", higher_is_better=None)
            for i in range(1, MAX_COMPONENTS + 1)
        ],
    ],
)
def modes_metric(inputs: EvalInputs) -> list[MetricValue]:
    oracle = inputs.oracle
    if not hasattr(oracle, "posteriors"):
        return [
            MetricValue("mode_tv", None, "not a mixture oracle: no modes to cover"),
            MetricValue("modes_dropped", None, "not a mixture oracle: no modes to cover"),
        ]
    length = len(inputs.prompts[0]) + len(inputs.references[0])
    n = len(inputs.prompts)
    generator = torch.Generator().manual_seed(inputs.settings["sample_seed"])
    bos = torch.full((n, 1), inputs.bos, dtype=torch.long)
    rows = []
    for i in range(0, n, BATCH * 2):
        part = bos[i : i + BATCH * 2]
        rows += generate(inputs.model, part, length - 1, inputs.decoding, generator=generator)
    samples = torch.cat([bos, torch.tensor(rows, dtype=torch.long)], dim=1)
    post = torch.cat([oracle.posteriors(samples[i : i + BATCH]) for i in range(0, n, BATCH)])
    implied = post.mean(dim=0).numpy()
    weights = oracle.weights.numpy()
    out = [
        MetricValue("mode_tv", float(0.5 * np.abs(implied - weights).sum())),
        MetricValue("modes_dropped", float((implied < weights / 2).sum())),
    ]
    for i in range(len(weights)):
        values = post[:, i].numpy()
        out += [
            MetricValue(f"mode_weight_{i + 1}", float(implied[i])),
            MetricValue(f"mode_weight_{i + 1}_se", mean_summary(values, None)[2]),
            MetricValue(f"mode_target_{i + 1}", float(weights[i])),
        ]
    return out
