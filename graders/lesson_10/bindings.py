"""The typed binding between lesson 10's hidden tests and the student's ``moe.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type, shape and dtype before a test sees it. The
docstrings are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "moe"
CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_local_experts", "num_experts_per_tok")
COUNT_KEYS = ("total", "active", "active_without_input_embedding")


def _routing(out: object, what: str, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (n, k) float32, indices (n, k) int64) from a router's reply."""
    weights, indices = expect.pair(out, what)
    weights = expect.tensor(weights, f"{what}: weights", shape=(n, k), dtype=torch.float32)
    indices = expect.tensor(indices, f"{what}: indices", shape=(n, k), dtype=torch.long)
    return weights, indices


class Lesson10(Binding):
    MODULE = MODULE
    threads = 1  # tiny tensors: one thread is fastest on a busy machine (grader and worker)

    def topk_router(self, logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``topk_softmax_router(logits, top_k)`` -> (weights (N, k) float32, indices (N, k) int64)."""
        out = self.call("topk_softmax_router", (logits, top_k))
        return _routing(out, "topk_softmax_router", logits.shape[0], top_k)

    def block(self, config: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> Remote:
        """``MoEBlock(MoEConfig(**config))`` built under default dtype ``dtype``, ``state_dict`` loaded strictly."""
        assert set(config) <= set(CONFIG_FIELDS), f"unknown config fields {set(config) - set(CONFIG_FIELDS)}"
        cfg = self.new("MoEConfig", **config)
        return self.make("MoEBlock", cfg.ref(), dtype=dtype, state_dict=state_dict)

    def block_forward(self, block: Remote, x: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``block(x)`` -> (output (B, T, H) in x's dtype, router_logits (B*T, E) in x's dtype)."""
        out, logits = expect.pair(block.call("forward", x), "MoEBlock.forward")
        b, t, h = x.shape
        out = expect.tensor(out, "MoEBlock output", shape=(b, t, h), dtype=x.dtype)
        logits = expect.tensor(logits, "MoEBlock router_logits", shape=(b * t, num_experts), dtype=x.dtype)
        return out, logits

    def aux_loss(
        self, gate_logits: list[torch.Tensor], num_experts: int, top_k: int, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``load_balancing_loss(gate_logits, num_experts, top_k, attention_mask)`` -> a 0-dim float tensor."""
        out = self.call("load_balancing_loss", (list(gate_logits), num_experts, top_k, attention_mask))
        loss = expect.tensor(out, "load_balancing_loss(...)", shape=())
        assert loss.dtype in (torch.float32, torch.float64), f"load_balancing_loss returned {loss.dtype}, expected float32"
        return loss.double()

    def capacity_routing(self, logits: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``top1_capacity_routing(logits (B, T, E), capacity)`` -> (dispatch (B, T, E) int64, top_prob (B, T, 1) float32)."""
        dispatch, prob = self.pair("top1_capacity_routing", (logits, capacity))
        dispatch = expect.tensor(dispatch, "dispatch mask", shape=logits.shape, dtype=torch.long)
        prob = expect.tensor(prob, "top_prob", shape=(*logits.shape[:2], 1), dtype=torch.float32)
        return dispatch, prob

    def sigmoid_router(
        self, logits: torch.Tensor, bias: torch.Tensor, top_k: int, n_group: int, topk_group: int, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sigmoid_topk_router(...)`` -> (weights (N, k) float32, indices (N, k) int64)."""
        out = self.call("sigmoid_topk_router", (logits, bias, top_k, n_group, topk_group, scale))
        return _routing(out, "sigmoid_topk_router", logits.shape[0], top_k)

    def counts(self, config: dict) -> dict[str, int]:
        """``param_counts(config)`` -> {"total", "active", "active_without_input_embedding"}, each a Python int."""
        out = self.call("param_counts", (config,))
        assert type(out) is dict, f"param_counts must return a dict, got {type(out).__name__}"
        missing = [key for key in COUNT_KEYS if key not in out]
        assert not missing, f"param_counts' dict lacks {missing}"
        for key in COUNT_KEYS:
            assert type(out[key]) is int, f"param_counts()[{key!r}] must be an int, got {type(out[key]).__name__}"
        return {key: out[key] for key in COUNT_KEYS}
