"""Lesson 06: rotary position embeddings (RoPE).

RoFormer (Su et al., 2021, section 3.2): rotate each pair of query/key channels by an
angle proportional to the token's position, ``m * theta_i`` with
``theta_i = base^(-2i/d)``. A rotation by ``m * theta`` followed by the transpose of
one by ``n * theta`` is a rotation by ``(m - n) * theta``, so the score
``<R(m) q, R(n) k> = <q, R(n - m) k>`` depends on the offset ``n - m`` only.

Convention: "rotate_half", as in GPT-NeoX and transformers' Llama. Channel ``i`` is
paired with channel ``i + d/2`` (first half with second half), and both channels of a
pair share the angle ``m * theta_i``. The original RoFormer / GPT-J code pairs
neighbours ``(2i, 2i + 1)`` instead ("interleaved"); the two differ by a fixed
permutation of the channels, so weights trained with one do not work with the other.

Notation: ``B`` batch, ``H`` heads, ``T`` tokens, ``d`` = ``head_dim`` (even),
``L`` = ``max_seq_len``.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1), where x1 and x2 are the first and second halves of the last axis.

    This is multiplication by i in the complex view of each pair (x1[j], x2[j]): a
    rotation by +90 degrees. Shape (..., d) -> (..., d), d even. Halves, not neighbours:
    ``rotate_half([1, 2, 3, 4]) == [-3, -4, 1, 2]``.
    """
    # BEGIN SOLUTION
    x1, x2 = x.chunk(2, dim=-1)  # (..., d/2) each: first half, second half
    return torch.cat((-x2, x1), dim=-1)  # (..., d)
    # END SOLUTION


class RotaryEmbedding(nn.Module):
    """A cache of cos and sin of the rotary angles for positions 0 .. max_seq_len - 1.

    ``cos_cached[m, c]`` and ``sin_cached[m, c]`` (shape (L, d)) hold cos and sin of
    ``m * theta_(c mod d/2)`` with ``theta_i = base^(-2i/d)``: the angle of channel pair
    ``(i, i + d/2)`` at position ``m``, written twice (once for each channel of the pair).
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0) -> None:
        """Precompute the cache.

        Hints:
            - ``theta_i = base ** (-2i / d)`` for ``i = 0 .. d/2 - 1``: d/2 frequencies,
              from 1 radian per position (i = 0) down to almost ``1 / base``.
            - The angle table is the outer product positions x frequencies, (L, d/2);
              concatenate it with itself to (L, d) (first half, second half).
            - Compute the table in float64 (it is built once) and store it in the default
              dtype (``torch.get_default_dtype()``): float32 rounding of ``m * theta``
              grows with ``m``.
            - Store cos and sin with ``self.register_buffer("cos_cached", ..., persistent=False)``
              (same for ``"sin_cached"``): a buffer moves with ``.to(device)`` and
              ``.double()`` like a parameter, is not trained and, non-persistent, is
              not saved in checkpoints. A plain attribute would stay behind on the CPU.
        """
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (channels are rotated in pairs), got {head_dim}")
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.base = base
        # BEGIN SOLUTION
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (d/2,) theta_i
        t = torch.arange(max_seq_len, dtype=torch.float64)  # (L,) positions
        freqs = torch.outer(t, inv_freq)  # (L, d/2): angle m * theta_i
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, d): channels i and i + d/2 share an angle
        dtype = torch.get_default_dtype()
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)  # (L, d)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)  # (L, d)
        # END SOLUTION

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for the given positions, read from the cache.

        Args:
            positions: integer tensor (T,) or (B, T), any values in [0, max_seq_len): not
                necessarily 0..T-1 (with a KV cache, new tokens start at the cache length)
                and not necessarily sorted.
        Returns:
            cos, sin: (T, d) or (B, T, d), in the dtype and on the device of the cache.
        Raises:
            IndexError (or ValueError) with a clear message for a position < 0 or
            >= max_seq_len. Plain indexing would wrap a negative position around
            silently, and on a GPU an index past the end is an opaque device assert.
        """
        # BEGIN SOLUTION
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.max_seq_len):
            raise IndexError(
                f"positions must lie in [0, {self.max_seq_len}), got min {int(positions.min())}, "
                f"max {int(positions.max())}: build RotaryEmbedding with a larger max_seq_len"
            )
        return self.cos_cached[positions], self.sin_cached[positions]  # (..., T, d) each
        # END SOLUTION


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys: x * cos + rotate_half(x) * sin (RoFormer section 3.4.2, halves layout).

    Shapes:
        q: (B, H, T, d)    k: (B, H_kv, T, d)  (H_kv may differ from H, as in GQA)
        cos, sin: (T, d) or (B, T, d), as returned by ``RotaryEmbedding.forward``.
    Returns:
        (q_rot, k_rot) with the shapes of q and k, in q's dtype.

    Hints: give cos and sin a head axis so they broadcast over H (``unsqueeze(-3)``
    works for both shapes); cast them to ``q.dtype``; rotate q and k the same way.
    Everything is elementwise, so gradients flow to q, k, cos and sin.
    """
    # BEGIN SOLUTION
    cos = cos.unsqueeze(-3).to(q.dtype)  # (1, T, d) or (B, 1, T, d): broadcast over heads
    sin = sin.unsqueeze(-3).to(q.dtype)
    q_rot = q * cos + rotate_half(q) * sin  # (B, H, T, d)
    k_rot = k * cos + rotate_half(k) * sin  # (B, H_kv, T, d)
    return q_rot, k_rot
    # END SOLUTION
