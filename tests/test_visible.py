"""Visible tests pass on the reference solution and fail on the generated stubs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graders.engine import lessons
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # each runs pytest (and imports torch) in a subprocess
LESSONS = sorted(p.name for p in (REPO / "exercises").glob("lesson_[0-9][0-9]"))


def run_visible(root: Path, lesson: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"exercises/{lesson}"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize("lesson", LESSONS)
def test_visible_tests_fail_on_stub(lesson: str):
    proc = run_visible(REPO, lesson)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "NotImplementedError" in proc.stdout and " passed" not in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("lesson", LESSONS)
def test_visible_tests_pass_on_solution(tmp_path: Path, lesson: str):
    for name in ("pyproject.toml", "conftest.py"):  # as the release ships them: conftest.py registers the markers
        shutil.copy(REPO / name, tmp_path)
    shutil.copytree(REPO / "exercises", tmp_path / "exercises", ignore=shutil.ignore_patterns("__pycache__"))
    lab_modules = lessons.load(lesson).lab_modules  # the lab's files live in labs/, not under the visible tests
    for src in (REPO / "solutions_private" / lesson).glob("*.py"):
        if src.stem not in lab_modules:
            shutil.copy(src, tmp_path / "exercises" / lesson / src.name)
    proc = run_visible(tmp_path, lesson)
    assert proc.returncode == 0, proc.stdout[-3000:]
