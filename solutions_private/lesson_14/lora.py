"""Lesson 14: LoRA and QLoRA: a low-rank adapter layer, injection by name, parameter counts, NF4.

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

import math

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


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor on ``B @ A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (a Python float)."""
    # BEGIN SOLUTION
    return alpha / math.sqrt(r) if use_rslora else alpha / r
    # END SOLUTION


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (peft's ``lora.Linear``, one adapter).

    Args:
        base: the layer to adapt, kept as ``self.base_layer``; its parameters are frozen here
            (``requires_grad = False``).
        r: the rank (>= 1).
        alpha: ``lora_alpha``; store ``lora_scaling(r, alpha, use_rslora)`` as ``self.scaling``.
        dropout: the probability of ``self.lora_dropout`` (an ``nn.Dropout``, or ``nn.Identity`` for 0),
            applied to the input of the LoRA branch only, never to the base path.
        use_rslora: ``alpha / sqrt(r)`` instead of ``alpha / r``.

    Submodules and parameters (the state_dict keys): ``base_layer.weight`` (out, in),
    ``base_layer.bias`` (out,) if the base has one, ``lora_A.weight`` (r, in), ``lora_B.weight``
    (out, r); ``lora_A`` and ``lora_B`` are bias-free ``nn.Linear`` in the base weight's dtype and
    device. Initialisation as peft: ``lora_A`` Kaiming-uniform (``nn.init.kaiming_uniform_(w,
    a=math.sqrt(5))``, nn.Linear's default), ``lora_B`` zeros, so a new layer computes exactly the base.
    ``self.merged`` is False until ``merge()``.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False) -> None:
        super().__init__()
        # BEGIN SOLUTION
        if r < 1:
            raise ValueError(f"rank r must be >= 1, got {r}")
        self.base_layer = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, alpha
        self.scaling = lora_scaling(r, alpha, use_rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **kw)  # weight (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **kw)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        # END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``: (out, in), the update ``merge`` adds to the base weight."""
        # BEGIN SOLUTION
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)  # (out, in)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out): ``base_layer(x) + scaling * lora_B(lora_A(lora_dropout(x)))``;
        ``base_layer(x)`` alone once merged (the update is in the weight then)."""
        # BEGIN SOLUTION
        out = self.base_layer(x)  # (..., out)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        # END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``delta_weight()`` into ``base_layer.weight`` in place; afterwards ``forward`` is the base
        layer alone (no dropout, one matmul). Merging a merged layer does nothing."""
        # BEGIN SOLUTION
        if self.merged:
            return
        self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True
        # END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``delta_weight()`` from ``base_layer.weight`` again (the inverse of ``merge``, up to
        rounding). Unmerging a layer that is not merged does nothing."""
        # BEGIN SOLUTION
        if not self.merged:
            return
        self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False
        # END SOLUTION


def matches_target(name: str, target_modules: list[str]) -> bool:
    """peft's rule for a list of target names: ``name`` equals a target, or ends with ``"." + target``.

    ``"q_proj"`` matches ``"model.layers.0.self_attn.q_proj"``; ``"up_proj"`` does not match
    ``"model.layers.0.mlp.gate_up_proj"`` (a suffix, but not after a dot); ``"layers.1.mlp.down_proj"``
    matches only layer 1's.
    """
    # BEGIN SOLUTION
    return any(name == t or name.endswith("." + t) for t in target_modules)
    # END SOLUTION


def inject_lora(
    model: nn.Module, target_modules: list[str], r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False
) -> list[str]:
    """Replace, in place, every ``nn.Linear`` of ``model`` whose name matches ``target_modules`` by a
    ``LoRALinear`` wrapping it; freeze every other parameter of the model (peft's ``get_peft_model``
    with ``bias="none"``: only ``lora_A`` and ``lora_B`` stay trainable).

    Args:
        model: any module; names are those of ``model.named_modules()``
            (e.g. ``"model.layers.0.self_attn.q_proj"``).
        target_modules: a list of names, matched with ``matches_target``.
    Returns:
        The names of the replaced modules, in ``named_modules()`` order.
    Raises:
        ValueError if no module matches (as peft does).

    Hints: collect the matching names first, then replace (changing a module while iterating over
    ``named_modules()`` is a bug); ``model.get_submodule(parent)`` and ``setattr(parent, child, new)``.
    """
    # BEGIN SOLUTION
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches_target(n, target_modules)]
    if not names:
        raise ValueError(f"no nn.Linear of the model matches target_modules {target_modules}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout, use_rslora))
    return names
    # END SOLUTION


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as peft's ``get_nb_trainable_parameters``: every parameter
    once (a tied weight counts once), trainable when ``requires_grad``. Python ints."""
    # BEGIN SOLUTION
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
    # END SOLUTION


def nf4_quantize(weight: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 block quantisation, as bitsandbytes' ``quantize_4bit(weight, blocksize=64, quant_type="nf4")``.

    Args:
        weight: any shape with an even number of elements, float32.
        blocksize: elements per block (64 in QLoRA).
    Returns:
        (packed, absmax): packed (numel // 2,) uint8; absmax (ceil(numel / blocksize),) float32.

    Steps: flatten in row-major order; cut into blocks of ``blocksize`` consecutive elements (the last
    block may be shorter); ``absmax`` = the largest ``|w|`` of each block; scale each element by its
    block's absmax (a block of zeros stays zeros: absmax 0, every index 7); the index of the nearest
    code value in ``NF4_CODE`` (0..15); pack two indices per byte, **the first element in the high
    nibble**: ``byte = (idx[2i] << 4) | idx[2i + 1]``.
    """
    # BEGIN SOLUTION
    flat = weight.reshape(-1).float()  # (n,)
    n = flat.numel()
    if n % 2:
        raise ValueError(f"NF4 packs two values per byte: {n} elements is odd")
    blocks = math.ceil(n / blocksize)
    block_of = torch.arange(n) // blocksize  # (n,): each element's block
    absmax = torch.zeros(blocks, dtype=torch.float32).scatter_reduce(0, block_of, flat.abs(), "amax")  # (blocks,)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))[block_of]  # (n,): 1 for an all-zero block
    scaled = flat / scale  # (n,), in [-1, 1]
    code = torch.tensor(NF4_CODE, dtype=torch.float32)
    idx = (scaled[:, None] - code).abs().argmin(dim=1).to(torch.uint8)  # (n,): the nearest code value
    packed = (idx[0::2] << 4) | idx[1::2]  # (n/2,): first element in the high nibble
    return packed, absmax
    # END SOLUTION


def nf4_dequantize(
    packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...], blocksize: int = 64
) -> torch.Tensor:
    """The inverse map of ``nf4_quantize``: ``NF4_CODE[index] * absmax[block]`` -> float32 of ``shape``
    (bitsandbytes' ``dequantize_4bit``). ``packed`` (numel // 2,) uint8, ``absmax`` (blocks,) float32."""
    # BEGIN SOLUTION
    p = packed.reshape(-1).to(torch.int64)
    idx = torch.stack([p >> 4, p & 0xF], dim=1).reshape(-1)  # (n,): high nibble first
    code = torch.tensor(NF4_CODE, dtype=torch.float32)
    n = idx.numel()
    values = code[idx] * absmax.float()[torch.arange(n) // blocksize]  # (n,)
    return values.reshape(shape)
    # END SOLUTION


class QLoRALinear(nn.Module):
    """QLoRA's layer: the base weight stored in NF4 (frozen), a LoRA update in full precision.

    Args:
        base: the ``nn.Linear`` to quantise; its weight is quantised with ``nf4_quantize`` at
            construction and not kept.
        r, alpha, dropout, use_rslora: as ``LoRALinear``.
        blocksize: the NF4 block size.

    Buffers and parameters (the state_dict keys): ``weight_packed`` (out * in // 2,) uint8 and
    ``absmax`` (blocks,) float32 (buffers); ``bias`` (out,), a frozen parameter copied from the
    base, or None; ``lora_A.weight`` (r, in) and ``lora_B.weight`` (out, r), float32, initialised as
    ``LoRALinear``'s; ``scaling``, ``lora_dropout`` as there.
    """

    def __init__(
        self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
        blocksize: int = 64,
    ) -> None:  # fmt: skip
        super().__init__()
        # BEGIN SOLUTION
        self.in_features, self.out_features, self.blocksize = base.in_features, base.out_features, blocksize
        packed, absmax = nf4_quantize(base.weight.detach(), blocksize)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("absmax", absmax)
        bias = base.bias.detach().float().clone() if base.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.scaling = lora_scaling(r, alpha, use_rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, dtype=torch.float32)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32 -> (..., out): ``x @ dequantised_W.T + bias + scaling * lora_B(lora_A(dropout(x)))``,
        the weight dequantised with ``nf4_dequantize`` on every call (it is never stored in float)."""
        # BEGIN SOLUTION
        w = nf4_dequantize(self.weight_packed, self.absmax, (self.out_features, self.in_features), self.blocksize)
        base = F.linear(x, w.to(x.dtype), self.bias)  # (..., out)
        lora = self.lora_B(self.lora_A(self.lora_dropout(x)))  # (..., out)
        return base + lora * self.scaling
        # END SOLUTION
