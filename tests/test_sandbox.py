"""The worker's protections, probed from inside by a submission that reports what it can reach."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from graders.engine.plaindata import NotPlainData, check_plain
from graders.engine.sandbox import StudentError, Worker, WorkerDied
from tests.conftest import REPO

PROBE = '''
import os, socket

def probe(port, secret_path):
    out = {"uid": os.getuid(), "env": sorted(os.environ), "cwd": sorted(os.listdir("."))}
    try:
        open(secret_path).read()
        out["read_reference"] = True
    except OSError:
        out["read_reference"] = False
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        out["network"] = True
    except OSError:
        out["network"] = False
    out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return out

def crash():
    os._exit(7)

def boom():
    raise ValueError("student bug")

def echo(x):
    return x
'''


@pytest.fixture
def worker(tmp_path: Path):
    lesson = tmp_path / "lesson_99"
    lesson.mkdir()
    (lesson / "probe.py").write_text(PROBE)
    (lesson / "conftest.py").write_text("raise SystemExit\n")  # not allow-listed: never copied
    with Worker(lesson, ("probe",), timeout=20) as w:
        yield w


def test_probe_sees_only_what_the_protections_allow(worker: Worker):
    os.environ["LLMG_TEST_SECRET"] = "instructor-token"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        secret = REPO / "solutions_private" / "lesson_03" / "attention.py"
        seen = worker.call("probe", "probe", (listener.getsockname()[1], str(secret)))
    finally:
        listener.close()
        del os.environ["LLMG_TEST_SECRET"]
    p = worker.protections
    assert "LLMG_TEST_SECRET" not in seen["env"], "the worker inherited the grader's environment"
    assert seen["cwd"] == ["_llmg_worker.py", "home", "probe.py", "tmp", "venv"], seen["cwd"]
    if p.network.startswith("on"):
        assert seen["network"] is False, "the worker reached a socket on the host's loopback"
        assert seen["pids"][0] == 1 and len(seen["pids"]) <= 3, f"the worker sees other processes: {seen['pids']}"
    if p.uid.startswith("on"):
        assert seen["uid"] == 65534
    if p.hidden_tree.startswith("on"):
        assert seen["read_reference"] is False, "the worker read the instructor's reference solution"
    if os.geteuid() == 0:  # on a root grader with unshare, every protection must be on
        assert p.network.startswith("on") and p.uid.startswith("on") and p.hidden_tree.startswith("on"), p.summary()


def test_crash_restarts_and_errors_are_reported(worker: Worker):
    assert worker.call("probe", "echo", (3,)) == 3
    with pytest.raises(StudentError, match="ValueError: student bug"):
        worker.call("probe", "boom")
    with pytest.raises(WorkerDied, match=r"exit status 7|exited"):
        worker.call("probe", "crash")
    assert torch.equal(worker.call("probe", "echo", (torch.arange(4),)), torch.arange(4))
    assert worker.starts == 2


class _Sub(torch.Tensor):
    pass


def _nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [torch.ones(2).as_subclass(_Sub), torch.nn.Parameter(torch.ones(2)), {1: "int key"}, object(), _nested(20)],
    ids=["tensor-subclass", "parameter", "int-key", "object", "too-deep"],
)
def test_plain_data_refuses_lookalikes(value):
    with pytest.raises(NotPlainData):
        check_plain(value)


def test_plain_data_accepts_plain():
    value = {"a": [torch.zeros(2, 3), 1, 2.5, "s", None, True, (b"x",)]}
    assert check_plain(value) is value
