"""Visible tests for lesson 16. Run: .venv/bin/pytest exercises/lesson_16 (or make check LESSON=16)

Hand-made cases for the advantages, the clipped surrogate, the k3 KL and the aggregations, and a short
GRPO run on the toy format reward. The hidden graders compare with trl's GRPOTrainer (see the lesson).
"""

import pytest
import torch

from exercises.lesson_16.grpo import aggregate, clipped_surrogate, group_advantages, grpo_loss, k3_kl
from exercises.lesson_16.grpo_kit import run_training

pytestmark = pytest.mark.lesson_16


def test_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])  # two groups of 3
    adv = group_advantages(rewards, 3, "group")
    std = torch.tensor([1.0, 0.0, 0.0]).std()  # Bessel-corrected: 0.5774
    want = torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (std + 1e-4)
    assert torch.allclose(adv[:3], want, atol=1e-5), f"group 1: {adv[:3].tolist()}, want {want.tolist()}"
    assert torch.allclose(adv[3:], torch.tensor([-2 / 3, 1 / 3, 1 / 3]) / (std + 1e-4), atol=1e-5)


def test_advantages_scale_modes():
    rewards = torch.tensor([1.0, 3.0, 0.0, 10.0])
    centred = torch.tensor([-1.0, 1.0, -5.0, 5.0])
    assert torch.allclose(group_advantages(rewards, 2, "none"), centred), "'none': reward minus the group mean"
    assert torch.allclose(group_advantages(rewards, 2, "batch"), centred / (rewards.std() + 1e-4), atol=1e-6)
    assert torch.allclose(group_advantages(torch.ones(4), 2, "group"), torch.zeros(4)), "equal rewards: 0"


def test_surrogate_clips_by_hand():
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[0.5, 0.9, 1.1, 1.5]]))  # ratios 0.5, 0.9, 1.1, 1.5
    pos = clipped_surrogate(logps, old, torch.tensor([2.0]), 0.2, 0.2)
    assert torch.allclose(pos, -torch.tensor([[1.0, 1.8, 2.2, 2.4]]), atol=1e-6), f"A=2: {pos.tolist()}"
    neg = clipped_surrogate(logps, old, torch.tensor([-1.0]), 0.2, 0.3)
    assert torch.allclose(neg, torch.tensor([[0.8, 0.9, 1.1, 1.5]]), atol=1e-6), f"A=-1: {neg.tolist()}"
    lp = logps.clone().requires_grad_(True)
    clipped_surrogate(lp, old, torch.tensor([2.0]), 0.2).sum().backward()
    assert lp.grad[0, 3] == 0 and lp.grad[0, 1] != 0, "no gradient where the clipped term is the minimum"


def test_kl_k3_by_hand():
    logps, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    d = ref - logps
    assert torch.allclose(k3_kl(logps, ref), torch.exp(d) - d - 1)
    assert (k3_kl(logps, ref) >= 0).all() and k3_kl(logps, logps).abs().max() == 0
    old = logps - 0.1
    loss = grpo_loss(logps, old, torch.zeros(1), torch.ones(1, 2), ref_logps=ref, beta=0.5, loss_type="bnpo")
    want = (0.5 * (torch.exp(d) - d - 1) * torch.exp(torch.tensor(0.1))).mean()
    assert torch.allclose(loss, want, atol=1e-6), "beta * k3 * ratio, per token (advantages 0 here)"


def test_aggregate_by_hand():
    loss = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.isclose(aggregate(loss, mask, "grpo"), torch.tensor((1.5 + 3.0) / 2))
    assert torch.isclose(aggregate(loss, mask, "bnpo"), torch.tensor(6.0 / 3))
    assert torch.isclose(aggregate(loss, mask, "dr_grpo", max_completion_length=4), torch.tensor(6.0 / 8))
    assert torch.isclose(aggregate(loss, mask, "dapo", num_items_in_batch=torch.tensor(12)), torch.tensor(0.5))


def test_training_reward_rises():
    out = run_training({"steps": 8})
    assert out["reward_after"] > out["reward_before"] + 0.2, (
        f"mean reward {out['reward_before']:.3f} -> {out['reward_after']:.3f} after 8 GRPO steps"
    )
