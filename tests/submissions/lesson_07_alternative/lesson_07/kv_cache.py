"""Lesson 07, a correct alternative (must get full marks): a preallocated cache that doubles when full, expand+reshape
instead of repeat_interleave, torch SDPA with an explicit bool mask, and another generate loop.


A decoder generates one token at a time. Without a cache, step t re-runs the model over all t tokens: the keys
and values of the prefix are recomputed at every step. A KV cache keeps them: each step computes K and V of the
new token only, appends them, and attends over the cache. Grouped-query attention (GQA, Ainslie et al., 2023)
shrinks that cache by letting ``n_heads / n_kv_heads`` query heads share one K/V head; MQA (Shazeer, 2019) is
``n_kv_heads = 1``, MHA is ``n_kv_heads = n_heads``.

Names and shapes follow transformers' ``LlamaAttention`` / ``LlamaForCausalLM``, so their weights load by name.
Notation: ``B`` batch, ``T`` new tokens, ``S`` tokens in the cache after the update, ``H`` query heads, ``H_kv``
K/V heads, ``d`` head_dim, ``D`` hidden size, ``V`` vocabulary, ``L`` layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaLikeConfig:
    """A tiny Llama (names as in ``LlamaConfig``); ``head_dim`` defaults to hidden_size // num_attention_heads."""

    vocab_size: int = 64
    hidden_size: int = 32  # D
    intermediate_size: int = 64
    num_hidden_layers: int = 2  # L
    num_attention_heads: int = 4  # H
    num_key_value_heads: int = 2  # H_kv, divides H
    head_dim: int | None = None  # d
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads


# ---------------------------------------------------------------------------- provided: RoPE, norm, MLP
def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, d) for integer ``positions`` (T,), computed in float32 as ``LlamaRotaryEmbedding`` does (provided)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, d)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis (provided)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, T, d) rotated by cos/sin (T, d) (provided)."""
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    """``LlamaRMSNorm`` (provided)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    """``LlamaMLP``: down(silu(gate(x)) * up(x)) (provided)."""

    def __init__(self, config: LlamaLikeConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ---------------------------------------------------------------------------- the KV cache (alternative: preallocated buffers)
class KVCache:
    """Buffers that double when full; keys/values are views of the filled part."""

    def __init__(self) -> None:
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._n: list[int] = []

    @property
    def keys(self) -> list[torch.Tensor]:
        return [b[:, :, :n] for b, n in zip(self._k, self._n, strict=True)]

    @property
    def values(self) -> list[torch.Tensor]:
        return [b[:, :, :n] for b, n in zip(self._v, self._n, strict=True)]

    def update(self, k, v, layer_idx):
        t = k.shape[2]
        if layer_idx == len(self._k):
            cap = max(16, 2 * t)
            self._k.append(k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3]))
            self._v.append(v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3]))
            self._n.append(0)
        n = self._n[layer_idx]
        if n + t > self._k[layer_idx].shape[2]:
            cap = 2 * (n + t)
            for bufs in (self._k, self._v):
                old = bufs[layer_idx]
                new = old.new_empty(old.shape[0], old.shape[1], cap, old.shape[3])
                new[:, :, :n] = old[:, :, :n]
                bufs[layer_idx] = new
        self._k[layer_idx][:, :, n : n + t] = k
        self._v[layer_idx][:, :, n : n + t] = v
        self._n[layer_idx] = n + t
        return self._k[layer_idx][:, :, : n + t], self._v[layer_idx][:, :, : n + t]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._n[layer_idx] if layer_idx < len(self._n) else 0

    def crop(self, n: int) -> None:
        if n > 0:
            raise ValueError("negative only")
        self._n = [max(m + n, 0) for m in self._n]


def kv_cache_bytes(layer_types, num_kv_heads, head_dim, seq_len, batch, dtype):
    per_layer = num_kv_heads * head_dim * seq_len * batch * torch.empty((), dtype=dtype).element_size()
    return layer_types.count("full_attention") * per_layer * 2


class GroupedQueryAttention(nn.Module):
    def __init__(self, config: LlamaLikeConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x, cache=None):
        b, t, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).reshape(b, t, self.n_heads, hd).permute(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, t, self.n_kv, hd).permute(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, t, self.n_kv, hd).permute(0, 2, 1, 3)
        past = 0 if cache is None else cache.get_seq_length(self.layer_idx)
        cos, sin = rope_cos_sin(torch.arange(t, device=x.device) + past, hd, self.config.rope_theta, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        s = k.shape[2]
        g = self.n_heads // self.n_kv
        k = k[:, :, None].expand(b, self.n_kv, g, s, hd).reshape(b, self.n_heads, s, hd)
        v = v[:, :, None].expand(b, self.n_kv, g, s, hd).reshape(b, self.n_heads, s, hd)
        qpos = torch.arange(past, past + t, device=x.device)[:, None]
        kpos = torch.arange(s, device=x.device)[None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=kpos <= qpos)
        return self.o_proj(out.permute(0, 2, 1, 3).reshape(b, t, -1))


# ---------------------------------------------------------------------------- a tiny Llama
class DecoderLayer(nn.Module):
    """``LlamaDecoderLayer``: pre-norm attention and MLP, each with a residual connection (provided)."""

    def __init__(self, config: LlamaLikeConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = GroupedQueryAttention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLlama(nn.Module):
    """``LlamaForCausalLM``'s layout: its state_dict loads here strictly (``tie_word_embeddings=False``)."""

    def __init__(self, config: LlamaLikeConfig) -> None:
        super().__init__()
        self.config = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V); with a cache, idx are the tokens after the cached ones (provided)."""
        x = self.model.embed_tokens(idx)  # (B, T, D)
        for layer in self.model.layers:
            x = layer(x, cache)
        return self.lm_head(self.model.norm(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding: idx (B, T) -> (B, T + max_new_tokens), the prompt followed by the new tokens.

        With ``use_cache``: a fresh ``KVCache``, one forward pass over the prompt (the prefill), then one forward
        pass per new token, on that token only. Without it: the whole sequence at every step. Both must give the
        same tokens (the argmax of the last position's logits; ties go to the lowest index, as ``argmax``).
        """
        cache = KVCache() if use_cache else None
        out = idx
        logits = self(idx, cache)
        for i in range(max_new_tokens):
            nxt = logits[:, -1:].argmax(-1)
            out = torch.cat((out, nxt), 1)
            if i + 1 < max_new_tokens:
                logits = self(nxt, cache) if cache is not None else self(out)
        return out
