"""Metrics of learning from preferences, for every cell of a run with a `[[preferences]]` table
(MLE's control cells included, so a method's gain is read against it):

- `reward` (per decoding): the proxy reward (the learned reward model's score) of the
  continuations and, where the preference source knows one, the gold reward; means over the
  prompts with their standard errors and prompt replicates.
- `policy_kl` (per model): KL(policy || reference) of a whole continuation, in nats, on
  continuations the model samples at temperature 1 from the evaluation prompts (the only
  decoding under which a sample-based KL estimate is the KL of the policy), by the k1 and k3
  estimators (Schulman 2020, "Approximating KL Divergence"), both unbiased; k3 never negative
  and of lower variance. Gao et al. 2022 plot rewards against sqrt of this KL.
- `reward_model` (per model): the reward model's accuracy on held-out pairs it never saw (the
  reward model's own cell also records its training accuracy, the number of pairs and, where
  the source has a gold reward, the share of labels that agree with the gold order).
"""

from __future__ import annotations

import numpy as np
import torch

from beyondmle.api.metric import EvalInputs, MetricValue, Output, register_metric
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.metrics.resampling import mean_summary
from beyondmle.rl import continuation_log_probs, kl_k1, kl_k3

BATCH = 64
SETTINGS = (
    "tokenizer",
    "num_samples",
    "prompt_tokens",
    "continuation_tokens",
    "sample_seed",
    "reward_model",
)


def _summary(name: str, values: np.ndarray, inputs: EvalInputs) -> list[MetricValue]:
    mean, replicates, se = mean_summary(values, inputs.resamples)
    return [MetricValue(name, mean, replicates=replicates), MetricValue(f"{name}_se", se)]


def _tensors(inputs: EvalInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(inputs.prompts), torch.tensor(inputs.samples)


@register_metric(
    "reward",
    version="1",
    needs={"samples", "reward"},
    per_decoding=True,
    settings=SETTINGS,
    outputs=[
        Output("proxy_reward", "proxy reward", higher_is_better=True),
        Output("proxy_reward_se", "proxy reward s.e.", higher_is_better=None),
        Output("gold_reward", "gold reward", higher_is_better=True),
        Output("gold_reward_se", "gold reward s.e.", higher_is_better=None),
    ],
)
def reward_metric(inputs: EvalInputs) -> list[MetricValue]:
    prompts, samples = _tensors(inputs)
    out = _summary("proxy_reward", inputs.reward(prompts, samples).double().numpy(), inputs)
    if inputs.gold is not None:
        out += _summary("gold_reward", inputs.gold(prompts, samples).double().numpy(), inputs)
    return out


@register_metric(
    "policy_kl",
    version="1",
    needs={"model", "reference"},
    per_decoding=False,
    settings=SETTINGS,
    outputs=[
        Output("kl_k1", "KL to reference (k1)", higher_is_better=None),
        Output("kl_k1_se", "KL k1 s.e.", higher_is_better=None),
        Output("kl_k3", "KL to reference (k3)", higher_is_better=None),
        Output("kl_k3_se", "KL k3 s.e.", higher_is_better=None),
    ],
)
@torch.no_grad()
def policy_kl_metric(inputs: EvalInputs) -> list[MetricValue]:
    prompts = torch.tensor(inputs.prompts)
    length = inputs.settings["continuation_tokens"]
    generator = torch.Generator().manual_seed(inputs.settings["sample_seed"])
    k1, k3 = [], []
    for i in range(0, prompts.size(0), BATCH):
        part = prompts[i : i + BATCH]
        rows = generate(inputs.model, part, length, DecodingConfig(), generator=generator)
        sample = torch.tensor(rows, dtype=torch.long)
        log_p = continuation_log_probs(inputs.model, part, sample).double()
        log_q = continuation_log_probs(inputs.reference, part, sample).double()
        k1.append(kl_k1(log_p, log_q).sum(dim=1))
        k3.append(kl_k3(log_p, log_q).sum(dim=1))
    return [
        *_summary("kl_k1", torch.cat(k1).numpy(), inputs),
        *_summary("kl_k3", torch.cat(k3).numpy(), inputs),
    ]


@register_metric(
    "reward_model",
    version="1",
    needs={"reward"},
    per_decoding=False,
    settings=("tokenizer", "reward_model"),
    outputs=[
        Output("reward_accuracy", "reward model accuracy", higher_is_better=True),
        Output("reward_accuracy_train", "reward model training accuracy", higher_is_better=None),
        Output("label_agreement", "labels agreeing with the gold order", higher_is_better=None),
        Output("reward_pairs", "preference pairs", higher_is_better=None, format=",.0f"),
    ],
)
def reward_model_metric(inputs: EvalInputs) -> list[MetricValue]:
    pairs = inputs.heldout_pairs
    chosen = inputs.reward(pairs.prompts, pairs.chosen)
    rejected = inputs.reward(pairs.prompts, pairs.rejected)
    correct = (chosen > rejected).double() + 0.5 * (chosen == rejected).double()
    return [MetricValue("reward_accuracy", float(correct.mean()))]
