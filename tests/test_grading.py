"""The engine end to end: full marks for the reference, zero for the stubs, clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graders.engine import lessons
from tests.conftest import REPO, run_cli

LESSONS = lessons.available()
GRADESCOPE_TEST_KEYS = {"name", "number", "score", "max_score", "status", "output", "tags", "visibility"}


def check_schema(res: dict) -> None:
    assert {"score", "max_score", "execution_time", "output", "tests"} <= set(res)
    assert res["tests"], "no tests in results"
    for t in res["tests"]:
        assert GRADESCOPE_TEST_KEYS <= set(t), t
        assert t["status"] in ("passed", "failed") and 0 <= t["score"] <= t["max_score"]
    assert res["score"] == pytest.approx(sum(t["score"] for t in res["tests"]))


@pytest.mark.parametrize("lesson", LESSONS)
def test_reference_solution_gets_full_marks(grade_lesson, lesson: str):
    res = grade_lesson(lesson, REPO / "solutions_private")
    check_schema(res)
    lost = {t["name"]: t["output"] for t in res["tests"] if t["score"] < t["max_score"]}
    assert not lost and res["score"] == res["max_score"] > 0, lost


@pytest.mark.parametrize("lesson", LESSONS)
def test_stubs_get_zero(grade_lesson, lesson: str):
    res = grade_lesson(lesson, REPO / "exercises")
    check_schema(res)
    assert res["score"] == 0 and res["max_score"] > 0
    assert res["extra_data"]["worker_starts"] == 1, "a stub that raises must not restart the worker"
    counted = [t for t in res["tests"] if t["max_score"] > 0]
    assert all("NotImplementedError" in t["output"] for t in counted), [t["output"] for t in counted]


def test_cli_prints_table_and_exits_zero_whatever_the_score(tmp_path: Path):
    proc = run_cli("run", "--lesson", "3", "--submission", str(REPO), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "total: 0/" in proc.stdout and "sandbox:" in proc.stdout
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["score"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lesson", "42", "--submission", "."], "unknown lesson '42'"),
        (["--lesson", "03", "--submission", "/nonexistent/student"], "does not exist"),
        (["--lesson", "03", "--submission", "pyproject.toml"], "is not a folder"),
        (["--lesson", "03", "--submission", "lessons"], "has no lesson_03/ folder"),
    ],
)
def test_setup_errors_are_one_line(tmp_path: Path, args: list[str], message: str):
    proc = run_cli("run", *args, "--out", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm-grade: error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_every_hidden_test_has_points():
    for lesson in LESSONS:
        for path in (REPO / "graders" / f"lesson_{lesson}").glob("test_*.py"):
            text = path.read_text()
            assert text.count("\ndef test_") == text.count("@pytest.mark.points("), f"{path}: every hidden test needs points"


def test_results_are_written_when_the_run_is_cut_short(grade_lesson):
    """A run killed part-way still writes results.json; tests without a verdict score 0."""
    res = grade_lesson("03", REPO / "tests" / "submissions" / "lesson_03_loop", run_timeout=6)
    check_schema(res)
    no_verdict = [t for t in res["tests"] if t["output"].startswith("no verdict")]
    assert no_verdict and all(t["score"] == 0 and t["status"] == "failed" for t in no_verdict)
    assert "passed its 6 s limit" in res["output"]
    assert _orphaned_workers(wait=5.0) == [], "a worker outlived the grading process that started it"


def _orphaned_workers(wait: float) -> list[int]:
    """Worker processes re-parented to init (their grader died without killing them)."""
    import os
    import time

    deadline = time.monotonic() + wait
    while True:
        orphans = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if b"_llmg_worker.py" in cmd and ppid == 1:
                orphans.append(int(pid))
        if not orphans or time.monotonic() > deadline:
            return orphans
        time.sleep(0.2)
