"""Lesson 07: grouped-query attention, a KV cache, cached incremental decoding, and what the cache costs.

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

import math
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


# ---------------------------------------------------------------------------- the KV cache
class KVCache:
    """Per-layer keys and values: the part of transformers' ``DynamicCache`` (5.x) API that decoding needs.

    ``keys[i]`` and ``values[i]`` hold exactly the cached tokens of layer ``i``: one (B, H_kv, S, d) tensor each,
    rotated (RoPE applied) and *not* repeated to H heads. The graders read these two lists.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H_kv, T, d) to layer ``layer_idx``; return all of that layer's keys and values (B, H_kv, S, d).

        Layers are created in order: the first update of layer i comes after layer i - 1 exists.
        """
        # BEGIN SOLUTION
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=-2)  # (B, H_kv, S, d)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]
        # END SOLUTION

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens held by layer ``layer_idx`` (0 for a layer not created yet)."""
        # BEGIN SOLUTION
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0
        # END SOLUTION

    def crop(self, n: int) -> None:
        """Remove ``-n`` tokens from the end of every layer, as ``DynamicCache.crop`` in transformers 5.x:
        ``crop(-2)`` drops the last two tokens, ``crop(0)`` changes nothing, and a positive ``n`` raises ValueError.
        Speculative decoding rolls back rejected draft tokens this way."""
        # BEGIN SOLUTION
        if n > 0:
            raise ValueError(f"crop({n}): pass a negative number of tokens to remove, as DynamicCache.crop")
        if n == 0:
            return
        self.keys = [k[..., : max(k.shape[-2] + n, 0), :] for k in self.keys]  # every layer loses -n tokens
        self.values = [v[..., : max(v.shape[-2] + n, 0), :] for v in self.values]
        # END SOLUTION


def kv_cache_bytes(layer_types: list[str], num_kv_heads: int, head_dim: int, seq_len: int, batch: int,
                   dtype: torch.dtype) -> int:  # fmt: skip
    """Bytes a KV cache holds: keys *and* values, for every attention layer, K/V head, position and sequence.

    Args:
        layer_types: one entry per layer, as transformers names them (``NemotronHConfig.layers_block_type``):
            only ``"full_attention"`` layers keep a KV cache; ``"linear_attention"`` (Mamba), ``"moe"`` and
            ``"mlp"`` layers keep none. A Llama is ``["full_attention"] * num_hidden_layers``.
        num_kv_heads: H_kv. head_dim: d. seq_len: cached tokens per sequence. batch: sequences.
        dtype: the cache's dtype (``torch.bfloat16`` is 2 bytes, ``dtype.itemsize``).
    Returns:
        An int.
    """
    # BEGIN SOLUTION
    attention_layers = sum(1 for kind in layer_types if kind == "full_attention")
    return 2 * attention_layers * num_kv_heads * head_dim * seq_len * batch * dtype.itemsize
    # END SOLUTION


# ---------------------------------------------------------------------------- grouped-query attention
class GroupedQueryAttention(nn.Module):
    """Causal GQA with RoPE; ``q_proj`` (H*d, D), ``k_proj``/``v_proj`` (H_kv*d, D), ``o_proj`` (D, H*d), no biases."""

    def __init__(self, config: LlamaLikeConfig, layer_idx: int = 0) -> None:
        super().__init__()
        assert config.num_attention_heads % config.num_key_value_heads == 0, "n_kv_heads must divide n_heads"
        self.config, self.layer_idx = config, layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D).

        With a cache holding ``P`` tokens, x holds the ``T`` tokens after them: their RoPE positions are
        ``P .. P + T - 1``, their keys and values are appended to the cache (``cache.update``), and new token i
        attends to every cached token and to new tokens 0..i (a causal mask aligned bottom-right, (T, S)).
        Query head h uses K/V head ``h // (H / H_kv)``. Scores are scaled by ``head_dim ** -0.5``.
        """
        # BEGIN SOLUTION
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d)
        past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        positions = torch.arange(past, past + t, device=x.device)  # (T,)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.config.rope_theta, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, H_kv, S, d)
        rep = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, d): head h uses h // rep
        s = k.shape[-2]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, S)
        allowed = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)  # new token i sees keys <= past + i
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = F.softmax(scores, dim=-1) @ v  # (B, H, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
        # END SOLUTION


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
        # BEGIN SOLUTION
        cache = KVCache() if use_cache else None
        step_input = idx  # the prefill: the whole prompt
        for _ in range(max_new_tokens):
            logits = self(step_input, cache)  # (B, T or 1, V)
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            step_input = nxt if use_cache else idx
        return idx
        # END SOLUTION
