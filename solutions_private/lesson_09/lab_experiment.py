"""Lesson 09 lab: a tiny pretraining run, a broken one diagnosed from its logs, and an lr sweep (lessons/lesson_09.md, section 9).

Run it from labs/lesson_09/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- (a) trains ``TinyLM`` with your ``AdamW``, schedule, clipping and ``train`` in chunks under a
  progress bar, evaluating with your ``evaluate`` after each chunk: ``loss_curve.png``, ``lr_curve.png``;
- (b) repeats it with a peak lr of 1.0 and no warmup (the broken run) and finds where it diverged
  (your ``first_divergence``): ``broken_run.png``, ``train_log.csv``;
- (c) short runs over peak learning rates, with and without warmup (your ``lr_sweep``): ``lr_sweep.csv``.
"""

from __future__ import annotations

import math

import torch

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("09", __file__)
from tinylm import build, chain_entropy  # noqa: E402
from training import AdamW, TrainConfig, evaluate, train  # noqa: E402

DEFAULT_CONFIG = {
    "steps": 200,
    "warmup_steps": 20,
    "lr": 1e-2,
    "max_grad_norm": 1.0,
    "weight_decay": 0.1,
    "eval_every": 25,
    "eval_batches": 8,
    "broken_lr": 1.0,  # the broken run: a peak lr 100x too high ...
    "broken_warmup_steps": 0,  # ... and no warmup
    "sweep_lrs": [1e-3, 1e-2, 1e-1, 1.0],
    "sweep_steps": 40,
    "sweep_warmup_steps": 10,
    "threads": 1,
}


def first_divergence(losses: list[float], factor: float = 2.0) -> int | None:
    """The first step whose loss is not finite or exceeds ``factor`` x the lowest loss before it; None if none."""
    # BEGIN SOLUTION
    best = math.inf
    for step, loss in enumerate(losses):
        if not math.isfinite(loss) or loss > factor * best:
            return step
        best = min(best, loss)
    return None
    # END SOLUTION


def one_run(config: dict, seed: int, lr: float, warmup: int, steps: int, chunk: int | None = None,
            bar: str | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Train a fresh TinyLM (every RNG from ``seed``); returns (per-step logs, evaluations every ``chunk`` steps)."""
    _, held_out = build(run={"seed": seed}, seed_offset=500)  # another stream of the same corpus, for evaluation
    net, data = build(run={"seed": seed})  # seeds every RNG from `seed`, then builds the model and sampler
    eval_set = [held_out.next() for _ in range(config["eval_batches"])]
    cfg = TrainConfig(total_steps=steps, warmup_steps=warmup, lr=lr, weight_decay=config["weight_decay"],
                      max_grad_norm=config["max_grad_norm"])  # fmt: skip
    opt = AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    chunk = chunk or steps
    logs, evals = [], []
    starts = range(0, steps, chunk)
    for start in progress(starts, desc=bar) if bar else starts:
        logs += train(cfg, net, data, opt, start_step=start, stop_at=min(start + chunk, steps))
        loss, ppl = evaluate(net, eval_set)
        evals.append({"step": min(start + chunk, steps), "eval_loss": loss, "eval_ppl": ppl})
    return logs, evals


def lr_sweep(config: dict, seed: int) -> list[dict]:
    """For each peak lr in ``config["sweep_lrs"]``, with ``sweep_warmup_steps`` of warmup and with none:
    a ``sweep_steps`` run from ``seed`` (``one_run``) -> rows {"peak_lr", "warmup_steps", "final_eval_loss"}."""
    # BEGIN SOLUTION
    rows = []
    for lr in config["sweep_lrs"]:
        for warmup in (config["sweep_warmup_steps"], 0):
            _, evals = one_run(config, seed, lr, warmup, config["sweep_steps"])
            rows.append({"peak_lr": lr, "warmup_steps": warmup, "final_eval_loss": evals[-1]["eval_loss"]})
    return rows
    # END SOLUTION


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("training-systems-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    vocab = 32
    baseline, floor = math.log(vocab), chain_entropy(vocab, 0)
    steps = config["steps"]
    # (a) the good run, in chunks under a progress bar
    good, evals = one_run(config, seed, config["lr"], config["warmup_steps"], steps, config["eval_every"], bar="good run")
    for e in evals:
        run.log(kind="eval", **e)
    # (b) the broken run: too high a peak lr, no warmup
    broken, broken_evals = one_run(config, seed, config["broken_lr"], config["broken_warmup_steps"], steps, bar="broken run")
    rows = [{**g, "broken_lr": b["lr"], "broken_loss": b["loss"], "broken_grad_norm": b["grad_norm"]} for g, b in zip(good, broken, strict=True)]
    for row in rows:
        run.log(kind="step", **row)
    write_csv(run.artifact("train_log.csv"), rows)
    summary = {
        "baseline_uniform_loss": baseline,
        "chain_entropy": floor,
        "final_eval_loss": evals[-1]["eval_loss"],
        "final_eval_ppl": evals[-1]["eval_ppl"],
        "final_train_loss": good[-1]["loss"],
        "max_grad_norm_good": max(r["grad_norm"] for r in good),
        "broken_final_loss": broken_evals[-1]["eval_loss"],
        "max_grad_norm_broken": max(r["grad_norm"] for r in broken),
    }
    _plot_curves(run, good, broken, evals, baseline, floor)
    try:
        diverged = first_divergence([r["loss"] for r in broken])
        good_diverged = first_divergence([r["loss"] for r in good])
    except NotImplementedError as exc:
        run.log(kind="todo", missing="first_divergence", why=str(exc))
        diverged = good_diverged = None
    else:
        summary["broken_diverged_step"] = -1 if diverged is None else diverged
        summary["good_diverged_step"] = -1 if good_diverged is None else good_diverged
    _plot_broken(run, good, broken, diverged)
    # (c) the lr sweep
    try:
        sweep = lr_sweep(config, seed)
    except NotImplementedError as exc:
        run.log(kind="todo", missing="lr_sweep", why=str(exc))
    else:
        write_csv(run.artifact("lr_sweep.csv"), sweep)
        for row in sweep:
            run.log(kind="sweep", **row)
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


def _plot_curves(run, good: list[dict], broken: list[dict], evals: list[dict], baseline: float, floor: float) -> None:
    fig = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([r["step"] for r in good], [r["loss"] for r in good], label="training loss (batch)")
    ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="evaluation loss")
    ax.axhline(baseline, color="k", ls=":", label="ln V (uniform baseline)")
    ax.axhline(floor, color="g", ls="--", label="entropy rate of the corpus")
    ax.set(xlabel="step", ylabel="loss (nats per token)", title="TinyLM pretraining")
    ax.legend()
    fig.savefig(run.artifact("loss_curve.png"), dpi=80)
    fig = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([r["step"] for r in good], [r["lr"] for r in good], label="good run (warmup + cosine)")
    ax.plot([r["step"] for r in broken], [r["lr"] for r in broken], label="broken run (no warmup, lr 1.0)")
    ax.set(xlabel="step", ylabel="learning rate", yscale="log", title="learning-rate schedules")
    ax.legend()
    fig.savefig(run.artifact("lr_curve.png"), dpi=80)


def _plot_broken(run, good: list[dict], broken: list[dict], diverged: int | None) -> None:
    fig = new_figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for logs, name in ((good, "good"), (broken, "broken")):
        ax1.plot([r["step"] for r in logs], [r["loss"] for r in logs], label=name)
        ax2.plot([r["step"] for r in logs], [r["grad_norm"] for r in logs], label=name)
    if diverged is not None:
        for ax in (ax1, ax2):
            ax.axvline(diverged, color="r", ls=":", label=f"diverged at step {diverged}")
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    ax2.set(xlabel="step", ylabel="pre-clip gradient norm", yscale="log", title="gradient norm")
    ax1.legend()
    ax2.legend()
    fig.savefig(run.artifact("broken_run.png"), dpi=80)


if __name__ == "__main__":
    for s in (0, 1, 2):
        print(main(seed=s).dir)
