"""Lesson 16 lab: GRPO on a toy verifiable reward: a KL sweep, a group-size sweep and a collapse (lessons/lesson_16.md, section 7).

Run it from labs/lesson_16/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- trains a tiny Llama (``grpo_kit.tiny_llama``, from a config) with your ``group_advantages`` and
  ``grpo_loss`` on ``grpo_kit.format_reward`` (the share of ``7`` tokens), once per ``beta`` in the
  sweep and once per group size (the same number of completions per step);
- logs, per run, the final mean reward, the KL to the starting model and the diversity of the samples
  (``diversity``, which you write): ``beta_sweep.csv``, ``group_sweep.csv``, ``collapse.csv``, ``curves.png``.
"""

from __future__ import annotations

import copy

import torch

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("16", __file__)
from grpo import group_advantages, grpo_loss  # noqa: E402
from grpo_kit import format_reward, mean_reward, per_token_logps, sample, tiny_llama  # noqa: E402

DEFAULT_CONFIG = {
    "steps": 10,
    "lr": 3e-2,
    "completions_per_step": 32,  # prompts x num_generations
    "num_generations": 8,
    "length": 4,
    "betas": [0.0, 0.1, 0.3, 1.0],
    "groups": [2, 4, 8, 16],
    "loss_type": "dapo",
    "scale_rewards": "group",
    "iterations": 2,
    "collapse_steps": 15,
    "threads": 1,
}


def diversity(completion_ids: torch.Tensor) -> float:
    """The share of distinct rows among the (N, T) completions: 1.0 when all differ, 1 / N when all are equal."""
    # BEGIN SOLUTION
    return len({tuple(row) for row in completion_ids.tolist()}) / completion_ids.shape[0]
    # END SOLUTION


def train(config: dict, seed: int, beta: float, num_generations: int, steps: int) -> list[dict]:
    """One GRPO run from ``tiny_llama(seed=seed)`` -> one row per step: reward, kl (k3 to the start), diversity."""
    torch.manual_seed(seed)
    model = tiny_llama(seed=seed)
    ref = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    g = torch.Generator().manual_seed(seed)
    n_prompts = max(1, config["completions_per_step"] // num_generations)
    prompt_ids = torch.tensor([[2, 3 + (i % 10)] for i in range(n_prompts)])
    rows = []
    for step in range(steps):
        completion_ids = sample(model, prompt_ids, num_generations, config["length"], g)
        p_ids = prompt_ids.repeat_interleave(num_generations, dim=0)
        p_mask, c_mask = torch.ones_like(p_ids), torch.ones_like(completion_ids)
        rewards = format_reward(completion_ids)
        adv = group_advantages(rewards, num_generations, config["scale_rewards"])
        with torch.no_grad():
            old = per_token_logps(model, p_ids, p_mask, completion_ids, c_mask)
            ref_lp = per_token_logps(ref, p_ids, p_mask, completion_ids, c_mask)
        for _ in range(config["iterations"]):
            lp = per_token_logps(model, p_ids, p_mask, completion_ids, c_mask)
            loss = grpo_loss(
                lp, old, adv, c_mask, ref_logps=ref_lp, beta=beta, loss_type=config["loss_type"],
                max_completion_length=config["length"], num_items_in_batch=c_mask.sum(),
            )  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
        d = (ref_lp - old).double()
        rows.append({"step": step, "reward": float(rewards.mean()), "kl": float((torch.exp(d) - d - 1).mean()),
                     "diversity": diversity(completion_ids)})  # fmt: skip
    rows.append({"step": steps, "reward": mean_reward(model, length=config["length"], seed=seed + 99),
                 "kl": rows[-1]["kl"], "diversity": rows[-1]["diversity"]})  # fmt: skip
    return rows


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("grpo-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    try:
        diversity(torch.zeros(2, 2, dtype=torch.long))
    except NotImplementedError as exc:
        run.log(kind="todo", missing="diversity", why=str(exc))
        return run
    start = tiny_llama(seed=seed)
    summary = {"reward_baseline_start": mean_reward(start, length=config["length"], seed=seed + 99)}
    beta_rows, curves = [], {}
    for beta in progress(config["betas"], desc="beta sweep"):
        rows = train(config, seed, beta, config["num_generations"], config["steps"])
        curves[f"beta={beta}"] = rows
        last = rows[-1]
        beta_rows.append({"beta": beta, "final_reward": last["reward"], "final_kl": last["kl"],
                          "final_diversity": last["diversity"]})  # fmt: skip
        run.log(kind="beta", beta=beta, rewards=[r["reward"] for r in rows], kl=[r["kl"] for r in rows])
        summary[f"reward_beta_{beta}"] = last["reward"]
        summary[f"kl_beta_{beta}"] = last["kl"]
    group_rows = []
    for g in progress(config["groups"], desc="group sweep"):
        rows = train(config, seed, 0.1, g, config["steps"])
        last = rows[-1]
        group_rows.append({"num_generations": g, "final_reward": last["reward"], "final_kl": last["kl"],
                           "final_diversity": last["diversity"]})  # fmt: skip
        run.log(kind="group", num_generations=g, rewards=[r["reward"] for r in rows])
        summary[f"reward_G{g}"] = last["reward"]
    collapse = train(config, seed, 0.0, config["num_generations"], config["collapse_steps"])[:-1]
    summary["collapse_final_diversity"] = collapse[-1]["diversity"]
    summary["collapse_final_kl"] = collapse[-1]["kl"]
    write_csv(run.artifact("beta_sweep.csv"), beta_rows)
    write_csv(run.artifact("group_sweep.csv"), group_rows)
    write_csv(run.artifact("collapse.csv"), collapse)

    fig = new_figure(10, 3.5)
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    for name, rows in curves.items():
        ax1.plot([r["reward"] for r in rows[:-1]], label=name)
        ax2.plot([r["kl"] for r in rows[:-1]], label=name)
    ax1.set(xlabel="step", ylabel="mean reward", title="reward by beta")
    ax2.set(xlabel="step", ylabel="k3 KL to the start", title="KL by beta")
    ax1.legend(fontsize=7)
    ax3.plot([r["diversity"] for r in collapse], "o-", color="tab:red", label="diversity")
    ax3.plot([r["reward"] for r in collapse], "s-", color="tab:green", label="reward")
    ax3.set(xlabel="step", title="collapse at beta 0")
    ax3.legend(fontsize=7)
    fig.savefig(run.artifact("curves.png"), dpi=80)
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
