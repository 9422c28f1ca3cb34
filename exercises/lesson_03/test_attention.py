"""Visible tests for lesson 03. Run: .venv/bin/pytest exercises/lesson_03 (or make check LESSON=03)

They check shapes, a case small enough to do by hand, the causal mask, that each row of
weights is a distribution, parity with torch on small inputs, causality through gradients,
large scores, a lenient speed ratio to torch and (with CUDA) half precision on the GPU. The hidden graders check much more (see the lesson).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils import benchmark

from exercises.lesson_03.attention import causal_mask, scaled_dot_product_attention

pytestmark = pytest.mark.lesson_03


def test_causal_mask_small():
    expected = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    mask = causal_mask(3)
    assert mask.dtype == torch.bool, f"mask dtype is {mask.dtype}, expected torch.bool"
    assert torch.equal(mask, expected), f"causal_mask(3) =\n{mask}\nexpected\n{expected}"


def test_output_shapes():
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 3)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 4, 5, 3), f"output shape {tuple(out.shape)}, expected (B, H, T_q, d_v) = (2, 4, 5, 3)"
    assert weights.shape == (2, 4, 5, 7), f"weights shape {tuple(weights.shape)}, expected (B, H, T_q, T_k) = (2, 4, 5, 7)"


def test_hand_computed_case():
    # One query, two keys, d = 4: scores q.k / sqrt(4) = [2, 0] / 2 = [1, 0].
    q = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    k = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    v = torch.tensor([[10.0], [20.0]])
    out, weights = scaled_dot_product_attention(q, k, v)
    e = math.e
    expected_w = torch.tensor([[e / (e + 1), 1 / (e + 1)]])
    torch.testing.assert_close(weights, expected_w, msg="weights: did you scale by 1/sqrt(d)?")
    torch.testing.assert_close(out, expected_w @ v, msg="output should be weights @ v")


def test_rows_sum_to_one():
    q, k, v = torch.randn(3, 6, 16), torch.randn(3, 9, 16), torch.randn(3, 9, 16)
    _, weights = scaled_dot_product_attention(q, k, v)
    assert (weights >= 0).all(), "weights must be non-negative"
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 6), msg="each row of weights must sum to 1 (softmax over keys)")


def test_causal_mask_blocks_the_future():
    t = 6
    q, k, v = torch.randn(1, t, 8), torch.randn(1, t, 8), torch.randn(1, t, 8)
    _, weights = scaled_dot_product_attention(q, k, v, causal_mask(t))
    future = ~torch.ones(t, t, dtype=torch.bool).tril()
    assert (weights[0][future] == 0).all(), "a query attends to a key after it: check the mask convention (True = keep)"
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, t))


def torch_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax of the scaled scores, masked entries at -inf, computed in float64 by torch."""
    logits = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf)
    return torch.softmax(logits, dim=-1).to(q.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_sdpa_small(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 6, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.rand(4, 4, generator=g) > 0.5
    mask[:, 1] = True  # every query keeps at least one key
    for m in (None, mask):
        out, weights = scaled_dot_product_attention(q, k, v, m)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        torch.testing.assert_close(out, want, msg=f"output differs from F.scaled_dot_product_attention (mask: {m is not None})")
        torch.testing.assert_close(weights, torch_weights(q, k, m), msg="weights differ from softmax(q k^T / sqrt(d))")


def test_query_that_sees_no_key_gets_zeros():
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 2)
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all(), "a row with every key masked gave NaN or inf"
    assert (weights[0, 1] == 0).all() and (out[0, 1] == 0).all(), "query 1 sees no key: zero weights and a zero output"
    torch.testing.assert_close(out[0, 0], v[0, 0], msg="query 0 sees key 0 only: its output is v[0]")


def test_no_gradient_flows_from_future_keys():
    q, k, v = (torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out, _ = scaled_dot_product_attention(q, k, v, causal_mask(5))
    out[:, 1].sum().backward()  # output position 1 may read keys and values 0 and 1 only
    assert (k.grad[:, 2:] == 0).all() and (v.grad[:, 2:] == 0).all(), "output 1 depends on keys or values after it"
    assert k.grad[:, :2].abs().sum() > 0 and v.grad[:, :2].abs().sum() > 0, "output 1 must depend on keys 0 and 1"


def test_huge_scores_stay_finite():
    q = torch.tensor([[300.0, 0.0], [0.0, -300.0]]) * 10  # scores q.k / sqrt(2) of order 1e4
    k = torch.tensor([[20.0, 0.0], [0.0, 20.0]])
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    for mask in (None, causal_mask(2)):
        out, weights = scaled_dot_product_attention(q, k, v, mask)
        assert torch.isfinite(out).all() and torch.isfinite(weights).all(), "NaN or inf at scores ~1e4: subtract the row max"
        torch.testing.assert_close(weights[0], torch.tensor([1.0, 0.0]), msg="query 0 puts all its weight on key 0")
    torch.testing.assert_close(out[1], v[0], msg="query 1 (causal) sees key 0 only")


def test_speed_within_a_few_times_torch():
    """Lenient speed check on one thread: at most 5x the time of torch's SDPA (a loop over heads is ~20x)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(8, 16, 24, 16, generator=g) for _ in range(3))
    mask = causal_mask(24)

    def median_seconds(fn) -> float:
        timer = benchmark.Timer("fn(q, k, v, mask)", globals=dict(fn=fn, q=q, k=k, v=v, mask=mask), num_threads=1)
        return timer.blocked_autorange(min_run_time=0.2).median

    torch_sdpa = lambda q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    ratio = median_seconds(scaled_dot_product_attention) / median_seconds(torch_sdpa)
    assert ratio <= 5.0, f"{ratio:.1f}x the time of torch SDPA (lenient bar 5x): use batched matmuls, no Python loops"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_matches_torch(dtype: torch.dtype):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 32, 16, generator=g).to(dtype).cuda() for _ in range(3))
    mask = causal_mask(32).cuda()
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert out.is_cuda and out.dtype == dtype, f"output on {out.device} as {out.dtype}, expected cuda {dtype}"
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2, msg=f"output differs from torch SDPA in {dtype}")
    torch.testing.assert_close(weights.float(), torch_weights(q, k, mask).float(), atol=2e-2, rtol=2e-2)
