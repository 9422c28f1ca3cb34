"""The typed binding between lesson 14's hidden tests and the student's ``lora.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type, shape and dtype before a test sees it. Models,
plain linear layers and the mode switches come from the provided ``tiny_lm.py`` (the course's
copy, never the student's), so a student method that returns ``self`` (``train()``) is never
sent back. The docstrings are the contract.
"""

from __future__ import annotations

import math

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "lora"
PROVIDED = "tiny_lm"


def _count(value: object, what: str) -> int:
    assert type(value) is int, f"{what} must be a Python int, got {type(value).__name__}"
    return value


class Lesson14(Binding):
    MODULE = MODULE
    threads = 1  # tiny tensors and tiny models: one thread is fastest on a busy machine

    # ------------------------------------------------------------------ layers
    def base_linear(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                    state_dict: dict[str, torch.Tensor]) -> Remote:  # fmt: skip
        """``tiny_lm.make_linear(in, out, bias)`` built under ``dtype``, the grader's weights loaded strictly."""
        return self.make(
            "make_linear", in_features, out_features, bias, dtype=dtype, state_dict=state_dict, module=PROVIDED
        )

    def lora_linear(
        self, base: Remote, r: int, alpha: float, *, dropout: float = 0.0, use_rslora: bool = False,
        dtype: torch.dtype = torch.float32, state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Remote:  # fmt: skip
        """``LoRALinear(base, r, alpha, dropout=..., use_rslora=...)`` built under ``dtype``; ``state_dict``
        (keys ``base_layer.weight``, ``base_layer.bias``, ``lora_A.weight``, ``lora_B.weight``) loaded strictly."""
        return self.make("LoRALinear", base.ref(), r, alpha, dtype=dtype, state_dict=state_dict,
                         dropout=dropout, use_rslora=use_rslora)  # fmt: skip

    def qlora_linear(self, base: Remote, r: int, alpha: float, *, use_rslora: bool = False,
                     state_dict: dict[str, torch.Tensor] | None = None) -> Remote:  # fmt: skip
        """``QLoRALinear(base, r, alpha, use_rslora=...)`` (float32, blocksize 64); ``state_dict`` (keys
        ``weight_packed``, ``absmax``, ``bias``, ``lora_A.weight``, ``lora_B.weight``) loaded strictly."""
        return self.make("QLoRALinear", base.ref(), r, alpha, state_dict=state_dict, use_rslora=use_rslora)

    def forward(self, layer: Remote, x: torch.Tensor, out_features: int) -> torch.Tensor:
        """``layer(x)`` -> (..., out) in x's dtype."""
        out = layer.call("forward", x)
        return expect.tensor(out, "forward(x)", shape=(*x.shape[:-1], out_features), dtype=x.dtype)

    def weights(self, obj: Remote) -> dict[str, torch.Tensor]:
        """``obj.state_dict()``: name -> tensor."""
        return obj.state_dict()

    def run_method(self, obj: Remote, method: str) -> None:
        """``obj.method()`` (``merge``, ``unmerge``); whatever it returns is discarded in the worker."""
        assert method in ("merge", "unmerge"), method
        self.call("run_method", (obj.ref(), method), module=PROVIDED)

    def set_training(self, obj: Remote, mode: bool) -> None:
        """``obj.train(mode)`` in the worker."""
        self.call("set_training", (obj.ref(), mode), module=PROVIDED)

    def scaling(self, r: int, alpha: float, use_rslora: bool) -> float:
        """``lora_scaling(r, alpha, use_rslora)`` -> a finite float."""
        value = self.call("lora_scaling", (r, alpha, use_rslora))
        assert type(value) is float and math.isfinite(value), f"lora_scaling must return a finite float, got {value!r}"
        return value

    # ------------------------------------------------------------------ models
    def model(self, kind: str, config: dict, state_dict: dict[str, torch.Tensor]) -> Remote:
        """``tiny_lm.tiny_model(kind, config)`` in the worker with the grader's weights loaded strictly."""
        model = self.new("tiny_model", kind, config, module=PROVIDED)
        model.load_state_dict(state_dict)
        return model

    def inject(
        self, model: Remote, targets: list[str], r: int, alpha: float, dropout: float, use_rslora: bool
    ) -> list[str]:
        """``inject_lora(model, targets, r, alpha, dropout, use_rslora)`` -> the replaced names (a list of str)."""
        names = self.call("inject_lora", (model.ref(), list(targets), r, alpha, dropout, use_rslora))
        assert type(names) in (list, tuple) and all(type(n) is str for n in names), (
            f"inject_lora must return the list of replaced module names, got {type(names).__name__}"
        )
        return list(names)

    def logits(self, model: Remote, input_ids: torch.Tensor, vocab: int) -> torch.Tensor:
        """``tiny_lm.logits(model, input_ids)`` -> (B, T, V) float32."""
        out = self.call("logits", (model.ref(), input_ids), module=PROVIDED)
        return expect.tensor(out, "the model's logits", shape=(*input_ids.shape, vocab), dtype=torch.float32)

    def counts(self, obj: Remote) -> tuple[int, int]:
        """``count_parameters(obj)`` -> (trainable, total), Python ints."""
        trainable, total = expect.pair(self.call("count_parameters", (obj.ref(),)), "count_parameters(model)")
        return _count(trainable, "count_parameters' trainable count"), _count(total, "count_parameters' total count")

    # ------------------------------------------------------------------ NF4
    def nf4_quantize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``nf4_quantize(weight, 64)`` -> (packed (numel/2,) uint8, absmax (ceil(numel/64),) float32)."""
        packed, absmax = self.pair("nf4_quantize", (weight, 64))
        n = weight.numel()
        packed = expect.tensor(packed, "nf4_quantize: packed", shape=(n // 2,), dtype=torch.uint8)
        absmax = expect.tensor(absmax, "nf4_quantize: absmax", shape=(math.ceil(n / 64),), dtype=torch.float32)
        return packed, absmax

    def nf4_dequantize(self, packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``nf4_dequantize(packed, absmax, shape, 64)`` -> float32 of ``shape``."""
        out = self.call("nf4_dequantize", (packed, absmax, list(shape), 64))
        return expect.tensor(out, "nf4_dequantize(...)", shape=tuple(shape), dtype=torch.float32)
