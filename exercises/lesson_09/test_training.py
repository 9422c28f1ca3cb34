"""Visible tests for lesson 09. Run: .venv/bin/pytest exercises/lesson_09 (or make check LESSON=09)

AdamW against torch.optim.AdamW over a few steps, the schedule by hand and against transformers,
clipping against torch, evaluation on a hand-made model, an in-process resume (every RNG scrambled
in between, as a new process would have them), and the loop against a reference loop. The hidden
graders check more cases, longer, and resume in a fresh process (see the lesson).
"""

import math
import random

import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from exercises.lesson_09 import tinylm
from exercises.lesson_09.training import AdamW, TrainConfig, clip_grad_norm, cosine_with_warmup, evaluate, train

pytestmark = pytest.mark.lesson_09


def trajectory(cls, params, grads, **hyper):
    ps = [p.clone().requires_grad_(True) for p in params]
    return tinylm.adamw_trajectory(cls(ps, **hyper), ps, grads, None, 0, None)


def random_grads(params, steps, seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) * 10 ** float(torch.empty(()).uniform_(-4, 1, generator=g))
             for p in params] for _ in range(steps)]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adamw_matches_torch_given_gradients(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(3, generator=g, dtype=dtype)]
    grads = random_grads(params, 10, 1)
    for hyper in ({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.0, "eps": 1e-6}):
        mine, ref = trajectory(AdamW, params, grads, **hyper), trajectory(torch.optim.AdamW, params, grads, **hyper)
        tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-5}
        for step, (a, b) in enumerate(zip(mine, ref, strict=True)):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                torch.testing.assert_close(x, y, **tol, msg=f"{hyper}: parameter {i} after step {step + 1} differs from torch.optim.AdamW")


def test_adamw_defaults_and_training():
    """Defaults as torch's, and a short training of a small MLP (gradients from the loss)."""
    g = torch.Generator().manual_seed(2)
    params = [torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64),
              torch.randn(4, 2, generator=g, dtype=torch.float64)]  # fmt: skip
    inputs = [torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)]
    mine = tinylm.run_adamw(params, [], loss="mlp", steps=20, inputs=inputs)
    ps = [p.clone().requires_grad_(True) for p in params]
    ref = tinylm.adamw_trajectory(torch.optim.AdamW(ps), ps, [], "mlp", 20, inputs)
    for step, (a, b) in enumerate(zip(mine, ref, strict=True)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10, msg=f"AdamW() defaults: parameter {i} after step {step + 1}")


def test_adamw_skips_missing_gradients():
    params = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    grads = random_grads(params, 6, 3)
    for step in (0, 1, 4):
        grads[step][1] = None  # parameter 1 has no gradient at these steps
    mine, ref = trajectory(AdamW, params, grads, lr=0.1), trajectory(torch.optim.AdamW, params, grads, lr=0.1)
    for step, (a, b) in enumerate(zip(mine, ref, strict=True)):
        torch.testing.assert_close(a[1], b[1], atol=1e-12, rtol=0, msg=f"step {step + 1}: a parameter without a gradient is skipped, its step count too")
    torch.testing.assert_close(mine[0][1], params[1], msg="no gradient: no weight decay either")


def test_schedule_hand_values():
    assert cosine_with_warmup(0, 10, 110) == 0.0, "the multiplier at step 0 is 0 (warmup starts from 0)"
    assert math.isclose(cosine_with_warmup(5, 10, 110), 0.5), "halfway through the warmup: 0.5"
    assert math.isclose(cosine_with_warmup(10, 10, 110), 1.0), "the end of the warmup: 1"
    assert math.isclose(cosine_with_warmup(60, 10, 110), 0.5), "halfway through the decay: 0.5"
    assert abs(cosine_with_warmup(110, 10, 110)) < 1e-12, "the last step: 0"


@pytest.mark.parametrize(("warmup", "total", "cycles"), [(5, 40, 0.5), (0, 30, 1.0)])
def test_schedule_equals_transformers(warmup: int, total: int, cycles: float):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    want = get_cosine_schedule_with_warmup(opt, warmup, total, cycles).lr_lambdas[0]
    for step in range(total + 1):
        assert abs(cosine_with_warmup(step, warmup, total, cycles) - want(step)) < 1e-12, f"step {step}: differs from transformers'"


def params_with(grads):
    ps = [torch.zeros(g.shape, dtype=g.dtype, requires_grad=True) for g in grads]
    for p, g in zip(ps, grads, strict=True):
        p.grad = g.clone()
    return ps


def test_clip_equals_torch():
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    mine, ref = params_with(grads), params_with(grads)
    norm = clip_grad_norm((p for p in mine), 0.5)  # a generator, as model.parameters() is
    want = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    assert math.isclose(float(norm), float(want), rel_tol=1e-12), f"returned {float(norm)}, expected the pre-clip norm {float(want)}"
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-14, rtol=1e-12, msg="gradients after clipping differ from clip_grad_norm_'s")


def test_clip_below_threshold_changes_nothing():
    grads = [torch.full((4,), 0.1), torch.full((2,), -0.2)]
    ps = params_with(grads)
    norm = clip_grad_norm(ps, 10.0)
    assert math.isclose(float(norm), math.sqrt(4 * 0.01 + 2 * 0.04), rel_tol=1e-6)
    for p, g in zip(ps, grads, strict=True):
        assert torch.equal(p.grad, g), "below max_norm the gradients must stay exactly as they were"


class FixedLoss(torch.nn.Module):
    """A 'model' whose loss is a given number per batch (and which records its mode)."""

    def __init__(self, losses):
        super().__init__()
        self.losses, self.modes = list(losses), []

    def forward(self, x, y):
        self.modes.append(self.training)
        return None, torch.tensor(self.losses.pop(0))


def test_evaluate_small_case():
    model = FixedLoss([2.0, 1.0])
    model.train()
    batches = [(torch.zeros(1, 16), torch.zeros(1, 16)), (torch.zeros(3, 16), torch.zeros(3, 16))]  # 16 and 48 tokens
    loss, ppl = evaluate(model, batches)
    assert math.isclose(loss, (2.0 * 16 + 1.0 * 48) / 64), f"mean loss {loss}: weight each batch by its number of tokens"
    assert math.isclose(ppl, math.exp(loss)), "perplexity = exp(mean loss)"
    assert model.modes == [False, False], "evaluate runs the model in eval mode"
    assert model.training, "evaluate puts the model back in training mode"


def test_resume_is_bit_exact():
    """Train 20 steps; separately 8 steps, checkpoint, scramble every RNG, load into a new model and finish."""
    cfg = TrainConfig(total_steps=20, warmup_steps=4)
    full = tinylm.run_training(tinylm.config_dict(cfg))
    part = tinylm.run_training(tinylm.config_dict(cfg), stop_at=8)
    assert part["checkpoint"], "save_checkpoint wrote nothing"
    torch.manual_seed(999), random.seed(999), np.random.seed(999)  # a new process has other RNG states
    resumed = tinylm.run_resume(tinylm.config_dict(cfg), part["checkpoint"])
    assert resumed["step"] == 8, f"load_checkpoint returned {resumed['step']}, expected 8"
    want, got = tinylm.state_sha256(full["state_dict"]), tinylm.state_sha256(resumed["state_dict"])
    assert got == want, (
        "the resumed run differs from the uninterrupted one: save the optimizer state, the step and every RNG "
        "(torch's, random's, numpy's and data.generator's)"
    )


def test_training_loop_matches_reference():
    cfg = TrainConfig(total_steps=12, warmup_steps=3)
    net, data = tinylm.build()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    logs = train(cfg, net, data, opt)
    ref, ref_data = tinylm.build()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(ref_opt, cfg.warmup_steps, cfg.total_steps)
    assert len(logs) == cfg.total_steps and {"step", "lr", "loss", "grad_norm"} <= set(logs[0])
    for step in range(cfg.total_steps):
        lr = ref_opt.param_groups[0]["lr"]
        x, y = ref_data.next()
        _, loss = ref(x, y)
        ref_opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.max_grad_norm)
        ref_opt.step()
        sched.step()
        assert math.isclose(logs[step]["lr"], lr, abs_tol=1e-12), f"step {step}: lr {logs[step]['lr']}, expected {lr}"
        assert math.isclose(logs[step]["loss"], float(loss.detach()), abs_tol=1e-4), f"step {step}: loss differs"
        assert math.isclose(logs[step]["grad_norm"], float(norm), rel_tol=1e-4), f"step {step}: pre-clip grad norm differs"
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"final {name} differs from the reference loop's")
