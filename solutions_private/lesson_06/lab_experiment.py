"""Lesson 06 lab: what the rotation does to scores (lessons/lesson_06.md, section 6), one logged run per call.

Run it from labs/lesson_06/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. The
rubric re-executes your newest run from its config.json, so keep ``main(config, seed)`` the only
entry point and log every number you interpret. One run does, in this order:

- parity: your ``RotaryEmbedding`` and ``apply_rotary`` against transformers' Llama rotary code on
  the inputs of part (b) (``kind="parity"`` rows; skipped when transformers is missing);
- (a) the clock hands: ``cos_cached`` for d = 128 as an image, and the wavelength ``2 pi / theta_i``
  of every pair for two bases (``clock_hands.png``);
- (b) for every base in ``bases`` and, as the baseline, no position encoding (``baseline_*_nope``):
  the self-similarity ``<R(m) q, R(n) q> / |q|^2`` averaged over random ``q``, the mean
  ``|<R(m) q, R(n) k>| / sqrt(d)`` for independent ``q`` and ``k``, against the distance ``n - m``,
  and the relative-position check (scores from each start position against position 0) with the
  cache in float64 and float32 (``scores.csv``, ``score_vs_distance.png``);
- (c) precision at long positions: the table built with its angles in float64, float32 and
  bfloat16 (you write ``cos_sin_table``), the error of ``cos`` and of a score at a fixed offset
  as the absolute position grows (``precision.csv``, ``precision.png``);
- (d) layouts: your interleaved rotation (``rotate_interleaved``) and the channel permutation
  between the layouts (``halves_to_interleaved``), checked on scores from random projections
  (``layouts.csv``).

Until you write a part, the run logs ``kind="todo"`` for it and skips its files. Pure rounding
errors (float64 shift errors, the permuted layout difference, the parity errors) go into
metrics.jsonl only: another CPU may round them differently, so the rerun does not compare them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from labkit import exercises, progress, start_run, write_csv

exercises("06", __file__)
from rope import RotaryEmbedding, apply_rotary  # noqa: E402

DEFAULT_CONFIG = {
    "bases": [100.0, 10000.0, 500000.0],  # (b) the one variable this part sweeps
    "head_dim": 64,
    "max_distance": 2048,
    "fine_until": 64,  # every distance below this one, then every coarse_step-th
    "coarse_step": 16,
    "report_distances": [10, 100, 1000],  # the self-similarity at these distances goes into the summary
    "n_vectors": 128,  # random q (and k) averaged over
    "start_positions": [0, 1000, 4000],  # the relative-position check: scores from each start vs from the first
    "dtype": "float64",
    "threads": 1,
    "baseline": "nope",  # no position encoding: the same scores without the rotation
    "clock_head_dim": 128,  # (a)
    "clock_positions": 4096,
    "clock_bases": [10000.0, 500000.0],
    "precision_dtypes": ["float64", "float32", "bfloat16"],  # (c) float64 is the reference
    "precision_max_position": 65536,
    "precision_step": 256,  # positions 0, 256, ..., 65536
    "precision_offset": 16,  # the fixed distance n - m of the score in (c)
    "precision_base": 10000.0,
    "precision_threshold": 1e-3,  # a score error above this breaks the relative-position property
    "layout_heads": 4,  # (d) C = layout_heads * head_dim
    "layout_tokens": 32,
    "layout_base": 10000.0,
}


def make_rope(head_dim: int, max_seq_len: int, base: float, dtype: torch.dtype) -> RotaryEmbedding:
    """A RotaryEmbedding whose cache is built *and stored* in ``dtype`` (it stores the default dtype)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return RotaryEmbedding(head_dim, max_seq_len, base)
    finally:
        torch.set_default_dtype(default)


def distance_grid(config: dict) -> torch.Tensor:
    fine = torch.arange(0, config["fine_until"])
    coarse = torch.arange(config["fine_until"], config["max_distance"] + 1, config["coarse_step"])
    return torch.unique(torch.cat((fine, coarse, torch.tensor(config["report_distances"]))))  # (D,), sorted


def pair_scores(
    rope: RotaryEmbedding | None, q: torch.Tensor, k: torch.Tensor, m: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """<R(m_j) q_a, R(n_j) k_a> for every vector a (N) and position pair j (D): (N, D). rope None: no rotation."""
    N, d = q.shape
    x = q[None, :, None, :].expand(1, N, len(m), d)  # (1, N, D, d): the N vectors act as heads
    y = k[None, :, None, :].expand(1, N, len(n), d)
    if rope is not None:
        x, _ = apply_rotary(x, x, *rope(m))
        y, _ = apply_rotary(y, y, *rope(n))
    return (x * y).sum(-1)[0]  # (N, D)


# ------------------------------------------------------------------ parity with transformers
def llama_parity(run, config: dict, q: torch.Tensor, positions: torch.Tensor) -> None:
    """Your cache and rotation against transformers' Llama code on the lab's own vectors and positions."""
    try:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    except ImportError as exc:
        run.log(kind="parity", skipped=f"transformers is not importable ({exc}): parity not checked")
        return
    d, max_len = config["head_dim"], int(positions.max()) + 1
    for base in config["bases"]:
        llama_cfg = LlamaConfig(
            vocab_size=16, hidden_size=2 * d, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, head_dim=d, max_position_embeddings=max_len, rope_theta=base,
        )  # fmt: skip
        ref_cos, ref_sin = LlamaRotaryEmbedding(config=llama_cfg)(torch.zeros(1), positions[None])  # (1, T, d) float32
        cos, sin = make_rope(d, max_len, base, torch.float32)(positions)  # (T, d)
        x = q[:4, None].float().expand(4, len(positions), d)[None]  # (1, 4, T, d): four of the lab's vectors
        mine, _ = apply_rotary(x, x, cos, sin)
        ref, _ = apply_rotary_pos_emb(x, x, cos[None], sin[None])
        tol = 1e-5 + 3e-7 * int(positions.max())  # the graders' bound: transformers rounds m * theta in float32
        cos_err = float(torch.maximum((cos - ref_cos[0]).abs().max(), (sin - ref_sin[0]).abs().max()))
        rot_err = float((mine - ref).abs().max())
        run.log(kind="parity", base=base, cos_sin_max_err=cos_err, cos_sin_tol=tol, rotation_max_err=rot_err,
                agrees=cos_err <= tol and rot_err <= 1e-5)  # fmt: skip


# ------------------------------------------------------------------ (a) the clock hands
def clock_hands(run, config: dict) -> dict:
    """(a) cos_cached as an image and the wavelength of every pair: clock_hands.png."""
    d, L = config["clock_head_dim"], config["clock_positions"]
    cache = make_rope(d, L, config["clock_bases"][0], torch.float64).cos_cached  # (L, d)
    fig = Figure(figsize=(12, 4))
    left, right = fig.subplots(1, 2)
    image = left.imshow(cache.numpy(), aspect="auto", cmap="RdBu", interpolation="nearest")
    left.set(xlabel="channel", ylabel="position", title=f"cos_cached, d = {d}, base {config['clock_bases'][0]:g}")
    fig.colorbar(image, ax=left)
    summary = {}
    for base in config["clock_bases"]:
        theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,) theta_i
        wavelength = 2 * math.pi / theta  # positions per full turn of pair i
        right.semilogy(range(d // 2), wavelength.numpy(), "o-", ms=3, label=f"base {base:g}")
        turns = int((wavelength <= L).sum())
        run.log(kind="clock", base=base, wavelength=wavelength.tolist(), pairs_turning_within=turns, positions=L)
        summary[f"pairs_turning_within_{L}_base{base:g}"] = turns
    right.axhline(L, ls="--", color="gray", label=f"{L} positions")
    right.set(xlabel="pair i", ylabel="wavelength 2 pi / theta_i (positions)", title="one full turn takes")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.artifact("clock_hands.png"), dpi=80)
    return summary


# ------------------------------------------------------------------ (b) scores against distance
def score_figure(path: Path, curves: dict, dist: torch.Tensor, seed: int) -> None:
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 2)
    for (name, c), color in zip(curves.items(), ("k", "C0", "C1", "C2", "C3", "C4"), strict=False):
        label = "no position encoding (baseline)" if name == "nope" else name.replace("base", "base ")
        axes[0].plot(dist, c["self_score"], color=color, label=label)
        axes[1].plot(dist, c["abs_score"], color=color, label=label)
    axes[0].set(xlabel="distance n - m", ylabel="<R(m)q, R(n)q> / |q|^2", title=f"q as its own key, seed {seed}")
    axes[1].set(xlabel="distance n - m", ylabel="mean |<R(m)q, R(n)k>| / sqrt(d)", title="independent q and k")
    for ax in axes:
        ax.set_xscale("symlog", linthresh=1)  # linear up to 1, logarithmic beyond: distance 0 stays on the axis
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def score_vs_distance(run, config: dict, q: torch.Tensor, k: torch.Tensor) -> dict:
    """(b) Self-similarity and |score| curves per base and without rotation, and the shift errors."""
    dtype, d = getattr(torch, config["dtype"]), config["head_dim"]
    dist = distance_grid(config)
    starts = config["start_positions"]
    max_len = max(starts) + config["max_distance"] + 1
    sq = (q * q).sum(-1, keepdim=True)  # (N, 1): |q|^2

    def measure(rope_hi, rope_lo):
        """Self-similarity and |score| curves (from position 0), and the shift errors in dtype and float32."""
        zero = torch.zeros_like(dist)
        self_sim = (pair_scores(rope_hi, q.to(dtype), q.to(dtype), zero, dist).double() / sq).mean(0)  # (D,)
        ref = pair_scores(rope_hi, q.to(dtype), k.to(dtype), zero, dist)
        ref32 = pair_scores(rope_lo, q.float(), k.float(), zero, dist)
        shift_hi = shift_32 = 0.0
        for s in starts[1:]:
            pos = torch.full_like(dist, s)
            shift_hi = max(
                shift_hi, float((pair_scores(rope_hi, q.to(dtype), k.to(dtype), pos, s + dist) - ref).abs().max())
            )
            shift_32 = max(
                shift_32, float((pair_scores(rope_lo, q.float(), k.float(), pos, s + dist) - ref32).abs().max())
            )
        abs_score = (ref.double().abs() / math.sqrt(d)).mean(0)  # (D,)
        return self_sim, abs_score, shift_hi, shift_32

    def at(curve, distance):
        return float(curve[int((dist == distance).nonzero()[0])])

    summary, curves, rows = {}, {}, []
    settings = [("nope", None)] + [(f"base{b:g}", b) for b in config["bases"]]
    for name, base in progress(settings, desc="bases"):
        rope_hi = make_rope(d, max_len, base, dtype) if base else None
        rope_lo = make_rope(d, max_len, base, torch.float32) if base else None
        self_sim, abs_score, shift_hi, shift_32 = measure(rope_hi, rope_lo)
        below = (self_sim < 0.5).nonzero()
        half = int(dist[below[0]]) if len(below) else -1  # first distance where q's copy scores under half
        row = {f"self_score_d{r}_{name}": at(self_sim, r) for r in config["report_distances"]}
        row[f"half_distance_{name}"] = half
        if base is None:
            row = {f"baseline_{key}": v for key, v in row.items()}
        # The shift errors are rounding errors: logged, but left out of the summary the rerun compares.
        run.log(kind="curve", setting=name, base=base, distance=dist.tolist(), self_score=self_sim.tolist(),
                abs_score=abs_score.tolist(), half_distance=half, shift_error=shift_hi, shift_error_float32=shift_32, **row)  # fmt: skip
        summary.update(row)
        curves[name] = {"self_score": self_sim, "abs_score": abs_score}
        rows += [{"setting": name, "base": base or 0.0, "distance": int(dist[j]), "self_score": float(self_sim[j]),
                  "abs_score": float(abs_score[j])} for j in range(len(dist))]  # fmt: skip
    write_csv(run.artifact("scores.csv"), rows)
    score_figure(run.artifact("score_vs_distance.png"), curves, dist, run.seeds[0])
    return summary


# ------------------------------------------------------------------ (c) precision at long positions
def cos_sin_table(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c) The halves-layout (cos, sin), each (len(positions), head_dim), with the ANGLES ``m * theta_i``
    computed in ``dtype`` (positions and frequencies cast to it first); cos and sin are then taken
    and returned in float64, so only the angle rounding differs between dtypes."""
    # BEGIN SOLUTION
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (d/2,) in float64
    angles = (positions.to(dtype)[:, None] * theta.to(dtype)[None, :]).double()  # (P, d/2), rounded in dtype
    table = torch.cat((angles, angles), dim=-1)  # (P, d): halves layout
    return table.cos(), table.sin()
    # END SOLUTION


def precision(run, config: dict, q: torch.Tensor, k: torch.Tensor) -> dict:
    """(c) cos error against the float64 table, and the error of a score at a fixed offset, as m grows."""
    d, base, off = config["head_dim"], config["precision_base"], config["precision_offset"]
    m = torch.arange(0, config["precision_max_position"] + 1, config["precision_step"])  # (P,)
    qn = q / q.norm(dim=-1, keepdim=True)  # unit vectors: a score lies in [-1, 1], so the threshold is absolute
    kn = k / k.norm(dim=-1, keepdim=True)

    def scores(cos_m, sin_m, cos_n, sin_n):  # (N, P): <R(m) q_a, R(m + off) k_a>
        x = qn[None, :, None, :].expand(1, len(qn), len(m), d)
        y = kn[None, :, None, :].expand(1, len(kn), len(m), d)
        return (apply_rotary(x, x, cos_m, sin_m)[0] * apply_rotary(y, y, cos_n, sin_n)[0]).sum(-1)[0]

    try:
        ref_m = cos_sin_table(m, d, base, torch.float64)
    except NotImplementedError as exc:
        run.log(kind="todo", missing="cos_sin_table", why=str(exc))
        return {}
    zero = torch.zeros_like(m)
    ref_score = scores(*cos_sin_table(zero, d, base, torch.float64), *cos_sin_table(zero + off, d, base, torch.float64))
    rows, summary = [], {}
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 2)
    for name in config["precision_dtypes"]:
        dtype = getattr(torch, name)
        cos_m, sin_m = cos_sin_table(m, d, base, dtype)
        cos_n, sin_n = cos_sin_table(m + off, d, base, dtype)
        cos_err = (cos_m - ref_m[0]).abs().max(dim=-1).values  # (P,)
        score_err = (scores(cos_m, sin_m, cos_n, sin_n) - ref_score).abs().max(dim=0).values  # (P,): worst vector
        broken = (score_err > config["precision_threshold"]).nonzero()
        first = int(m[broken[0]]) if len(broken) else -1
        run.log(kind="precision", dtype=name, position=m.tolist(), cos_error=cos_err.tolist(),
                score_error=score_err.tolist(), break_position=first)  # fmt: skip
        rows += [{"dtype": name, "position": int(m[j]), "cos_error": float(cos_err[j]), "score_error": float(score_err[j])}
                 for j in range(len(m))]  # fmt: skip
        if name != "float64":  # float64's own errors are rounding noise: metrics only
            summary |= {f"break_position_{name}": first, f"score_error_max_{name}": float(score_err.max()),
                        f"cos_error_max_{name}": float(cos_err.max())}  # fmt: skip
        axes[0].semilogy(m, cos_err.clamp_min(1e-18), label=name)
        axes[1].semilogy(m, score_err.clamp_min(1e-18), label=f"{name}: breaks at {first}")
    axes[1].axhline(config["precision_threshold"], ls="--", color="gray", label="threshold")
    axes[0].set(xlabel="position m", ylabel="max |cos - cos_float64|", title="the table, angles in each dtype")
    axes[1].set(xlabel="position m", ylabel="max |score(m, m + off) - score(0, off)|", title=f"a score at offset {off}")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.artifact("precision.png"), dpi=80)
    write_csv(run.artifact("precision.csv"), rows)
    return summary


# ------------------------------------------------------------------ (d) layouts
def rotate_interleaved(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """(d) The interleaved layout: rotate each neighbour pair (2i, 2i + 1) of ``x`` (..., T, d) by
    ``positions[t] * theta_i``, in float64 angles; returns the rotated tensor, same shape and dtype."""
    # BEGIN SOLUTION
    d = x.size(-1)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angles = (positions.double()[:, None] * theta).repeat_interleave(
        2, dim=-1
    )  # (T, d): each angle twice, side by side
    x1, x2 = x[..., 0::2], x[..., 1::2]  # the pairs (2i, 2i + 1)
    turned = torch.stack((-x2, x1), dim=-1).flatten(-2)  # (..., T, d): (x1, x2) -> (-x2, x1) per pair
    return x * angles.cos().to(x.dtype) + turned * angles.sin().to(x.dtype)
    # END SOLUTION


def halves_to_interleaved(head_dim: int) -> torch.Tensor:
    """(d) The permutation P (a LongTensor of length d) with ``x_interleaved = x_halves[..., P]``:
    channel 2i of the interleaved layout is channel i of the halves layout, 2i + 1 is i + d/2."""
    # BEGIN SOLUTION
    half = head_dim // 2
    return torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).flatten()
    # END SOLUTION


def layouts(run, config: dict, seed: int) -> dict:
    """(d) Scores of the halves layout with W against the interleaved layout with W's rows permuted, and not."""
    H, d, T, base = config["layout_heads"], config["head_dim"], config["layout_tokens"], config["layout_base"]
    C = H * d
    g = torch.Generator().manual_seed(seed + 50_000)
    x = torch.randn(T, C, generator=g, dtype=torch.float64)  # T token vectors
    w_q, w_k = (torch.randn(C, C, generator=g, dtype=torch.float64) / math.sqrt(C) for _ in range(2))
    pos = torch.arange(T)

    def heads(w):  # (H, T, d): the projection, split per head
        return (x @ w.T).view(T, H, d).transpose(0, 1)

    q, k = heads(w_q), heads(w_k)
    qh, kh = apply_rotary(q[None], k[None], *make_rope(d, T, base, torch.float64)(pos))
    halves = qh[0] @ kh[0].transpose(-2, -1)  # (H, T, T)
    try:
        perm = halves_to_interleaved(d)
        rows_perm = torch.cat([h * d + perm for h in range(H)])  # the rows of W, permuted within each head
        permuted = rotate_interleaved(heads(w_q[rows_perm]), pos, base) @ rotate_interleaved(
            heads(w_k[rows_perm]), pos, base
        ).transpose(-2, -1)
        plain = rotate_interleaved(q, pos, base) @ rotate_interleaved(k, pos, base).transpose(-2, -1)
    except NotImplementedError as exc:
        run.log(kind="todo", missing="rotate_interleaved / halves_to_interleaved", why=str(exc))
        return {}
    scale = float(halves.abs().max())
    rows = []
    for flag, other in ((1, permuted), (0, plain)):
        diff = float((other - halves).abs().max())
        rows.append({"permuted": flag, "max_abs_diff": diff, "rel_diff": diff / scale})
        run.log(kind="layout", permuted=bool(flag), max_abs_diff=diff, rel_diff=diff / scale, max_abs_score=scale)
    write_csv(run.artifact("layouts.csv"), rows)
    return {"layout_diff_unpermuted": rows[1]["max_abs_diff"]}  # the permuted one is rounding noise: metrics only


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("rope-distance-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    d, N = config["head_dim"], config["n_vectors"]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, d, generator=g, dtype=torch.float64)
    k = torch.randn(N, d, generator=g, dtype=torch.float64)
    summary = {}

    t0 = time.perf_counter()
    positions = torch.cat([s + distance_grid(config) for s in config["start_positions"]])
    llama_parity(run, config, q, positions)
    summary["parity_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary |= clock_hands(run, config)  # (a)
    summary |= score_vs_distance(run, config, q, k)  # (b)
    summary["distance_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary |= precision(run, config, q, k)  # (c)
    summary |= layouts(run, config, seed)  # (d)
    summary["precision_layouts_s"] = time.perf_counter() - t0
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
