"""Lesson 03 lab experiment: attention patterns (part a) and timing (part b), logged with labkit.

Run it from labs/lesson_03/: ``python lab_experiment.py`` runs seeds 0, 1 and 2 (or call
``main(config, seed)`` from the notebook). Each call of :func:`main` is one logged run under
``runs/``; change one config value at a time. The rubric re-executes your newest run from its
config.json, with its seed and with another, so keep ``main(config, seed)`` the only entry point.

What it does, as lessons/lesson_03.md section 5 asks:

(a) Heatmaps: random q, k, v of width 16 for the words of ``sentence``, weights unmasked and
    causal side by side (heatmaps.png), the scale variants (none, 1/sqrt(d), 1/d) and the widths
    d = 4, 16, 64, 256 with and without the scale (variants.png), the raw weights (heatmaps.pt),
    and the mean row entropy of every pattern (logged and in the summary).
(b) Timing: B = 4, H = 8, d = 64, float32, ``torch.set_num_threads(threads)``; T over
    ``seq_lens`` with a causal mask; your function, torch SDPA (the baseline) and your
    :func:`looped_attention`, each timed by ``torch.utils.benchmark.Timer`` (median and IQR),
    with ratios to the baseline (timing.csv, timing.png); then :func:`second_sweep`, one other
    variable (second_sweep.csv). Until you write those two functions, the run logs a
    ``kind="todo"`` row for each and leaves out what depends on them.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.benchmark import Timer

from labkit import exercises, progress, start_run, write_csv

exercises("03", __file__)
from attention import causal_mask, scaled_dot_product_attention  # noqa: E402

DEFAULT_CONFIG = {
    # (a) heatmaps
    "sentence": "the cat sat on the mat because it was tired",  # one token per word
    "heatmap_dim": 16,
    "widths": [4, 16, 64, 256],
    # (b) timing: the T sweep changes seq_lens only
    "seq_lens": [64, 128, 256, 512, 1024],  # add 2048 to enlarge the sweep
    "batch": 4,
    "heads": 8,
    "head_dim": 64,
    "threads": 1,  # torch.set_num_threads for the whole run, recorded here and in env.json
    "device": "cpu",  # "cuda" on a GPU machine (the Timer synchronises)
    "dtype": "float32",  # "float16" on a GPU
    "min_reps": 5,  # at least this many Timer measurements per point (for the IQR)
    "budget_s": 0.25,  # a point stops after this much measuring, or earlier once IQR/median < 10%
    # (b) the second sweep: B*H at fixed T (the reference varies the number of heads)
    "second_seq_len": 256,
    "second_heads": [1, 2, 4, 8, 16],
}
HALF_TOLERANCE = {"atol": 2e-2, "rtol": 2e-2}  # float16/bfloat16 on a GPU: a fused kernel rounds differently


def row_entropy(weights: torch.Tensor) -> float:
    """Mean entropy (nats) of the rows of ``weights``: log(T_k) when uniform, 0 when one-hot."""
    w = weights.double()
    return float(-(w * w.clamp_min(1e-30).log()).sum(-1).mean())


def looped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The output of attention on ``(B, H, T, d)`` inputs, computed one ``(batch, head)`` at a time.

    A Python loop over batch and heads that calls your ``scaled_dot_product_attention`` on the
    2-D slices ``q[b, h]``, ``k[b, h]``, ``v[b, h]`` (with the same ``mask``) and puts each
    output in its place: the loop that the batched version removes. Returns ``(B, H, T, d_v)``.
    """
    # BEGIN SOLUTION
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            out[b, h] = scaled_dot_product_attention(q[b, h], k[b, h], v[b, h], mask)[0]
    return out
    # END SOLUTION


def timed(fn) -> tuple[object, float]:
    """(fn(), seconds it took): one call, on the CPU clock (a GPU call is synchronised first)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def measure(fn, config: dict, one_call_s: float | None = None) -> dict:
    """Median and IQR in ms of ``fn()`` by ``torch.utils.benchmark.Timer.adaptive_autorange`` (it
    warms up and picks the block size): it stops once there are more than three measurements with
    IQR/median < 10%, or after max(budget_s, min_reps x one call) of measuring, so that a slow point
    still gets about ``min_reps`` measurements. ``one_call_s``: the time of a call already made."""
    if one_call_s is None:
        one_call_s = timed(fn)[1]  # one call, to size the budget (the Timer warms up again itself)
    budget = max(config["budget_s"], config["min_reps"] * one_call_s)
    timer = Timer("fn()", globals={"fn": fn}, num_threads=config["threads"])
    m = timer.adaptive_autorange(threshold=0.1, min_run_time=0.01, max_run_time=budget)
    return {"ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3, "n": len(m.times)}


def second_sweep(config: dict, g: torch.Generator) -> list[dict]:
    """The second timing sweep of section 5b: one other variable, everything else fixed.

    Vary one thing (the reference: ``B*H`` through ``second_heads`` at ``T = second_seq_len``
    with the causal mask; or masked vs unmasked at one T) and time your batched function and
    torch SDPA at each point with :func:`measure`. Draw the inputs from ``g``. Return one dict
    per point: ``variable`` (its name), ``value`` (a number: 1/0 for masked/unmasked),
    ``mine_ms``, ``mine_iqr_ms``, ``baseline_ms``, ``baseline_iqr_ms``.
    """
    # BEGIN SOLUTION
    device, dtype = config["device"], getattr(torch, config["dtype"])
    t, rows = config["second_seq_len"], []
    mask = causal_mask(t, device=device)
    for heads in config["second_heads"]:
        shape = (config["batch"], heads, t, config["head_dim"])
        q, k, v = (torch.randn(*shape, generator=g).to(device, dtype) for _ in range(3))
        mine = measure(lambda q=q, k=k, v=v: scaled_dot_product_attention(q, k, v, mask), config)
        base = measure(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), config)
        rows.append({"variable": "batch_x_heads", "value": config["batch"] * heads, "mine_ms": mine["ms"],
                     "mine_iqr_ms": mine["iqr_ms"], "baseline_ms": base["ms"], "baseline_iqr_ms": base["iqr_ms"]})  # fmt: skip
    return rows
    # END SOLUTION


def heatmaps(config: dict, g: torch.Generator, run) -> dict:
    """Part (a): the patterns, their entropies (returned), heatmaps.png, variants.png, heatmaps.pt."""
    tokens = config["sentence"].split()
    n, d = len(tokens), config["heatmap_dim"]
    q, k, v = (torch.randn(n, d, generator=g) for _ in range(3))
    unmasked = scaled_dot_product_attention(q, k, v)[1]
    masked = scaled_dot_product_attention(q, k, v, causal_mask(n))[1]
    # Scale variants at width d: rescale q so that your 1/sqrt(d) gives the scale wanted.
    scales = {"none": math.sqrt(d), "sqrt_d": 1.0, "d": 1.0 / math.sqrt(d)}
    by_scale = {name: scaled_dot_product_attention(q * f, k, v)[1] for name, f in scales.items()}
    by_width = {}
    for width in config["widths"]:
        qw, kw, vw = (torch.randn(n, width, generator=g) for _ in range(3))
        by_width[f"d{width}"] = scaled_dot_product_attention(qw, kw, vw)[1]
        by_width[f"d{width}_unscaled"] = scaled_dot_product_attention(qw * math.sqrt(width), kw, vw)[1]
    patterns = {"unmasked": unmasked, "masked": masked, **{f"scale_{s}": w for s, w in by_scale.items()}, **by_width}
    entropy = {f"entropy_{name}": row_entropy(w) for name, w in patterns.items()}
    for name, w in patterns.items():
        run.log(
            kind="pattern", pattern=name, entropy=entropy[f"entropy_{name}"], max_weight=float(w.max(-1).values.mean())
        )
    torch.save({"tokens": tokens, **{name: w.clone() for name, w in patterns.items()}}, run.artifact("heatmaps.pt"))

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, name, title in zip(fig.subplots(1, 2), ("unmasked", "masked"), ("unmasked", "causal mask"), strict=True):
        image = ax.imshow(patterns[name].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(n), tokens, rotation=60, fontsize=8)
        ax.set_yticks(range(n), tokens, fontsize=8)
        ax.set(title=f"{title}: row entropy {entropy['entropy_' + name]:.2f} nats", xlabel="key", ylabel="query")
    fig.colorbar(image, ax=fig.axes, shrink=0.8)
    fig.savefig(run.artifact("heatmaps.png"), dpi=100, bbox_inches="tight")

    grid = [[f"scale_{s}" for s in scales]] + [[f"d{w}{u}" for w in config["widths"]] for u in ("", "_unscaled")]
    cols = max(len(scales) + 1, len(config["widths"]))
    fig = Figure(figsize=(3 * cols, 9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, cols, squeeze=False)
    for r, row in enumerate(grid):
        for c in range(cols):
            ax = axes[r][c]
            if c < len(row):
                ax.imshow(patterns[row[c]].numpy(), cmap="viridis", vmin=0, vmax=1)
                ax.set_title(f"{row[c]}: H = {entropy['entropy_' + row[c]]:.2f}", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
            elif (r, c) != (0, len(scales)):  # that one holds the entropy-vs-width plot
                ax.set_axis_off()
    ax = axes[0][len(scales)]
    for suffix, label in (("", "scaled 1/sqrt(d)"), ("_unscaled", "unscaled")):
        ax.plot(config["widths"], [entropy[f"entropy_d{w}{suffix}"] for w in config["widths"]], "o-", label=label)
    ax.axhline(math.log(n), color="grey", ls=":", label="uniform, log T")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="width d", ylabel="mean row entropy (nats)", title="entropy vs width")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run.artifact("variants.png"), dpi=80)
    return entropy


def timing_plot(rows: list[dict], second: list[dict] | None, path) -> None:
    """timing.png: median time (IQR bars) and ratio to SDPA against T; the second sweep if done."""
    fig = Figure(figsize=(15 if second else 10, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if second else 2)
    t = [r["seq_len"] for r in rows]
    for impl, label in (
        ("mine", "yours (batched)"),
        ("baseline", "torch SDPA (baseline)"),
        ("looped", "yours, looped"),
    ):
        if f"{impl}_ms" in rows[0]:
            axes[0].errorbar(
                t,
                [r[f"{impl}_ms"] for r in rows],
                yerr=[r[f"{impl}_iqr_ms"] / 2 for r in rows],
                fmt="o-",
                capsize=3,
                label=label,
            )
            if impl != "baseline":
                axes[1].plot(t, [r[f"{impl}_ratio"] for r in rows], "o-", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="T (causal mask)", ylabel="median ms (bars: IQR)", title="time vs T")
    axes[1].axhline(1.0, color="grey", ls=":")
    axes[1].set(xscale="log", xlabel="T", ylabel="time / SDPA time", title="ratio to the baseline")
    if second:
        x = [r["value"] for r in second]
        for impl, label in (("mine", "yours"), ("baseline", "torch SDPA")):
            axes[2].errorbar(
                x,
                [r[f"{impl}_ms"] for r in second],
                yerr=[r[f"{impl}_iqr_ms"] / 2 for r in second],
                fmt="o-",
                capsize=3,
                label=label,
            )
        axes[2].set_xscale("log", base=2)
        axes[2].set(yscale="log", xlabel=second[0]["variable"], ylabel="median ms", title="second sweep")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def time_point(config: dict, t: int, seed: int, g: torch.Generator, run, looped):
    """One point of the T sweep: check, then time yours, SDPA and (once written) the looped version.

    Returns (the row of timing.csv, ``looped`` or None once it turned out not to be written yet).
    """
    device, dtype = config["device"], getattr(torch, config["dtype"])
    shape = (config["batch"], config["heads"], t, config["head_dim"])
    q, k, v = (torch.randn(*shape, generator=g).to(device, dtype) for _ in range(3))
    mask = causal_mask(t, device=device)
    impls = {"mine": lambda: scaled_dot_product_attention(q, k, v, mask)[0],
             "baseline": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)}  # fmt: skip
    (mine_out, mine_s), (base_out, base_s) = timed(impls["mine"]), timed(impls["baseline"])
    first_call = {"mine": mine_s, "baseline": base_s}
    tol = HALF_TOLERANCE if dtype in (torch.float16, torch.bfloat16) else {}
    torch.testing.assert_close(mine_out, base_out, **tol)  # measure only what is correct
    row = {"seq_len": t, "seed": seed, "threads": config["threads"]}
    if looped is not None:
        try:
            impls["looped"] = lambda: looped(q, k, v, mask)
            looped_out, first_call["looped"] = timed(impls["looped"])
            torch.testing.assert_close(looped_out, mine_out, **tol)
        except NotImplementedError:
            run.log(kind="todo", missing="looped_attention", skipped="the looped_* columns of timing.csv")
            del impls["looped"]
            looped = None
    for impl, fn in impls.items():
        m = measure(fn, config, first_call[impl])
        row |= {f"{impl}_ms": m["ms"], f"{impl}_iqr_ms": m["iqr_ms"], f"{impl}_n": m["n"]}
    for impl in impls:
        if impl != "baseline":
            row[f"{impl}_ratio"] = row[f"{impl}_ms"] / row["baseline_ms"]
    run.log(kind="timing", max_abs_err=float((mine_out - base_out).abs().max()), **row)
    return row, looped


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    torch.set_num_threads(config["threads"])  # for the whole run: recorded in config.json and env.json
    run = start_run("attention-lab", config, seeds=[seed], entrypoint=main)
    g = torch.Generator().manual_seed(seed)  # every input below is drawn from it, in a fixed order
    entropy = heatmaps(config, g, run)

    looped, rows = looped_attention, []
    for t in progress(config["seq_lens"], desc="timing"):
        row, looped = time_point(config, t, seed, g, run, looped)
        rows.append(row)
    write_csv(run.artifact("timing.csv"), rows)

    try:
        second = second_sweep(config, g)
    except NotImplementedError:
        run.log(kind="todo", missing="second_sweep", skipped="second_sweep.csv")
        second = None
    if second:
        for r in second:
            r["mine_ratio"] = r["mine_ms"] / r["baseline_ms"]
            run.log(kind="second_sweep", **r)
        write_csv(run.artifact("second_sweep.csv"), second)
    timing_plot(rows, second, run.artifact("timing.png"))

    last = rows[-1]  # the largest T: timings are compared as present and positive only
    timings = {f"{impl}_ms": last[f"{impl}_ms"] for impl in ("mine", "baseline", "looped") if f"{impl}_ms" in last}
    run.finish(**entropy, seq_len=last["seq_len"], threads=config["threads"], **timings)
    return run


if __name__ == "__main__":
    for s in (0, 1, 2):  # at least three seeds of the input data
        print(main(seed=s).dir)
