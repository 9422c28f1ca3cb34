"""Lesson 04 lab: heads, norms and depth (lessons/lesson_04.md, section 4), one logged run per call.

Run it from labs/lesson_04/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. The
rubric re-executes your newest run from its config.json, so keep ``main(config, seed)`` the only
entry point and log every number you interpret. One run does, in this order:

(b) at initialisation, for every depth L in ``depths``: a stack of L of your ``Block``s in Pre-LN
    order (your ``Block.forward``) and in Post-LN order (the baseline ``PostLNBlock``: the same
    modules, the norm after the addition), sharing their weights; the RMS of the residual stream
    after every block and the gradient norm of every block's weight matrices for a regression loss
    (``depth.csv``, ``norm_vs_depth.png``; Post-LN logged as ``baseline_postln_*``);
(a) the silent shape bug: your ``MultiHeadAttention`` and a variant whose split has no transpose,
    both with weights copied from one ``nn.MultiheadAttention``: the error against torch and a
    causality probe for every ``(T, nh)`` in ``bug_settings`` (``split_bug.csv``), and one head's
    attention weights from each version (``heatmaps.png``). You write the variant:
    ``split_heads_no_transpose`` and ``attention_with_weights``;
(b, training) each kind at every depth in ``train_depths`` trained with AdamW on a toy task you
    choose (``toy_batch``, ``train_stack``: yours), for ``train_seeds`` seeds, at one ``lr`` and
    ``warmup_steps`` per run (``training.csv``, ``training_loss.png``);
(c) the parameter count of a block against your formula ``param_formula`` (``param_count.csv``).

Until you write a part, the run logs ``kind="todo"`` for it and skips its files. Everything is
computed in float64 on one thread, so a rerun with the same seed repeats every number.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

from labkit import exercises, progress, start_run, write_csv

exercises("04", __file__)
from block import Block, BlockConfig, LayerNorm, MultiHeadAttention, merge_heads, split_heads  # noqa: E402

DEFAULT_CONFIG = {
    "depths": [1, 2, 4, 8, 16, 32],  # (b) at initialisation: the one variable this part sweeps
    "n_embd": 64,
    "n_head": 4,
    "batch": 4,
    "seq_len": 16,
    "init_std": 0.125,  # about Xavier for C = 64 (Xiong et al.'s setting); nanoGPT uses 0.02: try it
    "final_ln": True,  # Pre-LN output goes through a final LayerNorm before the loss, as GPT-2's ln_f
    "dtype": "float64",  # float64: the rerun reproduces every number to far below its tolerance
    "threads": 1,  # torch.set_num_threads: tiny matrices run faster on one thread, and runs repeat exactly
    "baseline": "postln",  # the same blocks with the norm after the residual addition (Vaswani et al., 2017)
    "bug_settings": [[1, 4], [8, 1], [8, 4], [16, 2], [16, 8]],  # (a) (T, nh) pairs, C = n_embd
    "heatmap_setting": [8, 4],  # (a) the (T, nh) whose head 0 is drawn
    "train_depths": [1, 4],  # (b, training) stacks trained, each kind
    "train_steps": 100,
    "train_batch": 8,
    "train_seeds": 3,  # seeds seed, seed + 1, ...: mean and spread in training.csv
    "lr": 3e-3,  # AdamW; change one of lr / warmup_steps per run
    "warmup_steps": 0,  # linear warm-up from 0 to lr over this many steps (0: none)
    "log_every": 10,
    "param_widths": [16, 64, 768],  # (c) C values counted, with and without biases
}
KINDS = ("preln", "postln")


class PostLNBlock(nn.Module):
    """The 2017 block order on the modules of a ``Block``: ``x = ln(x + sublayer(x))``."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        x = b.ln_1(x + b.attn(x))  # (B, T, C): the residual stream itself is normalised
        return b.ln_2(x + b.mlp(x))


def build_stack(depth: int, config: dict, seed: int) -> nn.ModuleList:
    """``depth`` Blocks with nanoGPT's initialisation; the same weights for a given (depth, seed)."""
    torch.manual_seed(seed)
    cfg = BlockConfig(n_embd=config["n_embd"], n_head=config["n_head"])
    blocks = nn.ModuleList(Block(cfg) for _ in range(depth)).to(getattr(torch, config["dtype"]))
    for module in blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=config["init_std"])
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return blocks


def run_stack(
    kind: str, blocks: nn.ModuleList, x: torch.Tensor, final_ln: nn.Module | None
) -> tuple[torch.Tensor, list[float]]:
    """The stack's output and the RMS of the residual stream after every block."""
    h, rms = x, []
    for b in blocks:
        h = b(h) if kind == "preln" else PostLNBlock(b)(h)  # (B, T, C)
        rms.append(float(h.detach().pow(2).mean().sqrt()))
    if kind == "preln" and final_ln is not None:
        h = final_ln(h)
    return h, rms


def weight_grad_norm(block: nn.Module) -> float:
    """L2 norm of the gradients of a block's weight matrices (LayerNorm gains and biases left out)."""
    grads = [p.grad for p in block.parameters() if p.dim() == 2 and p.grad is not None]
    return float(torch.sqrt(sum((g * g).sum() for g in grads)))


def measure(kind: str, depth: int, x: torch.Tensor, y: torch.Tensor, config: dict, seed: int) -> dict:
    """(b) Per-layer residual RMS and weight-gradient norms of one stack at initialisation."""
    blocks = build_stack(depth, config, seed)
    final_ln = LayerNorm(config["n_embd"]).to(x.dtype) if config["final_ln"] else None
    h, rms = run_stack(kind, blocks, x, final_ln)
    loss = (h - y).pow(2).mean()
    loss.backward()
    return {"rms": rms, "grad": [weight_grad_norm(b) for b in blocks], "loss": float(loss.detach())}


# ------------------------------------------------------------------ (a) the silent shape bug
def split_heads_no_transpose(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(a) The bug: (B, T, C) -> (B, nh, T, hs) by ``reshape`` alone, without the transpose."""
    # BEGIN SOLUTION
    B, T, C = x.shape
    return x.reshape(B, n_head, T, C // n_head)
    # END SOLUTION


def attention_with_weights(
    attn: MultiHeadAttention, x: torch.Tensor, split, causal: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a) Your ``MultiHeadAttention.forward``, copied, with the head split ``split(t, n_head)`` passed in.

    Returns the output (B, T, C) and the attention weights (B, nh, T, T), so the lab can draw them.
    """
    # BEGIN SOLUTION
    T = x.size(1)
    q, k, v = attn.c_attn(x).split(attn.n_embd, dim=-1)  # 3 x (B, T, C)
    q, k, v = (split(t, attn.n_head) for t in (q, k, v))  # 3 x (B, nh, T, hs)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, T)
    if causal:
        keep = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~keep, float("-inf"))
    att = F.softmax(att, dim=-1)  # (B, nh, T, T)
    return attn.c_proj(merge_heads(att @ v)), att  # (B, T, C), (B, nh, T, T)
    # END SOLUTION


def torch_attention(C: int, nh: int, dtype: torch.dtype, seed: int) -> tuple[nn.MultiheadAttention, MultiHeadAttention]:
    """One ``nn.MultiheadAttention`` with random weights and biases, and your module with them copied in."""
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(C, nh, batch_first=True).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.3)  # random biases too: torch's zero init would hide bias bugs
    mine = MultiHeadAttention(BlockConfig(n_embd=C, n_head=nh)).to(dtype)
    with torch.no_grad():
        mine.c_attn.weight.copy_(ref.in_proj_weight)  # (3C, C), rows q, k, v
        mine.c_attn.bias.copy_(ref.in_proj_bias)
        mine.c_proj.weight.copy_(ref.out_proj.weight)
        mine.c_proj.bias.copy_(ref.out_proj.bias)
    return ref, mine


def causal_leak(forward, x: torch.Tensor, generator: torch.Generator) -> float:
    """Largest change of the outputs up to t when the inputs after t change, over every t."""
    y = forward(x)
    worst = 0.0
    for t in range(x.size(1) - 1):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn(x2[:, t + 1 :].shape, generator=generator, dtype=x.dtype)
        worst = max(worst, float((forward(x2)[:, : t + 1] - y[:, : t + 1]).abs().max()))
    return worst


def split_bug(run, config: dict, seed: int) -> dict:
    """(a) Error against torch and causality leak for both splits; the heatmap of one head each."""
    dtype, C = getattr(torch, config["dtype"]), config["n_embd"]
    rows, weights, missing = [], {}, None
    for i, (T, nh) in enumerate(config["bug_settings"]):
        ref, mine = torch_attention(C, nh, dtype, seed * 100 + i)
        g = torch.Generator().manual_seed(seed * 100 + i)
        x = torch.randn(2, T, C, generator=g, dtype=dtype)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # torch's attn_mask: True = not allowed
        want = ref(x, x, x, attn_mask=mask, need_weights=False)[0]
        versions = {"transpose": mine}
        if missing is None:
            try:
                attention_with_weights(mine, x, split_heads_no_transpose)
                versions["no_transpose"] = lambda t, m=mine: attention_with_weights(m, t, split_heads_no_transpose)[0]
            except NotImplementedError as exc:
                missing = exc
        with torch.no_grad():
            for version, forward in versions.items():
                row = {"T": T, "n_head": nh, "version": version, "max_err": float((forward(x) - want).abs().max()),
                       "causal_leak": causal_leak(forward, x, g)}  # fmt: skip
                run.log(kind="split_bug", **row)
                rows.append(row)
            if missing is None and [T, nh] == list(config["heatmap_setting"]):
                for version, split in (("transpose", split_heads), ("no_transpose", split_heads_no_transpose)):
                    weights[version] = attention_with_weights(mine, x, split)[1][0, 0]  # (T, T): batch 0, head 0
    if missing is not None:
        run.log(kind="todo", missing="split_heads_no_transpose / attention_with_weights", why=str(missing))
        return {}
    write_csv(run.artifact("split_bug.csv"), rows)
    if weights:
        fig = Figure(figsize=(9, 4))
        for ax, (version, w) in zip(fig.subplots(1, 2), weights.items(), strict=True):
            image = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            T = w.size(0)
            ax.set(xticks=range(T), yticks=range(T), xlabel="key position", ylabel="query position",
                   title=f"head 0, split {version.replace('_', ' ')}")  # fmt: skip
            fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        fig.savefig(run.artifact("heatmaps.png"), dpi=80)
    bad = [r for r in rows if r["version"] == "no_transpose"]
    return {
        "no_transpose_max_err": max(r["max_err"] for r in bad),
        "no_transpose_leak": max(r["causal_leak"] for r in bad),
    }


# ------------------------------------------------------------------ (b) training on a toy task
def toy_batch(config: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(b) One batch (x, y) of your toy sequence task, each (train_batch, seq_len, n_embd), from ``generator``."""
    # BEGIN SOLUTION
    # The running (prefix) mean: y[t] = mean of x[0..t]. Causal attention with equal weights on the
    # visible keys solves it, so it needs no position code; predicting 0 scores about H_T / T.
    B, T, C = config["train_batch"], config["seq_len"], config["n_embd"]
    dtype = getattr(torch, config["dtype"])
    x = torch.randn(B, T, C, generator=generator, dtype=dtype)
    y = x.cumsum(dim=1) / torch.arange(1, T + 1, dtype=dtype)[:, None]  # (B, T, C)
    return x, y
    # END SOLUTION


def train_stack(kind: str, depth: int, config: dict, seed: int) -> tuple[list[float], float]:
    """(b) Train one stack (``build_stack(depth, config, seed)``, a linear read-out) on ``toy_batch``.

    AdamW at ``config["lr"]`` with a linear warm-up over ``config["warmup_steps"]`` steps, for
    ``config["train_steps"]`` steps. Returns (the training loss every ``log_every`` steps, the loss
    on one fixed held-out batch after training).
    """
    # BEGIN SOLUTION
    blocks = build_stack(depth, config, seed)
    dtype, C = getattr(torch, config["dtype"]), config["n_embd"]
    final_ln = LayerNorm(C).to(dtype) if config["final_ln"] else None
    readout = nn.Linear(C, C).to(dtype)
    params = [*blocks.parameters(), *readout.parameters(), *(final_ln.parameters() if final_ln else [])]
    opt = torch.optim.AdamW(params, lr=config["lr"])
    warmup = config["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    g = torch.Generator().manual_seed(seed + 20_000)
    held_out = toy_batch(config, torch.Generator().manual_seed(seed + 30_000))
    losses = []
    for step in range(1, config["train_steps"] + 1):
        x, y = toy_batch(config, g)
        loss = F.mse_loss(readout(run_stack(kind, blocks, x, final_ln)[0]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % config["log_every"] == 0:
            losses.append(float(loss.detach()))
    with torch.no_grad():
        x, y = held_out
        return losses, float(F.mse_loss(readout(run_stack(kind, blocks, x, final_ln)[0]), y))
    # END SOLUTION


def training(run, config: dict, seed: int) -> dict:
    """(b) Every kind and depth in train_depths, train_seeds seeds: training.csv and the loss curves."""
    rows, curves, summary = [], {}, {}
    seeds = [seed + i for i in range(config["train_seeds"])]
    for kind in KINDS:
        for depth in config["train_depths"]:
            finals = []
            for s in seeds:
                try:
                    losses, final = train_stack(kind, depth, config, s)
                except NotImplementedError as exc:
                    run.log(kind="todo", missing="toy_batch / train_stack", why=str(exc))
                    return {}
                if not all(map(math.isfinite, [*losses, final])):
                    final = float("nan")  # diverged: logged, and the table says so
                run.log(kind="train", stack=kind, depth=depth, seed=s, lr=config["lr"], warmup_steps=config["warmup_steps"],
                        losses=losses, final_loss=final)  # fmt: skip
                finals.append(final)
                curves[(kind, depth, s)] = losses
            t = torch.tensor(finals, dtype=torch.float64)
            rows.append({"kind": kind, "depth": depth, "lr": config["lr"], "warmup_steps": config["warmup_steps"],
                         "n_seeds": len(finals), "final_loss_mean": float(t.mean()),
                         "final_loss_std": float(t.std()) if len(finals) > 1 else 0.0,
                         "final_loss_min": float(t.min()), "final_loss_max": float(t.max())})  # fmt: skip
            prefix = "baseline_postln" if kind == "postln" else "preln"
            summary[f"{prefix}_train_loss_L{depth}"] = rows[-1]["final_loss_mean"]
    write_csv(run.artifact("training.csv"), rows)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    colors = {"preln": "C0", "postln": "C3"}
    styles = dict(zip(config["train_depths"], ("-", "--", ":", "-."), strict=False))
    for (kind, depth, s), losses in curves.items():
        steps = [config["log_every"] * (i + 1) for i in range(len(losses))]
        first = s == seeds[0]
        ax.plot(
            steps,
            losses,
            styles.get(depth, "-"),
            color=colors[kind],
            lw=1,
            label=f"{kind}, L = {depth}" if first else None,
        )
    ax.set(xlabel="step", ylabel="training loss (MSE)", yscale="log",
           title=f"lr {config['lr']:g}, warm-up {config['warmup_steps']} steps, {len(seeds)} seeds")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.artifact("training_loss.png"), dpi=80)
    return summary


# ------------------------------------------------------------------ (c) counting parameters
def param_formula(n_embd: int, bias: bool) -> int:
    """(c) Parameters of one block by your formula: ``12C^2 + 13C`` with biases; and without?"""
    # BEGIN SOLUTION
    C = n_embd
    return 12 * C * C + (13 * C if bias else 2 * C)  # without biases only the two LayerNorm gains stay
    # END SOLUTION


def param_count(run, config: dict) -> None:
    """(c) ``sum(p.numel())`` of a Block against ``param_formula``, for every width, with and without biases."""
    rows = []
    for C in config["param_widths"]:
        for bias in (True, False):
            block = Block(BlockConfig(n_embd=C, n_head=4, bias=bias))
            counted = sum(p.numel() for p in block.parameters())
            mlp = sum(p.numel() for p in block.mlp.parameters())
            try:
                formula = param_formula(C, bias)
            except NotImplementedError as exc:
                run.log(kind="todo", missing="param_formula", why=str(exc))
                return
            row = {"n_embd": C, "bias": int(bias), "counted": counted, "formula": formula, "mlp_share": mlp / counted}
            run.log(kind="params", **row)
            rows.append(row)
    write_csv(run.artifact("param_count.csv"), rows)


# ------------------------------------------------------------------ files
def depth_figure(path: Path, results: dict, depths: list[int]) -> None:
    """norm_vs_depth.png: per-layer RMS and gradients of the deepest stack, last block's gradient against L."""
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    styles = {"preln": ("C0", "Pre-LN"), "postln": ("C3", "Post-LN (baseline)")}
    for kind, (color, label) in styles.items():
        deepest = results[(kind, depths[-1])]
        layers = range(1, len(deepest["rms"]) + 1)
        axes[0].plot(layers, deepest["rms"], color=color, label=label)
        axes[1].plot(layers, deepest["grad"], color=color, label=label)
        axes[2].loglog(depths, [results[(kind, d)]["grad"][-1] for d in depths], "o-", color=color, label=label)
    axes[0].set(xlabel="layer index", ylabel="RMS of the residual stream", title=f"after each block, L = {depths[-1]}")
    axes[1].set(xlabel="layer index", ylabel="weight-gradient norm", yscale="log", title=f"per block, L = {depths[-1]}")
    axes[2].set(xlabel="depth L", ylabel="gradient norm of the last block", title="last block against depth")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("block-depth-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    dtype = getattr(torch, config["dtype"])
    depths = config["depths"]

    # (b) at initialisation: the data is fixed per seed, independent of the weights
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed + 10_000)
    shape = (config["batch"], config["seq_len"], config["n_embd"])
    x = torch.randn(shape, generator=g, dtype=dtype)  # unit-variance inputs, like embeddings after a LayerNorm
    y = torch.randn(shape, generator=g, dtype=dtype)  # a random regression target
    results, table = {}, []
    for depth in progress(depths, desc="depth"):
        for kind in KINDS:
            m = measure(kind, depth, x, y, config, seed)
            run.log(kind=kind, depth=depth, resid_rms=m["rms"], grad_norm=m["grad"], loss=m["loss"])
            results[(kind, depth)] = m
            table.append({"kind": kind, "depth": depth, "out_rms": m["rms"][-1], "grad_first": m["grad"][0],
                          "grad_last": m["grad"][-1], "loss": m["loss"]})  # fmt: skip
    write_csv(run.artifact("depth.csv"), table)
    depth_figure(run.artifact("norm_vs_depth.png"), results, depths)
    pre, post = results[("preln", depths[-1])], results[("postln", depths[-1])]
    summary = {
        "depth": depths[-1],
        "preln_out_rms": pre["rms"][-1],  # residual stream after the last block
        "preln_grad_first": pre["grad"][0],
        "preln_grad_last": pre["grad"][-1],
        "baseline_postln_out_rms": post["rms"][-1],
        "baseline_postln_grad_first": post["grad"][0],
        "baseline_postln_grad_last": post["grad"][-1],
        "init_s": time.perf_counter() - t0,
    }
    torch.save({kind: results[(kind, depths[-1])] for kind in KINDS}, run.artifact("deepest_stack_norms.pt"))

    t0 = time.perf_counter()
    summary |= split_bug(run, config, seed)  # (a)
    summary["split_bug_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary |= training(run, config, seed)  # (b), training
    summary["train_s"] = time.perf_counter() - t0
    param_count(run, config)  # (c)

    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
