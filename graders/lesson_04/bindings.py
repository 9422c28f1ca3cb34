"""The typed binding between lesson 04's hidden tests and the student's code.

Hidden tests call these methods and never import student code. Modules are built in
the sandboxed worker (``graders.engine.remote``), weights are copied in by name with
``load_state_dict(strict=True)``, and every reply is checked here for type, shape and
dtype before a test sees it. The docstrings are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "block"


class Lesson04(Binding):
    MODULE = MODULE

    # ------------------------------------------------------------------ functions
    def split_heads(self, x: torch.Tensor, n_head: int) -> torch.Tensor:
        """``split_heads(x, n_head)``: (B, T, C) -> (B, nh, T, hs), same dtype."""
        B, T, C = x.shape
        what = f"split_heads(x of shape {tuple(x.shape)}, n_head={n_head})"
        return self.tensor("split_heads", (x, n_head), what=what, shape=(B, n_head, T, C // n_head), dtype=x.dtype)

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """``merge_heads(y)``: (B, nh, T, hs) -> (B, T, nh * hs), same dtype."""
        B, nh, T, hs = y.shape
        what = f"merge_heads(y of shape {tuple(y.shape)})"
        return self.tensor("merge_heads", (y,), what=what, shape=(B, T, nh * hs), dtype=y.dtype)

    # ------------------------------------------------------------------ modules
    def layer_norm(
        self, state_dict: dict[str, torch.Tensor], *, ndim: int, bias: bool, eps: float, dtype: torch.dtype
    ) -> Remote:
        """``LayerNorm(ndim, bias=bias, eps=eps)`` in ``dtype``, with ``state_dict`` loaded (weight[, bias])."""
        return self.make("LayerNorm", ndim, bias=bias, eps=eps, state_dict=state_dict, dtype=dtype)

    def module(
        self, cls: str, state_dict: dict[str, torch.Tensor], *, n_embd: int, n_head: int, bias: bool,
        dtype: torch.dtype, device: str = "cpu",
    ) -> Remote:
        """``cls(BlockConfig(n_embd, n_head, bias=bias))`` (MultiHeadAttention, MLP or Block) with ``state_dict`` loaded."""
        config = self.new("BlockConfig", n_embd=n_embd, n_head=n_head, bias=bias)
        return self.make(cls, config.ref(), state_dict=state_dict, dtype=dtype, device=device)

    def forward(self, obj: Remote, x: torch.Tensor, *, causal: bool | None = None, device: str = "cpu") -> torch.Tensor:
        """``obj(x)`` (``obj(x, causal=causal)`` when given): an output of x's shape and dtype."""
        kwargs = {} if causal is None else {"causal": causal}
        out = obj.call("forward", x, device=device, **kwargs)
        return expect.tensor(out, f"{obj.what.split('.')[-1]}.forward output", shape=x.shape, dtype=x.dtype)

    def param_grads(
        self, obj: Remote, x: torch.Tensor, cotangent: torch.Tensor, *, causal: bool | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Gradient of sum(obj(x) * cotangent) for every named parameter (None where autograd gave none)."""
        kwargs = {} if causal is None else {"causal": causal}
        grads = obj.param_grads("forward", (x,), cotangent, **kwargs)
        for name, g in grads.items():
            assert type(name) is str and (g is None or type(g) is torch.Tensor), "parameter gradients reply malformed"
        return grads
