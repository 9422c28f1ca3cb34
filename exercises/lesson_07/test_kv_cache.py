"""Visible tests for lesson 07. Run: .venv/bin/pytest exercises/lesson_07 (or make check LESSON=07)

Hand-made cases and self-consistency: GQA's head grouping, attention against a plain causal
reference built from torch's SDPA, the cache's API, chunked and cached decoding against full
passes, the memory formula against the bytes your cache holds, and a lenient speed check. The
hidden graders compare with transformers' LlamaAttention, DynamicCache and generate (see the lesson).
"""

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from exercises.lesson_07.kv_cache import (
    GroupedQueryAttention,
    KVCache,
    LlamaLikeConfig,
    TinyLlama,
    apply_rope,
    kv_cache_bytes,
    rope_cos_sin,
)  # fmt: skip

pytestmark = pytest.mark.lesson_07


def plain_attention(attn: GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    """A causal GQA written with torch's SDPA: the reference for the uncached case."""
    b, t, _ = x.shape
    h, kv, d = attn.n_heads, attn.n_kv, attn.head_dim
    q = attn.q_proj(x).view(b, t, h, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, kv, d).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, kv, d).transpose(1, 2)
    cos, sin = rope_cos_sin(torch.arange(t), d, attn.config.rope_theta, x.dtype)
    q = apply_rope(q, cos, sin)  # (B, H, T, d)
    k = apply_rope(k, cos, sin)  # (B, H_kv, T, d)
    k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, h * d))


def test_gqa_repeats_kv_heads_in_groups():
    """4 query heads, 2 KV heads: heads 0, 1 use KV head 0 and heads 2, 3 use KV head 1 (repeat_interleave)."""
    torch.manual_seed(0)
    cfg = LlamaLikeConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2)  # head_dim 4, H*d = D
    attn = GroupedQueryAttention(cfg).double()
    with torch.no_grad():
        attn.o_proj.weight.copy_(torch.eye(16))  # the output is the heads side by side
        attn.v_proj.weight[4:] = 0.0  # KV head 1 has zero values
    out = attn(torch.randn(2, 5, 16, dtype=torch.float64))
    assert out.shape == (2, 5, 16)
    assert out[..., 8:].abs().max() == 0, "query heads 2 and 3 must use KV head 1 (zero values): use repeat_interleave"
    assert out[..., :8].abs().min() > 0, "query heads 0 and 1 use KV head 0"


@pytest.mark.parametrize(("heads", "kv", "head_dim"), [(8, 2, None), (8, 1, None), (8, 8, None), (4, 2, 16)])
def test_attention_equals_a_plain_causal_reference(heads: int, kv: int, head_dim):
    torch.manual_seed(1)
    cfg = LlamaLikeConfig(hidden_size=32, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim)
    attn = GroupedQueryAttention(cfg).double()
    assert attn.k_proj.weight.shape == (kv * cfg.head_dim, 32) and attn.q_proj.weight.shape == (heads * cfg.head_dim, 32)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), plain_attention(attn, x), atol=1e-12, rtol=1e-12)


def test_cache_update_length_and_crop():
    cache = KVCache()
    assert cache.get_seq_length() == 0
    k1, v1 = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    keys, values = cache.update(k1, v1, 0)
    assert torch.equal(keys, k1) and torch.equal(values, v1)
    k2, v2 = torch.randn(2, 3, 2, 8), torch.randn(2, 3, 2, 8)
    keys, values = cache.update(k2, v2, 0)
    assert keys.shape == (2, 3, 6, 8), f"append on the sequence axis (-2): got {tuple(keys.shape)}"
    assert torch.equal(keys, torch.cat([k1, k2], -2)) and torch.equal(values, torch.cat([v1, v2], -2))
    cache.update(k1, v1, 1)
    assert cache.get_seq_length(0) == 6 and cache.get_seq_length(1) == 4 and cache.get_seq_length(2) == 0
    assert len(cache.keys) == len(cache.values) == 2
    cache.crop(0)
    assert cache.get_seq_length(0) == 6, "crop(0) changes nothing"
    cache.crop(-2)
    assert cache.get_seq_length(0) == 4, "crop(-2) removes the last two tokens of every layer"
    assert torch.equal(cache.keys[0], k1) and torch.equal(cache.values[0], v1)
    assert cache.get_seq_length(1) == 2 and torch.equal(cache.keys[1], k1[..., :2, :])
    with pytest.raises(ValueError):
        cache.crop(3)  # DynamicCache (transformers 5.x) refuses a positive argument


def test_chunked_attention_with_cache_equals_full():
    torch.manual_seed(2)
    attn = GroupedQueryAttention(LlamaLikeConfig(hidden_size=32, num_attention_heads=8, num_key_value_heads=2)).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    with torch.no_grad():
        full = attn(x)
        cache, parts, start = KVCache(), [], 0
        for n in (4, 1, 3, 2):
            parts.append(attn(x[:, start : start + n], cache))
            start += n
    assert cache.get_seq_length() == 10 and cache.keys[0].shape == (2, 2, 10, 4), "the cache holds H_kv heads, not H"
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-12, rtol=1e-12,
                               msg="chunks after cached tokens: RoPE positions start at the cache length, mask bottom-right")  # fmt: skip


def small_model(**kw) -> TinyLlama:
    torch.manual_seed(3)
    model = TinyLlama(LlamaLikeConfig(**kw)).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model


def test_cached_logits_equal_uncached():
    model = small_model()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache()
        steps = [model(ids[:, :7], cache)] + [model(ids[:, t : t + 1], cache) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-10)
    assert [cache.get_seq_length(i) for i in range(2)] == [12, 12]


def test_generate_with_and_without_cache_agree():
    model = small_model(num_key_value_heads=1)
    prompt = torch.randint(0, 64, (3, 5))
    with torch.no_grad():
        want = prompt
        for _ in range(8):  # the plain argmax loop, no cache
            want = torch.cat([want, model(want)[:, -1].argmax(-1, keepdim=True)], 1)
    for use_cache in (True, False):
        got = model.generate(prompt, 8, use_cache=use_cache)
        assert got.shape == (3, 13) and torch.equal(got, want), f"use_cache={use_cache}: {got[:, 5:].tolist()} vs {want[:, 5:].tolist()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_equal_the_formula(dtype: torch.dtype):
    model = small_model(num_hidden_layers=3, head_dim=16).to(dtype)
    cache = KVCache()
    with torch.no_grad():
        model(torch.randint(0, 64, (2, 9)), cache)
        model(torch.randint(0, 64, (2, 1)), cache)
    held = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert held == kv_cache_bytes(["full_attention"] * 3, 2, 16, 10, 2, dtype), held


def test_nemotron_3_nano_bytes_per_token():
    pattern = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"  # M Mamba-2, E MoE, * attention
    types = [{"M": "linear_attention", "E": "moe", "*": "full_attention"}[c] for c in pattern]
    assert kv_cache_bytes(types, 2, 128, 1, 1, torch.bfloat16) == 6144, "only the 6 attention layers have a KV cache"
    assert kv_cache_bytes(["full_attention"] * 32, 8, 128, 1, 1, torch.bfloat16) == 131072
    assert kv_cache_bytes(["full_attention"] * 2, 2, 8, 12, 1, torch.float32) == 3072


def test_cached_decoding_is_faster():
    """Lenient: on one thread, cached generate at least 1.5x faster than without the cache (the reference ~3-4x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(4)
        model = TinyLlama(LlamaLikeConfig(vocab_size=256, hidden_size=128, intermediate_size=256)).eval()
        prompt = torch.randint(0, 256, (1, 192))
        times = {True: [], False: []}
        for _ in range(3):
            for use_cache in (True, False):
                t0 = time.thread_time()
                model.generate(prompt, 12, use_cache=use_cache)
                times[use_cache].append(time.thread_time() - t0)
    finally:
        torch.set_num_threads(threads)
    speedup = statistics.median(times[False]) / statistics.median(times[True])
    assert speedup >= 1.5, f"cached generate only {speedup:.2f}x faster than without the cache (lenient bar 1.5x)"


@pytest.mark.gpu
def test_cuda_bfloat16_cached_decode():
    torch.manual_seed(5)
    model = TinyLlama(LlamaLikeConfig(vocab_size=128, hidden_size=64, intermediate_size=128)).cuda().bfloat16().eval()
    ids = torch.randint(0, 128, (2, 20), device="cuda")
    cache = KVCache()
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :12], cache)] + [model(ids[:, t : t + 1], cache) for t in range(12, 20)]
    assert cache.keys[0].is_cuda and cache.keys[0].dtype == torch.bfloat16, "the cache lives on the model's device, in its dtype"
    torch.testing.assert_close(torch.cat(steps, 1).float(), full.float(), atol=5e-2, rtol=5e-2)
    held = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert held == kv_cache_bytes(["full_attention"] * 2, 2, 16, 20, 2, torch.bfloat16)
    out = model.generate(ids[:, :8], 6)
    assert out.shape == (2, 14) and out.is_cuda
