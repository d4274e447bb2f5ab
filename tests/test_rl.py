"""The arithmetic of RLHF against hand computations: each expected value is worked out here
from the paper's formula with plain Python numbers, never from the code under test."""

from __future__ import annotations

import math

import pytest
import torch

from beyondmle.rl import (
    bradley_terry_loss,
    dpo_loss,
    gae,
    kl_k1,
    kl_k3,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_loss_on_three_pairs_by_hand() -> None:
    chosen = torch.tensor([1.0, 0.5, -2.0])
    rejected = torch.tensor([0.0, 2.5, -2.0])
    expected = -(log_sigmoid(1.0) + log_sigmoid(-2.0) + log_sigmoid(0.0)) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected)
    swapped = -(log_sigmoid(-1.0) + log_sigmoid(2.0) + log_sigmoid(0.0)) / 3
    assert float(bradley_terry_loss(rejected, chosen)) == pytest.approx(swapped)
    assert swapped != pytest.approx(expected)


def test_dpo_loss_on_two_pairs_by_hand() -> None:
    # pair 1: policy logps (-3, -5), reference (-4, -4): margin (1) - (-1) = 2
    # pair 2: policy (-10, -9), reference (-9.5, -9.5): margin (-0.5) - (0.5) = -1
    loss = dpo_loss(
        torch.tensor([-3.0, -10.0]),
        torch.tensor([-5.0, -9.0]),
        torch.tensor([-4.0, -9.5]),
        torch.tensor([-4.0, -9.5]),
        beta=0.1,
    )
    expected = -(log_sigmoid(0.1 * 2) + log_sigmoid(0.1 * -1)) / 2
    assert float(loss) == pytest.approx(expected)


def test_rloo_advantage_for_four_samples_by_hand() -> None:
    rewards = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    # baseline of sample 1: (2 + 4 + 9) / 3 = 5, so A_1 = -4; and so on.
    expected = [1 - 5.0, 2 - 14 / 3, 4 - 4.0, 9 - 7 / 3]
    assert rloo_advantages(rewards)[0].tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.tensor([[1.0]]))


def test_gae_on_a_four_step_episode_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.2]])
    gamma, lam = 0.9, 0.8
    deltas = [
        0.0 + 0.9 * 0.4 - 0.5,  # -0.14
        0.0 + 0.9 * 0.3 - 0.4,  # -0.13
        1.0 + 0.9 * 0.2 - 0.3,  # 0.88
        2.0 + 0.0 - 0.2,  # 1.8, the episode ends
    ]
    a3 = deltas[3]
    a2 = deltas[2] + 0.72 * a3
    a1 = deltas[1] + 0.72 * a2
    a0 = deltas[0] + 0.72 * a1
    advantages, returns = gae(rewards, values, gamma, lam)
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2, a3])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.4, a2 + 0.3, a3 + 0.2])


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected"),
    [
        (1.1, 2.0, -1.1 * 2.0),  # inside the range: the plain surrogate
        (1.5, 2.0, -1.2 * 2.0),  # positive advantage, above 1 + eps: clipped
        (0.5, 2.0, -0.5 * 2.0),  # positive advantage, below 1 - eps: not clipped (min)
        (0.5, -2.0, -0.8 * -2.0),  # negative advantage, below 1 - eps: clipped
        (1.5, -2.0, -1.5 * -2.0),  # negative advantage, above 1 + eps: not clipped
    ],
)
def test_ppo_clipped_objective_inside_and_outside_the_range(ratio, advantage, expected) -> None:
    old = torch.tensor([-1.0])
    new = old + math.log(ratio)
    loss = ppo_policy_loss(new, old, torch.tensor([advantage]), clip=0.2)
    assert float(loss) == pytest.approx(expected)


def test_ppo_value_loss_takes_the_larger_of_clipped_and_unclipped() -> None:
    loss = ppo_value_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.0]), clip=0.2)
    assert float(loss) == pytest.approx(0.5 * max(2.0**2, 1.2**2))


def test_k1_and_k3_means_match_the_exact_kl_of_two_categoricals() -> None:
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = sum(a * math.log(a / b) for a, b in zip(p.tolist(), q.tolist(), strict=True))
    x = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    k1 = kl_k1(p.log()[x], q.log()[x])
    k3 = kl_k3(p.log()[x], q.log()[x])
    for estimate in (k1, k3):
        se = float(estimate.std() / math.sqrt(len(x)))
        assert abs(float(estimate.mean()) - exact) < 4 * se
    assert (k3 >= 0).all() and (k1 < 0).any()
    assert float(k3.std()) < float(k1.std())
