"""Hidden graders for lesson 04. They run in the grader's process; student code only in the worker.

References are torch's own modules with the same weights: ``nn.LayerNorm``,
``nn.MultiheadAttention(batch_first=True)`` (its packed ``in_proj_weight`` (3C, C) is
the student's ``c_attn.weight``, ``out_proj`` is ``c_proj``), ``nn.Linear`` + ``nn.GELU``
for the MLP, and a Pre-LN block composed from them here. Gradients come from autograd
through those modules.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from graders.engine import expect
from graders.lesson_04.bindings import Lesson04

pytestmark = pytest.mark.lesson_04

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]
# (atol, rtol) for one layer (LayerNorm, MHA, MLP) and for a whole block. Measured on the CPU: the
# reference solution is within 8e-7 of torch in float32 and 2e-15 in float64 (layers and block).
TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}
BLOCK_TOL = {torch.float32: (5e-5, 2e-4), torch.float64: (1e-10, 1e-8)}


# ---------------------------------------------------------------------------- references
def future_mask(t: int) -> torch.Tensor:
    """nn.MultiheadAttention's boolean attn_mask: True where attention is *not* allowed."""
    return ~torch.ones(t, t, dtype=torch.bool).tril()


def torch_mlp(c: int, bias: bool, dtype: torch.dtype) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(c, 4 * c, bias=bias, dtype=dtype), nn.GELU(approximate="tanh"), nn.Linear(4 * c, c, bias=bias, dtype=dtype)
    )


def torch_mha(c: int, h: int, bias: bool, dtype: torch.dtype) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(c, h, bias=bias, batch_first=True, dtype=dtype)


def run_mha(m: nn.MultiheadAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    return m(x, x, x, attn_mask=future_mask(x.shape[1]) if causal else None, need_weights=False)[0]


class TorchBlock(nn.Module):
    """The Pre-LN block built from torch's modules: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, c: int, h: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c, bias=bias, dtype=dtype)
        self.attn = torch_mha(c, h, bias, dtype)
        self.ln_2 = nn.LayerNorm(c, bias=bias, dtype=dtype)
        self.mlp = torch_mlp(c, bias, dtype)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + run_mha(self.attn, self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


def student_names(m: nn.Module) -> dict[str, nn.Parameter]:
    """The student's parameter names (GPT-2's) -> the reference module's parameters."""
    if isinstance(m, nn.LayerNorm):
        pairs = {"weight": m.weight, "bias": m.bias}
    elif isinstance(m, nn.MultiheadAttention):
        pairs = {"c_attn.weight": m.in_proj_weight, "c_attn.bias": m.in_proj_bias,
                 "c_proj.weight": m.out_proj.weight, "c_proj.bias": m.out_proj.bias}  # fmt: skip
    elif isinstance(m, nn.Sequential):
        pairs = {"c_fc.weight": m[0].weight, "c_fc.bias": m[0].bias, "c_proj.weight": m[2].weight, "c_proj.bias": m[2].bias}
    else:
        pairs = {f"{part}.{k}": v for part in ("ln_1", "attn", "ln_2", "mlp") for k, v in student_names(getattr(m, part)).items()}
    return {k: v for k, v in pairs.items() if v is not None}


def state_dict_for_student(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in student_names(m).items()}


def randomise(m: nn.Module, seed: int) -> nn.Module:
    """Random weights, biases and LayerNorm gains (torch zero-initialises MHA biases, which would hide bias bugs).

    Matrices get std 1/sqrt(fan_in), so q and k have unit scale and the softmax is neither flat nor one-hot.
    Values are drawn in float64, so a float32 and a float64 copy share them.
    """
    g = torch.Generator().manual_seed(seed)
    gains = {id(sub.weight) for sub in m.modules() if isinstance(sub, nn.LayerNorm)}
    with torch.no_grad():
        for p in m.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.dim() == 2:
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif id(p) in gains:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return m


def randn(*shape: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------- heads
HEAD_SHAPES = [(2, 5, 12, 3), (3, 8, 32, 4), (1, 4, 8, 8), (2, 6, 16, 1)]  # (B, T, C, n_head); T == hs in the second


@pytest.mark.points(2)
def test_split_heads(lesson04: Lesson04):
    """split_heads: (B, T, C) -> (B, nh, T, hs) with head h holding channels h*hs to (h+1)*hs - 1"""
    for B, T, C, H in HEAD_SHAPES:
        for dtype in DTYPES:
            x = randn(B, T, C, seed=B * T + C, dtype=dtype)
            want = x.view(B, T, H, C // H).transpose(1, 2)
            got = lesson04.split_heads(x, H)
            wrong = (got != want).nonzero().tolist()
            assert not wrong, (
                f"split_heads(x of shape {(B, T, C)}, n_head={H}) differs at (b, h, t, i) = {wrong[0]}: "
                "out[b, h, t, i] must be x[b, t, h*hs + i] (view to (B, T, nh, hs), then swap T and nh)"
            )
    # As in attention: q is a slice of c_attn's (B, T, 3C) output, not contiguous in memory.
    qkv = randn(2, 5, 48, seed=3, dtype=torch.float32)
    q = qkv[..., :16]
    got = lesson04.split_heads(q, 4)
    assert torch.equal(got, q.reshape(2, 5, 4, 4).transpose(1, 2)), "split_heads is wrong on a slice of c_attn's output"


@pytest.mark.points(1)
def test_merge_heads(lesson04: Lesson04):
    """merge_heads: (B, nh, T, hs) -> (B, T, C), the inverse of split_heads"""
    for B, T, C, H in HEAD_SHAPES:
        x = randn(B, T, C, seed=C, dtype=torch.float64)
        y = x.view(B, T, H, C // H).transpose(1, 2)  # the correct split
        got = lesson04.merge_heads(y)
        wrong = (got != x).nonzero().tolist()
        assert not wrong, (
            f"merge_heads(y of shape {tuple(y.shape)}) differs at (b, t, c) = {wrong[0]}: "
            "out[b, t, h*hs + i] must be y[b, h, t, i] (swap nh and T back, then merge the last two axes)"
        )


# ---------------------------------------------------------------------------- LayerNorm
# name: (input shape, std, offset per dtype, eps, bias)
LN_CASES = {
    "standard": ((2, 7, 32), 1.0, {torch.float32: 0.0, torch.float64: 0.0}, 1e-5, True),
    "large-offset": ((3, 5, 64), 1.0, {torch.float32: 1e3, torch.float64: 1e6}, 1e-5, True),
    "small-variance": ((2, 6, 48), 1e-3, {torch.float32: 0.0, torch.float64: 0.0}, 1e-5, True),
    "eps-1e-2": ((4, 3, 16), 0.1, {torch.float32: 0.5, torch.float64: 0.5}, 1e-2, True),
    "no-bias-2d-and-4d": ((5, 40), 2.0, {torch.float32: -3.0, torch.float64: -3.0}, 1e-5, False),
}
# With an offset of 1e3 (float32) or 1e6 (float64) the input itself carries rounding of about
# 1e-4 (1e-10) relative to its std: torch's own LayerNorm is 3e-4 (0) from the float64 truth,
# the reference solution 4e-4 (3e-10), mean(x**2) - mean**2 0.4 (6e-4).
LN_OFFSET_ATOL = {torch.float32: 2e-3, torch.float64: 1e-8}


@pytest.mark.points(1)
@pytest.mark.parametrize("case", list(LN_CASES))
def test_layernorm_parity(lesson04: Lesson04, case: str):
    """LayerNorm matches nn.LayerNorm (float32 and float64)"""
    shape, std, offsets, eps, bias = LN_CASES[case]
    c = shape[-1]
    for dtype in DTYPES:
        ref = randomise(nn.LayerNorm(c, eps=eps, bias=bias, dtype=torch.float64), seed=c)
        ln = lesson04.layer_norm(state_dict_for_student(ref), ndim=c, bias=bias, eps=eps, dtype=dtype)
        shapes = [shape] if len(shape) == 3 else [shape, (2, 3, 4, c)]
        for s in shapes:
            x = (randn(*s, seed=len(s), dtype=torch.float64) * std + offsets[dtype]).to(dtype)
            got = lesson04.forward(ln, x)
            with torch.no_grad():
                want = ref(x.double())  # torch's LayerNorm in float64 on the same (rounded) input: the truth
            atol, rtol = TOL[dtype]
            if case == "large-offset":
                atol = LN_OFFSET_ATOL[dtype]
            expect.close(got, want, f"LayerNorm ({case}, input {tuple(s)}, {dtype})", atol, rtol)


# ---------------------------------------------------------------------------- MultiHeadAttention
# (B, T, C, n_head, bias): T == hs in the second; one position; one head; many narrow heads.
MHA_CASES = [(2, 5, 16, 4, True), (3, 8, 32, 4, False), (1, 12, 24, 3, True), (2, 1, 8, 2, True), (2, 6, 12, 1, True), (2, 7, 64, 16, True)]


@pytest.mark.points(2)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "not-causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_mha_parity(lesson04: Lesson04, dtype: torch.dtype, causal: bool):
    """MultiHeadAttention matches nn.MultiheadAttention with the same weights"""
    atol, rtol = TOL[dtype]
    for i, (B, T, C, H, bias) in enumerate(MHA_CASES):
        ref = randomise(torch_mha(C, H, bias, dtype), seed=100 + i)
        mha = lesson04.module("MultiHeadAttention", state_dict_for_student(ref), n_embd=C, n_head=H, bias=bias, dtype=dtype)
        x = randn(B, T, C, seed=i, dtype=dtype)
        got = lesson04.forward(mha, x, causal=causal)
        with torch.no_grad():
            want = run_mha(ref, x, causal)
        expect.close(got, want, f"output (B, T, C, n_head, bias) = {(B, T, C, H, bias)}, causal={causal}", atol, rtol)


# ---------------------------------------------------------------------------- causality
@pytest.mark.points(2)
@pytest.mark.parametrize("cls", ["MultiHeadAttention", "Block"])
def test_causality(lesson04: Lesson04, cls: str):
    """By default, changing the inputs after position t leaves the outputs up to t unchanged"""
    B, T, C, H = 2, 9, 32, 4
    ref = randomise(torch_mha(C, H, True, torch.float64) if cls == "MultiHeadAttention" else TorchBlock(C, H, True, torch.float64), seed=7)
    obj = lesson04.module(cls, state_dict_for_student(ref), n_embd=C, n_head=H, bias=True, dtype=torch.float64)
    x = randn(B, T, C, seed=8, dtype=torch.float64)
    base = lesson04.forward(obj, x)  # no `causal` argument: the default must be causal
    for t in (0, 3, 7):
        changed = x.clone()
        changed[:, t + 1 :] = randn(B, T - t - 1, C, seed=20 + t, dtype=torch.float64)
        out = lesson04.forward(obj, changed)
        leak = (out[:, : t + 1] - base[:, : t + 1]).abs().max().item()
        assert leak <= 1e-12, (
            f"{cls}: changing the inputs after position {t} changed the output at positions <= {t} "
            f"(by up to {leak:.3g}): the future leaks (is the causal mask applied, and is causal=True the default?)"
        )
        moved = (out[:, t + 1 :] - base[:, t + 1 :]).abs().max().item()
        assert moved > 1e-6, f"{cls}: changing the inputs after position {t} did not change the outputs there"


# ---------------------------------------------------------------------------- MLP
def exact_gelu_hint(got: torch.Tensor, ref: nn.Sequential, x: torch.Tensor, atol: float, rtol: float) -> str:
    exact = nn.Sequential(ref[0], nn.GELU(), ref[2])
    with torch.no_grad():
        want = exact(x)
    matches = (got.double() - want.double()).abs().le(atol + rtol * want.double().abs()).all()
    return " (it matches the exact GELU: use the tanh approximation, F.gelu(h, approximate='tanh'))" if matches else ""


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_mlp_parity(lesson04: Lesson04, dtype: torch.dtype):
    """MLP matches Linear -> GELU (tanh approximation) -> Linear"""
    atol, rtol = TOL[dtype]
    for i, (B, T, C, bias) in enumerate([(2, 5, 16, True), (3, 4, 24, False)]):
        ref = randomise(torch_mlp(C, bias, dtype), seed=200 + i)
        mlp = lesson04.module("MLP", state_dict_for_student(ref), n_embd=C, n_head=1, bias=bias, dtype=dtype)
        x = randn(B, T, C, seed=i, dtype=dtype) * 2.0  # pre-activations of size 2-4, where the GELUs differ most
        got = lesson04.forward(mlp, x)
        with torch.no_grad():
            want = ref(x)
        try:
            expect.close(got, want, f"MLP output (B, T, C, bias) = {(B, T, C, bias)}", atol, rtol)
        except AssertionError as exc:
            raise AssertionError(str(exc) + exact_gelu_hint(got, ref, x, atol, rtol)) from None


# ---------------------------------------------------------------------------- Block
# (B, T, C, n_head, bias)
BLOCK_CASES = [(2, 6, 32, 4, True), (3, 5, 24, 3, False), (1, 10, 16, 2, True)]


@pytest.mark.points(2)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "not-causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_block_parity(lesson04: Lesson04, dtype: torch.dtype, causal: bool):
    """Block matches a Pre-LN block of nn.LayerNorm, nn.MultiheadAttention and an MLP"""
    atol, rtol = BLOCK_TOL[dtype]
    for i, (B, T, C, H, bias) in enumerate(BLOCK_CASES):
        ref = randomise(TorchBlock(C, H, bias, dtype), seed=300 + i)
        block = lesson04.module("Block", state_dict_for_student(ref), n_embd=C, n_head=H, bias=bias, dtype=dtype)
        x = randn(B, T, C, seed=i, dtype=dtype) * 3.0 + 1.0  # a residual stream that is not already normalised
        got = lesson04.forward(block, x, causal=causal)
        with torch.no_grad():
            want = ref(x, causal)
        expect.close(got, want, f"Block output (B, T, C, n_head, bias) = {(B, T, C, H, bias)}, causal={causal}", atol, rtol)


# ---------------------------------------------------------------------------- gradients
def block_with_grads(lesson04: Lesson04, dtype: torch.dtype, bias: bool, seed: int):
    B, T, C, H = 2, 6, 32, 4
    ref = randomise(TorchBlock(C, H, bias, dtype), seed=seed)
    block = lesson04.module("Block", state_dict_for_student(ref), n_embd=C, n_head=H, bias=bias, dtype=dtype)
    x = randn(B, T, C, seed=seed + 1, dtype=dtype) * 3.0 + 1.0
    cot = randn(B, T, C, seed=seed + 2, dtype=dtype)
    grads = lesson04.param_grads(block, x, cot, causal=True)
    expected = student_names(ref)
    missing = sorted(set(expected) - set(grads))
    assert not missing, f"Block has no parameters named {missing} (do not rename the parameters made in __init__)"
    for name, g in grads.items():
        if g is not None and name in expected:
            expect.tensor(g, f"gradient of {name}", shape=expected[name].shape, dtype=dtype)
    return ref, x, cot, grads


@pytest.mark.points(2)
def test_gradient_flow(lesson04: Lesson04):
    """Every parameter of a Block gets a finite, non-zero gradient"""
    _, _, _, grads = block_with_grads(lesson04, torch.float32, True, seed=400)
    problems = {
        "no gradient (None: not used, or used through .detach()/.data/no_grad)": [n for n, g in grads.items() if g is None],
        "non-finite gradient": [n for n, g in grads.items() if g is not None and not torch.isfinite(g).all()],
        "all-zero gradient": [n for n, g in grads.items() if g is not None and bool((g == 0).all())],
    }
    text = "; ".join(f"{why}: {', '.join(sorted(names))}" for why, names in problems.items() if names)
    assert not text, f"gradient flow through Block.forward: {text}"


@pytest.mark.points(2)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_gradients_match_torch(lesson04: Lesson04, bias: bool):
    """Block parameter gradients match autograd through torch's modules (float64)"""
    ref, x, cot, grads = block_with_grads(lesson04, torch.float64, bias, seed=500)
    (ref(x, True) * cot).sum().backward()
    for name, p in student_names(ref).items():
        got = grads[name]
        assert got is not None, f"{name} got no gradient"
        expect.close(got, p.grad, f"gradient of {name}", 1e-9, 1e-7)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.points(1)
def test_block_on_gpu(lesson04: Lesson04):
    """GPU: Block runs on CUDA (float32) and matches the CPU reference"""
    B, T, C, H = 2, 16, 64, 4
    ref = randomise(TorchBlock(C, H, True, torch.float64), seed=600)
    block = lesson04.module("Block", state_dict_for_student(ref), n_embd=C, n_head=H, bias=True, dtype=torch.float32, device="cuda")
    x = randn(B, T, C, seed=601, dtype=torch.float32)
    got = lesson04.forward(block, x, causal=True, device="cuda")
    with torch.no_grad():
        want = ref(x.double(), True)
    # TF32 may be on for CUDA matmuls in some setups: a loose float32 tolerance.
    expect.close(got, want, "Block output on CUDA (float32)", 5e-3, 5e-3)
