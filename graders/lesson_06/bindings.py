"""The typed binding between lesson 06's hidden tests and the student's code.

Hidden tests call these methods and never import student code: each call goes to
the sandboxed worker, and each reply is checked here for type, shape and dtype
before a test sees it. The docstrings are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "rope"


class Lesson06(Binding):
    MODULE = MODULE

    def rotate_half(self, x: torch.Tensor) -> torch.Tensor:
        """``rotate_half(x)``: same shape and dtype as ``x``."""
        return self.tensor("rotate_half", (x,), what="rotate_half(x)", shape=x.shape, dtype=x.dtype)

    def rotary(self, head_dim: int, max_seq_len: int, base: float, *, device: str = "cpu") -> Remote:
        """``RotaryEmbedding(head_dim, max_seq_len, base)`` built in the worker (moved to ``device``)."""
        return self.new("RotaryEmbedding", head_dim, max_seq_len, base, device=device)

    def cos_sin(
        self, rope: Remote, positions: torch.Tensor, head_dim: int, dtype: torch.dtype | None, *, device: str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rope.forward(positions)`` -> (cos, sin), each of shape (*positions.shape, head_dim)."""
        out = rope.call("forward", positions, device=device)
        cos, sin = expect.pair(out, "RotaryEmbedding.forward(positions)")
        shape = (*positions.shape, head_dim)
        cos = expect.tensor(cos, f"cos for positions of shape {tuple(positions.shape)}", shape=shape, dtype=dtype)
        sin = expect.tensor(sin, f"sin for positions of shape {tuple(positions.shape)}", shape=shape, dtype=dtype)
        return cos, sin

    def call_in_place(self, rope: Remote, method: str) -> None:
        """``rope.<method>()`` in the worker (e.g. ``"double"``), its result kept there.

        ``Remote.call`` would send the returned module back, which is not plain data, so
        the call goes through ``new`` (which keeps what it builds in the worker):
        ``getattr(rope, method)`` first, then ``operator.call`` of that bound method.
        """
        bound = self.new("getattr", rope.ref(), method, module="builtins")
        self.new("call", bound.ref(), module="operator")

    def apply_rotary(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, device: str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``apply_rotary(q, k, cos, sin)`` -> (q_rot, k_rot) with the shapes of q and k, in q's dtype."""
        q_rot, k_rot = self.pair("apply_rotary", (q, k, cos, sin), device=device)
        q_rot = expect.tensor(q_rot, "q_rot", shape=q.shape, dtype=q.dtype)
        k_rot = expect.tensor(k_rot, "k_rot", shape=k.shape, dtype=q.dtype)
        return q_rot, k_rot

    def apply_rotary_grads(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cotangent: torch.Tensor, output: int
    ) -> tuple[torch.Tensor, ...]:
        """Gradients of sum(apply_rotary(q, k, cos, sin)[output] * cotangent) w.r.t. q, k, cos and sin."""
        return self.grads(
            "apply_rotary", (q, k, cos, sin), None, wrt=[0, 1, 2, 3], cotangent=cotangent, output=output,
            names=("dq", "dk", "dcos", "dsin"),
        )  # fmt: skip
