"""An alternative correct lesson 14 submission (other code for every function; must keep full marks): LoRA, QLoRA, NF4.

LoRA (Hu et al., 2021) freezes a pretrained weight ``W`` (out, in) and learns a low-rank update
``delta W = scaling * B @ A`` with ``A`` (r, in) and ``B`` (out, r), ``r`` much smaller than
``in`` and ``out``. The layer computes ``y = W x + b + scaling * B (A dropout(x))``; with ``B``
initialised to zero the adapted model starts equal to the base model. ``scaling = alpha / r``
(rsLoRA, Kalajdzievski 2023: ``alpha / sqrt(r)``).

QLoRA (Dettmers et al., 2023) stores the frozen ``W`` in 4 bits with the NormalFloat4 (NF4) code:
each block of 64 consecutive weights is divided by its absolute maximum and every value is
replaced by the index of the nearest of 16 code values; two indices share a byte.

Names follow peft (``peft/tuners/lora/layer.py``) so weights copy over: ``base_layer``,
``lora_A`` (a bias-free ``nn.Linear(in, r)``, weight (r, in)), ``lora_B`` (``nn.Linear(r, out)``,
weight (out, r)), ``lora_dropout``, ``scaling``.

Notation: ``N`` tokens (any leading shape), ``in`` / ``out`` the layer's features, ``r`` the rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The 16 NF4 code values, in increasing order (QLoRA, appendix E; bitsandbytes' ``get_4bit_type("nf4")``).
# Index 7 is exactly 0.0: a zero weight stays zero.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


def lora_scaling(r, alpha, use_rslora=False):
    return float(alpha) * (r ** -0.5 if use_rslora else 1.0 / r)


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha, dropout=0.0, use_rslora=False):
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Linear(w.shape[1], r, bias=False, device=w.device, dtype=w.dtype)  # default init: kaiming(a=sqrt 5)
        self.lora_B = nn.Linear(r, w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.lora_B.weight.zero_()
        self.lora_dropout = nn.Dropout(p=dropout)
        self.scaling = lora_scaling(r, alpha, use_rslora)
        self.merged = False

    def delta_weight(self):
        return torch.einsum("or,ri->oi", self.lora_B.weight, self.lora_A.weight) * self.scaling

    def forward(self, x):
        if self.merged:
            return F.linear(x, self.base_layer.weight, self.base_layer.bias)
        h = self.lora_dropout(x) @ self.lora_A.weight.T
        return self.base_layer(x) + self.scaling * (h @ self.lora_B.weight.T)

    def merge(self):
        if not self.merged:
            with torch.no_grad():
                self.base_layer.weight.add_(self.delta_weight())
            self.merged = True
        return self

    def unmerge(self):
        if self.merged:
            with torch.no_grad():
                self.base_layer.weight.sub_(self.delta_weight())
            self.merged = False
        return self


def matches_target(name, target_modules):
    parts = name.split(".")
    return any(parts[-len(t.split(".")):] == t.split(".") for t in target_modules)


def inject_lora(model, target_modules, r, alpha, dropout=0.0, use_rslora=False):
    model.requires_grad_(False)
    found = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and matches_target(n, target_modules)]
    if not found:
        raise ValueError("nothing matched")
    for n, m in found:
        *path, last = n.split(".")
        parent = model
        for p in path:
            parent = getattr(parent, p)
        setattr(parent, last, LoRALinear(m, r, alpha, dropout, use_rslora))
    return [n for n, _ in found]


def count_parameters(model):
    trainable = total = 0
    for _, p in model.named_parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return int(trainable), int(total)


def nf4_quantize(weight, blocksize=64):
    flat = weight.flatten().to(torch.float32)
    n = flat.numel()
    nb = -(-n // blocksize)
    padded = torch.cat([flat, flat.new_zeros(nb * blocksize - n)]).view(nb, blocksize)
    absmax = padded.abs().max(dim=1).values
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    scaled = (padded * inv[:, None]).flatten()[:n].clamp(-1, 1)
    code = torch.tensor(NF4_CODE)
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.bucketize(scaled, mids).to(torch.uint8)  # a value exactly at a midpoint goes to the lower code
    idx = idx.view(-1, 2)
    return (idx[:, 0] * 16 + idx[:, 1]).to(torch.uint8), absmax


def nf4_dequantize(packed, absmax, shape, blocksize=64):
    code = torch.tensor(NF4_CODE, dtype=torch.float32)
    hi = torch.div(packed, 16, rounding_mode="floor").long()
    lo = (packed % 16).long()
    vals = code[torch.stack([hi, lo], -1).flatten()]
    n = vals.numel()
    nb = absmax.numel()
    padded = torch.cat([vals, vals.new_zeros(nb * blocksize - n)]).view(nb, blocksize) * absmax[:, None]
    return padded.flatten()[:n].view(*shape)


class QLoRALinear(nn.Module):
    def __init__(self, base, r, alpha, dropout=0.0, use_rslora=False, blocksize=64):
        super().__init__()
        self.shape = tuple(base.weight.shape)
        self.blocksize = blocksize
        packed, absmax = nf4_quantize(base.weight.detach(), blocksize)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("absmax", absmax)
        if base.bias is not None:
            self.register_buffer("bias", base.bias.detach().clone())
        else:
            self.bias = None
        self.lora = LoRALinear(nn.Linear(self.shape[1], self.shape[0], bias=False), r, alpha, dropout, use_rslora)
        self.lora_A, self.lora_B, self.lora_dropout = self.lora.lora_A, self.lora.lora_B, self.lora.lora_dropout
        del self.lora
        self.scaling = lora_scaling(r, alpha, use_rslora)

    def forward(self, x):
        w = nf4_dequantize(self.weight_packed, self.absmax, self.shape, self.blocksize)
        y = x @ w.T
        if self.bias is not None:
            y = y + self.bias
        return y + self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x)))
