"""Lesson 06 lab experiment: attention scores against relative distance with RoPE, logged with labkit.

Run it from this folder: ``python lab_experiment.py`` (or from the notebook). Each call
of :func:`main` is one logged run under ``runs/``; change one config value at a time.
The rubric re-executes a run from its config.json, so keep ``main(config)`` the only
entry point and log every number you interpret.

For every base it rotates random vectors with your ``RotaryEmbedding`` and
``apply_rotary`` and measures, against the distance ``n - m`` between query and key:

- the self-similarity ``<R(m) q, R(n) q> / |q|^2`` averaged over random ``q`` (the same
  vector as query and key: where RoFormer's long-term decay shows);
- the mean ``|<R(m) q, R(n) k>| / sqrt(d)`` for independent random ``q`` and ``k``;
- the relative-position property: the largest change of a score when query and key
  move together from position 0 to each start position, in float64 and in float32.

The baseline is no position encoding ("NoPE"): the same measurements on unrotated vectors.
"""

from __future__ import annotations

import math

import torch
from rope import RotaryEmbedding, apply_rotary

from labkit import progress, start_run

DEFAULT_CONFIG = {
    "bases": [100.0, 10000.0, 500000.0],  # the one variable this experiment sweeps
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


def pair_scores(rope: RotaryEmbedding | None, q: torch.Tensor, k: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """<R(m_j) q_a, R(n_j) k_a> for every vector a (N) and position pair j (D): (N, D). rope None: no rotation."""
    N, d = q.shape
    x = q[None, :, None, :].expand(1, N, len(m), d)  # (1, N, D, d): the N vectors act as heads
    y = k[None, :, None, :].expand(1, N, len(n), d)
    if rope is not None:
        x, _ = apply_rotary(x, x, *rope(m))
        y, _ = apply_rotary(y, y, *rope(n))
    return (x * y).sum(-1)[0]  # (N, D)


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("rope-distance-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    dtype = getattr(torch, config["dtype"])
    d, N = config["head_dim"], config["n_vectors"]
    dist = distance_grid(config)
    starts = config["start_positions"]
    max_len = max(starts) + config["max_distance"] + 1
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, d, generator=g, dtype=torch.float64)
    k = torch.randn(N, d, generator=g, dtype=torch.float64)
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
            shift_hi = max(shift_hi, float((pair_scores(rope_hi, q.to(dtype), k.to(dtype), pos, s + dist) - ref).abs().max()))
            shift_32 = max(shift_32, float((pair_scores(rope_lo, q.float(), k.float(), pos, s + dist) - ref32).abs().max()))
        abs_score = (ref.double().abs() / math.sqrt(d)).mean(0)  # (D,)
        return self_sim, abs_score, shift_hi, shift_32

    def at(curve, distance):
        return float(curve[int((dist == distance).nonzero()[0])])

    summary, curves = {}, {"distances": dist}
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
            row = {f"baseline_{k}": v for k, v in row.items()}
        # The shift errors are rounding errors: logged, but left out of the summary the rerun compares,
        # since another CPU may round differently.
        run.log(kind="curve", setting=name, base=base, distance=dist.tolist(), self_score=self_sim.tolist(),
                abs_score=abs_score.tolist(), half_distance=half, shift_error=shift_hi, shift_error_float32=shift_32, **row)
        summary.update(row)
        curves[name] = {"self_score": self_sim, "abs_score": abs_score}
    torch.save(curves, run.artifact("decay_curves.pt"))
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
