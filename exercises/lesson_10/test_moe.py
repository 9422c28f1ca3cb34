"""Visible tests for lesson 10. Run: .venv/bin/pytest exercises/lesson_10 (or make check LESSON=10)

Hand-computed cases, a dense loop as the reference for dispatch, the aux loss at balance, capacity
on hand-made rows, the sigmoid router's bias, and parameter counts. The hidden graders compare with
transformers' Mixtral, Switch Transformers and NemotronH code (see the lesson).
"""

import pytest
import torch
import torch.nn.functional as F

from exercises.lesson_10.moe import (
    NEMOTRON_3_NANO,
    MoEBlock,
    MoEConfig,
    load_balancing_loss,
    param_counts,
    sigmoid_topk_router,
    top1_capacity_routing,
    topk_softmax_router,
)  # fmt: skip

pytestmark = pytest.mark.lesson_10


def test_router_small_case():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    w, i = topk_softmax_router(logits, 2)
    assert w.dtype == torch.float32 and i.dtype == torch.long and w.shape == i.shape == (1, 2)
    assert set(i[0].tolist()) == {1, 2}, f"top-2 of {logits.tolist()} are experts 1 and 2, got {i.tolist()}"
    want = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    got = w[0][i[0].argsort()].flip(0) if i[0, 0] == 2 else w[0]
    torch.testing.assert_close(got, want, msg="weights = softmax over the two largest logits")


def test_router_renormalises_and_uses_expert_axis():
    logits = torch.randn(7, 5, dtype=torch.float64)
    w, i = topk_softmax_router(logits, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(7), msg="the k weights of a token must sum to 1")
    probs = torch.softmax(logits.float(), -1)
    top = probs.topk(3, -1)
    assert torch.equal(i.sort(-1).values, top.indices.sort(-1).values), "softmax over the experts (last axis)"


def dense_reference(block: MoEBlock, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the router's (zero for unchosen experts)."""
    flat = x.reshape(-1, x.shape[-1])
    w, i = topk_softmax_router(block.gate(flat), block.top_k)
    full = torch.zeros(flat.shape[0], block.num_experts, dtype=w.dtype).scatter(1, i, w)
    outs = torch.stack([block.experts.expert(e, flat) for e in range(block.num_experts)], 1)  # (N, E, H)
    return (outs * full[..., None].to(outs.dtype)).sum(1).reshape(x.shape)


def test_block_equals_dense_loop():
    torch.manual_seed(0)
    block = MoEBlock(MoEConfig(hidden_size=12, intermediate_size=10, num_local_experts=5, num_experts_per_tok=2))
    x = torch.randn(2, 6, 12)
    out, logits = block(x)
    assert out.shape == x.shape and logits.shape == (12, 5)
    torch.testing.assert_close(out, dense_reference(block, x), atol=1e-5, rtol=1e-4)


def test_block_weight_layout():
    block = MoEBlock(MoEConfig(hidden_size=8, intermediate_size=6, num_local_experts=4, num_experts_per_tok=1))
    shapes = {n: tuple(p.shape) for n, p in block.state_dict().items()}
    assert shapes == {"gate.weight": (4, 8), "experts.gate_up_proj": (4, 12, 8), "experts.down_proj": (4, 8, 6)}, shapes
    with torch.no_grad():  # the gate projection is the first I rows: zero it and every output is 0
        block.experts.gate_up_proj[:, :6] = 0.0
    out, _ = block(torch.randn(1, 3, 8))
    assert out.abs().max() == 0, "gate, up = (gate_up_proj[e] @ x).chunk(2): silu(0) * up = 0"


def test_aux_loss_balanced_is_top_k():
    for e, k in ((8, 2), (4, 1)):
        loss = load_balancing_loss([torch.zeros(10, e), torch.zeros(10, e)], e, k)
        assert loss.shape == () and abs(float(loss) - k) < 1e-5, f"uniform logits give top_k = {k}, got {float(loss)}"


def test_aux_loss_hand_case_and_mask():
    # 2 tokens, 2 experts, k = 1: both choose expert 0 -> f = (1, 0), P = mean softmax.
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    p0 = torch.softmax(logits, -1)[:, 0].mean()
    torch.testing.assert_close(load_balancing_loss([logits], 2, 1), 2 * p0, msg="E * f_0 * P_0")
    padded = torch.cat([logits, torch.tensor([[0.0, 9.0]])])  # a third, padded token that wants expert 1
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(load_balancing_loss([padded], 2, 1, mask), 2 * p0, msg="padding must not count")


def test_capacity_drops_later_tokens_per_row():
    logits = torch.full((2, 5, 3), -1.0)
    logits[:, :, 0] = 1.0  # every token wants expert 0
    dispatch, prob = top1_capacity_routing(logits, 2)
    assert dispatch.shape == (2, 5, 3) and dispatch.dtype == torch.long and prob.shape == (2, 5, 1)
    kept = dispatch.sum(-1)
    assert kept.tolist() == [[1, 1, 0, 0, 0]] * 2, f"each row keeps its first 2 tokens, got {kept.tolist()}"
    torch.testing.assert_close(prob[..., 0], torch.softmax(logits, -1)[..., 0])


def test_sigmoid_router_bias_selects_not_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0])  # expert 3 is pushed into the selection
    w, i = sigmoid_topk_router(logits, bias, top_k=2, routed_scaling_factor=2.5)
    assert set(i[0].tolist()) == {0, 3}, f"selection uses sigmoid + bias: experts 0 and 3, got {i.tolist()}"
    s = torch.sigmoid(logits[0, [0, 3]])
    want = dict(zip([0, 3], (s / s.sum() * 2.5).tolist(), strict=True))
    got = dict(zip(i[0].tolist(), w[0].tolist(), strict=True))
    assert all(abs(got[e] - want[e]) < 1e-6 for e in (0, 3)), f"weights from unbiased scores, scaled: {got} vs {want}"


def test_param_counts_nemotron_3_nano():
    c = param_counts(NEMOTRON_3_NANO)
    assert all(type(v) is int for v in c.values())
    assert round(c["total"] / 1e9, 2) == 31.58, c
    assert round(c["active"] / 1e9, 2) == 3.58, c
    assert round(c["active_without_input_embedding"] / 1e9, 2) == 3.23, c


def test_param_counts_tiny_by_hand():
    # One MoE layer only: embedding + norm + router + experts + shared + final norm + lm_head.
    cfg = dict(NEMOTRON_3_NANO, vocab_size=10, hidden_size=4, layers_block_type=["moe"], n_routed_experts=3,
               num_experts_per_tok=1, moe_intermediate_size=2, moe_shared_expert_intermediate_size=5)  # fmt: skip
    expert, total = 2 * 2 * 4, 10 * 4 + 4 + 3 * 4 + 3 * 16 + 2 * 5 * 4 + 4 + 10 * 4
    c = param_counts(cfg)
    assert c["total"] == total, c
    assert c["active"] == total - 2 * expert, "a token runs the router, the shared expert and 1 of the 3 experts"
    assert c["active_without_input_embedding"] == c["active"] - 40
