"""The worker's protections, probed from inside by a submission that reports what it can reach."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from graders.engine.plaindata import NotPlainData, check_plain
from graders.engine.sandbox import StudentError, Worker, WorkerDied
from tests.conftest import REPO, scratch_worker

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
    # conftest.py is not allow-listed: never copied
    with scratch_worker(tmp_path, {"probe": PROBE}, other={"conftest.py": "raise SystemExit\n"}) as w:
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
    expected = ["_llmg_wire.py", "_llmg_worker.py", "home", "probe.py"] + (["tmp"] if p.launcher == "none" else [])
    assert seen["cwd"] == expected, seen["cwd"]
    if p.network:
        assert seen["network"] is False, "the worker reached a socket on the host's loopback"
    if p.pid_namespace:
        assert len(seen["pids"]) <= 3, f"the worker sees other processes: {seen['pids']}"
    if p.uid is not None:
        assert seen["uid"] == p.uid
    if p.filesystem == "allow-list":
        assert seen["read_reference"] is False, "the worker read the instructor's reference solution"
    if os.geteuid() == 0:  # a root grader builds the full sandbox or refuses (SandboxUnavailable)
        assert p.launcher in ("bwrap", "unshare") and p.weakened is None, p.summary()
        assert p.network and p.per_worker_uid and p.filesystem == "allow-list" and p.cgroup, p.summary()
        assert 60000 <= seen["uid"] < 65534, seen["uid"]


def test_crash_restarts_and_errors_are_reported(worker: Worker):
    assert worker.call("probe", "echo", (3,)) == 3
    with pytest.raises(StudentError, match="ValueError: student bug"):
        worker.call("probe", "boom")
    with pytest.raises(WorkerDied, match=r"exit status 7|exited") as died:
        worker.call("probe", "crash")
    assert died.value.kind == "exited" and worker.deaths == {"exited": 1}
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


def test_fresh_worker_copies_every_setting_and_no_state(tmp_path: Path):
    """A lesson that resumes in a second process gets the first worker's settings, never its state."""
    from dataclasses import fields

    state = {"protections", "starts", "timeouts", "deaths", "broken", "last_start_seconds"}  # protections: what start() built
    declared = {f.name for f in fields(Worker) if not f.name.startswith("_")} - state
    assert declared == set(Worker.SETTINGS), "a new Worker field is neither a setting Worker.fresh copies nor listed as state"
    w = Worker(tmp_path, ("m",), timeout=7.0, memory_bytes=1 << 30, provided={"h": tmp_path / "h.py"}, max_timeouts=1)
    w.starts, w.timeouts, w.broken = 3, 2, "hung"
    f = w.fresh()
    assert f is not w and all(getattr(f, n) == getattr(w, n) for n in Worker.SETTINGS)
    assert (f.starts, f.timeouts, f.broken, f._proc) == (0, 0, None, None)
    f.provided["x"] = tmp_path
    assert "x" not in w.provided, "the fresh worker shares a mutable setting with the first"
