"""Student objects driven through handles: build, copy weights in, forward, parameter gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graders.engine import remote
from graders.engine.sandbox import StudentError, Worker, WorkerDied
from tests.conftest import scratch_worker

MODEL = '''
import os
import torch
from dataclasses import dataclass

@dataclass
class Config:
    d: int = 4

class Tiny(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj = torch.nn.Linear(config.d, config.d)
        self.unused = torch.nn.Linear(config.d, 1)

    def forward(self, x):
        return self.proj(x)

    def die(self):
        os._exit(1)
'''


@pytest.fixture
def worker(tmp_path: Path):
    with scratch_worker(tmp_path, {"tiny": MODEL}) as w:
        yield w


def test_build_load_forward_and_grads(worker: Worker):
    config = remote.new(worker, "tiny", "Config", d=3)
    model = remote.new(worker, "tiny", "Tiny", config.ref())
    sd = model.state_dict()
    assert set(sd) == {"proj.weight", "proj.bias", "unused.weight", "unused.bias"}
    ours = torch.nn.Linear(3, 3)
    model.load_state_dict({**sd, "proj.weight": ours.weight.detach(), "proj.bias": ours.bias.detach()})
    x = torch.randn(2, 3)
    torch.testing.assert_close(model.call("forward", x), ours(x).detach())
    grads = model.param_grads("forward", (x,), torch.ones(2, 3))
    torch.testing.assert_close(grads["proj.bias"], torch.full((3,), 2.0))
    assert grads["unused.weight"] is None  # the gradient-flow check a lesson can build on
    with pytest.raises(StudentError, match=r"size mismatch|Missing key"):
        model.load_state_dict({"proj.weight": torch.zeros(5, 5)})


def test_handle_fails_clearly_after_restart(worker: Worker):
    model = remote.new(worker, "tiny", "Tiny", remote.new(worker, "tiny", "Config").ref())
    with pytest.raises(WorkerDied):
        model.call("die")
    with pytest.raises(WorkerDied, match=r"restarted since tiny\.Tiny was built"):
        model.call("forward", torch.zeros(1, 4))
