"""The typed binding between lesson 05's hidden tests and the student's ``gpt.py``.

Hidden tests call these methods and never import student code: the student's GPTMini is
built in the sandboxed worker and driven through a handle (``graders/engine/remote.py``);
every reply is checked here for type, shape and dtype before a test sees it. The
docstrings are the contract.
"""

from __future__ import annotations

import math

import torch

from graders.engine import expect, remote
from graders.engine.binding import Binding

MODULE = "gpt"
CONFIG_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")


class Lesson05(Binding):
    MODULE = MODULE
    # Tiny models: one thread is fastest, and two OpenMP threads on a busy 2-core machine can be
    # 10x slower than one (measured: 300 training steps took 150 s instead of 10 s). Grader and worker.
    threads = 1

    def build(
        self, config: dict, state_dict: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32
    ) -> remote.Remote:
        """``GPTMini(GPTConfig(**config))`` in the worker with parameters in ``dtype``; ``state_dict`` loaded strictly.

        The dtype is set by building under ``torch.set_default_dtype`` in the worker (the model's
        own ``__init__`` is the provided one), then put back to float32 (``Binding.make``).
        """
        assert set(config) <= set(CONFIG_FIELDS), f"unknown config fields {set(config) - set(CONFIG_FIELDS)}"
        cfg = self.new("GPTConfig", **config)
        return self.make("GPTMini", cfg.ref(), dtype=dtype, state_dict=state_dict)

    def forward(
        self, model: remote.Remote, idx: torch.Tensor, targets: torch.Tensor | None, *, vocab_size: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``model(idx, targets)`` -> (logits (B, T, V), loss: 0-dim tensor, or None without targets)."""
        out = model.call("forward", idx, targets)
        logits, loss = expect.pair(out, "GPTMini.forward")
        logits = expect.tensor(logits, "logits", shape=(*idx.shape, vocab_size), dtype=dtype)
        if targets is None:
            assert loss is None, f"forward(idx) without targets must return loss None, got {type(loss).__name__}"
            return logits, None
        return logits, expect.tensor(loss, "loss", shape=(), dtype=dtype)

    def param_grads(
        self, model: remote.Remote, idx: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, torch.Tensor | None]:
        """Gradient of the loss of ``model(idx, targets)`` for every named parameter (None if it got none)."""
        grads = model.param_grads("forward", (idx, targets), torch.tensor(1.0, dtype=dtype), output=1)
        for name, g in grads.items():
            if g is not None:
                expect.tensor(g, f"gradient of {name}")
        return grads

    def generate(self, model: remote.Remote, idx: torch.Tensor, max_new_tokens: int, **kwargs: object) -> torch.Tensor:
        """``model.generate(idx, max_new_tokens, **kwargs)`` -> (B, T + max_new_tokens) int64."""
        out = model.call("generate", idx, max_new_tokens, **kwargs)
        return expect.tensor(out, "generate(...)", shape=(idx.shape[0], idx.shape[1] + max_new_tokens), dtype=torch.long)

    def get_batch(self, data: torch.Tensor, block_size: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``get_batch(data, block_size, batch_size)`` -> (x, y), each (batch_size, block_size) int64."""
        x, y = self.pair("get_batch", (data, block_size, batch_size))
        x = expect.tensor(x, "x", shape=(batch_size, block_size), dtype=torch.long)
        y = expect.tensor(y, "y", shape=(batch_size, block_size), dtype=torch.long)
        return x, y

    def train_micro(
        self, model: remote.Remote, data: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int
    ) -> list[float]:
        """``train_micro(model, data, ...)`` in the worker; returns its per-step losses (never trusted as a grade)."""
        kwargs = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
        losses = self.call("train_micro", (model.ref(), data), kwargs, timeout=120)
        assert type(losses) is list and len(losses) == steps, f"train_micro must return a list of {steps} losses"
        assert all(type(v) is float and math.isfinite(v) for v in losses), "train_micro's losses must be finite floats"
        return losses
