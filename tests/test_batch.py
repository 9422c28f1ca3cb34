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

FORMULA = "=cmd|'calc'!A0"  # a student folder name that a spreadsheet would run as a formula


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
    # Hostile students: links to the reference or to a classmate's work, a name a spreadsheet would run.
    (subs / "mallory" / "exercises").mkdir(parents=True)
    (subs / "mallory" / "exercises" / "lesson_03").symlink_to(REPO / "solutions_private" / "lesson_03")
    (subs / "trudy").symlink_to(subs / "alice")  # the whole student folder is a classmate's
    (subs / "oscar").mkdir()
    (subs / "oscar" / "lesson_03").symlink_to(Path("..", "alice", "lesson_03"))
    (subs / FORMULA).mkdir()  # no lesson_03/: not graded, but its name still lands in grades.csv
    out = tmp_path_factory.mktemp("out")
    rows = batch.run_batch(lessons.load("03"), subs, out, jobs=2, progress=False)
    return subs, out, rows


def test_one_row_per_student_with_scores_and_reasons(classroom):
    _, out, rows = classroom
    by = {r["student"]: r for r in _read_csv(out / "grades.csv")}
    assert list(by) == ["'" + FORMULA, "alice", "bob", "carol", "dave", "ev\\il", "mallory", "oscar", "trudy"]
    assert [r.student for r in rows] == [FORMULA, *list(by)[1:]]
    alice = by["alice"]
    assert alice["status"] == "graded" and float(alice["score"]) == float(alice["max_score"]) > 0 and alice["reason"] == "", alice
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


def test_linked_students_are_refused_and_csv_cells_cannot_run(classroom):
    """Before: a symlinked exercises/lesson_03 -> solutions_private/lesson_03 scored 28/28, a folder linking to a
    classmate's got the classmate's score, and a name starting with = reached grades.csv as a formula."""
    _, out, _ = classroom
    by = {r["student"]: r for r in _read_csv(out / "grades.csv")}
    for name, link in (("mallory", "exercises/lesson_03"), ("trudy", "trudy"), ("oscar", "lesson_03")):
        row = by[name]
        assert row["status"] == "not graded" and row["score"] == "", row
        assert f"{link} in " in row["reason"] and "is a symbolic link" in row["reason"], row
        assert not (out / name / "results.json").exists()
    formula = by["'" + FORMULA]
    assert formula["status"] == "not graded" and "has no lesson_03/ folder" in formula["reason"]
    raw = (out / "grades.csv").read_text()
    assert "\n" + FORMULA not in raw and not any(line.startswith(("=", "+", "-", "@")) for line in raw.splitlines())
    assert batch.spreadsheet_safe("-1+2") == "'-1+2" and batch.spreadsheet_safe("\tx") == "'\tx"
    assert batch.spreadsheet_safe("alice") == "alice"


def test_pass_rates(classroom):
    _, out, _ = classroom
    rates = _read_csv(out / "pass_rates.csv")
    alice = json.loads((out / "alice" / "results.json").read_text())
    assert [r["test"] for r in rates] == [t["name"] for t in alice["tests"]]
    counted = [r for r in rates if r["students_graded"] != "0"]
    assert counted, "no test was counted"
    for r in counted:  # alice passes everything; bob and carol nothing; the refused students are not counted
        assert (r["students_passed"], r["students_graded"], r["pass_rate"]) == ("1", "3", "0.3333"), r
        assert r["grading_problems"] == "0"
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
    assert sorted(attempted) == sorted([FORMULA, "dave", "ev\\il", "mallory", "oscar", "trudy"]), (
        "students with results.json must be skipped")
    assert [(r.student, r.score, r.reason) for r in resumed if r.student in ("alice", "bob", "carol")] == [
        (r.student, r.score, r.reason) for r in rows if r.student in ("alice", "bob", "carol")
    ]
    assert (copy / "pass_rates.csv").read_text() == (out / "pass_rates.csv").read_text()
    attempted.clear()
    jobs[0] = 3
    batch.run_batch(lessons.load("03"), subs, copy, jobs=3, force=True, progress=False, grade_student=spy)
    assert sorted(attempted) == sorted([FORMULA, "alice", "bob", "carol", "dave", "ev\\il", "mallory", "oscar", "trudy"])
    assert {r["reason"] for r in _read_csv(copy / "grades.csv")} == {"spy"}


def test_a_hanging_student_gets_a_row_with_the_reason(tmp_path: Path):
    subs = tmp_path / "subs"
    (subs / "erin" / "lesson_03").mkdir(parents=True)
    (subs / "erin" / "lesson_03" / "attention.py").write_text("while True:\n    pass\n")  # hangs at import
    rows = batch.run_batch(lessons.load("03"), subs, tmp_path / "out", call_timeout=3, progress=False)
    (erin,) = _read_csv(tmp_path / "out" / "grades.csv")
    assert erin["status"] == "graded" and erin["score"] == "0" and "over the 3 s budget" in erin["reason"], erin
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


def _edit_provenance(path: Path, **changes: object) -> None:
    res = json.loads(path.read_text())
    res["extra_data"]["provenance"].update(changes)
    path.write_text(json.dumps(res))


def test_an_earlier_result_is_reused_only_on_an_exact_match(classroom, tmp_path: Path):
    """Before: any results.json with the right keys was reused. Now a resubmission, a changed grader, a partial
    -k run, another call timeout or a grading problem is regraded."""
    subs, out, _ = classroom
    copy, resub = tmp_path / "out", tmp_path / "subs"
    shutil.copytree(out, copy)
    shutil.copytree(subs, resub, symlinks=True)
    attempted: list[str] = []

    def spy(lesson, folder, out_dir, hide, **kwargs):
        attempted.append(folder.name)
        return batch.Row(folder.name, reason="spy")

    refused = {FORMULA, "dave", "ev\\il", "mallory", "oscar", "trudy"}  # never had results: always attempted
    batch.run_batch(lessons.load("03"), resub, copy, progress=False, grade_student=spy)
    assert set(attempted) == refused, "an unchanged submission (moved elsewhere) is reused"
    with open(resub / "bob" / "exercises" / "lesson_03" / "attention.py", "a") as f:
        f.write("\n# resubmitted\n")  # a resubmission
    _edit_provenance(copy / "alice" / "results.json", graders="sha256:an-older-grader")  # graded by another grader
    _edit_provenance(copy / "carol" / "results.json", keyword="softmax")  # a partial -k run
    attempted.clear()
    batch.run_batch(lessons.load("03"), resub, copy, progress=False, grade_student=spy)
    assert set(attempted) == refused | {"alice", "bob", "carol"}
    attempted.clear()
    shutil.rmtree(copy)
    shutil.copytree(out, copy)
    _edit_provenance(copy / "bob" / "results.json", problems=["the grader raised KeyError"])
    batch.run_batch(lessons.load("03"), subs, copy, progress=False, grade_student=spy)
    assert set(attempted) == refused | {"bob"}, "a result with a grading problem is regraded"
    attempted.clear()
    batch.run_batch(lessons.load("03"), subs, copy, call_timeout=20, progress=False, grade_student=spy)
    assert set(attempted) == refused | {"alice", "bob", "carol"}, "another call timeout is another grading"


def test_another_lessons_results_are_not_reported_as_this_lesson(classroom, tmp_path: Path):
    """Before: `batch --lesson 04` over an OUT holding lesson 03 results reported the lesson 03 scores as lesson 04."""
    subs, out, _ = classroom
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    rows = batch.run_batch(lessons.load("04"), subs, copy, progress=False)
    by = {r.student: r for r in rows}
    assert not any(r.skipped for r in rows)
    for name in ("alice", "bob", "carol"):
        assert by[name].status == "not graded" and by[name].score is None, by[name]
        assert "has no lesson_04/ folder" in by[name].reason
    assert {r["score"] for r in _read_csv(copy / "grades.csv")} == {""}


SCRATCH = '''
import pytest


@pytest.mark.points(1)
def test_adds(worker):
    assert worker.call("scratch", "add", (1, 2)) == 3


@pytest.mark.points(2)
def test_reference_breaks(worker):
    assert worker.call("scratch", "add", (1, 2)) == 3
    raise TypeError("the grader's own bug")
'''


def test_a_grading_problem_is_not_a_fail_and_batch_exits_non_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture):
    from graders.engine import cli
    from tests.test_grading import SCRATCH_STUDENT, ScratchLesson

    graders = tmp_path / "graders_scratch"
    graders.mkdir()
    (graders / "test_scratch_hidden.py").write_text(SCRATCH)
    subs = tmp_path / "subs"
    for name in ("ann", "ben"):
        (subs / name / "lesson_03").mkdir(parents=True)
        (subs / name / "lesson_03" / "scratch.py").write_text(SCRATCH_STUDENT)
    lesson = ScratchLesson(number="03", title="scratch", modules=("scratch",), folder=graders)
    monkeypatch.setattr(lessons, "load", lambda number: lesson)  # the scratch lesson stands in for lesson 03
    out = tmp_path / "out"
    status = cli.main(["batch", "--lesson", "03", "--submissions", str(subs), "--out", str(out)])
    assert status == 1, capsys.readouterr()
    assert "2 student(s) with grading problems: ann, ben" in capsys.readouterr().err
    grades = {r["student"]: r for r in _read_csv(out / "grades.csv")}
    assert {r["status"] for r in grades.values()} == {"grading problem"}
    assert all(r["reason"].startswith("grading problem: ") and "TypeError" in r["reason"] for r in grades.values())
    rates = {r["test"]: r for r in _read_csv(out / "pass_rates.csv")}
    assert (rates["test_adds"]["students_passed"], rates["test_adds"]["students_graded"]) == ("2", "2")
    broken = rates["test_reference_breaks"]
    assert (broken["students_graded"], broken["pass_rate"], broken["grading_problems"]) == ("0", "", "2"), broken
    again = cli.main(["batch", "--lesson", "03", "--submissions", str(subs), "--out", str(out)])
    assert again == 1 and "(0 from earlier runs)" in capsys.readouterr().out, "a result with a problem is regraded"


@pytest.mark.slow
def test_cli_batch_rubric_columns_class_course_resume_and_gradebook(tmp_path: Path):
    """batch --rubric: rubric columns per student, one class course for the formgrader, a resumed batch reuses
    every rubric (and the class entry), and `gradebook` finalises what nbgrader already scored."""
    subs, out = tmp_path / "subs", tmp_path / "out"
    ann = subs / "ann"
    (ann / "exercises" / "lesson_06").mkdir(parents=True)
    shutil.copy(REPO / "solutions_private" / "lesson_06" / "rope.py", ann / "exercises" / "lesson_06")
    shutil.copytree(REPO / "labs" / "lesson_06", ann / "labs" / "lesson_06", ignore=shutil.ignore_patterns("lab.toml"))
    for name in ("lab_rope.ipynb", "lab_experiment.py"):  # the reference lab, notebook answers included
        shutil.copy(REPO / "solutions_private" / "lesson_06" / name, ann / "labs" / "lesson_06")
    (subs / "dave").mkdir()  # no lesson: not graded, no rubric, still a row
    args = ["batch", "--lesson", "6", "--submissions", str(subs), "--out", str(out), "--rubric"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == [*batch.GRADES_COLUMNS, *batch.CRITERIA, "manual_pending", "total", "total_max"]
    by = {r["student"]: r for r in _read_csv(out / "grades.csv")}
    report = json.loads((out / "ann" / "rubric.json").read_text())
    row = by["ann"]
    assert row["status"] == "graded" and row["manual_pending"] == "yes" and row["conceptual_clarity"] == ""
    assert float(row["implementation"]) == report["criteria"]["implementation"]["score"] > 0
    assert float(row["total"]) == report["score"] == sum(float(row[c]) for c in batch.CRITERIA if row[c])
    assert float(row["total_max"]) == report["max_score"]
    assert by["dave"]["status"] == "not graded" and by["dave"]["total"] == by["dave"]["manual_pending"] == ""
    course = out / "nbgrader"
    assert (course / "gradebook.db").is_file() and (course / "submitted" / "ann" / "lesson_06" / "lab_rope.ipynb").is_file()
    assert f"cd {course} && " in first.stdout and "server --ServerApp.default_url=/formgrader" in first.stdout
    assert "class course: " in first.stdout and "1 merged" in first.stdout
    mtime = (out / "ann" / "rubric.json").stat().st_mtime_ns
    again = run_cli(*args)
    assert again.returncode == 0 and "1 graded (1 from earlier runs)" in again.stdout and "1 unchanged" in again.stdout
    assert (out / "ann" / "rubric.json").stat().st_mtime_ns == mtime, "an unchanged submission's rubric is reused"
    merged = run_cli("gradebook", "--lesson", "06", "--out", str(out))
    assert merged.returncode == 0, merged.stderr
    # The reference notebook's answer cells are unchanged from the source: nbgrader itself scores them 0, needing
    # no manual grade, so the class gradebook makes conceptual clarity final at 0 (formgrader shows the same).
    assert "1 with final rubric scores, 0 manual pending" in merged.stdout, merged.stdout
    ann_row = _read_csv(out / "grades.csv")[0]
    assert (ann_row["conceptual_clarity"], ann_row["manual_pending"]) == ("0", "no"), ann_row
    refused = run_cli(*args, "--call-timeout", "20")
    assert refused.returncode == 2 and "drop --call-timeout" in refused.stderr
