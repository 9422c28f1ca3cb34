"""Visible tests for lesson 15. Run: .venv/bin/pytest exercises/lesson_15 (or make check LESSON=15)

Hand-computed cases and properties: the log-prob of a completion under a model whose next-token
distribution you can write down, the Bradley-Terry loss by hand, each DPO variant on numbers you can
check with a calculator, one step with a frozen reference, and a short DPO run. The hidden graders
compare with transformers' own loss and with trl's RewardTrainer and DPOTrainer (see the lesson).
"""

import math

import pytest
import torch

from exercises.lesson_15 import dpo_data, dpo_kit
from exercises.lesson_15.dpo import dpo_loss, dpo_step, reward_loss, sequence_logprobs

pytestmark = pytest.mark.lesson_15


class Table(torch.nn.Module):
    """A "model" whose logits at position t depend only on the token at t: a (V, V) table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kw):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_logprobs_small_case_by_hand():
    table = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]))
    model = Table(table)
    ids = torch.tensor([[0, 1, 2, 0], [0, 2, 2, 0]])
    att = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # row 2 has one pad token at the end
    comp = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    got = sequence_logprobs(model, ids, att, comp)
    # row 1: p(1|0) p(2|1) p(0|2) = 0.25 * 0.1 * 0.2; row 2: only token 2 at t = 2, predicted from token 2: 0.6
    want = torch.tensor([math.log(0.25 * 0.1 * 0.2), math.log(0.6)])
    torch.testing.assert_close(got, want)
    assert got.dtype == torch.float32 and got.requires_grad, "float32, with the graph kept"


def test_reward_loss_small_case():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    want = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert math.isclose(float(reward_loss(rc, rr)), want, rel_tol=1e-6)
    margin = torch.tensor([1.0, -1.0])  # subtracted inside the sigmoid: differences 1 and 0
    want_m = -(math.log(1 / (1 + math.exp(-1))) + math.log(0.5)) / 2
    assert math.isclose(float(reward_loss(rc, rr, margin=margin)), want_m, rel_tol=1e-6)
    centred = float(reward_loss(rc, rr, center_rewards_coefficient=0.1))
    assert math.isclose(centred, want + 0.1 * (4 + 1) / 2, rel_tol=1e-6), "c * mean((r_c + r_r) ** 2)"


def test_dpo_loss_variants_by_hand():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.5, -4.5])
    d = torch.tensor([0.5 - (-0.5), -1.0 - 0.5])  # (pc - rc) - (pr - rr) = [1.0, -1.5]
    beta = 0.5

    def close(got, want):
        assert math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-7), (float(got), float(want))

    logsig = torch.nn.functional.logsigmoid
    close(dpo_loss(pc, pr, rc, rr, beta), (-logsig(beta * d)).mean())
    close(dpo_loss(pc, pr, rc, rr, beta, label_smoothing=0.2), (-logsig(beta * d)).mean())  # sigmoid: no smoothing
    close(dpo_loss(pc, pr, rc, rr, beta, "hinge"), torch.relu(1 - beta * d).mean())
    e = 0.2
    robust = (-(1 - e) * logsig(beta * d) + e * logsig(-beta * d)) / (1 - 2 * e)
    close(dpo_loss(pc, pr, rc, rr, beta, "robust", label_smoothing=e), robust.mean())
    nc, nr = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0])
    h = torch.tensor([0.5, -1.0]) / nc - torch.tensor([-0.5, 0.5]) / nr  # length-normalised log-ratios
    close(
        dpo_loss(pc, pr, rc, rr, beta, "ipo", chosen_lengths=nc, rejected_lengths=nr),
        ((h - 1 / (2 * beta)) ** 2).mean(),
    )


def test_step_frozen_reference():
    policy, ref = dpo_kit.tiny_llama(seed=0), dpo_kit.tiny_llama(seed=0)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    batch = dpo_kit.collate(dpo_data.rows()[:4])
    loss = dpo_step(policy, ref, opt, batch)
    assert type(loss) is float and math.isclose(loss, math.log(2), rel_tol=1e-5), "policy = reference: loss log 2"
    assert all(p.grad is None for p in ref.parameters()), "the reference model must get no gradient"
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items()), "the reference must not change"
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items()), "the policy must move"


def test_training_prefers_chosen():
    out = dpo_kit.run_training({"steps": 10})
    policy, ref = dpo_kit.tiny_llama(), dpo_kit.tiny_llama()
    policy.load_state_dict(out["policy"])
    ref.load_state_dict(out["ref"])
    acc = dpo_kit.implicit_accuracy(policy, ref, dpo_data.rows(dpo_data.HELD_OUT))
    assert acc > 0.8, f"after 10 DPO steps the held-out preference accuracy is {acc:.0%} (the reference: 100%)"
    assert out["losses"][-1] < out["losses"][0], "the DPO loss must fall"
