"""The typed binding between lesson 15's hidden tests and the student's ``dpo.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type, shape and dtype before a test sees it. The
tokenizer, the tiny models and the batches come from the provided ``dpo_kit.py`` (the course's
copy, never the student's), whose ``run_*`` helpers call the student's functions; models get the
grader's weights. The docstrings are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding

MODULE = "dpo"
KIT = "dpo_kit"


def _float(value: object, what: str) -> float:
    assert type(value) is float, f"{what} must be a Python float, got {type(value).__name__}"
    return value


def _state(sd: object, like: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    assert type(sd) is dict, f"{what}: no state_dict"
    for name, want in like.items():
        assert name in sd, f"{what} lacks {name}"
        sd[name] = expect.tensor(sd[name], f"{what}: {name}", shape=want.shape, dtype=want.dtype)
    return sd


class Lesson15(Binding):
    MODULE = MODULE
    threads = 1  # tiny models: one thread is fastest on a busy machine, and runs repeat bit for bit

    def logprobs(self, config: dict | None, state_dict: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        """``sequence_logprobs(tiny_llama(config) with state_dict, ids, attention_mask, completion_mask)`` -> (N,) float32."""
        out = self.call("run_logprobs", (config, state_dict, batch), module=KIT, timeout=60)
        n = batch["input_ids"].shape[0]
        return expect.tensor(out, "sequence_logprobs(...)", shape=(n,), dtype=torch.float32)

    def reward_loss(self, config: dict | None, state_dict: dict[str, torch.Tensor], batch: dict,
                    margin: torch.Tensor | None, center_rewards_coefficient: float | None) -> float:  # fmt: skip
        """``reward_loss(r_chosen, r_rejected, margin, center_rewards_coefficient)`` on a tiny reward model's rewards."""
        out = self.call("run_reward_loss", (config, state_dict, batch, margin, center_rewards_coefficient),
                        module=KIT, timeout=60)  # fmt: skip
        return _float(out, "reward_loss(...)")

    def dpo_loss(self, logps: dict[str, torch.Tensor], beta: float, loss_type: str, label_smoothing: float) -> float:
        """``dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing,
        chosen_lengths, rejected_lengths)`` as a float."""
        out = self.call("run_dpo_loss", (logps, beta, loss_type, label_smoothing), module=KIT, timeout=60)
        return _float(out, "dpo_loss(...)")

    def steps(self, config: dict | None, state_dict: dict[str, torch.Tensor], batches: list[dict], lr: float,
              beta: float, loss_type: str, label_smoothing: float) -> dict:  # fmt: skip
        """``dpo_step`` with ``SGD(policy, lr)`` on each batch -> {"losses", "policy", "ref", "ref_grads"}."""
        out = self.call("run_dpo_step", (config, state_dict, batches, lr, beta, loss_type, label_smoothing),
                        module=KIT, timeout=60)  # fmt: skip
        assert type(out) is dict and set(out) == {"losses", "policy", "ref", "ref_grads"}, (
            "run_dpo_step reply malformed"
        )
        assert type(out["losses"]) is list and len(out["losses"]) == len(batches), (
            "dpo_step must return each step's loss"
        )
        for v in out["losses"]:
            _float(v, "dpo_step's returned loss")
        _state(out["policy"], state_dict, "the policy after dpo_step")
        _state(out["ref"], state_dict, "the reference model after dpo_step")
        assert type(out["ref_grads"]) is list and all(type(n) is str for n in out["ref_grads"]), "ref_grads malformed"
        return out

    def train(self, train: dict | None = None) -> dict:
        """``dpo_kit.run_training(train)``: SFT warm-up, then your ``dpo_step`` with Adam -> {"policy", "ref", "losses"}."""
        out = self.call("run_training", (train,), module=KIT, timeout=180)
        assert type(out) is dict and set(out) == {"policy", "ref", "losses"}, "run_training reply malformed"
        for key in ("policy", "ref"):
            sd = out[key]
            assert type(sd) is dict and sd and all(type(v) is torch.Tensor for v in sd.values()), (
                f"run_training: no {key}"
            )
        assert type(out["losses"]) is list and all(type(v) is float for v in out["losses"]), (
            "dpo_step must return floats"
        )
        return out
