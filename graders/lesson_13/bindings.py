"""The typed binding between lesson 13's hidden tests and the student's ``sft.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type, shape and dtype before a test sees it. The
tokenizer and the tiny model are built in the worker by the provided ``sft_kit.py`` (the course's
copy, never the student's), whose ``run_*`` helpers call the student's functions; models get the
grader's weights. The docstrings are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding

MODULE = "sft"
KIT = "sft_kit"
BATCH_KEYS = ("input_ids", "labels", "position_ids", "cu_seq_lens")


def _ints(value: object, what: str) -> list[int]:
    assert type(value) is list, f"{what} must be a list of Python ints, got {type(value).__name__}"
    bad = next((v for v in value if type(v) is not int), None)
    assert bad is None, f"{what} must hold Python ints, found {type(bad).__name__} {expect.shorten(bad, 40)}"
    return value


def _rows(out: object, what: str, keys: tuple[str, ...]) -> list[dict[str, list[int]]]:
    assert type(out) is list, f"{what} must return a list of dicts, got {type(out).__name__}"
    rows = []
    for i, row in enumerate(out):
        assert type(row) is dict, f"{what}[{i}] must be a dict, got {type(row).__name__}"
        assert set(row) == set(keys), f"{what}[{i}] has keys {sorted(row)}, expected {sorted(keys)}"
        rows.append({k: _ints(row[k], f"{what}[{i}][{k!r}]") for k in keys})
    return rows


class Lesson13(Binding):
    MODULE = MODULE
    threads = 1  # a tiny model: one thread is fastest on a busy machine, and runs repeat bit for bit

    def prepare(self, rows: list[dict], max_length: int | None, template: str = "chatml") -> list[dict[str, list[int]]]:
        """``prepare_rows(make_tokenizer(template), rows, max_length)`` -> [{"input_ids", "labels"}] (lists of ints)."""
        out = self.call("run_prepare", (rows, max_length, template), module=KIT, timeout=60)
        return _rows(out, "prepare_rows(...)", ("input_ids", "labels"))

    def pack(self, examples: list[dict[str, list[int]]], seq_length: int) -> list[dict[str, list[int]]]:
        """``pack_bfd(examples, seq_length)`` -> packed rows with the examples' keys and ``seq_lengths``."""
        keys = (*tuple(examples[0]), "seq_lengths")
        return _rows(self.call("pack_bfd", (examples, seq_length), timeout=60), "pack_bfd(...)", keys)

    def collate(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """``collate_packed(rows)`` -> input_ids, labels, position_ids (1, N) int64 and cu_seq_lens (K + 1,) int32."""
        out = self.call("collate_packed", (rows,))
        assert type(out) is dict, f"collate_packed must return a dict, got {type(out).__name__}"
        missing = [k for k in BATCH_KEYS if k not in out]
        assert not missing, f"collate_packed's dict lacks {missing}"
        n = sum(len(r["input_ids"]) for r in rows)
        batch = {
            k: expect.tensor(out[k], f"collate_packed(...)[{k!r}]", shape=(1, n), dtype=torch.long)
            for k in BATCH_KEYS[:3]
        }
        cu = expect.tensor(out["cu_seq_lens"], "collate_packed(...)['cu_seq_lens']", dtype=torch.int32)
        assert cu.dim() == 1, f"cu_seq_lens must be 1-D (K + 1,), got shape {tuple(cu.shape)}"
        batch["cu_seq_lens"] = cu
        return batch

    def loss(self, config: dict | None, state_dict: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> float:
        """``sft_loss(tiny_llama(config) with state_dict, batch)`` as a float."""
        out = self.call("run_loss", (config, state_dict, batch), module=KIT, timeout=60)
        assert type(out) is float, f"run_loss reply malformed: {type(out).__name__}"
        return out

    def steps(self, config: dict | None, state_dict: dict[str, torch.Tensor], batches: list[dict], lr: float) -> dict:
        """``sft_step`` with ``SGD(lr)`` on each batch -> {"losses": [float], "state_dict": the weights after}."""
        out = self.call("run_step", (config, state_dict, batches, lr), module=KIT, timeout=60)
        assert type(out) is dict and set(out) == {"losses", "state_dict"}, "run_step reply malformed"
        losses = out["losses"]
        assert type(losses) is list and len(losses) == len(batches), "sft_step must return the loss of each step"
        for v in losses:
            assert type(v) is float, f"sft_step must return the loss as a Python float, got {type(v).__name__}"
        sd = out["state_dict"]
        for name, want in state_dict.items():
            assert name in sd, f"the model after sft_step lacks {name}"
            sd[name] = expect.tensor(sd[name], f"parameter {name} after sft_step", shape=want.shape, dtype=want.dtype)
        return out

    def train(self, train: dict | None = None) -> dict:
        """``sft_kit.run_training(None, train)``: prepare, pack, collate and ``sft_step`` with AdamW -> {"state_dict", "losses"}."""
        out = self.call("run_training", (None, train), module=KIT, timeout=180)
        assert type(out) is dict and set(out) == {"state_dict", "losses"}, "run_training reply malformed"
        sd = out["state_dict"]
        assert type(sd) is dict and sd and all(type(v) is torch.Tensor for v in sd.values()), (
            "run_training: no state_dict"
        )
        losses = out["losses"]
        assert type(losses) is list and all(type(v) is float for v in losses), "sft_step must return Python floats"
        return out
