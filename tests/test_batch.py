"""Batch grading: one row per student whatever happens, correct pass rates, resumable, clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from graders.engine import batch, lessons
from tests.conftest import REPO, run_cli


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[batch.Row]]:
    """Students of every kind, graded once with two jobs: (submissions, out, rows)."""
    subs = tmp_path_factory.mktemp("subs")
    shutil.copytree(REPO / "solutions_private" / "lesson_03", subs / "alice" / "lesson_03")  # full marks
    shutil.copytree(REPO / "exercises" / "lesson_03", subs / "bob" / "exercises" / "lesson_03")  # untouched stubs
    (subs / "carol" / "lesson_03").mkdir(parents=True)
    (subs / "carol" / "lesson_03" / "attention.py").write_text("import os\nos._exit(3)\n")  # kills its worker
    (subs / "dave").mkdir()
    (subs / "dave" / "notes.txt").write_text("no code here\n")  # no lesson_03/
    (subs / "ev\\il").mkdir()  # a name that is not usable as an output folder
    (subs / ".cache").mkdir()  # hidden: skipped
    (subs / "roster.txt").write_text("not a student\n")  # a file: skipped
    out = tmp_path_factory.mktemp("out")
    rows = batch.run_batch(lessons.load("03"), subs, out, jobs=2, progress=False)
    return subs, out, rows


def test_one_row_per_student_with_scores_and_reasons(classroom):
    _, out, rows = classroom
    by = {r["student"]: r for r in _read_csv(out / "grades.csv")}
    assert list(by) == ["alice", "bob", "carol", "dave", "ev\\il"]
    assert [r.student for r in rows] == list(by)
    alice = by["alice"]
    assert alice["status"] == "graded" and float(alice["score"]) == float(alice["max_score"]) > 0 and alice["reason"] == ""
    for name, why in [("bob", "NotImplementedError"), ("carol", "stopped the worker")]:
        row = by[name]
        assert row["status"] == "graded" and float(row["score"]) == 0 and float(row["max_score"]) > 0, row
        assert why in row["reason"], row
    assert by["dave"]["status"] == "not graded" and "has no lesson_03/ folder" in by["dave"]["reason"]
    assert by["dave"]["score"] == "" and "\n" not in by["dave"]["reason"]
    assert by["ev\\il"]["status"] == "not graded" and "path separator" in by["ev\\il"]["reason"]
    for name in ("alice", "bob", "carol"):
        res = json.loads((out / name / "results.json").read_text())
        assert res["score"] == float(by[name]["score"])
    assert not (out / "dave" / "results.json").exists() and not (out / ".cache").exists()


def test_pass_rates(classroom):
    _, out, _ = classroom
    rates = _read_csv(out / "pass_rates.csv")
    alice = json.loads((out / "alice" / "results.json").read_text())
    assert [r["test"] for r in rates] == [t["name"] for t in alice["tests"]]
    counted = [r for r in rates if r["students_graded"] != "0"]
    assert counted, "no test was counted"
    for r in counted:  # alice passes everything; bob and carol nothing
        assert (r["students_passed"], r["students_graded"], r["pass_rate"]) == ("1", "3", "0.3333"), r
    for r in rates:
        if r["students_graded"] == "0":  # a GPU test on a machine without CUDA: skipped for everyone
            assert r["pass_rate"] == "" and r["max_score"] == "0"


def test_resume_skips_graded_students_and_force_regrades(classroom, tmp_path: Path):
    subs, out, rows = classroom
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    attempted: list[str] = []

    def spy(lesson, folder, out_dir, hide, **kwargs):
        attempted.append(folder.name)
        assert hide == (subs.resolve(), copy.resolve()) and kwargs["call_timeout"] == 60.0
        assert kwargs["threads"] == max(1, (os.cpu_count() or 1) // jobs[0]), "the cores are split between jobs"
        return batch.Row(folder.name, reason="spy")

    jobs = [1]
    resumed = batch.run_batch(lessons.load("03"), subs, copy, progress=False, grade_student=spy)
    assert sorted(attempted) == ["dave", "ev\\il"], "students with results.json must be skipped"
    assert [(r.student, r.score, r.reason) for r in resumed if r.student in ("alice", "bob", "carol")] == [
        (r.student, r.score, r.reason) for r in rows if r.student in ("alice", "bob", "carol")
    ]
    assert (copy / "pass_rates.csv").read_text() == (out / "pass_rates.csv").read_text()
    attempted.clear()
    jobs[0] = 3
    batch.run_batch(lessons.load("03"), subs, copy, jobs=3, force=True, progress=False, grade_student=spy)
    assert sorted(attempted) == ["alice", "bob", "carol", "dave", "ev\\il"]
    assert {r["reason"] for r in _read_csv(copy / "grades.csv")} == {"spy"}


def test_a_hanging_student_gets_a_row_with_the_reason(tmp_path: Path):
    subs = tmp_path / "subs"
    (subs / "erin" / "lesson_03").mkdir(parents=True)
    (subs / "erin" / "lesson_03" / "attention.py").write_text("while True:\n    pass\n")  # hangs at import
    rows = batch.run_batch(lessons.load("03"), subs, tmp_path / "out", call_timeout=3, progress=False)
    (erin,) = _read_csv(tmp_path / "out" / "grades.csv")
    assert erin["status"] == "graded" and erin["score"] == "0" and "timed out after 3 s" in erin["reason"], erin
    assert rows[0].results is not None and rows[0].results["max_score"] > 0


def test_an_exception_in_grading_costs_only_that_row(tmp_path: Path):
    subs = tmp_path / "subs"
    for name in ("ann", "ben", "cat"):
        (subs / name).mkdir(parents=True)

    def flaky(lesson, folder, out_dir, hide, **kwargs):
        if folder.name == "ben":
            raise RuntimeError("engine bug")
        return batch.Row(folder.name, 1.0, 1.0, "", {"tests": []})

    rows = batch.run_batch(lessons.load("03"), subs, tmp_path / "out", jobs=2, progress=False, grade_student=flaky)
    by = {r["student"]: r for r in _read_csv(tmp_path / "out" / "grades.csv")}
    assert [r.student for r in rows] == ["ann", "ben", "cat"]
    assert by["ann"]["status"] == by["cat"]["status"] == "graded"
    assert by["ben"]["status"] == "not graded" and by["ben"]["reason"] == "grader error: RuntimeError: engine bug"


def test_cli_batch_progress_resume_and_force(tmp_path: Path):
    subs, out = tmp_path / "subs", tmp_path / "out"
    shutil.copytree(REPO / "exercises" / "lesson_03", subs / "stub" / "lesson_03")
    args = ["batch", "--lesson", "3", "--submissions", str(subs), "--out", str(out), "--call-timeout", "20"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "student" in first.stderr and "1 student(s): 1 graded (0 from earlier runs)" in first.stdout
    mtime = (out / "stub" / "results.json").stat().st_mtime_ns
    again = run_cli(*args)
    assert "1 graded (1 from earlier runs)" in again.stdout
    assert (out / "stub" / "results.json").stat().st_mtime_ns == mtime
    forced = run_cli(*args, "--force")
    assert forced.returncode == 0 and "1 graded (0 from earlier runs)" in forced.stdout
    assert (out / "stub" / "results.json").stat().st_mtime_ns != mtime
    assert _read_csv(out / "grades.csv")[0]["score"] == "0"


@pytest.mark.parametrize(
    ("make", "lesson", "message"),
    [
        (None, "03", "does not exist"),
        ("empty", "03", "has no student folders"),
        ("hidden-only", "03", "has no student folders"),
        ("student", "42", "unknown lesson '42'"),
    ],
)
def test_batch_setup_errors_are_one_line(tmp_path: Path, make: str | None, lesson: str, message: str):
    subs = tmp_path / "subs"
    if make:
        subs.mkdir()
        if make == "hidden-only":
            (subs / ".git").mkdir()
        if make == "student":
            (subs / "ann").mkdir()
    proc = run_cli("batch", "--lesson", lesson, "--submissions", str(subs), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm-grade: error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "out" / "grades.csv").exists()
