"""Lesson 04 lab experiment: Pre-LN vs Post-LN at initialisation, as depth grows, logged with labkit.

Run it from this folder: ``python lab_experiment.py`` (or from the notebook). Each call
of :func:`main` is one logged run under ``runs/``; change one config value at a time.
The rubric re-executes a run from its config.json, so keep ``main(config)`` the only
entry point and log every number you interpret.

For every depth ``L`` it builds a stack of ``L`` of your ``Block``s, initialised as in
nanoGPT (normal weights, zero biases) with the std from the config, and runs it twice on
the same fixed batch: in Pre-LN order (your ``Block.forward``) and in Post-LN order (the
baseline, ``PostLNBlock`` below: the same modules, the norm after the addition). Both
stacks share their weights, so the norm placement is the only difference. It records the
RMS of the residual stream after every block, and the gradient norm of every block's
weight matrices for a regression loss on the final output.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from block import Block, BlockConfig, LayerNorm

from labkit import progress, start_run

DEFAULT_CONFIG = {
    "depths": [1, 2, 4, 8, 16, 32],  # the one variable this experiment sweeps
    "n_embd": 64,
    "n_head": 4,
    "batch": 4,
    "seq_len": 16,
    "init_std": 0.125,  # about Xavier for C = 64 (Xiong et al.'s setting); nanoGPT uses 0.02: try it
    "final_ln": True,  # Pre-LN output goes through a final LayerNorm before the loss, as GPT-2's ln_f
    "dtype": "float64",  # float64: the rerun reproduces every number to far below its tolerance
    "threads": 1,  # torch.set_num_threads: tiny matrices run faster on one thread than on a busy machine's many
    "baseline": "postln",  # the same blocks with the norm after the residual addition (Vaswani et al., 2017)
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


def weight_grad_norm(block: nn.Module) -> float:
    """L2 norm of the gradients of a block's weight matrices (LayerNorm gains and biases left out)."""
    grads = [p.grad for p in block.parameters() if p.dim() == 2 and p.grad is not None]
    return float(torch.sqrt(sum((g * g).sum() for g in grads)))


def measure(kind: str, depth: int, x: torch.Tensor, y: torch.Tensor, config: dict, seed: int) -> dict:
    """Per-layer residual RMS and weight-gradient norms of one stack at initialisation."""
    blocks = build_stack(depth, config, seed)
    layers = [b if kind == "preln" else PostLNBlock(b) for b in blocks]
    h, rms = x, []
    for layer in layers:
        h = layer(h)  # (B, T, C)
        rms.append(float(h.detach().pow(2).mean().sqrt()))
    if kind == "preln" and config["final_ln"]:
        h = LayerNorm(config["n_embd"]).to(h.dtype)(h)
    loss = (h - y).pow(2).mean()
    loss.backward()
    return {"rms": rms, "grad": [weight_grad_norm(b) for b in blocks], "loss": float(loss.detach())}


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("block-depth-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    dtype = getattr(torch, config["dtype"])
    g = torch.Generator().manual_seed(seed + 10_000)  # the data: fixed per seed, independent of the weights
    shape = (config["batch"], config["seq_len"], config["n_embd"])
    x = torch.randn(shape, generator=g, dtype=dtype)  # unit-variance inputs, like embeddings after a LayerNorm
    y = torch.randn(shape, generator=g, dtype=dtype)  # a random regression target
    last = {}
    for depth in progress(config["depths"], desc="depth"):
        for kind in KINDS:
            m = measure(kind, depth, x, y, config, seed)
            run.log(kind=kind, depth=depth, resid_rms=m["rms"], grad_norm=m["grad"], loss=m["loss"])
            last[kind] = m
    summary = {
        "depth": config["depths"][-1],
        "preln_out_rms": last["preln"]["rms"][-1],  # residual stream after the last block
        "preln_grad_first": last["preln"]["grad"][0],
        "preln_grad_last": last["preln"]["grad"][-1],
        "baseline_postln_out_rms": last["postln"]["rms"][-1],
        "baseline_postln_grad_first": last["postln"]["grad"][0],
        "baseline_postln_grad_last": last["postln"]["grad"][-1],
    }
    run.log(kind="summary", **summary)
    torch.save({k: v for k, v in last.items()}, run.artifact("deepest_stack_norms.pt"))
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
