"""Lesson 10 lab: load balance with and without the aux loss, and tokens dropped vs capacity (lessons/lesson_10.md, section 8).

Run it from labs/lesson_10/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- (a) trains a tiny MoE (your ``MoEBlock``) on a toy regression task twice from the same start, once
  without the aux loss (the baseline, ``aux_coef = 0``) and once with it, and logs the share of
  top-k assignments each expert gets (``expert_load``): ``load.csv``, ``expert_load.png``;
- (b) routes the trained models' tokens with top-1 and an expert capacity
  ``C = ceil(capacity_factor * T / E)`` (your ``top1_capacity_routing``) for a sweep of capacity
  factors and logs the share of tokens dropped (``dropped_fraction``): ``capacity.csv``, ``dropped.png``.
"""

from __future__ import annotations

import copy
import math

import torch

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("10", __file__)
from moe import MoEBlock, MoEConfig, load_balancing_loss, top1_capacity_routing, topk_softmax_router  # noqa: E402

DEFAULT_CONFIG = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_experts": 8,
    "top_k": 2,
    "steps": 150,
    "batch_size": 8,
    "seq_len": 32,
    "lr": 3e-3,
    "aux_coefs": [0.0, 0.1],  # 0.0 is the baseline
    "skew": 2.0,  # inputs share a common direction: an untrained router favours a few experts
    "capacity_factors": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
    "threads": 1,
}


def expert_load(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """The share of top-k assignments each expert gets: indices (N, k) int64 -> (E,) float, summing to 1."""
    # BEGIN SOLUTION
    return torch.bincount(indices.reshape(-1), minlength=num_experts).double() / indices.numel()
    # END SOLUTION


def dropped_fraction(dispatch: torch.Tensor) -> float:
    """The share of tokens no expert takes: dispatch (B, T, E) 0/1 -> a float in [0, 1]."""
    # BEGIN SOLUTION
    return float((dispatch.sum(-1) == 0).double().mean())
    # END SOLUTION


def make_batch(g: torch.Generator, config: dict, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, t, h = config["batch_size"], config["seq_len"], config["hidden_size"]
    x = torch.randn(b, t, h, generator=g) + config["skew"]  # a common offset: tokens look alike to the router
    y = torch.tanh(x @ teacher)  # (B, T, H): the target
    return x, y


def train(model: MoEBlock, config: dict, aux_coef: float, seed: int, teacher: torch.Tensor) -> list[dict]:
    g = torch.Generator().manual_seed(seed + 1)  # the same batches for every aux_coef
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    rows = []
    for step in range(config["steps"]):
        x, y = make_batch(g, config, teacher)
        out, logits = model(x)
        mse = torch.nn.functional.mse_loss(out, y)
        aux = load_balancing_loss((logits,), config["num_experts"], config["top_k"])
        loss = mse + aux_coef * aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append({"step": step, "mse": float(mse.detach()), "aux": float(aux.detach())})
    return rows


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("moe-balance-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    torch.manual_seed(seed)
    e, k, h = config["num_experts"], config["top_k"], config["hidden_size"]
    start = MoEBlock(MoEConfig(h, config["intermediate_size"], e, k))
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(h, h, generator=g) / math.sqrt(h)
    x_eval, _ = make_batch(torch.Generator().manual_seed(seed + 999), {**config, "batch_size": 32}, teacher)
    summary, load_rows, cap_rows, loads, drops = {}, [], [], {}, {}
    for coef in progress(config["aux_coefs"], desc="aux coefficients"):
        model = copy.deepcopy(start)
        curve = train(model, config, coef, seed, teacher)
        with torch.no_grad():
            _, logits = model(x_eval)
        _, idx = topk_softmax_router(logits, k)
        try:
            load = expert_load(idx, e)
        except NotImplementedError as exc:
            run.log(kind="todo", missing="expert_load", why=str(exc))
            return run
        tag = "baseline_no_aux" if coef == 0 else f"aux{coef:g}"
        loads[tag] = load
        run.log(kind="train", aux_coef=coef, mse=[r["mse"] for r in curve], aux=[r["aux"] for r in curve])
        for i, share in enumerate(load.tolist()):
            load_rows.append({"aux_coef": coef, "expert": i, "load": share})
        summary[f"max_load_{tag}"] = float(load.max())
        summary[f"final_mse_{tag}"] = curve[-1]["mse"]
        summary[f"final_aux_{tag}"] = curve[-1]["aux"]
        drops[tag] = []
        for cf in config["capacity_factors"]:
            t = x_eval.shape[1]
            capacity = max(1, math.ceil(cf * t / e))
            dispatch, _ = top1_capacity_routing(logits.reshape(*x_eval.shape[:2], e), capacity)
            frac = dropped_fraction(dispatch)
            drops[tag].append(frac)
            cap_rows.append({"aux_coef": coef, "capacity_factor": cf, "capacity": capacity, "dropped_fraction": frac})
        summary[f"dropped_cf1_{tag}"] = drops[tag][config["capacity_factors"].index(1.0)] if 1.0 in config["capacity_factors"] else drops[tag][-1]
    write_csv(run.artifact("load.csv"), load_rows)
    write_csv(run.artifact("capacity.csv"), cap_rows)
    fig = new_figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / len(loads)
    for j, (tag, load) in enumerate(loads.items()):
        ax1.bar(torch.arange(e) + j * width, load, width=width, label=tag)
        ax2.plot(config["capacity_factors"], drops[tag], "o-", label=tag)
    ax1.axhline(1 / e, color="k", ls=":", label="perfect balance 1/E")
    ax1.set(xlabel="expert", ylabel="share of top-k assignments", title="expert load after training")
    ax1.legend()
    ax2.set(xlabel="capacity factor", ylabel="share of tokens dropped (top-1)", title="tokens dropped vs capacity")
    ax2.legend()
    fig.savefig(run.artifact("expert_load.png"), dpi=80)
    fig2 = new_figure(5, 4)
    ax = fig2.add_subplot(1, 1, 1)
    for tag in drops:
        ax.plot(config["capacity_factors"], drops[tag], "o-", label=tag)
    ax.set(xlabel="capacity factor", ylabel="share of tokens dropped", title="top-1 routing with capacity")
    ax.legend()
    fig2.savefig(run.artifact("dropped.png"), dpi=80)
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
