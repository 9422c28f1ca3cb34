"""The typed binding between lesson 03's hidden tests and the student's code.

Hidden tests call these methods and never import student code: each call goes to
the sandboxed worker, and each reply is checked here for type and shape before a
test sees it. The docstrings are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding

MODULE = "attention"


class Lesson03(Binding):
    MODULE = MODULE

    def causal_mask(self, seq_len: int) -> torch.Tensor:
        """``causal_mask(seq_len)``: a bool (seq_len, seq_len) tensor."""
        return self.tensor("causal_mask", (seq_len,), what=f"causal_mask({seq_len})", shape=(seq_len, seq_len))

    def scaled_dot_product_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *, device: str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``scaled_dot_product_attention(q, k, v, mask)`` -> (output, weights), shapes checked."""
        return self._check(self.call("scaled_dot_product_attention", (q, k, v, mask), device=device), q, k, v)

    def timed_attention(
        self, *, seed: int, count: int, shape: tuple[int, ...], dtype: torch.dtype, mask: torch.Tensor | None,
        device: str = "cpu",
    ) -> tuple[list[list[float]], tuple[torch.Tensor, torch.Tensor], float]:
        """``count`` attention calls on q, k, v of ``shape`` drawn in the worker from ``seed``.

        Returns (digests per call, the first call's result, seconds timed in the grader).
        """
        spec = [list(shape), str(dtype).removeprefix("torch.")]
        value, seconds = self.worker.seeded_batch(
            MODULE, "scaled_dot_product_attention", seed=seed, count=count,
            random_args=[spec, spec, spec, None], fixed_args={3: mask}, device=device,
        )  # fmt: skip
        q = torch.empty(shape, dtype=dtype)
        first = self._check(value["first"], q, q, q)
        digests = value["digests"]
        assert all(type(d) is list and len(d) == 2 and all(type(x) is float for x in d) for d in digests), "digests malformed"
        return digests, first, seconds

    def attention_grads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, cotangent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients of sum(output * cotangent) w.r.t. q, k and v, taken through the student's code."""
        return self.grads(  # type: ignore[return-value]
            "scaled_dot_product_attention", (q, k, v, mask), None, wrt=[0, 1, 2], cotangent=cotangent, output=0,
            names=("dq", "dk", "dv"),
        )  # fmt: skip

    @staticmethod
    def _check(out: object, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output, weights = expect.pair(out, "scaled_dot_product_attention")
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        output = expect.tensor(output, "output", shape=(*batch, q.shape[-2], v.shape[-1]), dtype=q.dtype)
        weights = expect.tensor(weights, "weights", shape=(*batch, q.shape[-2], k.shape[-2]), dtype=q.dtype)
        return output, weights
