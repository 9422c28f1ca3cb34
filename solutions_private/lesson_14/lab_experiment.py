"""Lesson 14 lab: LoRA against full fine-tuning of a tiny model, and a rank sweep (lessons/lesson_14.md, section 8).

Run it from labs/lesson_14/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- pretrains a tiny Llama (``tiny_lm.tiny_model``, from a config) on task A, a random Markov chain;
- fine-tunes copies of it on task B (shipped below: each token's successor follows a fixed rule,
  with a little noise) from the same batches, once with full fine-tuning (the baseline) and once
  with LoRA (your ``inject_lora``) for every rank in the sweep;
- logs trainable parameters (your ``count_parameters``), training memory (``training_memory_bytes``)
  and the validation loss on task B: ``compare.csv``, ``rank_sweep.csv``, ``loss_curves.png``,
  ``rank_sweep.png``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("14", __file__)
from lora import count_parameters, inject_lora  # noqa: E402
from tiny_lm import tiny_model  # noqa: E402

DEFAULT_CONFIG = {
    "model": {"vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2},
    "seq_len": 16,
    "batch_size": 16,
    "pretrain_steps": 30,
    "finetune_steps": 30,
    "lr_full": 3e-3,
    "lr_lora": 1e-2,
    "ranks": [1, 2, 4, 8, 16],
    "lora_alpha": 16,
    "use_rslora": False,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "compare_rank": 4,  # the LoRA run compared with full fine-tuning in compare.csv
    "task_noise": 0.1,  # task B: the share of successors drawn at random instead of by the rule
    "threads": 1,
}


def task_b_next(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Task B's rule (the shipped task): the successor of token t is (3 t + 1) mod V."""
    return (3 * tokens + 1) % vocab


def training_memory_bytes(model: torch.nn.Module, adam_states: int = 2) -> int:
    """Bytes to train ``model`` with Adam: every parameter once, plus, for each parameter that requires a
    gradient, its gradient and ``adam_states`` optimizer states of the same size and dtype (a Python int).

    Count each parameter once (``model.parameters()`` does); activations are not counted."""
    # BEGIN SOLUTION
    total = 0
    for p in model.parameters():
        size = p.numel() * p.element_size()
        total += size + (size * (1 + adam_states) if p.requires_grad else 0)
    return total
    # END SOLUTION


def markov_batch(g: torch.Generator, transition: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Rows of a Markov chain with the given (V, V) transition probabilities: (B, T) int64."""
    v = transition.shape[0]
    rows = [torch.randint(0, v, (batch,), generator=g)]
    for _ in range(length - 1):
        rows.append(torch.multinomial(transition[rows[-1]], 1, generator=g).squeeze(1))
    return torch.stack(rows, dim=1)


def task_b_batch(g: torch.Generator, config: dict, batch: int) -> torch.Tensor:
    v, t = config["model"]["vocab_size"], config["seq_len"]
    rows = [torch.randint(0, v, (batch,), generator=g)]
    for _ in range(t - 1):
        nxt = task_b_next(rows[-1], v)
        noise = torch.rand(batch, generator=g) < config["task_noise"]
        rows.append(torch.where(noise, torch.randint(0, v, (batch,), generator=g), nxt))
    return torch.stack(rows, dim=1)


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def train(model: torch.nn.Module, batches: list[torch.Tensor], lr: float) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    losses = []
    for ids in batches:
        loss = lm_loss(model, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: torch.nn.Module, ids: torch.Tensor) -> float:
    model.eval()
    return float(lm_loss(model, ids))


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("lora-vs-full-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    v, t, b = config["model"]["vocab_size"], config["seq_len"], config["batch_size"]
    g = torch.Generator().manual_seed(seed)
    base = tiny_model("llama", config["model"], seed=seed)
    transition = torch.softmax(3 * torch.randn(v, v, generator=g), dim=-1)  # task A
    train(base, [markov_batch(g, transition, b, t) for _ in range(config["pretrain_steps"])], config["lr_full"])
    batches = [task_b_batch(g, config, b) for _ in range(config["finetune_steps"])]  # the same for every method
    val = task_b_batch(g, config, 64)
    before = evaluate(base, val)

    methods = [("full", None)] + [(f"lora_r{r}", r) for r in config["ranks"]]
    rows, curves, summary = [], {}, {"loss_baseline_pretrained": before}
    for name, rank in progress(methods, desc="fine-tuning"):
        model = copy.deepcopy(base)
        try:
            if rank is not None:
                torch.manual_seed(seed + rank)  # A's initialisation
                inject_lora(
                    model, config["target_modules"], rank, config["lora_alpha"], use_rslora=config["use_rslora"]
                )
            trainable, total = count_parameters(model)
            memory = training_memory_bytes(model)
        except NotImplementedError as exc:
            run.log(kind="todo", missing="inject_lora, count_parameters or training_memory_bytes", why=str(exc))
            return run
        curves[name] = train(model, batches, config["lr_full"] if rank is None else config["lr_lora"])
        final = evaluate(model, val)
        rows.append({"method": name, "rank": rank or 0, "trainable": trainable, "total": total,
                     "memory_bytes": memory, "final_loss": final})  # fmt: skip
        run.log(
            kind="finetune", method=name, trainable=trainable, memory_bytes=memory, loss=curves[name], final_loss=final
        )
    full = rows[0]
    summary["loss_full_baseline"] = full["final_loss"]
    summary["trainable_full"] = full["trainable"]
    summary["memory_full_bytes"] = full["memory_bytes"]
    for row in rows[1:]:
        summary[f"loss_{row['method']}"] = row["final_loss"]
        summary[f"trainable_{row['method']}"] = row["trainable"]
        summary[f"memory_{row['method']}_bytes"] = row["memory_bytes"]

    compare = [r for r in rows if r["rank"] in (0, config["compare_rank"])]
    write_csv(
        run.artifact("compare.csv"),
        [{k: r[k] for k in ("method", "rank", "trainable", "memory_bytes", "final_loss")} for r in compare],
    )
    sweep = [{k: r[k] for k in ("rank", "trainable", "memory_bytes", "final_loss")} for r in rows[1:]]
    write_csv(run.artifact("rank_sweep.csv"), sweep)

    fig = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        ax.plot(curve, label=name, lw=2 if name == "full" else 1)
    ax.axhline(before, color="k", ls=":", label="before fine-tuning")
    ax.set(xlabel="step", ylabel="training loss on task B", title="full fine-tuning vs LoRA")
    ax.legend(fontsize=7)
    fig.savefig(run.artifact("loss_curves.png"), dpi=80)

    fig2 = new_figure(8, 3.5)
    ax1, ax2 = fig2.add_subplot(1, 2, 1), fig2.add_subplot(1, 2, 2)
    ranks = [r["rank"] for r in rows[1:]]
    ax1.plot(ranks, [r["final_loss"] for r in rows[1:]], "o-", label="LoRA")
    ax1.axhline(full["final_loss"], color="tab:red", ls="--", label="full fine-tuning")
    ax1.set(xscale="log", xlabel="rank r", ylabel="validation loss", title="loss vs rank")
    ax1.legend(fontsize=7)
    ax2.plot(ranks, [r["memory_bytes"] / 1e6 for r in rows[1:]], "o-", label="LoRA")
    ax2.axhline(full["memory_bytes"] / 1e6, color="tab:red", ls="--", label="full fine-tuning")
    ax2.set(xscale="log", xlabel="rank r", ylabel="training memory (MB)", title="memory vs rank")
    ax2.legend(fontsize=7)
    fig2.savefig(run.artifact("rank_sweep.png"), dpi=80)
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
