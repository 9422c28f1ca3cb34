"""The typed binding between lesson 09's hidden tests and the student's ``training.py``.

Hidden tests call these methods and never import student code. The calls go to the run helpers
of the provided ``tinylm.py`` (graded with the course's copy, never the student's), which build the
tiny model, the sampler and the student's optimizer in the sandboxed worker and call the student's
functions; every reply is checked here for type, shape and dtype before a test sees it.

Resuming in a fresh process: :meth:`Lesson09.resume_in_fresh_worker` starts a second sandboxed
worker with the same settings as the binding's own (same submission folder, modules, provided
files, limits), hands it the checkpoint as plain ``bytes`` and closes it afterwards. Only bytes
cross: the grader never unpickles a student's checkpoint.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding

MODULE = "training"
HARNESS = "tinylm"
LOG_KEYS = ("step", "lr", "loss", "grad_norm")


def _floats(value: object, what: str) -> float:
    """A Python number or a 0-dim float tensor, as a float."""
    if type(value) is torch.Tensor:
        assert value.dim() == 0 and value.is_floating_point(), f"{what} must be a number or a 0-dim float tensor, got shape {tuple(value.shape)}"
        return float(value)
    assert type(value) in (float, int), f"{what} must be a number, got {type(value).__name__} {expect.shorten(value, 80)}"
    return float(value)


class Lesson09(Binding):
    MODULE = MODULE
    threads = 1  # tiny models: one thread is fastest on a busy machine, and a CPU run then repeats bit for bit

    # ------------------------------------------------------------------ AdamW
    def adamw(
        self, params: list[torch.Tensor], *, grads: list[list[torch.Tensor | None]] | None = None,
        groups: list[dict] | None = None, hyper: dict | None = None, loss: str | None = None, steps: int = 0,
        inputs: list[torch.Tensor] | None = None,
    ) -> list[list[torch.Tensor]]:  # fmt: skip
        """The student's ``AdamW`` stepped from ``params`` (``tinylm.run_adamw``): the parameters after every step."""
        out = self.call("run_adamw", (params, grads or []), {"groups": groups, "hyper": hyper, "loss": loss, "steps": steps,
                        "inputs": inputs}, module=HARNESS, timeout=120)  # fmt: skip
        n = steps if loss else len(grads or [])
        assert type(out) is list and len(out) == n, f"expected the parameters after each of {n} steps"
        return [
            [expect.tensor(p, f"parameter {i} after step {s + 1}", shape=q.shape, dtype=q.dtype) for i, (p, q) in
             enumerate(zip(snap, params, strict=True))]
            for s, snap in enumerate(out)
        ]  # fmt: skip

    # ------------------------------------------------------------------ schedule
    def schedule(self, warmup_steps: int, total_steps: int, num_cycles: float) -> list[float]:
        """``cosine_with_warmup(s, warmup_steps, total_steps, num_cycles)`` for s = 0 .. total_steps."""
        out = self.call("run_schedule", (warmup_steps, total_steps, num_cycles), module=HARNESS)
        assert type(out) is list and len(out) == total_steps + 1, "run_schedule reply malformed"
        return [_floats(v, f"cosine_with_warmup({s}, {warmup_steps}, {total_steps}, {num_cycles})") for s, v in enumerate(out)]

    # ------------------------------------------------------------------ clipping
    def clip(self, grads: list[torch.Tensor | None], max_norm: float) -> tuple[float, list[torch.Tensor | None]]:
        """``clip_grad_norm`` on parameters holding ``grads`` -> (the returned norm, the gradients afterwards)."""
        out = self.call("run_clip", (grads, max_norm), module=HARNESS)
        assert type(out) is dict and set(out) == {"norm", "grads"}, "run_clip reply malformed"
        norm = _floats(out["norm"], "clip_grad_norm's return value")
        got = out["grads"]
        assert type(got) is list and len(got) == len(grads), "run_clip reply malformed"
        checked = []
        for i, (g, want) in enumerate(zip(got, grads, strict=True)):
            if want is None:
                assert g is None, f"parameter {i} had no gradient; clip_grad_norm gave it one"
                checked.append(None)
            else:
                checked.append(expect.tensor(g, f"gradient {i} after clipping", shape=want.shape, dtype=want.dtype))
        return norm, checked

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]], model: dict | None = None) -> dict:
        """``evaluate(model, batches)`` on a fresh model in training mode -> {"loss", "ppl", "training_after", "rng_untouched"}."""
        out = self.call("run_evaluate", ([list(b) for b in batches], model), module=HARNESS)
        assert type(out) is dict and set(out) == {"result", "training_after", "rng_untouched"}, "run_evaluate reply malformed"
        loss, ppl = expect.pair(out["result"], "evaluate")
        return {"loss": _floats(loss, "evaluate's mean loss"), "ppl": _floats(ppl, "evaluate's perplexity"),
                "training_after": out["training_after"], "rng_untouched": out["rng_untouched"]}  # fmt: skip

    # ------------------------------------------------------------------ training and resuming
    def train(self, train: dict, model: dict | None = None, run: dict | None = None, *, stop_at: int | None = None,
              optimizer: str = "yours") -> dict:  # fmt: skip
        """``tinylm.run_training``: a run from scratch -> {"state_dict", "logs", "checkpoint" (bytes or None), "step"}."""
        out = self.call("run_training", (train, model, run), {"stop_at": stop_at, "optimizer": optimizer}, module=HARNESS,
                        timeout=120)  # fmt: skip
        return self._run_reply(out, "run_training", checkpoint=stop_at is not None)

    def resume_in_fresh_worker(self, train: dict, checkpoint: bytes, model: dict | None = None, run: dict | None = None) -> dict:
        """``tinylm.run_resume`` in a new sandboxed worker process: load ``checkpoint`` and train to the end."""
        assert type(checkpoint) is bytes
        with self.fresh_worker() as fresh:
            out = fresh.call(HARNESS, "run_resume", (train, checkpoint, model, run), timeout=120)
        return self._run_reply(out, "run_resume", checkpoint=False)

    @staticmethod
    def _run_reply(out: object, what: str, *, checkpoint: bool) -> dict:
        assert type(out) is dict and {"state_dict", "logs", "step"} <= set(out), f"{what} reply malformed"
        sd = out["state_dict"]
        assert type(sd) is dict and sd and all(type(v) is torch.Tensor for v in sd.values()), f"{what}: no state_dict"
        logs = out["logs"]
        assert type(logs) is list and all(type(r) is dict for r in logs), "train must return a list of dicts, one per step"
        for row in logs:
            missing = [k for k in LOG_KEYS if k not in row]
            assert not missing, f"train's log of a step lacks {missing} (each log is {{'step', 'lr', 'loss', 'grad_norm'}})"
        if checkpoint:
            assert type(out.get("checkpoint")) is bytes and out["checkpoint"], "save_checkpoint wrote nothing"
        step = out["step"]
        assert type(step) is int, f"load_checkpoint must return the step as an int, got {type(step).__name__} {expect.shorten(step, 60)}"
        return out
