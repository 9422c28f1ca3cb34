"""Lesson 03: scaled dot-product attention and the causal mask.

Attention (Vaswani et al., 2017, eq. 1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

Notation: ``T_q`` queries attend over ``T_k`` keys; ``d`` is the query/key width and
``d_v`` the value width; ``...`` is any number of leading batch/head dimensions.
"""

from __future__ import annotations

import math

import torch


def causal_mask(seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean causal mask of shape (seq_len, seq_len): True where query i may attend to key j.

    Query i sees keys j <= i (itself and the past), never the future, so row i has
    i + 1 True entries and the diagonal is True.

    Hints: build it without a Python loop; ``torch.ones(..., dtype=torch.bool)`` and
    ``torch.tril`` are enough. Return dtype ``torch.bool`` on ``device``.
    """
    # BEGIN SOLUTION
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()  # (T, T)
    # END SOLUTION


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v, with an optional boolean mask.

    Shapes:
        q: (..., T_q, d)    k: (..., T_k, d)    v: (..., T_k, d_v)
        mask: bool, broadcastable to (..., T_q, T_k); True = keep, False = masked out.
    Returns:
        output: (..., T_q, d_v) and weights: (..., T_q, T_k), each row of weights a
        probability distribution over the keys. Same dtype and device as ``q``.

    Numerical hints:
        - Scale the scores by 1 / sqrt(d) with d = q.shape[-1], before the softmax.
        - Softmax over the *keys* axis (the last one).
        - Stable for large logits (|score| around 1e4): subtract the row maximum
          before exponentiating (``torch.softmax`` already does), and fill masked
          scores with ``-inf`` (or the dtype's most negative value), never a finite
          constant like -1e9 added to the score.
        - A fully masked row (a query that may see no key) returns all-zero weights
          and an all-zero output, not NaN.
        - Use batched operations (``@`` / ``torch.matmul`` broadcast over ``...``):
          a Python loop over batch or heads is graded as too slow.
    """
    # BEGIN SOLUTION
    d = q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k); NaN on fully masked rows
    if mask is not None:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # fully masked rows -> 0
    output = weights @ v  # (..., T_q, d_v)
    return output, weights
    # END SOLUTION
