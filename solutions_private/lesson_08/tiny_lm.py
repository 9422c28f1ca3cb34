"""Provided (given complete, not graded): the tiny causal language model lesson 08 decodes from.

A Hugging Face ``LlamaForCausalLM`` built from a config (nothing is downloaded), with random weights
unless you load some. ``model(input_ids).logits`` has shape (B, T, V). The graders build the same
model on their side and copy its weights into this one.
"""

from __future__ import annotations

import torch

DEFAULT = dict(
    vocab_size=370, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
)


def tiny_llama(config: dict | None = None, seed: int | None = None):
    """``LlamaForCausalLM(LlamaConfig(**DEFAULT | config))`` in eval mode, no special token ids.

    ``seed``: when given, ``torch.manual_seed(seed)`` right before the weights are made (then the
    same seed gives the same model). ``bos``/``eos``/``pad`` ids are None so that ``generate``
    never stops or pads on a token: only ``max_new_tokens`` and stop strings end it.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**DEFAULT, **(config or {})}, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "eager"
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()
