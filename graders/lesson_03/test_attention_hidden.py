"""Hidden graders for lesson 03. They run in the grader's process; student code only in the worker.

References are torch's own: ``F.scaled_dot_product_attention`` for outputs, softmax of
the masked, scaled scores for weights, autograd through SDPA for gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graders.engine import expect, timing
from graders.engine.worker_main import digests, seeded_inputs
from graders.lesson_03.bindings import Lesson03

pytestmark = pytest.mark.lesson_03

# Per dtype (atol, rtol) for one attention layer; fp16/bf16 only on the GPU test.
TOL = {torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def reference(q, k, v, mask=None):
    """(output, weights) from torch: SDPA for the output, explicit softmax for the weights."""
    scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), weights


def random_mask(shape, generator):
    """A random keep-mask with at least one kept key per query row (no fully masked rows)."""
    mask = torch.rand(shape, generator=generator) > 0.4
    mask[..., 0] = True
    return mask


# Each case: leading batch dims of q/k/v, T_q, T_k, d, d_v, and how the mask is made.
CASES = {
    "2d-nomask": ((), 5, 7, 8, 4, None),
    "batch-nomask": ((3,), 6, 9, 16, 16, None),
    "heads-causal": ((2, 4), 11, 11, 16, 8, "causal"),
    "heads-random-mask-2d": ((2, 3), 7, 13, 8, 12, "random2d"),
    "heads-random-mask-4d": ((2, 3), 9, 6, 32, 8, "random-full"),
    "broadcast-kv": ((2, 3), 8, 8, 8, 8, "kv-broadcast"),
}


def build_case(name: str, dtype: torch.dtype, seed: int):
    batch, tq, tk, d, dv, mask_kind = CASES[name]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, tq, d, generator=g, dtype=dtype)
    k = torch.randn(*batch, tk, d, generator=g, dtype=dtype)
    v = torch.randn(*batch, tk, dv, generator=g, dtype=dtype)
    mask = None
    if mask_kind == "causal":
        mask = torch.ones(tq, tk, dtype=torch.bool).tril()
    elif mask_kind == "random2d":
        mask = random_mask((tq, tk), g)
    elif mask_kind == "random-full":
        mask = random_mask((*batch[:-1], 1, tq, tk), g)  # (B, 1, T_q, T_k): one mask shared by the heads
    elif mask_kind == "kv-broadcast":
        k, v = k[:, :1], v[:, :1]  # one K/V head shared by every query head (as in MQA)
        mask = torch.ones(tq, tk, dtype=torch.bool).tril()
    return q, k, v, mask


# ---------------------------------------------------------------------------- causal_mask
@pytest.mark.points(2)
def test_causal_mask_values(lesson03: Lesson03):
    """causal_mask: bool, lower-triangular with the diagonal, for several lengths"""
    for n in (1, 2, 5, 17):
        got = expect.tensor(lesson03.causal_mask(n), f"causal_mask({n})", shape=(n, n), dtype=torch.bool)
        want = torch.ones(n, n, dtype=torch.bool).tril()
        wrong = (got != want).nonzero().tolist()
        assert not wrong, f"causal_mask({n}) is wrong at (query, key) = {wrong[:3]}: query i must see keys j <= i"


# ---------------------------------------------------------------------------- parity
@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_torch_sdpa(lesson03: Lesson03, case: str, dtype: torch.dtype):
    """Output and weights match torch SDPA"""
    atol, rtol = TOL[dtype]
    for seed in (0, 1):
        q, k, v, mask = build_case(case, dtype, seed)
        out, weights = lesson03.scaled_dot_product_attention(q, k, v, mask)
        want_out, want_w = reference(q, k, v, mask)
        expect.close(weights, want_w, f"weights ({case}, {dtype})", atol, rtol)
        expect.close(out, want_out, f"output ({case}, {dtype})", atol, rtol)


@pytest.mark.points(1)
def test_fully_masked_row_is_zero(lesson03: Lesson03):
    """A query that may see no key gets zero weights and a zero output, not NaN"""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    mask[2] = False
    out, weights = lesson03.scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all(), "a fully masked row produced NaN or inf"
    assert (weights[..., 2, :] == 0).all(), "weights of a fully masked row must be all zero"
    assert (out[..., 2, :] == 0).all(), "output of a fully masked row must be all zero"
    keep = [0, 1, 3, 4, 5]
    want_out, _ = reference(q, k, v, mask)
    expect.close(out[..., keep, :], want_out[..., keep, :], "output of the other rows", *TOL[torch.float32])


# ---------------------------------------------------------------------------- causality by gradients
@pytest.mark.points(2)
@pytest.mark.parametrize("t", [0, 4, 8])
def test_causality_by_gradients(lesson03: Lesson03, t: int):
    """Under a causal mask, output t has zero gradient w.r.t. keys and values after t"""
    g = torch.Generator().manual_seed(10 + t)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    cot = torch.zeros(2, 3, 9, 8, dtype=torch.float64)
    cot[..., t, :] = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)  # probe output position t only
    dq, dk, dv = lesson03.attention_grads(q, k, v, mask, cot)
    leaks = {name: g_[..., t + 1 :, :].abs().max().item() if t < 8 else 0.0 for name, g_ in (("keys", dk), ("values", dv))}
    for name, leak in leaks.items():
        assert leak == 0.0, f"output {t} depends on {name} after position {t} (gradient {leak:.3g}): the future leaks"
    qs, ks, vs = (x.clone().requires_grad_(True) for x in (q, k, v))
    (F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask) * cot).sum().backward()
    for name, got, want in (("dq", dq, qs.grad), ("dk", dk, ks.grad), ("dv", dv, vs.grad)):
        expect.close(got, want, f"gradient {name} at position {t}", 1e-9, 1e-7)


# ---------------------------------------------------------------------------- stability
@pytest.mark.points(2)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "causal"])
def test_stable_for_large_logits(lesson03: Lesson03, masked: bool):
    """No NaN or inf, and the right answer, when scores are around 1e4"""
    g = torch.Generator().manual_seed(7)
    d = 16
    q = torch.randn(2, 2, 10, d, generator=g) * 100.0  # scores q.k / sqrt(d) ~ 1e4
    k = torch.randn(2, 2, 10, d, generator=g) * 100.0
    v = torch.randn(2, 2, 10, d, generator=g)
    mask = torch.ones(10, 10, dtype=torch.bool).tril() if masked else None
    out, weights = lesson03.scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all(), "NaN or inf with scores around 1e4: subtract the row max"
    want_out, want_w = reference(q.double(), k.double(), v.double(), mask)
    # float32 scores of size 1e4 carry absolute rounding of ~1e-3, so the softmax is compared loosely.
    expect.close(weights, want_w.float(), "weights at large logits", 5e-3, 0)
    expect.close(out, want_out.float(), "output at large logits", 2e-2, 0)


# ---------------------------------------------------------------------------- performance
def _time_ratio(lesson03: Lesson03, *, shape, dtype, device, trials: int, count: int, tol: tuple[float, float],
                give_up_above: float | None = None) -> timing.Ratio:  # fmt: skip
    """Student time / torch SDPA time per trial (``graders/engine/timing.py``), each trial on fresh inputs.

    Both sides do the same work: make ``count`` input sets from a fresh seed, run
    attention on each and take the output digests. Every digest is checked against torch's,
    and the first call's outputs in full, outside the timings.
    """
    mask = torch.ones(shape[-2], shape[-2], dtype=torch.bool).tril()
    spec = [list(shape), str(dtype).removeprefix("torch.")]
    seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (trials + 1,))]

    def student(trial: int):
        return lesson03.timed_attention(seed=seeds[trial], count=count, shape=shape, dtype=dtype, mask=mask, device=device)

    def torch_sdpa(trial: int) -> list[float]:
        calls = seeded_inputs(torch, seeds[trial], count, [spec, spec, spec, None], {3: mask}, device)
        return [digests(torch, F.scaled_dot_product_attention(q, k, v, attn_mask=m), seeds[trial] + 1 + i)[0]
                for i, (q, k, v, m) in enumerate(calls)]  # fmt: skip

    def check(trial: int, reply, want: list[float]) -> None:
        got, first, _ = reply
        want_out, want_w = reference(*seeded_inputs(torch, seeds[trial], count, [spec, spec, spec, None], {3: mask}, device)[0])
        expect.close(first[0], want_out.cpu(), "output of a timed call", *tol)
        expect.close(first[1], want_w.cpu(), "weights of a timed call", *tol)
        # a^T E b for an error E has standard deviation ||E||_F <= (atol + rtol) * sqrt(numel): 10 sigma.
        bound = 10 * (tol[0] + tol[1]) * want_out.numel() ** 0.5
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert abs(g[0] - w) <= bound, f"timed call {i} returned a wrong output (digest {g[0]:.6g}, expected {w:.6g})"

    clock = "wall" if device == "cuda" else "cpu"
    return timing.ratio(lesson03.worker, student, torch_sdpa, trials, check=check, clock=clock, give_up_above=give_up_above)


# CPU time of the whole worker vs torch SDPA's in the grader, both on one thread (graders/engine/timing.py),
# (32, 32, 8, 16) float32, 64 calls per trial, measured on the 2-core grading machine at load 2.5-6:
# the reference solution 0.90-1.66x over 25 runs, 20 of them beside two spinning processes (it also
# returns the weights); a loop over the 1024 (batch, head) pairs (tests/submissions/lesson_03_loop)
# 7.6-12.7x; that loop plus a background spinning thread 60-70x.
# With T = 16 the loop ran at only 6.9-9.4x against the reference's 1.4-1.6x: short sequences make
# the per-head Python cost show. The limit sits near the geometric mean, ~3x from either side.
CPU_SHAPE = (32, 32, 8, 16)
CPU_RATIO_LIMIT = 3.5


@pytest.mark.points(3)
def test_cpu_speed_vs_torch_sdpa(lesson03: Lesson03, record_property):
    """CPU speed: within a bounded ratio of torch SDPA (a loop over batch and heads fails)"""
    ratio = _time_ratio(lesson03, shape=CPU_SHAPE, dtype=torch.float32, device="cpu", trials=7, count=64,
                        tol=TOL[torch.float32], give_up_above=2 * CPU_RATIO_LIMIT)  # fmt: skip
    record_property("output", f"{ratio} the time of torch SDPA (limit {CPU_RATIO_LIMIT:g}x)")
    assert ratio.median <= CPU_RATIO_LIMIT, (
        f"{ratio.median:.1f}x slower than torch SDPA (limit {CPU_RATIO_LIMIT:g}x; {ratio}): "
        "use batched matmuls over all leading dims, no Python loops"
    )


GPU_RATIO_LIMIT = 6.0


@pytest.mark.gpu
@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_gpu_half_precision(lesson03: Lesson03, dtype: torch.dtype, record_property):
    """GPU: correct in half precision and within a bounded ratio of torch SDPA"""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g).to(dtype) for _ in range(3))
    mask = torch.ones(64, 64, dtype=torch.bool).tril()
    out, weights = lesson03.scaled_dot_product_attention(q, k, v, mask, device="cuda")
    want_out, want_w = reference(q.cuda(), k.cuda(), v.cuda(), mask.cuda())
    expect.close(out, want_out.cpu(), f"output ({dtype}, cuda)", *TOL[dtype])
    expect.close(weights, want_w.cpu(), f"weights ({dtype}, cuda)", *TOL[dtype])
    ratio = _time_ratio(lesson03, shape=(8, 16, 256, 64), dtype=dtype, device="cuda", trials=5, count=16, tol=TOL[dtype])
    record_property("output", f"{ratio} the time of torch SDPA on the GPU (limit {GPU_RATIO_LIMIT:g}x)")
    assert ratio.median <= GPU_RATIO_LIMIT, f"{ratio.median:.1f}x slower than torch SDPA on the GPU (limit {GPU_RATIO_LIMIT:g}x; {ratio})"
