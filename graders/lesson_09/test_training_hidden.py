"""Hidden graders for lesson 09. They run in the grader's process; student code only in the worker.

References are torch's and transformers' own: ``torch.optim.AdamW`` stepped through the same
``tinylm.adamw_trajectory`` as the student's optimizer, ``transformers.get_cosine_schedule_with_warmup``'s
multiplier, ``torch.nn.utils.clip_grad_norm_``, a direct eval-mode loss, and a reference training
loop written from those three. The model, data and run helpers are the course's ``tinylm.py``
(loaded here from the reference copy, the file the worker gets too). Resuming runs in a second,
fresh sandboxed worker (``Lesson09.resume_in_fresh_worker``); parameters come back as tensors and
are hashed here, never by a digest the worker reports.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from graders.engine import expect, lessons
from graders.lesson_09.bindings import Lesson09

pytestmark = pytest.mark.lesson_09


def _reference_tinylm():
    spec = importlib.util.spec_from_file_location("lesson09_tinylm", lessons.load("09").provided["tinylm"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tinylm = _reference_tinylm()

# (atol, rtol) for AdamW parameters after 100 steps. Measured against torch.optim.AdamW: the reference
# (torch's operation order) 0.0 in both dtypes; a textbook AdamW (m = b1*m + (1-b1)*g, v_hat, m_hat,
# then the update) up to 1.0e-14 (float64) and 5.3e-6 (float32) with given gradients, and up to
# 1.3e-11 / 4.9e-6 over a 100-step training at lr <= 1e-2, where rounding feeds back through the loss.
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 1e-5)}


def _close_trajectory(got: list[list[torch.Tensor]], want: list[list[torch.Tensor]], dtype: torch.dtype, what: str) -> None:
    atol, rtol = TOL[dtype]
    for s, (g_step, w_step) in enumerate(zip(got, want, strict=True)):
        for i, (g, w) in enumerate(zip(g_step, w_step, strict=True)):
            expect.close(g, w, f"{what}: parameter {i} after step {s + 1}", atol, rtol)


def _torch_trajectory(params, grads=None, groups=None, hyper=None, loss=None, steps=0, inputs=None):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    spec = [{**g, "params": [ps[i] for i in g["params"]]} for g in groups] if groups else ps
    opt = torch.optim.AdamW(spec, **(hyper or {}))
    return tinylm.adamw_trajectory(opt, ps, grads or [], loss, steps, inputs)


def _params(seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype),
            torch.randn(5, 3, generator=g, dtype=dtype)]  # fmt: skip


def _grads(params: list[torch.Tensor], steps: int, seed: int, *, missing: bool = False) -> list[list[torch.Tensor | None]]:
    """Random gradients whose scale changes per tensor and step (1e-5 .. 10), so eps and v_hat both matter.

    ``missing``: some parameters get no gradient at some steps (None).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        row = []
        for i, p in enumerate(params):
            scale = 10 ** float(torch.empty(()).uniform_(-5, 1, generator=g))
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * scale
            row.append(None if missing and (step + i) % 3 == 0 else grad)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- AdamW
HYPER = {
    "decay": {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1},
    "no-decay": {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.0},
    "strong-decay-b2": {"lr": 1e-3, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.5},
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(HYPER))
def test_adamw_given_gradients(lesson09: Lesson09, case: str, dtype: str):
    """AdamW: parameters equal torch.optim.AdamW's after each of 100 steps, given gradients"""
    dt = DTYPES[dtype]
    params = _params(1, dt)
    grads = _grads(params, 100, 2)
    got = lesson09.adamw(params, grads=grads, hyper=HYPER[case])
    _close_trajectory(got, _torch_trajectory(params, grads=grads, hyper=HYPER[case]), dt, f"AdamW {case} {dtype}")


@pytest.mark.points(1.5)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["decay", "no-decay"])
def test_adamw_training_trajectory(lesson09: Lesson09, case: str, dtype: str):
    """AdamW: a 100-step training of a small MLP follows torch.optim.AdamW's trajectory"""
    dt = DTYPES[dtype]
    params = _params(3, dt)
    g = torch.Generator().manual_seed(4)
    inputs = [torch.randn(32, 6, generator=g, dtype=dt), torch.randn(32, 3, generator=g, dtype=dt)]
    got = lesson09.adamw(params, hyper=HYPER[case], loss="mlp", steps=100, inputs=inputs)
    want = _torch_trajectory(params, hyper=HYPER[case], loss="mlp", steps=100, inputs=inputs)
    _close_trajectory(got, want, dt, f"AdamW training {case} {dtype}")


@pytest.mark.points(1)
def test_adamw_defaults(lesson09: Lesson09):
    """AdamW: the defaults are torch's (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2)"""
    params = _params(5, torch.float64)
    grads = _grads(params, 30, 6)
    got = lesson09.adamw(params, grads=grads)
    _close_trajectory(got, _torch_trajectory(params, grads=grads), torch.float64, "AdamW() with its defaults")


@pytest.mark.points(2)
def test_adamw_param_groups_and_missing_gradients(lesson09: Lesson09):
    """AdamW: options per param group, and parameters without a gradient skipped (their step count too)"""
    params = _params(7, torch.float64)
    grads = _grads(params, 40, 8, missing=True)
    groups = [{"params": [0, 2], "lr": 2e-2, "weight_decay": 0.2}, {"params": [1], "lr": 5e-3, "weight_decay": 0.0, "betas": (0.7, 0.95)}]
    hyper = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
    got = lesson09.adamw(params, grads=grads, groups=groups, hyper=hyper)
    want = _torch_trajectory(params, grads=grads, groups=groups, hyper=hyper)
    _close_trajectory(got, want, torch.float64, "AdamW with two param groups and missing gradients")


# ---------------------------------------------------------------------------- schedule
SCHEDULES = [(5, 40, 0.5), (0, 30, 1.0), (10, 50, 2.0), (1, 12, 0.5), (6, 6, 0.5)]


@pytest.mark.points(1)
@pytest.mark.parametrize(("warmup", "total", "cycles"), SCHEDULES, ids=[f"W{w}-T{t}-c{c:g}" for w, t, c in SCHEDULES])
def test_schedule_equals_transformers(lesson09: Lesson09, warmup: int, total: int, cycles: float):
    """Schedule: equals transformers' get_cosine_schedule_with_warmup at every step 0..T"""
    got = lesson09.schedule(warmup, total, cycles)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    want = get_cosine_schedule_with_warmup(opt, warmup, total, cycles).lr_lambdas[0]
    wrong = [(s, v, float(want(s))) for s, v in enumerate(got) if not abs(v - float(want(s))) <= 1e-12]
    assert not wrong, (
        f"cosine_with_warmup(step, {warmup}, {total}, {cycles}) differs from transformers' at {len(wrong)} of {total + 1} steps; "
        f"first: step {wrong[0][0]} gave {wrong[0][1]:.6g}, expected {wrong[0][2]:.6g} (0 at step 0, 1 at step W, 0 at step T)"
    )


# ---------------------------------------------------------------------------- clipping
def _clip_case(name: str) -> tuple[list[torch.Tensor | None], float]:
    g = torch.Generator().manual_seed(11)
    dt = torch.float32 if name == "clipped-float32" else torch.float64
    grads = [torch.randn(4, 6, generator=g, dtype=dt), torch.randn(6, generator=g, dtype=dt), torch.randn(6, 3, generator=g, dtype=dt)]
    if name == "below-threshold":
        return grads, 100.0
    if name == "tiny-gradients":  # total norm ~1e-3: the 1e-6 in the clip coefficient changes it by 0.1%
        return [x * 2e-4 for x in grads], 1e-4
    if name == "missing-gradient":
        return [grads[0], None, grads[2]], 0.5
    return grads, 1.0


CLIP_CASES = ["clipped-float32", "clipped-float64", "below-threshold", "tiny-gradients", "missing-gradient"]


@pytest.mark.points(1)
@pytest.mark.parametrize("case", CLIP_CASES)
def test_clip_equals_torch(lesson09: Lesson09, case: str):
    """Clipping: returned norm and clipped gradients equal torch.nn.utils.clip_grad_norm_'s"""
    grads, max_norm = _clip_case(case)
    norm, got = lesson09.clip(grads, max_norm)
    ps = []
    for g in grads:
        p = torch.zeros(g.shape if g is not None else (3,), dtype=g.dtype if g is not None else torch.float32, requires_grad=True)
        p.grad = None if g is None else g.clone()
        ps.append(p)
    want_norm = float(torch.nn.utils.clip_grad_norm_(ps, max_norm))
    atol, rtol = (1e-6, 1e-6) if case == "clipped-float32" else (1e-12, 1e-12)
    assert abs(norm - want_norm) <= atol + rtol * want_norm, (
        f"clip_grad_norm returned {norm:.9g}, expected the total norm before clipping, {want_norm:.9g}"
    )
    for i, (g, p) in enumerate(zip(got, ps, strict=True)):
        if p.grad is None:
            continue
        if case == "below-threshold":
            assert torch.equal(g, p.grad), f"gradient {i} changed although the total norm {want_norm:.3g} is below max_norm {max_norm:g}"
        expect.close(g, p.grad, f"gradient {i} after clipping to {max_norm:g} ({case})", atol * 1e-3, rtol)


# ---------------------------------------------------------------------------- evaluation
def _eval_batches(kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from the toy corpus: equal sizes, or sizes 1, 4 and 2 (per-token weights differ from per-batch ones)."""
    tokens = tinylm.toy_corpus(4096, 32, 0)
    g = torch.Generator().manual_seed(21)
    sizes = [3, 3, 3] if kind == "equal-batches" else [1, 4, 2]
    batches = []
    for b in sizes:
        starts = torch.randint(0, tokens.numel() - 17, (b,), generator=g)
        offsets = starts[:, None] + torch.arange(16)
        batches.append((tokens[offsets], tokens[offsets + 1]))
    return batches


@pytest.mark.points(2.5)
@pytest.mark.parametrize("kind", ["equal-batches", "unequal-batches"])
def test_evaluate_loss_and_perplexity(lesson09: Lesson09, kind: str):
    """Evaluate: mean loss per token and perplexity equal a direct eval-mode computation"""
    batches = _eval_batches(kind)
    got = lesson09.evaluate(batches)
    net, _ = tinylm.build()
    net.eval()
    with torch.no_grad():
        total = sum(float(torch.nn.functional.cross_entropy(net(x)[0].flatten(0, 1).double(), y.flatten(), reduction="sum"))
                    for x, y in batches)  # fmt: skip
    mean = total / sum(y.numel() for _, y in batches)
    assert got["rng_untouched"], "evaluate drew from torch's RNG: dropout was on (call model.eval() first)"
    assert abs(got["loss"] - mean) <= 1e-5 * mean, f"evaluate's mean loss is {got['loss']:.6g}, expected {mean:.6g} (the mean over every target token, in eval mode)"
    assert abs(got["ppl"] - math.exp(mean)) <= 1e-5 * math.exp(mean), (
        f"evaluate's perplexity is {got['ppl']:.6g}, expected exp(mean loss) = {math.exp(mean):.6g}"
    )
    assert got["training_after"] is True, "evaluate left the model in eval mode: put it back in the mode it was in"


# ---------------------------------------------------------------------------- resume
TRAIN = {"total_steps": 40, "warmup_steps": 5, "lr": 3e-3, "num_cycles": 0.5, "betas": (0.9, 0.95), "eps": 1e-8,
         "weight_decay": 0.1, "max_grad_norm": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(lesson09: Lesson09) -> dict:
    """The run of TRAIN["total_steps"] steps without a break, in the binding's worker."""
    return lesson09.train(TRAIN)


@pytest.mark.points(4)
@pytest.mark.parametrize("k", [3, 17])
def test_resume_is_bit_exact(lesson09: Lesson09, uninterrupted: dict, k: int):
    """Resume: checkpoint at step k, resume in a fresh worker process; the parameters' sha256 equals the uninterrupted run's"""
    full = uninterrupted
    init = tinylm.state_sha256(tinylm.build()[0].state_dict())
    assert tinylm.state_sha256(full["state_dict"]) != init, "train left the parameters unchanged"
    part = lesson09.train(TRAIN, stop_at=k)
    assert len(part["logs"]) == k, f"train(..., stop_at={k}) ran {len(part['logs'])} steps, expected {k}"
    resumed = lesson09.resume_in_fresh_worker(TRAIN, part["checkpoint"])
    assert resumed["step"] == k, f"load_checkpoint returned step {resumed['step']}, expected {k} (the next step to run)"
    want, got = tinylm.state_sha256(full["state_dict"]), tinylm.state_sha256(resumed["state_dict"])
    if got != want:
        losses = [r["loss"] for r in full["logs"][k:]]
        again = [r["loss"] for r in resumed["logs"]]
        first = next((k + i for i, (a, b) in enumerate(zip(losses, again, strict=False)) if a != b), None)
        where = f"the first step whose loss differs is {first}" if first is not None else "every step's loss agrees"
        raise AssertionError(
            f"resumed at step {k} in a fresh process: parameters' sha256 {got[:16]} != {want[:16]} uninterrupted; {where}. "
            "The checkpoint misses something the next steps use: the optimizer state, the step, or an RNG "
            "(torch's, Python's random, numpy's, the data generator's)"
        )


# ---------------------------------------------------------------------------- the loop
def _reference_loop(train: dict) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The same run written with torch.optim.AdamW, transformers' schedule and clip_grad_norm_."""
    net, sampler = tinylm.build()
    opt = torch.optim.AdamW(net.parameters(), lr=train["lr"], betas=train["betas"], eps=train["eps"],
                            weight_decay=train["weight_decay"])  # fmt: skip
    sched = get_cosine_schedule_with_warmup(opt, train["warmup_steps"], train["total_steps"], train["num_cycles"])
    net.train()
    logs = []
    for step in range(train["total_steps"]):
        lr = opt.param_groups[0]["lr"]
        x, y = sampler.next()
        _, loss = net(x, y)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), train["max_grad_norm"])
        opt.step()
        sched.step()
        logs.append({"step": step, "lr": lr, "loss": float(loss.detach()), "grad_norm": float(norm)})
    return logs, net.state_dict()


@pytest.mark.points(5)
def test_training_loop_matches_reference(lesson09: Lesson09):
    """Training loop: with torch's AdamW, every step's lr, loss and grad norm, and the final parameters, match a reference loop"""
    got = lesson09.train(TRAIN, optimizer="torch")
    logs, state = _reference_loop(TRAIN)
    assert len(got["logs"]) == len(logs), f"train ran {len(got['logs'])} steps, expected total_steps = {len(logs)}"
    for mine, ref in zip(got["logs"], logs, strict=True):
        s = ref["step"]
        assert mine["step"] == s, f"log {s} says step {mine['step']}"
        assert abs(mine["lr"] - ref["lr"]) <= 1e-12, f"step {s}: lr {mine['lr']:.6g}, expected {ref['lr']:.6g} (config.lr x the schedule at step {s})"
        assert abs(mine["grad_norm"] - ref["grad_norm"]) <= 1e-4 * ref["grad_norm"], (
            f"step {s}: grad_norm {mine['grad_norm']:.6g}, expected {ref['grad_norm']:.6g} (the pre-clip norm)"
        )
        assert abs(mine["loss"] - ref["loss"]) <= 1e-4, f"step {s}: loss {mine['loss']:.6g}, expected {ref['loss']:.6g}"
    for name, want in state.items():
        expect.close(got["state_dict"].get(name), want, f"final parameter {name}", 1e-4, 1e-4)
