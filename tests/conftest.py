"""Helpers for the repository's own tests: build submissions, grade them, read results.

Also how the suite is split (``make test``): tests that grade are ``slow``; a test that grades a
lesson with a speed test in full is ``serial`` and runs in its own pytest run, never next to
another grading; under pytest-xdist every worker gets its share of the cores, and the tests of
a module with module-scoped fixtures (many submissions graded once) stay on one worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from graders.engine import lessons
from graders.engine.run import grade
from graders.engine.sandbox import Worker
from graders.engine.server import GradingServer

REPO = Path(__file__).resolve().parent.parent
SUBMISSIONS = Path(__file__).resolve().parent / "submissions"
GRADING_FIXTURES = {"grade_lesson", "grading_server"}

_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:  # N workers, each grading with 2 torch processes: all-core thread pools would thrash
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, len(os.sched_getaffinity(0)) // _XDIST_WORKERS)))


def _speed_lessons() -> frozenset[str]:
    """Lessons whose hidden tests time the student's code (a `speed` marker or a test_*speed* name)."""
    timed = re.compile(r"mark\.speed\b|def test_\w*speed")
    return frozenset(
        nn
        for nn in lessons.available()
        if any(timed.search(p.read_text(encoding="utf-8")) for p in (REPO / "graders" / f"lesson_{nn}").glob("test_*.py"))
    )


SPEED_LESSONS = _speed_lessons()


def lesson_param(lesson: str):
    """``lesson`` for ``parametrize``, marked ``serial`` when grading it in full asserts a speed verdict."""
    return pytest.param(lesson, marks=pytest.mark.serial) if lesson in SPEED_LESSONS else lesson


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: asserts a speed verdict: runs alone, never next to another grading")


_AVAILABLE = frozenset(lessons.available())


def _lessons_of(item: pytest.Item) -> set[str]:
    """The lessons a parametrised suite test is about, read off its id (``[10]``, ``[lesson_10/...]``, ``[lesson_05-05]``)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return set()
    parts = {part.removeprefix("lesson_") for part in re.split(r"[-/+]", callspec.id)}
    return parts & _AVAILABLE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if GRADING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        for nn in _lessons_of(item):  # `pytest tests -m lesson_10`: every suite test of one lesson
            item.add_marker(getattr(pytest.mark, f"lesson_{nn}"))


def _modules_with_shared_fixtures() -> frozenset[str]:
    """Test files defining a module-scoped fixture (e.g. many submissions graded once), as node-id paths."""
    here = Path(__file__).resolve().parent
    return frozenset(
        p.relative_to(REPO).as_posix() for p in here.glob("test_*.py") if re.search(r"scope=[\"']module", p.read_text())
    )


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown without it
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Spread tests one by one, but keep a module with module-scoped fixtures on one worker (its fixture runs once).

    (xdist's own ``xdist_group``/loadgroup cannot be used: it renames node ids, which pytest 9 ignores.)
    """
    from xdist.scheduler import LoadScopeScheduling

    shared = _modules_with_shared_fixtures()

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in shared else nodeid

    return SharedFixtureScheduling(config, log)


def make_submission(root: Path, lesson: str, files: dict[str, str]) -> Path:
    """A folder of lesson_NN/ holding ``files`` (name -> source); returns the folder."""
    folder = root / f"lesson_{lesson}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return root


def scratch_worker(tmp_path: Path, modules: dict[str, str], *, other: dict[str, str] | None = None,
                   timeout: float = 20) -> Worker:
    """A Worker over a scratch ``lesson_99/``: ``modules`` (stem -> source) are allow-listed; ``other`` files
    (name -> text) only sit in the folder."""
    folder = tmp_path / "lesson_99"
    folder.mkdir(exist_ok=True)
    for name, text in {**{f"{stem}.py": src for stem, src in modules.items()}, **(other or {})}.items():
        (folder / name).write_text(text, encoding="utf-8")
    return Worker(folder, tuple(modules), timeout=timeout)


def mutate(source: str, old: str, new: str) -> str:
    """``source`` with ``old`` replaced by ``new``; fails loudly if ``old`` is not there."""
    assert old in source, f"mutation target {old!r} not found: the reference changed, update the mutant"
    return source.replace(old, new)


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graders.engine.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def failed_tests(results: dict) -> set[str]:
    return {t["name"] for t in results["tests"] if t["score"] < t["max_score"]}


@pytest.fixture(scope="session")
def grading_server():
    """One grading server for the session: each grading is a fresh fork, pytest and torch imported once."""
    with GradingServer() as server:
        yield server


@pytest.fixture
def grade_lesson(tmp_path: Path, grading_server: GradingServer):
    """grade_lesson(lesson, submission) -> results dict (also checks results.json on disk).

    Graded through the session's grading server; ``server=None`` takes the plain subprocess path.
    """

    def run(lesson: str, submission: Path, **kwargs) -> dict:
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
        kwargs.setdefault("server", grading_server)
        res = grade(lessons.load(lesson), submission, out, **kwargs)
        on_disk = json.loads((out / "results.json").read_text())
        assert on_disk == res
        return res

    return run
