"""Hidden graders for lesson 06. They run in the grader's process; student code only in the worker.

References are transformers' own Llama rotary code: ``LlamaRotaryEmbedding`` built from a
tiny ``LlamaConfig`` for cos/sin, ``apply_rotary_pos_emb`` and ``rotate_half`` for the
rotation, torch autograd through them for gradients. The two properties (relative
position, norm) are checked here on the student's own outputs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb, rotate_half

from graders.engine import expect
from graders.engine.sandbox import StudentError
from graders.lesson_06.bindings import Lesson06

pytestmark = pytest.mark.lesson_06

# (atol, rtol) for one elementwise rotation given the same cos/sin.
TOL = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-6, 1e-5), torch.bfloat16: (1.6e-2, 1.6e-2)}


def llama_rotary(head_dim: int, base: float, max_seq_len: int) -> LlamaRotaryEmbedding:
    """transformers' rotary module for a tiny Llama whose heads have ``head_dim`` channels."""
    config = LlamaConfig(
        vocab_size=16, hidden_size=2 * head_dim, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=max_seq_len, rope_theta=base,
    )  # fmt: skip
    return LlamaRotaryEmbedding(config=config)


def reference_cos_sin(head_dim: int, base: float, max_seq_len: int, positions: torch.Tensor, dtype: torch.dtype):
    """(cos, sin) from ``LlamaRotaryEmbedding`` for positions of shape (T,) or (B, T)."""
    ids = positions if positions.dim() == 2 else positions[None]
    cos, sin = llama_rotary(head_dim, base, max_seq_len)(torch.zeros(1, dtype=dtype), ids)
    return (cos, sin) if positions.dim() == 2 else (cos[0], sin[0])


def cache_atol(positions: torch.Tensor) -> float:
    """transformers rounds the angle m * theta in float32 (about m * 6e-8 rad), so the
    tolerance grows with the largest position; measured errors of a float64-built table
    are 4-6x below this bound (2.2e-4 at position 4095, d = 128)."""
    return 1e-5 + 3e-7 * int(positions.max())


# ---------------------------------------------------------------------------- rotate_half
@pytest.mark.points(1)
def test_rotate_half_matches_transformers(lesson06: Lesson06):
    """rotate_half: equals transformers' Llama rotate_half (halves, not neighbours)"""
    g = torch.Generator().manual_seed(0)
    for shape, dtype in (((4,), torch.float32), ((2, 3, 5, 8), torch.float32), ((3, 64), torch.float64)):
        x = torch.randn(*shape, generator=g, dtype=dtype)
        got = lesson06.rotate_half(x)
        want = rotate_half(x)
        assert torch.equal(got, want), (
            f"rotate_half on shape {shape} differs from transformers' (for [1, 2, 3, 4] expect [-3, -4, 1, 2]): "
            f"max difference {(got - want).abs().max().item():.3g}"
        )


# ---------------------------------------------------------------------------- the cos/sin cache
# Each case: head_dim, base, max_seq_len, positions (made from a generator).
CACHE_CASES = {
    "contiguous": (16, 10000.0, 64, lambda g: torch.arange(32)),
    # A KV cache: each row continues from its own cache length.
    "kv-cache-offsets": (32, 10000.0, 512, lambda g: torch.tensor([[0], [17], [250], [490]]) + torch.arange(6)),
    "random-unsorted": (
        128, 500000.0, 4096, lambda g: torch.cat([torch.randint(0, 4096, (38,), generator=g), torch.tensor([4095, 0])])
    ),
    "tiny-head-batched": (2, 100.0, 100, lambda g: torch.randint(0, 100, (3, 7), generator=g)),
}


@pytest.mark.points(1)
@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_cos_sin_match_llama_rotary(lesson06: Lesson06, case: str):
    """cos/sin: match transformers' LlamaRotaryEmbedding at the given positions"""
    head_dim, base, max_seq_len, make = CACHE_CASES[case]
    positions = make(torch.Generator().manual_seed(1))
    rope = lesson06.rotary(head_dim, max_seq_len, base)
    cos, sin = lesson06.cos_sin(rope, positions, head_dim, torch.float32)
    want_cos, want_sin = reference_cos_sin(head_dim, base, max_seq_len, positions, torch.float32)
    atol = cache_atol(positions)
    expect.close(cos, want_cos, f"cos ({case}, head_dim {head_dim}, base {base:g})", atol, 0)
    expect.close(sin, want_sin, f"sin ({case}, head_dim {head_dim}, base {base:g})", atol, 0)


@pytest.mark.points(2)
def test_cache_is_buffers_that_follow_dtype(lesson06: Lesson06):
    """cos/sin cache: registered buffers, so .double() gives float64 cos/sin that still match"""
    head_dim, base, max_seq_len = 32, 10000.0, 256
    positions = torch.tensor([[5, 6, 7, 8], [200, 201, 202, 203]])
    rope = lesson06.rotary(head_dim, max_seq_len, base)
    lesson06.cos_sin(rope, positions, head_dim, torch.float32)  # default dtype before the cast
    lesson06.call_in_place(rope, "double")
    out = rope.call("forward", positions)
    cos, sin = expect.pair(out, "RotaryEmbedding.forward(positions)")
    for name, t in (("cos", cos), ("sin", sin)):
        t = expect.tensor(t, name, shape=(*positions.shape, head_dim))
        assert t.dtype == torch.float64, (
            f"after module.double(), forward returned {name} as {t.dtype}: store cos_cached and sin_cached with "
            "register_buffer so that .double() and .to(device) move them with the module"
        )
    want_cos, want_sin = reference_cos_sin(head_dim, base, max_seq_len, positions, torch.float64)
    expect.close(cos, want_cos, "cos after .double()", cache_atol(positions), 0)
    expect.close(sin, want_sin, "sin after .double()", cache_atol(positions), 0)


@pytest.mark.points(1)
def test_positions_out_of_range_raise(lesson06: Lesson06):
    """cos/sin cache: every position in [0, max_seq_len) works; one outside raises an error"""
    rope = lesson06.rotary(8, 16, 10000.0)
    lesson06.cos_sin(rope, torch.arange(16), 8, None)
    for bad in ([3, 16], [-1, 2], [[0, 1], [15, 40]]):
        positions = torch.tensor(bad)
        try:
            rope.call("forward", positions)
        except StudentError:
            continue
        raise AssertionError(
            f"forward({bad}) with max_seq_len 16 returned instead of raising: check that positions lie in "
            "[0, max_seq_len) (a negative index silently reads the end of the table)"
        )


# ---------------------------------------------------------------------------- apply_rotary
# Each case: q shape (B, H, T, d), number of key heads, base, positions.
APPLY_CASES = {
    "cos-2d": ((2, 4, 7, 16), 4, 10000.0, torch.arange(3, 10)),
    "cos-batched-offsets": ((3, 2, 5, 32), 2, 10000.0, torch.tensor([[0], [9], [100]]) + torch.arange(5)),
    "gqa": ((2, 8, 6, 64), 2, 500000.0, torch.tensor([[40, 3, 17, 0, 90, 91], [5, 6, 7, 8, 9, 10]])),
}


def apply_inputs(case: str, dtype: torch.dtype, seed: int):
    shape, kv_heads, base, positions = APPLY_CASES[case]
    b, h, t, d = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=dtype)
    k = torch.randn(b, kv_heads, t, d, generator=g, dtype=dtype)
    cos, sin = reference_cos_sin(d, base, 128, positions, dtype)
    return q, k, cos, sin


def reference_apply(q, k, cos, sin):
    """apply_rotary_pos_emb wants (B, T, d) tables; a (T, d) one gets a batch axis."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    return apply_rotary_pos_emb(q, k, cos, sin)


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(APPLY_CASES))
def test_apply_rotary_matches_transformers(lesson06: Lesson06, case: str, dtype: torch.dtype):
    """apply_rotary: matches transformers' apply_rotary_pos_emb given the same cos/sin"""
    atol, rtol = TOL[dtype]
    for seed in (0, 1):
        q, k, cos, sin = apply_inputs(case, dtype, seed)
        q_rot, k_rot = lesson06.apply_rotary(q, k, cos, sin)
        want_q, want_k = reference_apply(q, k, cos, sin)
        expect.close(q_rot, want_q, f"q_rot ({case}, {dtype})", atol, rtol)
        expect.close(k_rot, want_k, f"k_rot ({case}, {dtype})", atol, rtol)


@pytest.mark.points(2)
def test_apply_rotary_gradients(lesson06: Lesson06):
    """apply_rotary: gradients w.r.t. q, k, cos and sin equal autograd through transformers' function"""
    q, k, cos, sin = apply_inputs("cos-batched-offsets", torch.float64, 3)
    g = torch.Generator().manual_seed(4)
    for output, like in ((0, q), (1, k)):
        cot = torch.randn(like.shape, generator=g, dtype=torch.float64)
        got = lesson06.apply_rotary_grads(q, k, cos, sin, cot, output)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, cos, sin)]
        out = apply_rotary_pos_emb(*leaves)[output]
        want = torch.autograd.grad((out * cot).sum(), leaves, allow_unused=True)
        for name, a, w, x in zip(("dq", "dk", "dcos", "dsin"), got, want, leaves, strict=True):
            w = torch.zeros_like(x) if w is None else w
            expect.close(a, w, f"gradient {name} of {'q_rot' if output == 0 else 'k_rot'}", 1e-10, 1e-8)


# ---------------------------------------------------------------------------- properties, on the student's outputs
def student_scores(lesson06: Lesson06, rope, positions, q, k, head_dim: int) -> torch.Tensor:
    """Every score <R(p_a) q_a, R(p_b) k_b> from the student's cos/sin and rotation, in float64."""
    cos, sin = lesson06.cos_sin(rope, positions, head_dim, None)
    q_rot, k_rot = lesson06.apply_rotary(q, k, cos, sin)
    return q_rot.double() @ k_rot.double().transpose(-2, -1)  # (B, H, T, T)


@pytest.mark.points(1)
@pytest.mark.parametrize(("head_dim", "base"), [(32, 10000.0), (8, 100.0)], ids=["d32", "d8-base100"])
def test_scores_depend_only_on_relative_position(lesson06: Lesson06, head_dim: int, base: float):
    """Relative position: shifting every position by s leaves every score q_m . k_n unchanged"""
    max_seq_len = 1024
    g = torch.Generator().manual_seed(head_dim)
    positions = torch.randint(0, 500, (10,), generator=g)  # random, unsorted, maybe repeated
    q = torch.randn(1, 2, 10, head_dim, generator=g)  # a different random q and k at every position
    k = torch.randn(1, 2, 10, head_dim, generator=g)
    rope = lesson06.rotary(head_dim, max_seq_len, base)
    before = student_scores(lesson06, rope, positions, q, k, head_dim)
    # float32 tables: angles rounded to ~1e-7 rad, times |q| |k| ~ head_dim, over positions < 1024.
    atol = 2e-4 * head_dim
    for shift in (1, 37, 500):
        after = student_scores(lesson06, rope, positions + shift, q, k, head_dim)
        worst = (after - before).abs().max().item()
        assert worst <= atol, (
            f"shifting every position by {shift} changed a score q_m . k_n by {worst:.3g} (head_dim {head_dim}): "
            "the scores must depend on m - n only; rotate q and k by the same rule, with the same cos and sin"
        )


@pytest.mark.points(1)
def test_rotation_preserves_norms(lesson06: Lesson06):
    """Norm preservation: every rotated query and key vector keeps its length"""
    head_dim = 16
    g = torch.Generator().manual_seed(9)
    positions = torch.randint(0, 256, (2, 9), generator=g)
    q = torch.randn(2, 3, 9, head_dim, generator=g)
    k = torch.randn(2, 1, 9, head_dim, generator=g)
    rope = lesson06.rotary(head_dim, 256, 10000.0)
    cos, sin = lesson06.cos_sin(rope, positions, head_dim, None)
    q_rot, k_rot = lesson06.apply_rotary(q, k, cos, sin)
    for name, x, x_rot in (("q", q, q_rot), ("k", k, k_rot)):
        expect.close(x_rot.norm(dim=-1), x.norm(dim=-1), f"norms of the rotated {name} vectors", 1e-5, 1e-5)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.points(2)
def test_gpu_cache_moves_and_bfloat16(lesson06: Lesson06):
    """GPU: the module moves with .to("cuda"); apply_rotary is right in bfloat16"""
    head_dim, base, max_seq_len = 64, 10000.0, 1024
    positions = torch.tensor([[0, 1, 2, 3], [700, 701, 702, 703]])
    rope = lesson06.rotary(head_dim, max_seq_len, base, device="cuda")
    cos, sin = lesson06.cos_sin(rope, positions, head_dim, torch.float32, device="cuda")
    want_cos, want_sin = reference_cos_sin(head_dim, base, max_seq_len, positions, torch.float32)
    expect.close(cos, want_cos, "cos on cuda", cache_atol(positions), 0)
    expect.close(sin, want_sin, "sin on cuda", cache_atol(positions), 0)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 4, 4, head_dim, generator=g).bfloat16()
    k = torch.randn(2, 2, 4, head_dim, generator=g).bfloat16()
    bcos, bsin = want_cos.bfloat16(), want_sin.bfloat16()
    q_rot, k_rot = lesson06.apply_rotary(q, k, bcos, bsin, device="cuda")
    want_q, want_k = apply_rotary_pos_emb(q.cuda(), k.cuda(), bcos.cuda(), bsin.cuda())
    expect.close(q_rot, want_q.cpu(), "q_rot (bfloat16, cuda)", *TOL[torch.bfloat16])
    expect.close(k_rot, want_k.cpu(), "k_rot (bfloat16, cuda)", *TOL[torch.bfloat16])
