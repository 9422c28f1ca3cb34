"""Lesson 15 lab: the RLHF map, DPO with beta swept, and length exploitation on purpose (lessons/lesson_15.md, section 8).

Run it from labs/lesson_15/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- draws the RLHF map (SFT -> reward model -> policy optimisation, and DPO's shortcut): ``rlhf_map.png``;
- trains DPO (your ``dpo_step``, through ``dpo_kit.run_training``) on the shipped preference set for
  every beta of the sweep and measures held-out preference accuracy, the implicit reward margin and
  how far the policy moved from the reference (the mean log-ratio on chosen completions):
  ``beta_sweep.csv``, ``beta_sweep.png``; the baseline is the reference model (accuracy of no training);
- trains DPO once more on a *length-biased* set (``length_biased_rows``, which you write: the longer
  completion is always "chosen") and measures how often the policy then prefers a long bad completion
  over a short good one on probe pairs, against the clean run: ``length.csv``.
"""

from __future__ import annotations

import torch

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("15", __file__)
import dpo_data  # noqa: E402
import dpo_kit  # noqa: E402

DEFAULT_CONFIG = {
    "betas": [0.01, 0.1, 0.5, 2.0],
    "steps": 20,
    "pretrain_steps": 20,
    "lr": 1e-2,
    "batch_pairs": 8,
    "loss_type": "sigmoid",
    "length_beta": 0.1,
    "threads": 1,
}


def length_biased_rows(pairs: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """trl rows where ``chosen`` is always the LONGER completion (in words) of each pair, whatever its quality;
    pairs whose completions have equal length are dropped. The label now rewards length, not quality."""
    # BEGIN SOLUTION
    out = []
    for p, c, r in pairs:
        if len(c.split()) == len(r.split()):
            continue
        long, short = (c, r) if len(c.split()) > len(r.split()) else (r, c)
        out.append({"prompt": p, "chosen": long, "rejected": short})
    return out
    # END SOLUTION


def probe_rows(seed: int) -> list[dict[str, str]]:
    """Held-out probes: a SHORT good completion (chosen) against a LONG bad one, for each held-out prompt."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p, _, _ in dpo_data.HELD_OUT:
        noun = p.split()[2]
        good = dpo_data.GOOD[int(torch.randint(len(dpo_data.GOOD), (1,), generator=g))]
        bad = [dpo_data.BAD[int(i)] for i in torch.randperm(len(dpo_data.BAD), generator=g)[:3]]
        rows.append({"prompt": p, "chosen": f"{good} {noun} .", "rejected": " ".join(bad) + f" {noun} ."})
    return rows


def measure(out: dict, rows: list[dict[str, str]], beta: float) -> dict[str, float]:
    policy, ref = dpo_kit.tiny_llama(), dpo_kit.tiny_llama()
    policy.load_state_dict(out["policy"])
    ref.load_state_dict(out["ref"])
    batch = dpo_kit.collate(rows)
    with torch.no_grad():
        d = dpo_kit._course_logprobs(policy.eval(), batch) - dpo_kit._course_logprobs(ref.eval(), batch)
    n = len(rows)
    margin = beta * (d[:n] - d[n:])
    return {"accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean()),
            "drift": float(d[:n].mean())}  # fmt: skip


def rlhf_map(path) -> None:
    fig = new_figure(8, 3)
    ax = fig.add_subplot(1, 1, 1)
    boxes = [(0.08, 0.7, "pretrained LM"), (0.3, 0.7, "SFT policy\n(lesson 13)"), (0.55, 0.7, "reward model\nBradley-Terry"),
             (0.82, 0.7, "policy optimisation\nPPO + KL to ref"), (0.55, 0.2, "DPO: preferences ->\npolicy, no reward model")]  # fmt: skip
    colours = ["tab:gray", "tab:blue", "tab:orange", "tab:red", "tab:green"]
    for (x, y, text), c in zip(boxes, colours, strict=True):
        ax.text(x, y, text, ha="center", va="center", fontsize=8, bbox={"boxstyle": "round", "fc": c, "alpha": 0.3})
    for a, b in [((0.14, 0.7), (0.23, 0.7)), ((0.37, 0.7), (0.47, 0.7)), ((0.63, 0.7), (0.72, 0.7)),
                 ((0.3, 0.6), (0.45, 0.25)), ((0.65, 0.25), (0.82, 0.6))]:  # fmt: skip
        ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "->", "color": "tab:purple"})
    ax.text(0.55, 0.45, "preference pairs (prompt, chosen, rejected)", ha="center", fontsize=7, color="tab:brown")
    ax.set(xlim=(0, 1), ylim=(0, 1), title="the RLHF map")
    ax.axis("off")
    fig.savefig(path, dpi=80)


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("dpo-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    rlhf_map(run.artifact("rlhf_map.png"))
    held = dpo_data.rows(dpo_data.HELD_OUT)
    base = {k: config[k] for k in ("steps", "pretrain_steps", "lr", "batch_pairs", "loss_type")}
    sweep = []
    try:
        for beta in progress(config["betas"], desc="beta sweep"):
            out = dpo_kit.run_training({**base, "seed": seed, "beta": beta})
            m = measure(out, held, beta)
            sweep.append({"beta": beta, **m, "final_loss": out["losses"][-1]})
            run.log(kind="beta", beta=beta, loss=out["losses"], **m)
    except NotImplementedError as exc:
        run.log(kind="todo", missing="dpo.py", why=str(exc))
        return run
    write_csv(run.artifact("beta_sweep.csv"), sweep)

    probes = probe_rows(seed)
    lb = config["length_beta"]
    clean = dpo_kit.run_training({**base, "seed": seed, "beta": lb})
    try:
        biased_rows = length_biased_rows(dpo_data.TRAIN)
    except NotImplementedError as exc:
        run.log(kind="todo", missing="length_biased_rows", why=str(exc))
        return run
    biased = dpo_kit.run_training({**base, "seed": seed, "beta": lb}, rows=biased_rows)
    length = []
    for name, out in (("clean", clean), ("length_biased", biased)):
        m = measure(out, probes, lb)
        length.append({"train_set": name, "probe_accuracy": m["accuracy"], "long_preferred": 1 - m["accuracy"],
                       "heldout_accuracy": measure(out, held, lb)["accuracy"]})  # fmt: skip
    write_csv(run.artifact("length.csv"), length)

    fig = new_figure(8, 3.5)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    betas = [r["beta"] for r in sweep]
    ax1.plot(betas, [r["accuracy"] for r in sweep], "o-", label="held-out accuracy")
    ax1.axhline(0.5, color="k", ls=":", label="chance")
    ax1.set(xscale="log", xlabel="beta", ylabel="preference accuracy", title="accuracy vs beta")
    ax1.legend(fontsize=7)
    ax2.plot(betas, [r["drift"] for r in sweep], "s-", color="tab:red", label="log pi/pi_ref on chosen")
    ax2.plot(betas, [r["margin"] for r in sweep], "^-", color="tab:green", label="implicit reward margin")
    ax2.set(xscale="log", xlabel="beta", title="drift from the reference")
    ax2.legend(fontsize=7)
    fig.savefig(run.artifact("beta_sweep.png"), dpi=80)

    summary = {"accuracy_baseline_reference": 0.0}
    for r in sweep:
        summary[f"accuracy_beta_{r['beta']}"] = r["accuracy"]
        summary[f"drift_beta_{r['beta']}"] = r["drift"]
    summary["long_preferred_clean"] = length[0]["long_preferred"]
    summary["long_preferred_biased"] = length[1]["long_preferred"]
    summary["margin_beta_0.1"] = next((r["margin"] for r in sweep if r["beta"] == 0.1), sweep[0]["margin"])
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
