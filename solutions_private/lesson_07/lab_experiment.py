"""Lesson 07 lab: latency and throughput of greedy decoding with and without the KV cache (lessons/lesson_07.md, section 7).

Run it from labs/lesson_07/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run
builds a tiny random Llama (your ``TinyLlama``) and times your ``generate`` on one thread:

- (a) latency vs prompt length, batch 1, with the cache and without it (the baseline re-runs the
  whole prefix at every step): ``latency.csv``, ``latency.png``;
- (b) throughput (new tokens per second over the batch) vs batch size at one prompt length, with
  and without the cache: ``throughput.csv``, ``throughput.png``.

Each point is the median of ``repeats`` timed calls (``time_generate``) after one warm-up call. The
cache's bytes at every point come from your ``kv_cache_bytes``.
"""

from __future__ import annotations

import statistics
import time

import torch

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("07", __file__)
from kv_cache import LlamaLikeConfig, TinyLlama, kv_cache_bytes  # noqa: E402

DEFAULT_CONFIG = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "new_tokens": 8,
    "prompt_lens": [16, 32, 64, 128],  # (a), batch 1
    "batch_sizes": [1, 2, 4, 8],  # (b), at batch_prompt_len
    "batch_prompt_len": 32,
    "repeats": 3,
    "threads": 1,
}


def time_generate(model: TinyLlama, prompt: torch.Tensor, new_tokens: int, use_cache: bool, repeats: int) -> float:
    """The median wall time in seconds of ``repeats`` calls ``model.generate(prompt, new_tokens, use_cache)``,
    after one untimed warm-up call. Use ``time.perf_counter()`` around each call."""
    # BEGIN SOLUTION
    model.generate(prompt, new_tokens, use_cache=use_cache)  # warm-up: first-call costs are not decoding
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(prompt, new_tokens, use_cache=use_cache)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
    # END SOLUTION


def throughput(batch: int, new_tokens: int, seconds: float) -> float:
    """New tokens per second over the whole batch: ``batch`` sequences, ``new_tokens`` each, in ``seconds``."""
    # BEGIN SOLUTION
    return batch * new_tokens / seconds
    # END SOLUTION


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("kv-cache-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    torch.manual_seed(seed)
    cfg = LlamaLikeConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config["num_key_value_heads"],
    )  # fmt: skip
    model = TinyLlama(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    n_new = config["new_tokens"]
    layers = ["full_attention"] * cfg.num_hidden_layers

    def prompt(batch: int, length: int) -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, (batch, length), generator=g)

    def point(batch: int, length: int) -> dict:
        p = prompt(batch, length)
        try:
            cached = time_generate(model, p, n_new, True, config["repeats"])
            plain = time_generate(model, p, n_new, False, config["repeats"])
            cached_tps, plain_tps = throughput(batch, n_new, cached), throughput(batch, n_new, plain)
        except NotImplementedError as exc:
            run.log(kind="todo", why=str(exc))
            raise
        return {
            "prompt_len": length, "batch": batch, "cached_ms": cached * 1e3, "baseline_no_cache_ms": plain * 1e3,
            "speedup": plain / cached, "cached_tokens_per_s": cached_tps, "baseline_tokens_per_s": plain_tps,
            "cache_bytes": kv_cache_bytes(layers, cfg.num_key_value_heads, cfg.head_dim, length + n_new, batch, torch.float32),
        }  # fmt: skip

    try:
        latency_rows = [point(1, n) for n in progress(config["prompt_lens"], desc="prompt lengths")]
        batch_rows = [point(b, config["batch_prompt_len"]) for b in progress(config["batch_sizes"], desc="batch sizes")]
    except NotImplementedError:
        return run
    with torch.no_grad():  # cached and uncached tokens agree: the timings compare the same computation
        p = prompt(2, config["prompt_lens"][0])
        cached, plain = model.generate(p, n_new, use_cache=True), model.generate(p, n_new, use_cache=False)
    write_csv(run.artifact("latency.csv"), latency_rows)
    write_csv(run.artifact("throughput.csv"), batch_rows)

    fig = new_figure(9, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    lens = [r["prompt_len"] for r in latency_rows]
    ax1.plot(lens, [r["cached_ms"] for r in latency_rows], "o-", label="KV cache")
    ax1.plot(lens, [r["baseline_no_cache_ms"] for r in latency_rows], "s--", label="no cache (baseline)")
    ax1.set(xscale="log", yscale="log", xlabel="prompt length", ylabel=f"ms for {n_new} new tokens", title="latency, batch 1")
    ax1.legend()
    ax2.plot(lens, [r["speedup"] for r in latency_rows], "o-", color="C2")
    ax2.set(xscale="log", xlabel="prompt length", ylabel="no-cache time / cached time", title="speed-up of the cache")
    fig.savefig(run.artifact("latency.png"), dpi=80)
    fig2 = new_figure(5, 4)
    ax = fig2.add_subplot(1, 1, 1)
    bs = [r["batch"] for r in batch_rows]
    ax.plot(bs, [r["cached_tokens_per_s"] for r in batch_rows], "o-", label="KV cache")
    ax.plot(bs, [r["baseline_tokens_per_s"] for r in batch_rows], "s--", label="no cache (baseline)")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="new tokens / s",
           title=f"throughput, prompt {config['batch_prompt_len']}")  # fmt: skip
    ax.legend()
    fig2.savefig(run.artifact("throughput.png"), dpi=80)

    last, big = latency_rows[-1], batch_rows[-1]
    summary = {
        "cached_ms": last["cached_ms"], "baseline_no_cache_ms": last["baseline_no_cache_ms"],
        "cached_tokens_per_s": big["cached_tokens_per_s"], "baseline_tokens_per_s": big["baseline_tokens_per_s"],
        "cache_bytes_longest": last["cache_bytes"], "cached_equals_uncached": float(torch.equal(cached, plain)),
        "token_sum": float(cached[:, -n_new:].sum()),  # the greedy tokens of a seeded random model: moves with the seed
    }  # fmt: skip
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
