"""Visible tests for lesson 06. Run: .venv/bin/pytest exercises/lesson_06 (or make check LESSON=06)

Hand-computed cases, shapes, the position lookup, the cache's dtype, gradients through the
rotation, the two properties (norms, relative position) and (with CUDA) the GPU. The hidden graders also compare with transformers' Llama rotary
code (see the lesson).
"""

import math

import pytest
import torch

from exercises.lesson_06.rope import RotaryEmbedding, apply_rotary, rotate_half

pytestmark = pytest.mark.lesson_06


def test_rotate_half_small():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = rotate_half(x)
    assert torch.equal(got, torch.tensor([-3.0, -4.0, 1.0, 2.0])), (
        f"rotate_half([1, 2, 3, 4]) = {got.tolist()}, expected [-3, -4, 1, 2] (halves, not neighbours)"
    )
    y = torch.randn(2, 3, 6)
    assert torch.equal(rotate_half(rotate_half(y)), -y), "two quarter turns must give -x"


def test_cache_shapes_and_position_zero():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=16)
    assert rope.cos_cached.shape == (16, 8), f"cos_cached has shape {tuple(rope.cos_cached.shape)}, expected (16, 8)"
    assert rope.sin_cached.shape == (16, 8), f"sin_cached has shape {tuple(rope.sin_cached.shape)}, expected (16, 8)"
    buffers = dict(rope.named_buffers())
    assert "cos_cached" in buffers and "sin_cached" in buffers, "register cos_cached and sin_cached as buffers"
    cos, sin = rope(torch.arange(4))
    assert cos.shape == sin.shape == (4, 8), f"positions (4,) gave cos {tuple(cos.shape)}, expected (4, 8)"
    cos_b, _ = rope(torch.arange(6).reshape(2, 3))
    assert cos_b.shape == (2, 3, 8), f"positions (2, 3) gave cos {tuple(cos_b.shape)}, expected (2, 3, 8)"
    torch.testing.assert_close(cos[0], torch.ones(8), msg="position 0 must not rotate: cos = 1")
    torch.testing.assert_close(sin[0], torch.zeros(8), msg="position 0 must not rotate: sin = 0")


def test_one_pair_turns_one_radian_per_position():
    rope = RotaryEmbedding(head_dim=2, max_seq_len=8)
    cos, sin = rope(torch.tensor([1]))
    q = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    q_rot, _ = apply_rotary(q, q, cos, sin)
    want = torch.tensor([math.cos(1.0), math.sin(1.0)])
    torch.testing.assert_close(q_rot.flatten(), want, msg="theta_0 = 1: (1, 0) at position 1 must become (cos 1, sin 1)")


def test_frequencies_and_halves_layout():
    # d = 4, base = 100: theta = (100^0, 100^(-2/4)) = (1, 0.1); at position 3 the angles are (3, 0.3).
    rope = RotaryEmbedding(head_dim=4, max_seq_len=8, base=100.0)
    cos, sin = rope(torch.tensor([3]))
    angles = torch.tensor([3.0, 0.3, 3.0, 0.3])  # halves layout: cat(freqs, freqs)
    torch.testing.assert_close(cos[0], angles.cos(), msg="cos at position 3: check theta_i = base^(-2i/d) and cat(freqs, freqs)")
    torch.testing.assert_close(sin[0], angles.sin(), msg="sin at position 3")


def test_positions_are_looked_up_not_sliced():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=16)
    cos_all, sin_all = rope(torch.arange(16))
    cos, sin = rope(torch.tensor([5, 2, 11]))
    torch.testing.assert_close(cos, cos_all[[5, 2, 11]], msg="forward must return the rows of the given positions")
    torch.testing.assert_close(sin, sin_all[[5, 2, 11]], msg="forward must return the rows of the given positions")


def test_position_out_of_range_raises():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=16)
    rope(torch.tensor([0, 15]))
    for bad in ([16], [-1]):
        with pytest.raises((IndexError, ValueError)):
            rope(torch.tensor(bad))


def test_apply_rotary_shapes_and_norms():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64)
    positions = torch.tensor([[0, 1, 2, 3, 4], [30, 31, 32, 33, 34]])
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16)  # fewer key heads, as in GQA
    q_rot, k_rot = apply_rotary(q, k, *rope(positions))
    assert q_rot.shape == q.shape and k_rot.shape == k.shape, f"shapes {tuple(q_rot.shape)}, {tuple(k_rot.shape)}"
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1), msg="a rotation keeps every vector's norm")
    torch.testing.assert_close(k_rot.norm(dim=-1), k.norm(dim=-1), msg="a rotation keeps every vector's norm")


def test_scores_depend_on_offset_only():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(m: int, n: int) -> float:
        q_rot, _ = apply_rotary(q, q, *rope(torch.tensor([m])))
        _, k_rot = apply_rotary(k, k, *rope(torch.tensor([n])))
        return float((q_rot * k_rot).sum())

    assert score(3, 10) == pytest.approx(score(20, 27), abs=1e-4), "<R(m) q, R(n) k> must depend on n - m only"
    assert score(3, 10) != pytest.approx(score(3, 11), abs=1e-4), "different offsets should give different scores"


def test_double_casts_the_tables():
    rope = RotaryEmbedding(head_dim=6, max_seq_len=10).double()
    cos, sin = rope(torch.tensor([[2, 9]]))
    assert cos.dtype == sin.dtype == torch.float64, f"after .double() cos is {cos.dtype}: store the tables as buffers"
    torch.testing.assert_close(cos[0, 1, 0], torch.tensor(math.cos(9.0), dtype=torch.float64), msg="cos of 9 radians")


def test_gradients_undo_the_rotation():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=32)
    cos, sin = (t.double() for t in rope(torch.tensor([4, 9, 27])))
    q = torch.randn(1, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 3, 8, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    q_rot, _ = apply_rotary(q, k, cos, sin)
    (q_rot * cot).sum().backward()
    # The gradient of a rotation is the inverse rotation: rotating the gradient again gives the cotangent back.
    again, _ = apply_rotary(q.grad, k.detach(), cos, sin)
    torch.testing.assert_close(again, cot, msg="d q_rot / d q must be the transposed (inverse) rotation")
    assert k.grad is None or (k.grad == 0).all(), "q_rot must not depend on k"
    leaves = [x.clone().requires_grad_(True) for x in (q.detach(), k.detach(), cos, sin)]
    assert torch.autograd.gradcheck(lambda *xs: apply_rotary(*xs), leaves), "gradients through cos and sin are wrong"


@pytest.mark.gpu
def test_cuda_tables_and_bfloat16_rotation():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=128)
    cos_cpu, sin_cpu = rope(torch.tensor([3, 100]))
    cos, sin = rope.cuda()(torch.tensor([3, 100], device="cuda"))
    assert cos.is_cuda and sin.is_cuda, "after .cuda() the tables must be on the GPU (register them as buffers)"
    torch.testing.assert_close(cos.cpu(), cos_cpu)
    q = torch.randn(1, 2, 2, 16).bfloat16()
    q_rot, _ = apply_rotary(q.cuda(), q.cuda(), cos.bfloat16(), sin.bfloat16())
    assert q_rot.is_cuda and q_rot.dtype == torch.bfloat16, f"q_rot on {q_rot.device} as {q_rot.dtype}, expected cuda bfloat16"
    want, _ = apply_rotary(q.float(), q.float(), cos_cpu, sin_cpu)
    torch.testing.assert_close(q_rot.float().cpu(), want, atol=5e-2, rtol=2e-2)
