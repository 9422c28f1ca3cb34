"""Helpers for the repository's own tests: build submissions, grade them, read results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graders.engine import lessons
from graders.engine.run import grade

REPO = Path(__file__).resolve().parent.parent
SUBMISSIONS = Path(__file__).resolve().parent / "submissions"


def make_submission(root: Path, lesson: str, files: dict[str, str]) -> Path:
    """A folder of lesson_NN/ holding ``files`` (name -> source); returns the folder."""
    folder = root / f"lesson_{lesson}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return root


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


@pytest.fixture
def grade_lesson(tmp_path: Path):
    """grade_lesson(lesson, submission) -> results dict (also checks results.json on disk)."""

    def run(lesson: str, submission: Path, **kwargs) -> dict:
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
        res = grade(lessons.load(lesson), submission, out, **kwargs)
        on_disk = json.loads((out / "results.json").read_text())
        assert on_disk == res
        return res

    return run
