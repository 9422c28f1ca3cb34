"""A correct but slow lesson 03 submission: one (batch, head) pair at a time in Python.

It must keep every correctness point and lose the CPU performance test.
"""

import math

import torch


def causal_mask(seq_len, device=None):
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def _one_head(q, k, v, mask):
    scores = q @ k.T / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return weights @ v, weights


def scaled_dot_product_attention(q, k, v, mask=None):
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    tq, tk = q.shape[-2], k.shape[-2]
    qs = q.expand(*batch, *q.shape[-2:]).reshape(-1, *q.shape[-2:])
    ks = k.expand(*batch, *k.shape[-2:]).reshape(-1, *k.shape[-2:])
    vs = v.expand(*batch, *v.shape[-2:]).reshape(-1, *v.shape[-2:])
    ms = None if mask is None else mask.expand(*batch, tq, tk).reshape(-1, tq, tk)
    outs, weights = [], []
    for i in range(qs.shape[0]):
        o, w = _one_head(qs[i], ks[i], vs[i], None if ms is None else ms[i])
        outs.append(o)
        weights.append(w)
    return torch.stack(outs).reshape(*batch, tq, v.shape[-1]), torch.stack(weights).reshape(*batch, tq, tk)
