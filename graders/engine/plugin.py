"""pytest plugin loaded into the grading run: markers, the worker and lesson fixtures, and the event log.

The hidden tests run in this (the grader's) process. Each test's verdict is written
to an events file as one JSON line the moment it is known, so a crash later in the
run loses nothing; tests without a line score 0 ("no verdict").
"""

from __future__ import annotations

import importlib
import json
import os
import types
from pathlib import Path

import pytest
import torch

from graders.engine import lessons
from graders.engine.sandbox import Worker

_EXCLUDED_TAGS = {"points", "parametrize", "usefixtures", "filterwarnings", "skip", "skipif", "xfail", "timeout"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-grade")
    group.addoption("--llmg-lesson-dir", help="the submission's lesson_NN folder")
    group.addoption("--llmg-modules", help="comma-separated module stems copied into the sandbox")
    group.addoption("--llmg-hide", action="append", default=[], help="a path the worker must not see")
    group.addoption("--llmg-events", help="JSON-lines file that receives every verdict")
    group.addoption("--llmg-call-timeout", type=float, default=60.0, help="seconds for one worker request")
    group.addoption("--llmg-lesson", help="the lesson graded, e.g. 03 (default: the graders/lesson_NN folder given)")


MARKERS = (
    "gpu: needs CUDA; skipped cleanly without it",
    "slow: takes more than a few seconds",
    "slurm: needs a Slurm cluster (scripts/slurm_cluster.sh starts one on this machine); skipped when none can start",
    "points(n): points a hidden grader test is worth",
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (every lesson's ``lesson_NN`` too) and the ``lessonNN`` fixture aliases."""
    numbers = lessons.available()
    for line in (*MARKERS, *(f"lesson_{nn}: lesson {nn}, {_title(nn)}" for nn in numbers)):
        config.addinivalue_line("markers", line)
    aliases = types.ModuleType("llmg_lesson_aliases")  # `lesson03` in a hidden test is the `lesson` fixture
    for nn in numbers:
        setattr(aliases, f"lesson{nn}", _alias(nn))
    config.pluginmanager.register(aliases, "llmg-lesson-aliases")


def _title(nn: str) -> str:
    try:
        return lessons.load(nn).title.lower()
    except lessons.GradingSetupError:
        return "(its lesson.toml is broken)"


def _alias(nn: str):
    @pytest.fixture(scope="session", name=f"lesson{nn}")
    def alias(lesson: object) -> object:
        return lesson

    return alias


def _graded_lesson(config: pytest.Config) -> lessons.Lesson:
    """The lesson under grading: ``--llmg-lesson``, else the ``graders/lesson_NN`` folder pytest was given."""
    number = config.getoption("--llmg-lesson")
    if not number:
        paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
        found = {p.name for path in paths for p in (path, *path.parents) if p.parent == lessons.GRADERS_DIR}
        if len(found) != 1:
            pytest.fail(f"cannot tell which lesson is graded (found {sorted(found) or 'none'}): pass --llmg-lesson")
        number = found.pop()
    try:
        return lessons.load(number)
    except lessons.GradingSetupError as exc:
        pytest.fail(str(exc))


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
_UNGRADABLE_KEY = pytest.StashKey[str]()


def _describe(item: pytest.Item) -> dict:
    doc = (getattr(item, "function", None).__doc__ or "").strip().splitlines()
    title = doc[0].rstrip(".") if doc else item.originalname if hasattr(item, "originalname") else item.name
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        title += f" [{callspec.id}]"
    tags = sorted({m.name for m in item.iter_markers()} - _EXCLUDED_TAGS)
    return {"nodeid": item.nodeid, "name": title[:300], "points": _points(item), "tags": tags}


def _points(item: pytest.Item) -> float | None:
    """The test's ``points`` marker value, or None when it has none (or not a number >= 0)."""
    marker = item.get_closest_marker("points")
    value = marker.args[0] if marker is not None and marker.args else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


@pytest.hookimpl(tryfirst=True)  # before -k deselection: every hidden test must say what it is worth
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [item.nodeid for item in items if _points(item) is None]
    if missing:
        why = (f"hidden test {missing[0]} has no @pytest.mark.points(N) marker (N >= 0)"
               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
               + ": every hidden test must say what it is worth; nothing was graded")  # fmt: skip
        _events(config).write(event="problem", message=why)
        config.stash[_UNGRADABLE_KEY] = why  # pytest still calls collection_finish: nothing is owed a verdict
        pytest.exit(why, returncode=pytest.ExitCode.INTERRUPTED)
    cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA; this machine has none (not counted)"))


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -k/-m deselection: only the tests that will run are owed a verdict.
    if _UNGRADABLE_KEY in session.config.stash:
        return
    _events(session.config).write(event="collected", tests=[_describe(i) for i in session.items])


_PREFIXES = {
    "AssertionError: ": "",
    "graders.engine.sandbox.StudentError: ": "your code raised ",
    "graders.engine.sandbox.WorkerDied: ": "the worker died: ",
}
MESSAGE_CHARS = 1500  # what one test's verdict may say (its events line, results.json)
EXCEPTION_CHARS = 4000  # an exception message, cut before pytest formats it into grader.log
LOG_BYTES = 8 << 20  # grader.log: pytest's whole terminal output


def shorten(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was cut (a student value can be 100 MB)."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 4 // 5], text[-(limit // 10) :]
    return f"{head} ... [{len(text) - len(head) - len(tail)} characters cut] ... {tail}"


def _shorten_exception(exc: BaseException | None) -> None:
    """Cut long string arguments of ``exc`` and the exceptions chained to it, in place."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        try:
            if any(isinstance(a, str) and len(a) > EXCEPTION_CHARS for a in exc.args):
                exc.args = tuple(shorten(a, EXCEPTION_CHARS) if isinstance(a, str) else a for a in exc.args)
            msg = getattr(exc, "msg", None)  # pytest's own outcomes (pytest.fail) keep their text here
            if isinstance(msg, str) and len(msg) > EXCEPTION_CHARS:
                exc.msg = shorten(msg, EXCEPTION_CHARS)
        except Exception:  # an exception type that refuses new args: leave it
            pass
        exc = exc.__cause__ or exc.__context__


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
    return shorten(text.strip(), MESSAGE_CHARS)


def _students(exc: BaseException | None, when: str) -> bool:
    """Whether an exception is a verdict on the student's code (a failed check, their error, a dead worker).

    Anything else (a KeyError in the reference, an API change in transformers) is a grading
    problem: never the student's failure. ``pytest.fail`` counts as a verdict only in the test
    body (the per-test timeout uses it); in a fixture it is the grader saying it cannot run.
    """
    from graders.engine.sandbox import StudentError, WorkerDied

    if isinstance(exc, AssertionError | StudentError | WorkerDied):
        return True
    return when == "call" and isinstance(exc, pytest.fail.Exception)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    item.stash[_OUTCOME_KEY] = {"outcome": "no verdict", "message": "", "duration": 0.0}
    result = yield
    verdict = item.stash[_OUTCOME_KEY]
    if verdict["outcome"] == "no verdict":  # every phase ran and none judged: the grader's fault
        verdict.update(outcome="problem", message="the test ended without a verdict")
    notes = [shorten(str(v), 500) for k, v in item.user_properties if k == "output"]  # `record_property("output", ...)`
    if notes and verdict["outcome"] == "passed":
        verdict["message"] = shorten("; ".join(notes), MESSAGE_CHARS)
    _events(item.config).write(event="result", nodeid=item.nodeid, **verdict)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    exc = call.excinfo.value if call.excinfo is not None else None
    _shorten_exception(exc)  # before pytest formats it: a 100 MB student string never reaches grader.log
    report = yield
    verdict = item.stash.get(_OUTCOME_KEY, None)
    if verdict is not None:
        verdict["duration"] += report.duration
        where = f"{report.when} error: " if report.when != "call" else ""
        if report.failed and verdict["outcome"] not in ("failed", "problem"):
            if _students(exc, report.when):
                verdict.update(outcome="failed", message=where + _message(report))
            else:  # the type only: the grader's own message may hold reference values
                name = type(exc).__name__ if exc is not None else "an error"
                verdict.update(outcome="problem", message=f"{where}the grader raised {name} (details in grader.log)")
        elif report.skipped and verdict["outcome"] == "no verdict":
            verdict.update(outcome="skipped", message=_message(report))
        elif report.passed and report.when == "call" and verdict["outcome"] == "no verdict":
            verdict["outcome"] = "passed"
    return report


class _CappedText:
    """A text stream that passes on at most ``limit`` characters, then one line saying the rest was cut."""

    def __init__(self, inner: object, limit: int) -> None:
        self._inner, self._left, self._cut = inner, limit, False

    def write(self, text: str) -> int:
        if self._left > 0:
            piece = text[: self._left]
            self._left -= len(piece)
            self._inner.write(piece)
        elif not self._cut:
            self._cut = True
            self._inner.write(f"\n[grader.log: output past {LOG_BYTES} characters cut]\n")
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Cap pytest's terminal output (grader.log): what a hidden test prints may echo student values."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    writer = getattr(reporter, "_tw", None)
    if writer is not None and hasattr(writer, "_file") and session.config.getoption("--llmg-events"):
        writer._file = _CappedText(writer._file, LOG_BYTES)


@pytest.fixture(scope="session")
def worker(request: pytest.FixtureRequest):
    """The sandboxed worker holding the submission's modules for this lesson."""
    config = request.config
    lesson_dir = config.getoption("--llmg-lesson-dir")
    if not lesson_dir:
        pytest.fail("hidden tests run only through `llm-grade run` (no --llmg-lesson-dir given)")
    modules = tuple(m for m in (config.getoption("--llmg-modules") or "").split(",") if m)
    hide = tuple(Path(p) for p in config.getoption("--llmg-hide"))
    provided = _graded_lesson(config).provided  # from the reference, never the student's copy
    w = Worker(Path(lesson_dir), modules, provided=provided, hide=hide, cuda=torch.cuda.is_available(),
               timeout=config.getoption("--llmg-call-timeout"))  # fmt: skip
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


@pytest.fixture(scope="session")
def lesson(request: pytest.FixtureRequest, worker: Worker) -> object:
    """The lesson's binding (the class ``bindings`` names in its lesson.toml), built on the worker."""
    spec = _graded_lesson(request.config).bindings
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"lesson.toml names bindings {spec!r}, which cannot be loaded: {exc}")
    return cls(worker)
