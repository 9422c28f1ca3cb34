"""Visible tests for lesson 03. Run: pytest exercises/lesson_03

They check shapes, a case small enough to do by hand, the causal mask and that each
row of weights is a distribution. The hidden graders check much more (see the lesson).
"""

import math

import pytest
import torch

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
