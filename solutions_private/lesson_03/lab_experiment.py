"""Lesson 03 lab experiment: attention patterns and timing, logged with labkit.

Run it from this folder: ``python lab_experiment.py`` (or from the notebook). Each call
of :func:`main` is one logged run under ``runs/``; change one config value at a time.
The rubric re-executes a run from its config.json, so keep ``main(config)`` the only
entry point and log every number you interpret.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from attention import causal_mask, scaled_dot_product_attention

from labkit import progress, start_run

DEFAULT_CONFIG = {
    "seq_lens": [32, 64, 128],  # the one variable this experiment sweeps
    "batch": 4,
    "heads": 4,
    "head_dim": 32,
    "repeats": 5,  # timing repeats per point; the median is logged
    "heatmap_len": 12,
}


def median_ms(fn, *args, repeats: int) -> float:
    """Median wall time of fn(*args) in milliseconds, after one warm-up call."""
    fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("attention-lab", config, seeds=[seed], entrypoint=main)
    # Deterministic measurements (the rerun must reproduce them exactly).
    g = torch.Generator().manual_seed(seed)
    n = config["heatmap_len"]
    q, k, v = (torch.randn(1, n, config["head_dim"], generator=g) for _ in range(3))
    _, w_full = scaled_dot_product_attention(q, k, v)
    _, w_causal = scaled_dot_product_attention(q, k, v, causal_mask(n))
    entropy = lambda w: float(-(w * w.clamp_min(1e-30).log()).sum(-1).mean())  # noqa: E731
    torch.save({"unmasked": w_full[0], "masked": w_causal[0]}, run.artifact("heatmaps.pt"))
    run.log(kind="pattern", entropy_unmasked=entropy(w_full), entropy_masked=entropy(w_causal))
    # Timing: mine vs the torch SDPA baseline, same inputs, one sequence length at a time.
    for t in progress(config["seq_lens"], desc="timing"):
        shape = (config["batch"], config["heads"], t, config["head_dim"])
        q, k, v = (torch.randn(*shape, generator=g) for _ in range(3))
        mask = causal_mask(t)
        mine = median_ms(scaled_dot_product_attention, q, k, v, mask, repeats=config["repeats"])
        base = median_ms(lambda *a, m=mask: F.scaled_dot_product_attention(*a, attn_mask=m), q, k, v, repeats=config["repeats"])
        run.log(kind="timing", seq_len=t, mine_ms=mine, baseline_ms=base, flops_log2=math.log2(2 * 2 * shape[0] * shape[1] * t * t * shape[3]))
    run.finish(entropy_unmasked=entropy(w_full), entropy_masked=entropy(w_causal), mine_ms=mine, baseline_ms=base)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
