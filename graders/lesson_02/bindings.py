"""The typed binding between lesson 02's hidden tests and the student's code.

Hidden tests call these methods and never import student code: each call goes to the
sandboxed worker, and each reply is checked here for type, shape and dtype before a test
sees it. Modules (``Embeddings``, ``BigramLM``) are built in the worker and driven through
handles (``graders/engine/remote.py``); the grader loads its own weights into them by name.
The docstrings are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "language_model"


def _kwargs(ignore_index: int | None) -> dict:
    """Pass ``ignore_index`` only when a test sets it, so the default is exercised too."""
    return {} if ignore_index is None else {"ignore_index": ignore_index}


class Lesson02(Binding):
    MODULE = MODULE

    # ------------------------------------------------------------------ losses
    def cross_entropy(
        self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None, *, device: str = "cpu"
    ) -> torch.Tensor:
        """``cross_entropy(logits, targets[, ignore_index])``: a 0-dim tensor of the logits' dtype."""
        return self.tensor(
            "cross_entropy", (logits, targets), _kwargs(ignore_index), shape=(), dtype=logits.dtype, device=device
        )

    def cross_entropy_grad(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
        """d cross_entropy / d logits, taken by autograd through the student's code."""
        cot = torch.ones((), dtype=logits.dtype)
        (grad,) = self.grads(
            "cross_entropy", (logits, targets), _kwargs(ignore_index), wrt=[0], cotangent=cot,
            names=("gradient of cross_entropy w.r.t. logits",), dtype=logits.dtype,
        )  # fmt: skip
        return grad

    def perplexity(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
        """``perplexity(logits, targets[, ignore_index])``: a 0-dim tensor of the logits' dtype."""
        return self.tensor("perplexity", (logits, targets), _kwargs(ignore_index), shape=(), dtype=logits.dtype)

    # ------------------------------------------------------------------ modules
    def embeddings(self, vocab_size: int, block_size: int, n_embd: int) -> Remote:
        """``Embeddings(vocab_size, block_size, n_embd)`` built in the worker."""
        return self.new("Embeddings", vocab_size, block_size, n_embd)

    def bigram(self, vocab_size: int) -> Remote:
        """``BigramLM(vocab_size)`` built in the worker."""
        return self.new("BigramLM", vocab_size)

    @staticmethod
    def parameters(model: Remote) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every entry of ``model.state_dict()``."""
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}

    @staticmethod
    def embed(model: Remote, idx: torch.Tensor, n_embd: int) -> torch.Tensor:
        """``Embeddings.forward(idx)``: (B, T) -> float32 (B, T, n_embd)."""
        out = model.call("forward", idx)
        return expect.tensor(out, "Embeddings(idx)", shape=(*idx.shape, n_embd), dtype=torch.float32)

    @staticmethod
    def bigram_forward(
        model: Remote, idx: torch.Tensor, targets: torch.Tensor | None, vocab_size: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``BigramLM.forward(idx, targets)`` -> (logits (B, T, V) float32, loss: 0-dim float32 or None)."""
        out = model.call("forward", idx, targets)
        logits, loss = expect.pair(out, "BigramLM.forward")
        logits = expect.tensor(logits, "logits", shape=(*idx.shape, vocab_size), dtype=torch.float32)
        if targets is None:
            assert loss is None, f"BigramLM.forward(idx) without targets must return loss None, got {type(loss).__name__}"
            return logits, None
        return logits, expect.tensor(loss, "loss", shape=(), dtype=torch.float32)

    @staticmethod
    def param_grads(model: Remote, args: tuple, cotangent: torch.Tensor, output: int | None, shapes: dict) -> dict:
        """Gradients of sum(forward(*args)[output] * cotangent) for every parameter; a missing one is zeros."""
        grads = model.param_grads("forward", args, cotangent, output=output)
        checked = {}
        for name, shape in shapes.items():
            g = grads.get(name)
            checked[name] = torch.zeros(shape) if g is None else expect.tensor(g, f"gradient of {name}", shape=shape)
        return checked

    # ------------------------------------------------------------------ sampling
    def sample(
        self, logits: torch.Tensor, temperature: float, num_samples: int, seed: int, *, device: str = "cpu"
    ) -> torch.Tensor:
        """``sample(logits, temperature, num_samples, seed=seed)``: long (num_samples,) or (B, num_samples)."""
        kwargs = {"temperature": temperature, "num_samples": num_samples, "seed": seed}
        out = self.tensor("sample", (logits,), kwargs, shape=(*logits.shape[:-1], num_samples), dtype=torch.int64, device=device)
        V = logits.shape[-1]
        bad = (out < 0) | (out >= V)
        assert not bad.any(), f"sample returned token ids outside [0, {V}): e.g. {out[bad][:3].tolist()}"
        return out
