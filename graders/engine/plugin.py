"""pytest plugin loaded into the grading run: the sandboxed worker fixture and the event log.

The hidden tests run in this (the grader's) process. Each test's verdict is written
to an events file as one JSON line the moment it is known, so a crash later in the
run loses nothing; tests without a line score 0 ("no verdict").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from graders.engine.sandbox import Worker

_EXCLUDED_TAGS = {"points", "parametrize", "usefixtures", "filterwarnings", "skip", "skipif", "xfail", "timeout"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-grade")
    group.addoption("--llmg-lesson-dir", help="the submission's lesson_NN folder")
    group.addoption("--llmg-modules", help="comma-separated module stems copied into the sandbox")
    group.addoption("--llmg-hide", action="append", default=[], help="a path the worker must not see")
    group.addoption("--llmg-events", help="JSON-lines file that receives every verdict")
    group.addoption("--llmg-call-timeout", type=float, default=60.0, help="seconds for one worker request")


class _Events:
    def __init__(self, path: str | None) -> None:
        self.path = path

    def write(self, **event: object) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")
                f.flush()
                os.fsync(f.fileno())


def _events(config: pytest.Config) -> _Events:
    return config.stash.setdefault(_EVENTS_KEY, _Events(config.getoption("--llmg-events")))


_EVENTS_KEY = pytest.StashKey[_Events]()
_OUTCOME_KEY = pytest.StashKey[dict]()


def _describe(item: pytest.Item) -> dict:
    doc = (getattr(item, "function", None).__doc__ or "").strip().splitlines()
    title = doc[0].rstrip(".") if doc else item.originalname if hasattr(item, "originalname") else item.name
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        title += f" [{callspec.id}]"
    points = item.get_closest_marker("points")
    tags = sorted({m.name for m in item.iter_markers()} - _EXCLUDED_TAGS)
    return {"nodeid": item.nodeid, "name": title, "points": float(points.args[0]) if points else 1.0, "tags": tags}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA; this machine has none (not counted)"))


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -k/-m deselection: only the tests that will run are owed a verdict.
    _events(session.config).write(event="collected", tests=[_describe(i) for i in session.items])


_PREFIXES = {
    "AssertionError: ": "",
    "graders.engine.sandbox.StudentError: ": "your code raised ",
    "graders.engine.sandbox.WorkerDied: ": "the worker died: ",
}


def _message(report: pytest.TestReport) -> str:
    """The failure's first lines, never the hidden test's source or its locals."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    if report.skipped and isinstance(report.longrepr, tuple):
        text = report.longrepr[2]
    text = text.split("\nassert ")[0].split("\n+  where")[0]
    for prefix, replacement in _PREFIXES.items():
        if text.startswith(prefix):
            text = replacement + text.removeprefix(prefix)
    return text.strip()[:1500]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    item.stash[_OUTCOME_KEY] = {"outcome": "passed", "message": "", "duration": 0.0}
    result = yield
    verdict = item.stash[_OUTCOME_KEY]
    notes = [str(v) for k, v in item.user_properties if k == "output"]  # from `record_property("output", ...)`
    if notes and verdict["outcome"] == "passed":
        verdict["message"] = "; ".join(notes)
    _events(item.config).write(event="result", nodeid=item.nodeid, **verdict)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    verdict = item.stash.get(_OUTCOME_KEY, None)
    if verdict is not None:
        verdict["duration"] += report.duration
        if report.failed and verdict["outcome"] != "failed":
            verdict["outcome"] = "failed"
            verdict["message"] = (f"{report.when} error: " if report.when != "call" else "") + _message(report)
        elif report.skipped and verdict["outcome"] == "passed":
            verdict["outcome"] = "skipped"
            verdict["message"] = _message(report)
    return report


@pytest.fixture(scope="session")
def worker(request: pytest.FixtureRequest):
    """The sandboxed worker holding the submission's modules for this lesson."""
    config = request.config
    lesson_dir = config.getoption("--llmg-lesson-dir")
    if not lesson_dir:
        pytest.fail("hidden tests run only through `llm-grade run` (no --llmg-lesson-dir given)")
    modules = tuple(m for m in (config.getoption("--llmg-modules") or "").split(",") if m)
    hide = tuple(Path(p) for p in config.getoption("--llmg-hide"))
    w = Worker(Path(lesson_dir), modules, hide=hide, cuda=torch.cuda.is_available(), timeout=config.getoption("--llmg-call-timeout"))
    try:
        yield w
    finally:
        _events(config).write(
            event="sandbox",
            summary=w.protections.summary() if w.starts else "sandbox: the worker was never started",
            starts=w.starts,
            start_seconds=round(w.last_start_seconds, 3),
        )
        w.close()
