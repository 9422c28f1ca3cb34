"""The grading server: the same results as one subprocess per grading, and one bad run costs only its own grade."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from graders.engine import lessons
from graders.engine.run import grade
from graders.engine.server import GradingServer, grade_many
from tests.conftest import REPO, SUBMISSIONS

pytestmark = pytest.mark.slow
LESSON = lessons.load("03")


def _comparable(value: object, key: str = "") -> object:
    """Results without what differs between any two runs: times, the leased worker uid, measured speed ratios."""
    if isinstance(value, dict):
        return {k: _comparable(v, k) for k, v in value.items() if not any(w in k for w in ("time", "seconds"))}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, str) and key == "output":
        return re.sub(r"\d+(\.\d+)?", "#", value)
    return value


def _stub_verdicts(res: dict) -> None:
    counted = [t for t in res["tests"] if t["max_score"] > 0]
    assert res["score"] == 0 and len(counted) >= 20 and "grading problem" not in res["output"], res["output"]
    assert all("NotImplementedError" in t["output"] for t in counted), [t["output"] for t in counted]


def test_results_are_those_of_the_subprocess_path(tmp_path: Path):
    """The reference (its speed test deselected: -k goes through too; a ratio is masked anyway) and the stub."""
    cases = [(REPO / "solutions_private", {"keyword": "not speed"}), (REPO / "exercises", {})]
    plain = [grade(LESSON, sub, tmp_path / f"plain-{i}", **kw) for i, (sub, kw) in enumerate(cases)]
    with GradingServer() as server:
        served = [grade_many(LESSON, [(s, tmp_path / f"served-{i}")], server=server, **kw)[0] for i, (s, kw) in enumerate(cases)]
        assert (server.starts, server.forks) == (1, 2), "one zygote, one fork per submission"
        assert server.zygote_threads == 1, "the zygote ran a thread when it forked (a torch op at import?)"
    assert [_comparable(r) for r in served] == [_comparable(r) for r in plain]
    for i, res in enumerate(served):
        assert json.loads((tmp_path / f"served-{i}" / "results.json").read_text()) == res
    assert served[0]["score"] == served[0]["max_score"] > 0, "the reference lost points"
    assert not any("speed" in t["name"].lower() for t in served[0]["tests"]), "-k did not deselect"
    _stub_verdicts(served[1])


def test_a_hung_or_killed_run_costs_only_its_own_grade(tmp_path: Path):
    """A run past its limit, a grading process killed mid-run, a dead zygote: the next grading is unharmed."""
    with GradingServer() as server:
        hung = grade(LESSON, SUBMISSIONS / "lesson_03_loop", tmp_path / "hung", run_timeout=6, server=server)
        assert "passed its 6 s limit" in hung["output"]
        assert any(t["output"].startswith("no verdict") for t in hung["tests"])

        killed: list[dict] = []
        loop = SUBMISSIONS / "lesson_03_loop"
        thread = threading.Thread(target=lambda: killed.append(grade(LESSON, loop, tmp_path / "killed", server=server)))
        thread.start()
        deadline = time.monotonic() + 120
        while server.child_pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(server.child_pid, signal.SIGKILL)
        thread.join(300)
        assert f"ended with status -{int(signal.SIGKILL)}" in killed[0]["output"], killed[0]["output"]

        _stub_verdicts(grade(LESSON, REPO / "exercises", tmp_path / "after", server=server))
        assert server.starts == 1, "a dead grading process must not take the zygote with it"

        os.kill(server._proc.pid, signal.SIGKILL)
        server._proc.wait()
        _stub_verdicts(grade(LESSON, REPO / "exercises", tmp_path / "restarted", server=server))
        assert server.starts == 2, "a dead zygote is replaced"

        other = 2 if os.environ.get("OMP_NUM_THREADS") == "1" else 1  # not the count this zygote was started with
        again = grade(LESSON, REPO / "exercises", tmp_path / "other-threads", threads=other, server=server)
        assert server.starts == 3, "torch reads OMP_NUM_THREADS at import: another thread count needs another zygote"
        _stub_verdicts(again)


def test_one_bad_item_does_not_stop_the_others(tmp_path: Path, grading_server: GradingServer):
    stub = REPO / "exercises"
    items = [(stub, tmp_path / "a"), (tmp_path / "missing", tmp_path / "b"), (stub, tmp_path / "c")]
    with pytest.raises(lessons.GradingSetupError, match="does not exist"):
        grade_many(LESSON, items, server=grading_server)
    for name in ("a", "c"):
        _stub_verdicts(json.loads((tmp_path / name / "results.json").read_text()))
    assert not (tmp_path / "b" / "results.json").exists()


def test_only_pytest_runs_are_served(tmp_path: Path):
    with GradingServer() as server, open(tmp_path / "log", "wb") as log, pytest.raises(ValueError, match="only"):
        server.run(["/bin/true"], cwd=REPO, env={}, stdout=log, stderr=log, timeout=5)
    assert server.starts == 0
