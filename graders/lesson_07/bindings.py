"""The typed binding between lesson 07's hidden tests and the student's ``kv_cache.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type, shape and dtype before a test sees it. Student
objects (an attention module, a ``TinyLlama``, a ``KVCache``) live in the worker as ``Remote``
handles; a cache is handed to the student's ``forward`` with ``cache.ref()``. The docstrings are the
contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "kv_cache"
CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "rope_theta", "rms_norm_eps",
)  # fmt: skip


def _int(value: object, what: str) -> int:
    assert type(value) is int, f"{what} must be a Python int, got {type(value).__name__} {expect.shorten(value, 60)}"
    return value


class Lesson07(Binding):
    MODULE = MODULE
    threads = 1  # tiny models: one thread is fastest on a busy machine, and the speed test times one thread

    # ------------------------------------------------------------------ objects
    def config(self, fields: dict) -> Remote:
        """``LlamaLikeConfig(**fields)`` in the worker (names as in ``LlamaConfig``)."""
        assert set(fields) <= set(CONFIG_FIELDS), f"unknown config fields {set(fields) - set(CONFIG_FIELDS)}"
        return self.new("LlamaLikeConfig", **fields)

    def attention(self, fields: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device: str = "cpu") -> Remote:
        """``GroupedQueryAttention(LlamaLikeConfig(**fields), 0)`` under default dtype ``dtype``, weights loaded strictly."""
        return self.make("GroupedQueryAttention", self.config(fields).ref(), 0, dtype=dtype, state_dict=state_dict, device=device)

    def model(self, fields: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device: str = "cpu") -> Remote:
        """``TinyLlama(LlamaLikeConfig(**fields))`` under default dtype ``dtype``, an HF state dict loaded strictly."""
        return self.make("TinyLlama", self.config(fields).ref(), dtype=dtype, state_dict=state_dict, device=device)

    def cache(self) -> Remote:
        """An empty ``KVCache()``."""
        return self.new("KVCache")

    # ------------------------------------------------------------------ calls
    def attend(self, attn: Remote, x: torch.Tensor, cache: Remote | None = None, device: str = "cpu") -> torch.Tensor:
        """``attn(x, cache)`` -> (B, T, D) in x's dtype."""
        out = attn.call("forward", x, cache.ref() if cache is not None else None, device=device)
        return expect.tensor(out, "GroupedQueryAttention output", shape=x.shape, dtype=x.dtype)

    def logits(self, model: Remote, idx: torch.Tensor, cache: Remote | None, vocab: int, dtype: torch.dtype,
               device: str = "cpu") -> torch.Tensor:  # fmt: skip
        """``model(idx, cache)`` -> logits (B, T, V) in ``dtype``."""
        out = model.call("forward", idx, cache.ref() if cache is not None else None, device=device)
        return expect.tensor(out, "TinyLlama logits", shape=(*idx.shape, vocab), dtype=dtype)

    def generate(self, model: Remote, idx: torch.Tensor, max_new_tokens: int, use_cache: bool = True,
                 device: str = "cpu") -> torch.Tensor:  # fmt: skip
        """``model.generate(idx, max_new_tokens, use_cache)`` -> (B, T + max_new_tokens) int64 starting with ``idx``."""
        out = model.call("generate", idx, max_new_tokens, device=device, use_cache=use_cache)
        b, t = idx.shape
        out = expect.tensor(out, f"generate(idx, {max_new_tokens}, use_cache={use_cache})", shape=(b, t + max_new_tokens), dtype=torch.long)
        assert torch.equal(out[:, :t], idx), "generate must return the prompt followed by the new tokens"
        return out

    def cache_tensors(self, cache: Remote) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The cache's ``keys`` and ``values`` lists, one 4-D tensor (B, H_kv, S, d) per layer each."""
        lists = []
        for name in ("keys", "values"):
            got = cache.call("__getattribute__", name)
            assert type(got) is list, f"KVCache.{name} must be a list of tensors, one per layer, got {type(got).__name__}"
            lists.append([expect.tensor(t, f"KVCache.{name}[{i}]") for i, t in enumerate(got)])
            assert all(t.dim() == 4 for t in lists[-1]), f"every KVCache.{name}[i] must be (B, H_kv, S, d)"
        return lists[0], lists[1]

    def seq_length(self, cache: Remote, layer_idx: int = 0) -> int:
        """``cache.get_seq_length(layer_idx)`` -> int."""
        return _int(cache.call("get_seq_length", layer_idx), f"get_seq_length({layer_idx})")

    def crop(self, cache: Remote, n: int) -> None:
        """``cache.crop(n)``."""
        cache.call("crop", n)

    def kv_bytes(self, layer_types: list[str], num_kv_heads: int, head_dim: int, seq_len: int, batch: int,
                 dtype: torch.dtype) -> int:  # fmt: skip
        """``kv_cache_bytes(layer_types, num_kv_heads, head_dim, seq_len, batch, dtype)`` -> int."""
        out = self.call("kv_cache_bytes", (list(layer_types), num_kv_heads, head_dim, seq_len, batch, dtype))
        return _int(out, "kv_cache_bytes(...)")

    # ------------------------------------------------------------------ CUDA memory (the worker's allocator)
    def cuda_memory(self, function: str) -> int:
        """``torch.cuda.<function>()`` in the worker: ``memory_allocated`` or ``max_memory_allocated`` (bytes)."""
        assert function in ("memory_allocated", "max_memory_allocated")
        return _int(self.worker.call("torch.cuda", function), f"torch.cuda.{function}()")

    def cuda_reset_peak(self) -> None:
        self.worker.call("torch.cuda", "reset_peak_memory_stats")

    def grad_enabled(self, enabled: bool) -> None:
        """Autograd on or off in the worker (a forward outside ``no_grad`` keeps its graph alive with the cache)."""
        self.worker.call("torch._C", "_set_grad_enabled", (enabled,))
