"""Provided (given complete, not graded): tiny models to adapt, and small helpers the graders call.

``tiny_model("llama")`` is a Hugging Face ``LlamaForCausalLM`` built from a config (nothing is
downloaded), ``tiny_model("phi3")`` a ``Phi3ForCausalLM``, whose fused ``qkv_proj`` and
``gate_up_proj`` names show why peft matches target names after a dot. Random weights unless you
load some; the graders build the same models on their side and copy their weights into these.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip


def tiny_config(kind: str = "llama", config: dict | None = None):
    """The transformers config of a tiny ``kind`` ("llama" or "phi3") model: ``DEFAULT | config``."""
    from transformers import LlamaConfig, Phi3Config

    classes = {"llama": LlamaConfig, "phi3": Phi3Config}
    if kind not in classes:
        raise ValueError(f"kind must be one of {sorted(classes)}, got {kind!r}")
    cfg = classes[kind](**{**DEFAULT, **(config or {})}, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "eager"
    return cfg


def tiny_model(kind: str = "llama", config: dict | None = None, seed: int | None = None) -> nn.Module:
    """A tiny causal LM from ``tiny_config(kind, config)`` in eval mode. ``seed``: ``torch.manual_seed(seed)``
    right before the weights are made (the same seed gives the same model)."""
    from transformers import LlamaForCausalLM, Phi3ForCausalLM

    cfg = tiny_config(kind, config)
    if seed is not None:
        torch.manual_seed(seed)
    return {"llama": LlamaForCausalLM, "phi3": Phi3ForCausalLM}[kind](cfg).eval()


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``model(input_ids).logits`` (B, T, V), without gradients."""
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def set_training(module: nn.Module, mode: bool) -> None:
    """``module.train(mode)`` (train: dropout active; eval: off), returning nothing."""
    module.train(mode)


def make_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A plain ``nn.Linear`` (in the default dtype) for a LoRA layer to wrap."""
    return nn.Linear(in_features, out_features, bias=bias)


def run_method(module: nn.Module, name: str) -> None:
    """``getattr(module, name)()`` (``merge``, ``unmerge``), whatever it returns discarded."""
    getattr(module, name)()
