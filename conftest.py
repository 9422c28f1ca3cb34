"""Repository-wide pytest set-up: the markers, `gpu` tests skip cleanly without CUDA, and short stub output.

Markers are registered here, not listed in pyproject.toml: `lesson_NN` exists for every lesson
found (its text, exercises or graders), so a new lesson needs no edit here. This file also ships
in the student repository, so it imports nothing of the grader.

A visible test that fails only because it reached an untouched stub (the generated
``NotImplementedError("lesson NN: `name` is not implemented yet; read ...")``) is still a failure,
but it is reported as one line per unimplemented function instead of a traceback that reprints
the stub's docstring (667 lines for lesson 05's twelve tests before). Any other exception, an
AssertionError included, keeps pytest's normal report.
"""

import re
from collections.abc import Generator
from pathlib import Path

import pytest

MARKERS = (
    "gpu: needs CUDA; skipped cleanly without it",
    "slow: takes more than a few seconds",
    "slurm: needs a Slurm cluster (scripts/slurm_cluster.sh starts one on this machine); skipped when none can start",
    "points(n): points a hidden grader test is worth",
)
ROOT = Path(__file__).resolve().parent
# The message every generated stub raises (graders/engine/sync.py writes it; exercises/ and labs/ carry it).
STUB = re.compile(r"lesson \d\d: `([^`]+)` is not implemented yet; read (lessons/lesson_\d\d\.md), section '([^']*)'")
TAG = "not_implemented"  # a report's user_properties key: survives pytest-xdist's report serialisation


def lesson_numbers(root: Path) -> list[str]:
    """NN of every lessons/lesson_NN.md, exercises/lesson_NN/ and graders/lesson_NN/ under ``root``."""
    found = {m[1] for p in root.glob("*/lesson_*") if (m := re.fullmatch(r"lesson_(\d\d)(?:\.md)?", p.name))}
    return sorted(found)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    for nn in lesson_numbers(ROOT):
        config.addinivalue_line("markers", f"lesson_{nn}: lesson {nn}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# --------------------------------------------------------------------------- short stub failures
def stub_line(item: pytest.Item, excinfo: pytest.ExceptionInfo) -> str | None:
    """``path:line name: not implemented yet (see lesson §N)`` when a visible test stopped at a stub, else None."""
    if excinfo.type is not NotImplementedError or not Path(str(item.path)).is_relative_to(ROOT / "exercises"):
        return None
    match = STUB.fullmatch(str(excinfo.value))
    raised = excinfo.traceback[-1] if excinfo.traceback else None
    if match is None or raised is None:
        return None
    where = Path(str(raised.path))
    if not where.is_relative_to(ROOT) or where.name.startswith(("test_", "conftest")):
        return None  # a test or fixture raising it itself: not a stub, keep the full report
    number = re.match(r"(\d+)[.)]?\s", match[3])
    section = f"§{number[1]}" if number else f"section '{match[3]}'"
    return f"{where.relative_to(ROOT).as_posix()}:{raised.lineno + 1} {match[1]}: not implemented yet (see {match[2]} {section})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.excinfo is not None and (line := stub_line(item, call.excinfo)):
        report.user_properties.append((TAG, line))
        report.longrepr = line  # one line also in --junitxml, -rA and friends
    return report


def _stub(report: pytest.TestReport) -> str | None:
    return next((value for key, value in getattr(report, "user_properties", ()) if key == TAG), None)


class _HoldStubFailures:
    """Stub failures skip the FAILURES section and the short summary (they are listed once per function
    instead), and are put back before the last line, so that line still counts them as failed."""

    def __init__(self) -> None:
        self.held: dict[str, list[pytest.TestReport]] = {}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter) -> Generator[None, None, None]:
        stats, held = terminalreporter.stats, self.held
        for kind in ("failed", "error"):
            held[kind] = [r for r in stats.get(kind, []) if _stub(r)]
            if held[kind]:
                stats[kind] = [r for r in stats[kind] if not _stub(r)]
        try:
            return (yield)
        finally:
            for kind, reports in held.items():
                if reports:
                    stats[kind] = stats.get(kind, []) + reports


HOLDER = "llm-course-stub-failures"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not session.config.pluginmanager.has_plugin(HOLDER):
        session.config.pluginmanager.register(_HoldStubFailures(), HOLDER)


def pytest_terminal_summary(terminalreporter) -> None:
    """One line per unimplemented function, with the tests that wait on it (after any real failure)."""
    holder = terminalreporter.config.pluginmanager.get_plugin(HOLDER)
    waiting: dict[str, list[str]] = {}
    for reports in (holder.held if holder else {}).values():
        for report in reports:
            if line := _stub(report):
                waiting.setdefault(line, []).append(report.nodeid.rpartition("::")[2])
    if not waiting:
        return
    tests = sum(len(v) for v in waiting.values())
    terminalreporter.section(f"not implemented yet (NotImplementedError): {tests} test(s) wait on {len(waiting)} function(s)")
    for line, names in waiting.items():
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        terminalreporter.line(f"{line}: {names[0]}{more}")
