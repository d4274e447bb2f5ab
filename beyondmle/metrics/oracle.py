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


@torch.no_grad()
def _model_log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    """The model's next-token log-probabilities (B, T, V) at temperature 1."""
    return torch.log_softmax(model.logits(model.hidden_states(ids)).float(), dim=-1)


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
    with torch.no_grad():
        return _oracle_quality(inputs)


def _oracle_quality(inputs: EvalInputs) -> list[MetricValue]:
    k = len(inputs.prompts[0])
    seqs = _sequences(inputs, with_samples=True)
    nll, rkl = [], []
    for i in range(0, len(seqs), BATCH):
        part = seqs[i : i + BATCH]
        oracle_lp = inputs.oracle.token_log_probs(part)[:, k - 1 :].double()  # continuation
        logits = inputs.model.logits(inputs.model.hidden_states(part[:, :-1]))[:, k - 1 :]
        q = _decoded_log_probs(logits, inputs.decoding)
        q_taken = q.gather(-1, part[:, k:, None]).squeeze(-1).double()
        nll.append(-oracle_lp.mean(dim=1))
        rkl.append((q_taken - oracle_lp).mean(dim=1))
    return [
        *_values("nll_oracle", torch.cat(nll).numpy(), inputs),
        *_values("reverse_kl", torch.cat(rkl).numpy(), inputs),
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
    seqs = _sequences(inputs, with_samples=False)  # held-out oracle sequences
    student, oracle = [], []
    with torch.no_grad():
        for i in range(0, len(seqs), BATCH):
            part = seqs[i : i + BATCH]
            lp = _model_log_probs(inputs.model, part[:, :-1])
            student.append(-lp.gather(-1, part[:, 1:, None]).squeeze(-1).double().mean(dim=1))
            oracle.append(-inputs.oracle.token_log_probs(part).double().mean(dim=1))
    s, o = torch.cat(student).numpy(), torch.cat(oracle).numpy()
    return [
        *_values("nll_test", s, inputs),
        *_values("oracle_entropy", o, inputs),
        *_values("forward_kl", s - o, inputs),
    ]


def _stepwise_kl(inputs: EvalInputs, seqs: torch.Tensor, k: int) -> torch.Tensor:
    """KL(oracle || model) of the next-token laws at each continuation position (N, m)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), BATCH):
            part = seqs[i : i + BATCH, :-1]
            p = inputs.oracle.next_log_probs(part)[:, k - 1 :].double()
            q = _model_log_probs(inputs.model, part)[:, k - 1 :].double()
            out.append((p.exp() * (p - q)).sum(dim=-1))
    return torch.cat(out)


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
    with torch.no_grad():
        return _exposure_bias(inputs)


def _exposure_bias(inputs: EvalInputs) -> list[MetricValue]:
    k = len(inputs.prompts[0])
    oracle_kl = _stepwise_kl(inputs, _sequences(inputs, with_samples=False), k)  # (N, m)
    model_kl = _stepwise_kl(inputs, _sequences(inputs, with_samples=True), k)
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
