"""Lesson 04: multi-head attention and the Pre-LN Transformer block.

The block of GPT-2 (Radford et al., 2019) as nanoGPT writes it: causal multi-head
self-attention (Vaswani et al., 2017, section 3.2.2) and a position-wise MLP, each
behind a LayerNorm (Ba et al., 2016) and inside a residual connection, with the norm
*before* the sublayer (Pre-LN; Xiong et al., 2020):

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Notation (nanoGPT's): B batch, T time (sequence length), C = n_embd channels,
nh = n_head heads of hs = C // nh channels each. Parameter names follow GPT-2, so
weights can be copied in from other implementations (the graders copy them from
``nn.MultiheadAttention`` and ``nn.LayerNorm``; lesson 05 from Hugging Face GPT-2).

The ``__init__`` methods are given: they fix the parameter names and shapes the
graders rely on. You write the ``forward`` methods and the two head helpers. This
file is self-contained: it imports nothing from other lessons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BlockConfig:
    n_embd: int  # C: the width of the residual stream
    n_head: int  # nh: attention heads; each reads and writes hs = n_embd // n_head channels
    dropout: float = 0.0  # the graders use 0.0 (outputs must be deterministic); a regulariser for training
    bias: bool = True  # biases in the Linears and LayerNorms, as in GPT-2; modern models drop them


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, nh, T, hs): give each head its own hs channels, heads before time.

    Head h owns channels h*hs ... (h+1)*hs - 1, so ``out[b, h, t, i] == x[b, t, h*hs + i]``
    with hs = C // n_head. Putting nh before T makes the heads a batch dimension, so
    one batched matmul computes every head at once.

    Hints: ``view`` to (B, T, nh, hs), then swap the nh and T axes. A single
    ``view(B, nh, T, hs)`` has the right shape but the wrong numbers: it cuts each
    sequence's memory (position after position) into nh consecutive blocks, so a
    "head" gets whole positions instead of its channel slice of every position.
    """
    # BEGIN SOLUTION
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
    # END SOLUTION


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hs) -> (B, T, C): the inverse of ``split_heads``, heads side by side again.

    ``merge_heads(split_heads(x, n_head))`` must equal ``x``. After the transpose the
    tensor is not contiguous in memory: ``.contiguous().view(...)`` or ``.reshape(...)``.
    """
    # BEGIN SOLUTION
    B, nh, T, hs = y.shape
    return y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C)
    # END SOLUTION


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with an optional bias (``nn.LayerNorm`` has ``bias=False`` only since torch 2.1)."""

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))  # gamma: starts as the identity scale
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None  # beta
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C): each C-vector to mean 0 and variance 1, then scaled and shifted.

            y = (x - mean) / sqrt(var + eps) * weight + bias

        Numerical hints:
            - mean and var over the last axis only, each vector on its own.
            - var is the *biased* (population) variance: divide by C, not C - 1, as
              ``nn.LayerNorm`` does. ``torch.var`` is unbiased by default.
            - eps goes *inside* the square root (``torch.rsqrt(var + eps)``); it matters
              when var is small, and the graders test vectors with std around 1e-3.
            - Compute var as the mean of (x - mean)**2, not mean(x**2) - mean**2: the
              second cancels catastrophically when |mean| >> std (the graders add
              offsets of 1e3 in float32).
            - ``self.bias`` may be None. Keep the dtype of ``x`` (float64 in, float64 out).
            - Write it yourself; do not call ``F.layer_norm`` or ``nn.LayerNorm``.
        """
        # BEGIN SOLUTION
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        xc = x - mean  # (..., C)
        var = (xc * xc).mean(dim=-1, keepdim=True)  # (..., 1), biased: divides by C
        y = xc * torch.rsqrt(var + self.eps) * self.weight  # (..., C)
        return y + self.bias if self.bias is not None else y
        # END SOLUTION


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention, all heads in one batched computation."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        # q, k and v for all heads in one matmul: output channels [0, C) are q, [C, 2C) k,
        # [2C, 3C) v; the layout of nn.MultiheadAttention's packed in_proj_weight (3C, C).
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # W^O: mixes the heads
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention weights
        self.resid_dropout = nn.Dropout(config.dropout)  # on the output, before the residual add

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """(B, T, C) -> (B, T, C): every position reads from the positions it may see.

        Steps, with the shape after each:
            1. ``self.c_attn(x)`` -> (B, T, 3C); split into q, k, v, each (B, T, C),
               in that order (``.split(C, dim=-1)``);
            2. ``split_heads`` each -> (B, nh, T, hs);
            3. scores q k^T / sqrt(hs) -> (B, nh, T, T); scale by the *head* size hs,
               which is the width of the dot products, not by C;
            4. if ``causal``: query t sees keys <= t only; fill the others with -inf
               (``masked_fill`` returns a new tensor; it does not change its input);
            5. softmax over the keys (last axis), then ``self.attn_dropout``;
            6. weights @ v -> (B, nh, T, hs); ``merge_heads`` -> (B, T, C);
            7. ``self.c_proj``, then ``self.resid_dropout``.

        Hints: no loop over heads or batch; the scaled dot-product core is yours to write
        (as in lesson 03, not imported from it); ``F.scaled_dot_product_attention`` with
        ``is_causal=causal`` is accepted too, but then you cannot look at the weights.
        """
        # BEGIN SOLUTION
        T = x.size(1)  # x: (B, T, C)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=-1)  # 3 x (B, T, C)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # 3 x (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        if causal:
            keep = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T), True = may attend
            att = att.masked_fill(~keep, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))  # (B, nh, T, T), rows sum to 1
        y = merge_heads(att @ v)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)
        # END SOLUTION


class MLP(nn.Module):
    """The position-wise feed-forward network: C -> 4C -> GELU -> C, the same for every position."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)  # expand (4x, as in GPT-2)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # project back
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C): ``dropout(c_proj(gelu(c_fc(x))))``.

        GELU is GPT-2's *tanh approximation*: ``F.gelu(h, approximate="tanh")``. The exact
        GELU (torch's default) differs by up to about 1e-3 and fails the graders.
        """
        # BEGIN SOLUTION
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)
        # END SOLUTION


class Block(nn.Module):
    """One Pre-LN Transformer block: attention, then the MLP, each as a residual update."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = MultiHeadAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), Pre-LN: normalise the input of each sublayer, add its output.

            x = x + attn(ln_1(x), causal)
            x = x + mlp(ln_2(x))

        The residual stream ``x`` itself is never normalised (Post-LN, the 2017
        original, would compute ``ln(x + sublayer(x))`` instead). Pass ``causal`` on.
        """
        # BEGIN SOLUTION
        x = x + self.attn(self.ln_1(x), causal=causal)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x
        # END SOLUTION
