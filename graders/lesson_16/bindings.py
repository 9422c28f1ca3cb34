"""The typed binding between lesson 16's hidden tests and the student's ``grpo.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type before a test sees it. The tiny model and its
log-probabilities are computed in the worker by the provided ``grpo_kit.py`` (the course's copy,
never the student's), whose ``run_*`` helpers call the student's functions. The docstrings are the contract.
"""

from __future__ import annotations

import math

import torch

from graders.engine.binding import Binding

MODULE = "grpo"
KIT = "grpo_kit"


def _floats(value: object, what: str) -> list[float]:
    assert type(value) is list, f"{what} must be a list of floats, got {type(value).__name__}"
    assert all(type(v) is float for v in value), f"{what} must hold Python floats"
    assert all(math.isfinite(v) for v in value), f"{what} holds a nan or an infinity"
    return value


class Lesson16(Binding):
    MODULE = MODULE
    threads = 1  # a tiny model: one thread is fastest on a busy machine, and runs repeat bit for bit

    def advantages(self, rewards: list[float], num_generations: int, scale_rewards: str) -> list[float]:
        """``group_advantages(torch.tensor(rewards), num_generations, scale_rewards)`` -> a list of floats."""
        out = self.call("run_advantages", (rewards, num_generations, scale_rewards), module=KIT, timeout=60)
        out = _floats(out, "group_advantages(...)")
        assert len(out) == len(rewards), f"group_advantages returned {len(out)} values for {len(rewards)} rewards"
        return out

    def loss(self, state_dict: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], args: dict) -> dict:
        """``grpo_loss`` on the model with ``state_dict`` and trl-style ``inputs`` -> {"loss", "grad_norm"} (floats)."""
        out = self.call("run_loss", (None, state_dict, inputs, args), module=KIT, timeout=60)
        assert type(out) is dict and set(out) == {"loss", "grad_norm"}, "run_loss reply malformed"
        _floats([out["loss"], out["grad_norm"]], "grpo_loss and its gradient norm")
        return out

    def train(self, train: dict | None = None) -> dict:
        """``grpo_kit.run_training(train)`` -> {"reward_before", "reward_after", "rewards", "kl"}."""
        out = self.call("run_training", (train,), module=KIT, timeout=180)
        assert type(out) is dict and set(out) == {"reward_before", "reward_after", "rewards", "kl"}, (
            "run_training reply malformed"
        )
        _floats([out["reward_before"], out["reward_after"]], "the mean rewards")
        _floats(out["rewards"], "the rewards of each step")
        return out
