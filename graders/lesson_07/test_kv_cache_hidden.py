"""Hidden graders for lesson 07. They run in the grader's process; student code only in the worker.

References are transformers' own code, never a copy of the course's reference: ``LlamaAttention``
with ``LlamaRotaryEmbedding`` (parity), ``DynamicCache`` (what a cache holds, cropping),
``LlamaForCausalLM`` and its ``generate`` (cached decoding), ``NemotronHConfig`` (which of Nemotron
3 Nano's layers have a KV cache). Weights are drawn here and copied into the student's modules.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, NemotronHConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

from graders.engine import expect, timing
from graders.lesson_07.bindings import Lesson07

pytestmark = pytest.mark.lesson_07

TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}  # measured: 2e-7 (float32), 2e-16 (float64, sdpa)


def hf_config(hidden: int, heads: int, kv: int, head_dim: int | None = None, *, impl: str = "sdpa", **more) -> LlamaConfig:
    extra = {"head_dim": head_dim} if head_dim is not None else {}
    return LlamaConfig(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, attn_implementation=impl,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra, **more,
    )  # fmt: skip


def fields(cfg: LlamaConfig) -> dict:
    """The student's LlamaLikeConfig fields from an HF LlamaConfig."""
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "rope_theta": 10000.0,
        "rms_norm_eps": cfg.rms_norm_eps,
    }  # fmt: skip


def randomize(module: torch.nn.Module, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Draw every parameter from N(0, scale^2) (norm weights around 1); return a copy of the state dict."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.copy_((1 + 0.1 * noise) if name.endswith("norm.weight") else noise * scale)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def hf_attention(cfg: LlamaConfig, dtype: torch.dtype, seed: int) -> tuple[LlamaAttention, dict]:
    attn = LlamaAttention(cfg, layer_idx=0).to(dtype).eval()
    return attn, randomize(attn, seed, cfg.hidden_size**-0.5)


def hf_attend(attn: LlamaAttention, cfg: LlamaConfig, x: torch.Tensor, start: int = 0, cache=None) -> torch.Tensor:
    """HF attention over x at positions start.., causal (an explicit additive mask on the eager path)."""
    b, t, _ = x.shape
    pos = torch.arange(start, start + t)[None].expand(b, -1)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, pos)
    mask = None
    if cfg._attn_implementation == "eager":
        mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)[None, None].expand(b, 1, t, t)
    with torch.no_grad():
        return attn(x, position_embeddings=(cos, sin), attention_mask=mask, past_key_values=cache)[0]


def hf_model(cfg: LlamaConfig, dtype: torch.dtype, seed: int, scale: float = 0.3) -> tuple[LlamaForCausalLM, dict]:
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    return model, randomize(model, seed, scale)


# ---------------------------------------------------------------------------- parity with LlamaAttention
PARITY = {  # hidden, heads, kv heads, head_dim
    "GQA-8-2": (64, 8, 2, None),
    "MQA-8-1": (64, 8, 1, None),
    "MHA-8-8": (64, 8, 8, None),
    "GQA-head_dim-16": (64, 8, 2, 16),  # q_proj (128, 64): head_dim is not hidden / heads
}


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(PARITY))
def test_parity_matches_llama_attention(lesson07: Lesson07, case: str):
    """Parity: equals LlamaAttention from the same weights (float32 eager and sdpa, float64 sdpa)"""
    hidden, heads, kv, head_dim = PARITY[case]
    for i, (impl, dtype) in enumerate((("eager", torch.float32), ("sdpa", torch.float32), ("sdpa", torch.float64))):
        cfg = hf_config(hidden, heads, kv, head_dim, impl=impl)
        ref, state = hf_attention(cfg, dtype, seed=len(case) + i)
        attn = lesson07.attention(fields(cfg), state, dtype)
        x = torch.randn(2, 11, hidden, generator=torch.Generator().manual_seed(i), dtype=dtype)
        got = lesson07.attend(attn, x)
        expect.close(got, hf_attend(ref, cfg, x), f"attention output ({case}, {impl}, {dtype})", *TOL[dtype])


# ---------------------------------------------------------------------------- the cache
@pytest.mark.points(2)
@pytest.mark.parametrize("case", ["GQA-8-2", "MQA-8-1"])
def test_cache_chunked_prefill_equals_full(lesson07: Lesson07, case: str):
    """Cache: a prefill of 5, then 1, 3 and 1 tokens through the cache equal LlamaAttention on all 10"""
    hidden, heads, kv, head_dim = PARITY[case]
    dtype = torch.float64
    cfg = hf_config(hidden, heads, kv, head_dim)
    ref, state = hf_attention(cfg, dtype, seed=3)
    x = torch.randn(2, 10, hidden, generator=torch.Generator().manual_seed(4), dtype=dtype)
    hf_cache = DynamicCache()
    want = hf_attend(ref, cfg, x, cache=hf_cache)
    attn, cache = lesson07.attention(fields(cfg), state, dtype), lesson07.cache()
    parts, start = [], 0
    for n in (5, 1, 3, 1):
        parts.append(lesson07.attend(attn, x[:, start : start + n], cache))
        start += n
        assert lesson07.seq_length(cache) == start, f"get_seq_length() after {start} tokens: {lesson07.seq_length(cache)}"
    for (a, b), part in zip(((0, 5), (5, 6), (6, 9), (9, 10)), parts, strict=True):
        expect.close(part, want[:, a:b], f"output of tokens {a}..{b - 1} (fed {b - a} at a time after {a} cached)", *TOL[dtype])
    keys, values = lesson07.cache_tensors(cache)
    assert len(keys) == len(values) == 1, f"one attention layer ran: the cache holds {len(keys)} layers"
    expect.close(keys[0], hf_cache.layers[0].keys, "cached keys (rotated, H_kv heads) vs DynamicCache's", *TOL[dtype])
    expect.close(values[0], hf_cache.layers[0].values, "cached values vs DynamicCache's", *TOL[dtype])


MODEL = {"vocab_size": 64, "intermediate_size": 64, "num_hidden_layers": 2}


@pytest.mark.points(3)
def test_cache_cached_logits_equal_uncached(lesson07: Lesson07):
    """Cache: the model's logits with the cache equal its logits without it and LlamaForCausalLM's, at every step"""
    dtype = torch.float64
    cfg = hf_config(32, 4, 2, **MODEL)
    hf, state = hf_model(cfg, dtype, seed=5)
    ids = torch.randint(0, 64, (2, 14), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = hf(ids).logits
    model = lesson07.model(fields(cfg), state, dtype)
    full = lesson07.logits(model, ids, None, 64, dtype)
    expect.close(full, want, "logits without a cache vs LlamaForCausalLM", 1e-10, 1e-10)
    cache = lesson07.cache()
    got = lesson07.logits(model, ids[:, :8], cache, 64, dtype)
    expect.close(got, want[:, :8], "logits of the prefill (8 tokens)", 1e-10, 1e-10)
    for t in range(8, 14):
        step = lesson07.logits(model, ids[:, t : t + 1], cache, 64, dtype)
        expect.close(step, full[:, t : t + 1], f"cached logits of token {t} vs your uncached ones", 1e-10, 1e-10)
        expect.close(step, want[:, t : t + 1], f"cached logits of token {t} vs LlamaForCausalLM", 1e-10, 1e-10)
    assert [lesson07.seq_length(cache, i) for i in (0, 1)] == [14, 14], "every layer holds the 14 tokens"


@pytest.mark.points(3)
def test_cache_crop_then_redecode_equals_fresh(lesson07: Lesson07):
    """Cache: crop(-3), then other tokens, equals a fresh run on the new sequence; the cache equals a cropped DynamicCache"""
    dtype = torch.float64
    cfg = hf_config(32, 4, 2, **MODEL)
    hf, state = hf_model(cfg, dtype, seed=7)
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(0, 64, (2, 10), generator=g)
    new = torch.cat([ids[:, :7], torch.randint(0, 64, (2, 4), generator=g)], dim=1)  # 3 rejected, 4 others
    hf_cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(ids, past_key_values=hf_cache, use_cache=True)
        hf_cache.crop(-3)
        want = hf(new).logits
    model, cache = lesson07.model(fields(cfg), state, dtype), lesson07.cache()
    lesson07.logits(model, ids, cache, 64, dtype)
    lesson07.crop(cache, 0)
    assert lesson07.seq_length(cache) == 10, "crop(0) changes nothing (DynamicCache.crop)"
    lesson07.crop(cache, -3)
    lengths = [lesson07.seq_length(cache, i) for i in (0, 1)]
    assert lengths == [7, 7], f"after crop(-3) of 10 tokens every layer holds 7, got {lengths}"
    keys, values = lesson07.cache_tensors(cache)
    for i in range(2):
        expect.close(keys[i], hf_cache.layers[i].keys, f"layer {i} keys after crop(-3) vs DynamicCache.crop(-3)", 1e-10, 1e-10)
        expect.close(values[i], hf_cache.layers[i].values, f"layer {i} values after crop(-3)", 1e-10, 1e-10)
    got = lesson07.logits(model, new[:, 7:9], cache, 64, dtype)
    expect.close(got, want[:, 7:9], "logits of 2 new tokens after the crop vs a fresh run", 1e-10, 1e-10)
    for t in (9, 10):
        step = lesson07.logits(model, new[:, t : t + 1], cache, 64, dtype)
        expect.close(step, want[:, t : t + 1], f"logits of token {t} after the crop vs a fresh run", 1e-10, 1e-10)


# ---------------------------------------------------------------------------- generate
GENERATE = {  # hidden, heads, kv heads, head_dim, batch
    "B1-GQA": (32, 4, 2, None, 1),
    "B3-MQA-head_dim-16": (32, 4, 1, 16, 3),
}


@pytest.mark.points(3)
@pytest.mark.parametrize("case", list(GENERATE))
def test_generate_equals_hf_generate(lesson07: Lesson07, case: str):
    """Generate: greedy tokens with and without the cache equal LlamaForCausalLM.generate(use_cache=True)"""
    hidden, heads, kv, head_dim, b = GENERATE[case]
    dtype = torch.float64
    cfg = hf_config(hidden, heads, kv, head_dim, **MODEL)
    hf, state = hf_model(cfg, dtype, seed=9 + b)
    prompt = torch.randint(0, 64, (b, 7), generator=torch.Generator().manual_seed(b))
    with torch.no_grad():
        want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                           use_cache=True, pad_token_id=0, eos_token_id=None)  # fmt: skip
    model = lesson07.model(fields(cfg), state, dtype)
    for use_cache in (True, False):
        got = lesson07.generate(model, prompt, 12, use_cache)
        wrong = (got != want).any(dim=0).nonzero()
        assert not len(wrong), (
            f"generate(use_cache={use_cache}) differs from HF generate from position {int(wrong[0])} "
            f"(the prompt has 7 tokens): got {got[:, 7:].tolist()}, expected {want[:, 7:].tolist()}"
        )


# ---------------------------------------------------------------------------- memory
def formula(layers: int, kv: int, head_dim: int, seq: int, batch: int, dtype: torch.dtype) -> int:
    return 2 * layers * kv * head_dim * seq * batch * dtype.itemsize


def held_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_memory_cache_holds_the_formula_bytes(lesson07: Lesson07, dtype: torch.dtype):
    """Memory: after a prefill and 3 steps the cache holds kv_cache_bytes(...) bytes, as DynamicCache does"""
    cfg = hf_config(32, 4, 2, 16, **{**MODEL, "num_hidden_layers": 3})
    hf, state = hf_model(cfg, dtype, seed=11)
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(12))
    hf_cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(ids[:, :9], past_key_values=hf_cache, use_cache=True)
        for t in range(9, 12):
            hf(ids[:, t : t + 1], past_key_values=hf_cache, use_cache=True)
    model, cache = lesson07.model(fields(cfg), state, dtype), lesson07.cache()
    lesson07.logits(model, ids[:, :9], cache, 64, dtype)
    for t in range(9, 12):
        lesson07.logits(model, ids[:, t : t + 1], cache, 64, dtype)
    keys, values = lesson07.cache_tensors(cache)
    assert len(keys) == len(values) == 3, f"3 layers: the cache holds {len(keys)} key and {len(values)} value tensors"
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        for name, t in (("keys", k), ("values", v)):
            assert tuple(t.shape) == (3, 2, 12, 16) and t.dtype == dtype, (
                f"layer {i} {name}: {tuple(t.shape)} {t.dtype}, expected (B, H_kv, S, d) = (3, 2, 12, 16) {dtype}"
            )
    mine = held_bytes(keys + values)
    hf_bytes = held_bytes([t for layer in hf_cache.layers for t in (layer.keys, layer.values)])
    assert mine == hf_bytes == formula(3, 2, 16, 12, 3, dtype), (mine, hf_bytes)
    got = lesson07.kv_bytes(["full_attention"] * 3, 2, 16, 12, 3, dtype)
    assert got == mine, f"kv_cache_bytes(3 layers, 2 KV heads, d 16, 12 tokens, batch 3, {dtype}) = {got}, the cache holds {mine}"


NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"  # Nemotron 3 Nano (Megatron-Bridge), lesson 10


@pytest.mark.points(2)
def test_memory_nemotron_3_nano_and_llama_per_token(lesson07: Lesson07):
    """Memory: Nemotron 3 Nano holds 6144 B per token in bfloat16 (6 attention layers of 52); a Llama-3-8B-like 131072"""
    nano = NemotronHConfig(hybrid_override_pattern=NANO_PATTERN, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                           hidden_size=2688)  # fmt: skip
    types = list(nano.layers_block_type)
    assert types.count("full_attention") == 6 and len(types) == 52
    cases = [
        (types, 2, 128, 1, 1, torch.bfloat16, 6144, "Nemotron 3 Nano, one token"),
        (types, 2, 128, 8192, 4, torch.bfloat16, 6144 * 8192 * 4, "Nemotron 3 Nano, 8192 tokens x 4 sequences"),
        (["full_attention"] * 32, 8, 128, 1, 1, torch.bfloat16, 131072, "Llama-3-8B-like, one token"),
        (["linear_attention", "moe", "full_attention", "moe"], 2, 16, 10, 3, torch.float32, formula(1, 2, 16, 10, 3, torch.float32),
         "a tiny NemotronH layout, float32"),
    ]  # fmt: skip
    for layer_types, kv, d, seq, batch, dtype, want, what in cases:
        got = lesson07.kv_bytes(layer_types, kv, d, seq, batch, dtype)
        assert got == want, f"kv_cache_bytes for {what}: {got:,}, expected {want:,} (only full_attention layers have a KV cache)"


# ---------------------------------------------------------------------------- CPU speed
# CPU time of the student's cached generate (the whole worker) over the grader re-running the whole prefix
# through LlamaForCausalLM at every step (graders/engine/timing.py), prompt 256, 16 new tokens, float32, one
# thread. Medians of 10 gradings each on the 2-core shared machine: the reference solution 0.27-0.33x, a
# cache copied (clone + cat) at every step 0.32-0.37x (O(S) per step, as DynamicCache's own cat: it passes),
# a version without the cache 1.16-1.82x, a cache rebuilt token by token at every step (O(S^2) per step)
# 1.45-1.96x. The limit, 0.6x, is half the reference's speed-up and 2x from either side.
SPEED_CONFIG = {"vocab_size": 256, "intermediate_size": 256, "num_hidden_layers": 2}
CPU_RATIO_LIMIT = 0.6


@pytest.mark.points(3)
def test_cpu_speed_cached_decode_vs_no_cache(lesson07: Lesson07, record_property):
    """CPU speed: cached generate at most 0.6x the time of re-running the prefix at every step"""
    cfg = hf_config(128, 4, 2, **SPEED_CONFIG)
    hf, state = hf_model(cfg, torch.float32, seed=13, scale=0.1)
    model = lesson07.model(fields(cfg), state, torch.float32)
    prompts = [torch.randint(0, 256, (1, 256), generator=torch.Generator().manual_seed(100 + i)) for i in range(12)]

    @torch.no_grad()
    def no_cache(trial: int) -> torch.Tensor:
        ids = prompts[trial]
        for _ in range(16):
            nxt = hf(ids, use_cache=False).logits[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        return ids

    def student(trial: int) -> torch.Tensor:
        return lesson07.generate(model, prompts[trial], 16, True)

    def check(trial: int, got: torch.Tensor, want: torch.Tensor) -> None:
        assert torch.equal(got, want), f"timed generate gave other tokens than LlamaForCausalLM: {got[:, 256:].tolist()} vs {want[:, 256:].tolist()}"

    ratio = timing.ratio(lesson07.worker, student, no_cache, 7, check=check, give_up_above=2 * CPU_RATIO_LIMIT)
    record_property("output", f"{ratio} the time of re-running the prefix (limit {CPU_RATIO_LIMIT:g}x)")
    assert ratio.median <= CPU_RATIO_LIMIT, (
        f"cached generate took {ratio.median:.2f}x the time of decoding without a cache (limit {CPU_RATIO_LIMIT:g}x; {ratio}): "
        "run the prompt once, then one token per step on the cache, and append to the cache without copying it all"
    )


# ---------------------------------------------------------------------------- GPU (provisional, uncalibrated)
# Not calibrated: no GPU was available when these were written. The limits are deliberately loose;
# recalibrate them on the grading GPU (see .team/report_07.md).
GPU_CONFIG = {"vocab_size": 1024, "intermediate_size": 1024, "num_hidden_layers": 4}
GPU_RATIO_LIMIT = 3.0  # student time / HF generate time, same tokens count (wall clock)


@pytest.mark.gpu
@pytest.mark.points(2)
def test_gpu_decode_throughput_vs_hf_generate(lesson07: Lesson07, record_property):
    """GPU: cached decode tokens/s in bfloat16 within a bounded ratio of HF generate(use_cache=True) (provisional)"""
    dtype = torch.bfloat16
    cfg = hf_config(512, 8, 2, **GPU_CONFIG)
    hf, state = hf_model(cfg, dtype, seed=14, scale=0.05)
    hf = hf.cuda()
    model = lesson07.model(fields(cfg), state, dtype, device="cuda")
    prompts = [torch.randint(0, 1024, (4, 512), generator=torch.Generator().manual_seed(200 + i)) for i in range(8)]

    @torch.no_grad()
    def reference(trial: int) -> torch.Tensor:
        p = prompts[trial].cuda()
        return hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=64, do_sample=False, use_cache=True,
                           pad_token_id=0, eos_token_id=None).cpu()  # fmt: skip

    def student(trial: int) -> torch.Tensor:
        return lesson07.generate(model, prompts[trial], 64, True, device="cuda")

    ratio = timing.ratio(lesson07.worker, student, reference, 5, clock="wall")
    tokens_per_s = 4 * 64 / ratio.median  # relative: HF's tokens/s times 1/ratio
    record_property("output", f"{ratio} the time of HF generate (limit {GPU_RATIO_LIMIT:g}x, provisional); "
                              f"your tokens/s = HF's / {ratio.median:.2f} ({tokens_per_s:.0f} per HF-second)")  # fmt: skip
    assert ratio.median <= GPU_RATIO_LIMIT, (
        f"cached decode took {ratio.median:.2f}x the time of HF generate on the GPU (limit {GPU_RATIO_LIMIT:g}x; {ratio})"
    )


@pytest.mark.gpu
@pytest.mark.points(2)
def test_gpu_cache_memory_matches_formula(lesson07: Lesson07, record_property):
    """GPU: the memory the cache takes after a prefill, and the peak while decoding, against kv_cache_bytes (provisional)"""
    dtype = torch.bfloat16
    cfg = hf_config(512, 8, 2, **GPU_CONFIG)
    _, state = hf_model(cfg, dtype, seed=15, scale=0.05)
    b, s, steps = 8, 1024, 8
    model, cache = lesson07.model(fields(cfg), state, dtype, device="cuda"), lesson07.cache()
    ids = torch.randint(0, 1024, (b, s + steps), generator=torch.Generator().manual_seed(16))
    lesson07.grad_enabled(False)  # as in generate: no autograd graph kept alive by the cached tensors
    try:
        before = lesson07.cuda_memory("memory_allocated")
        lesson07.logits(model, ids[:, :s], cache, 1024, dtype, device="cuda")
        held = lesson07.cuda_memory("memory_allocated") - before
        lesson07.cuda_reset_peak()
        for t in range(s, s + steps):
            lesson07.logits(model, ids[:, t : t + 1], cache, 1024, dtype, device="cuda")
        peak = lesson07.cuda_memory("max_memory_allocated") - before
    finally:
        lesson07.grad_enabled(True)
    want = formula(4, 2, cfg.head_dim, s, b, dtype)
    final = formula(4, 2, cfg.head_dim, s + steps, b, dtype)
    record_property("output", f"held after prefill {held / 2**20:.1f} MiB (formula {want / 2**20:.1f}); "
                              f"peak while decoding {peak / 2**20:.1f} MiB (formula at the end {final / 2**20:.1f})")  # fmt: skip
    # A preallocated buffer that doubles when full may hold up to 2x the tokens it has filled: allowed.
    assert 0.95 * want <= held <= 2.5 * want + 4 * 2**20, (
        f"after a prefill of {s} tokens x {b} the cache takes {held / 2**20:.1f} MiB of GPU memory; kv_cache_bytes says "
        f"{want / 2**20:.1f} MiB (limit 2.5x): store the H_kv heads only, in the model's dtype"
    )
    assert peak <= 3 * final + 32 * 2**20, (
        f"decoding peaked at {peak / 2**20:.1f} MiB above the weights for a {final / 2**20:.1f} MiB cache (limit 3x + 32 MiB)"
    )
