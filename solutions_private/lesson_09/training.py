"""Lesson 09: the training system. AdamW, a warmup + cosine schedule, gradient clipping by global
norm, evaluation loss and perplexity, a checkpoint that resumes bit-exactly, and the loop using them.

References:
- AdamW: Loshchilov and Hutter (2019), *Decoupled Weight Decay Regularization*, Algorithm 2, with
  Adam's bias correction (Kingma and Ba, 2015, Algorithm 1), in ``torch.optim.AdamW``'s order.
- The schedule: ``transformers.get_cosine_schedule_with_warmup``.
- Clipping: Pascanu et al. (2013), as ``torch.nn.utils.clip_grad_norm_`` does it.

The model and data come from ``tinylm.py`` (provided), but nothing here depends on them: any
``nn.Module`` whose ``forward(x, y)`` returns ``(logits, mean loss)`` and any sampler with
``next()`` and a ``generator`` attribute will do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch


# ---------------------------------------------------------------------------- AdamW
class AdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay and bias correction; the same defaults as ``torch.optim.AdamW``.

    For each parameter p with gradient g, at its step t = 1, 2, ... (counted per parameter):

        p <- p * (1 - lr * weight_decay)                 (decoupled decay, scaled by lr)
        m <- beta1 * m + (1 - beta1) * g                 (first moment)
        v <- beta2 * v + (1 - beta2) * g^2               (second moment)
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)        (eps outside the square root)

    Options come from each param group (``group["lr"]`` may be changed between steps by a
    schedule). Parameters whose ``grad`` is None are skipped: no decay, their t does not move.
    Keep every piece of state in ``self.state[p]`` (e.g. "step", "exp_avg", "exp_avg_sq") so
    that ``state_dict()`` holds it all and a checkpoint can restore it.
    """

    def __init__(
        self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:  # fmt: skip
        # BEGIN SOLUTION
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdamW options: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        # END SOLUTION

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        # BEGIN SOLUTION
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)  # decoupled weight decay
                m.lerp_(g, 1 - beta1)  # m = beta1 * m + (1 - beta1) * g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v = beta2 * v + (1 - beta2) * g^2
                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)  # sqrt(v_hat) + eps
                p.addcdiv_(m, denom, value=-lr / bias_correction1)  # p -= lr * m_hat / denom
        return loss
        # END SOLUTION


# ---------------------------------------------------------------------------- the schedule
def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, num_cycles: float = 0.5) -> float:
    """The learning-rate multiplier at ``step`` (0-based): linear warmup, then cosine decay.

    ``step / warmup_steps`` for step < warmup_steps (0 at step 0, 1 at the end of the warmup);
    afterwards, with progress = (step - W) / (T - W) going from 0 to 1,
    ``max(0, 0.5 * (1 + cos(pi * 2 * num_cycles * progress)))``: with the default half cycle it
    falls from 1 at step W to 0 at step T. Must equal the multiplier of
    ``transformers.get_cosine_schedule_with_warmup`` at every step 0..T (guard the divisions:
    warmup_steps may be 0, as transformers does with ``max(1, ...)``).
    """
    # BEGIN SOLUTION
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
    # END SOLUTION


# ---------------------------------------------------------------------------- clipping
def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``, in place.

    The global norm is the L2 norm of all gradients as one vector (parameters without a grad are
    skipped). Every gradient is multiplied by ``clamp(max_norm / (total_norm + 1e-6), max=1)``,
    so below the threshold nothing changes. Returns the total norm *before* clipping, as a 0-dim
    tensor, like ``torch.nn.utils.clip_grad_norm_``. ``parameters`` may be a generator
    (``model.parameters()``): it can be iterated only once.
    """
    # BEGIN SOLUTION
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g, 2) for g in grads])  # (n,): one norm per tensor
    total_norm = torch.linalg.vector_norm(norms, 2)  # the norm of all gradients as one vector
    clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(clip_coef.to(g.dtype))
    return total_norm
    # END SOLUTION


# ---------------------------------------------------------------------------- evaluation
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(mean loss, perplexity) of ``model`` over ``batches`` of (x, y); perplexity = exp(mean loss).

    The mean is over every target token (a batch of 2x16 targets counts twice as much as one of
    1x16); ``model(x, y)`` returns (logits, that batch's mean loss). Evaluate in eval mode (no
    dropout) and without gradients, and put the model back in the mode it was in.
    """
    # BEGIN SOLUTION
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            _, loss = model(x, y)
            total += float(loss) * y.numel()
            count += y.numel()
    model.train(was_training)
    mean = total / count
    return mean, math.exp(mean)
    # END SOLUTION


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(f, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, data) -> None:
    """Write everything needed to resume training bit-exactly to ``f`` (a path or a binary file object).

    That is: the model's and the optimizer's ``state_dict``s, ``step`` (the next step to run, which
    also fixes the schedule), and every RNG the next steps draw from: torch's CPU RNG
    (``torch.get_rng_state()``), Python's ``random.getstate()``, numpy's ``np.random.get_state()``,
    and the data order, ``data.generator.get_state()``. Use ``torch.save``.
    """
    # BEGIN SOLUTION
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": int(step),
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "data": data.generator.get_state(),
            },
        },
        f,
    )
    # END SOLUTION


def load_checkpoint(f, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data) -> int:
    """Restore what ``save_checkpoint`` wrote into ``model``, ``optimizer``, ``data`` and the RNGs; return the step.

    ``torch.load`` defaults to ``weights_only=True``, which refuses numpy's RNG state: load your
    own file with ``weights_only=False`` (or store that state as plain lists).
    """
    # BEGIN SOLUTION
    ckpt = torch.load(f, weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    np.random.set_state(ckpt["rng"]["numpy"])
    data.generator.set_state(ckpt["rng"]["data"])
    return int(ckpt["step"])
    # END SOLUTION


# ---------------------------------------------------------------------------- the loop
@dataclass
class TrainConfig:
    total_steps: int = 40
    warmup_steps: int = 5
    lr: float = 3e-3  # the peak learning rate, reached at the end of the warmup
    num_cycles: float = 0.5  # half a cosine: from lr down to 0 at total_steps
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0: no clipping)


def train(config: TrainConfig, model: torch.nn.Module, data, optimizer: torch.optim.Optimizer, *,
          start_step: int = 0, stop_at: int | None = None) -> list[dict]:  # fmt: skip
    """Run steps ``start_step, ..., stop - 1`` (stop = ``stop_at`` or ``config.total_steps``); return one log per step.

    Step s, in this order: set every param group's lr to ``config.lr * cosine_with_warmup(s, ...)``;
    ``x, y = data.next()``; ``loss = model(x, y)[1]`` in training mode; zero the gradients, backward;
    ``clip_grad_norm`` to ``config.max_grad_norm`` (when > 0); ``optimizer.step()``. The log of step s
    is ``{"step": s, "lr": the lr used, "loss": float, "grad_norm": float (pre-clip; 0.0 unclipped)}``.
    Seed nothing here: the caller seeds, and a resumed run continues from its checkpoint's RNGs.
    """
    # BEGIN SOLUTION
    stop = config.total_steps if stop_at is None else stop_at
    model.train()
    logs = []
    for step in range(start_step, stop):
        lr = config.lr * cosine_with_warmup(step, config.warmup_steps, config.total_steps, config.num_cycles)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.next()
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_grad_norm(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else torch.tensor(0.0)
        optimizer.step()
        logs.append({"step": step, "lr": lr, "loss": float(loss.detach()), "grad_norm": float(norm)})
    return logs
    # END SOLUTION
