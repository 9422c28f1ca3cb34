"""The class gradebook: per-student nbgrader courses merged into one, manual grades merged back into grades.csv.

Real nbgrader on a tiny synthetic assignment: each student's course is built with
`nbgrader generate_assignment` and `nbgrader autograde`, as labs.autograde builds them; the
instructor's manual grading is simulated by writing `manual_score` through nbgrader's Gradebook
API, the columns formgrader's grade handler writes (and once through the formgrader's own HTTP API).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbgrader.api import Gradebook

from graders.engine import batch, classbook, cli, labs

LESSON = "03"
NAME = f"lesson_{LESSON}"
ANSWER = "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION\n"


def _nb_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _nbgrader(course: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--force"], cwd=course, env=_nb_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def _source_notebook() -> nbformat.NotebookNode:
    def meta(grade_id: str, **flags: object) -> dict:
        return {"nbgrader": {"grade_id": grade_id, "schema_version": 3, "locked": False, "solution": False,
                             "grade": False, "task": False, **flags}}  # fmt: skip

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(ANSWER, metadata=meta("answer", solution=True)),
        nbformat.v4.new_code_cell("assert add(1, 2) == 3", metadata=meta("test_add", grade=True, locked=True, points=1)),
        nbformat.v4.new_markdown_cell("Why does it work?", metadata=meta("explain", solution=True, grade=True, points=2)),
    ]
    return nb


def _template(tmp: Path) -> Path:
    """A per-student course with the assignment generated (labs.make_course's layout), not yet autograded."""
    course = tmp / "template"
    (course / "source" / NAME).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(f"c = get_config()\nc.CourseDirectory.course_id = {labs.COURSE_ID!r}\n")
    nbformat.write(_source_notebook(), course / "source" / NAME / "lab.ipynb")
    _nbgrader(course, "generate_assignment", NAME)
    return course


def _student_course(template: Path, dest: Path, answer: str | None) -> None:
    """The template autograded for one submission (answer None: the notebook is missing)."""
    shutil.copytree(template, dest)
    submitted = dest / "submitted" / labs.STUDENT / NAME
    submitted.mkdir(parents=True)
    missing = []
    if answer is None:
        missing = ["lab.ipynb"]
    else:
        nb = nbformat.read(dest / "release" / NAME / "lab.ipynb", as_version=4)
        nb.cells[0].source = answer
        nb.cells[2].source = "Because addition is what + does in Python."
        nbformat.write(nb, submitted / "lab.ipynb")
        _nbgrader(dest, "autograde", NAME, "--student", labs.STUDENT)
    (dest / "graded-from.json").write_text(json.dumps({"problem": None, "missing": missing}))


STUDENTS = ("alice", "bob", "carol", "dave", "eve", "frank")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT with per-student courses: alice right, bob wrong, carol a copy of alice's, dave without the notebook,
    eve a corrupt gradebook, frank no course at all."""
    tmp = tmp_path_factory.mktemp("classbook")
    template = _template(tmp)
    out = tmp / "out"
    _student_course(template, out / "alice" / "nbgrader", "def add(a, b):\n    return a + b\n")
    _student_course(template, out / "bob" / "nbgrader", "def add(a, b):\n    return a - b\n")
    shutil.copytree(out / "alice" / "nbgrader", out / "carol" / "nbgrader")
    _student_course(template, out / "dave" / "nbgrader", None)
    _student_course(template, out / "eve" / "nbgrader", None)
    (out / "eve" / "nbgrader" / "gradebook.db").write_bytes(b"not a database")
    (out / "frank").mkdir()
    return out


@pytest.fixture
def out(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(built, copy)
    return copy


def _rubric(conceptual: float | None = None) -> dict:
    """A rubric.json as graders.engine.rubric.score writes it (automatic parts scored, conceptual clarity pending)."""
    scores = {"conceptual_clarity": conceptual, "implementation": 30.0, "measurement_quality": 7.5,
              "reproducibility": 20.0, "reflection": 10.0}  # fmt: skip
    tops = {"conceptual_clarity": 15.0, "implementation": 40.0, "measurement_quality": 15.0,
            "reproducibility": 20.0, "reflection": 10.0}  # fmt: skip
    crits = {n: {"name": n, "max": tops[n], "score": scores[n], "found": [], "lost": []} for n in batch.CRITERIA}
    return {"lesson": LESSON, "submission": "x", "score": 67.5, "max_score": 100.0, "automatic_max": 85.0,
            "pending_manual": ["conceptual_clarity"], "grading_problems": [], "criteria": crits,
            "notebook_sandbox": "notebook kernel: test", "rerun": None}  # fmt: skip


def _batch(out: Path, tmp_path: Path, rubric_calls: list[str] | None = None) -> list[batch.Row]:
    """batch --rubric with the hidden tests and the rubric stubbed: each student's course is already in OUT."""
    subs = tmp_path / "subs"
    for name in STUDENTS:
        (subs / name).mkdir(parents=True, exist_ok=True)

    def grade(lesson, folder, out_dir, hide, **kwargs):
        return batch.Row(folder.name, 28.0, 28.0, "", {"tests": [], "output": "", "score": 28, "max_score": 28})

    def score(lesson, folder, out_dir, hide, force=False):
        if folder.name == "frank":
            raise RuntimeError("rubric engine bug")
        (rubric_calls if rubric_calls is not None else []).append(folder.name)
        report = _rubric()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "rubric.json").write_text(json.dumps(report))
        return report

    lesson = SimpleNamespace(number=LESSON, dirname=NAME)  # no lesson folder: only the stubs below grade
    return batch.run_batch(lesson, subs, out, rubric=True, progress=False, grade_student=grade,
                           rubric_student=score)  # fmt: skip


def _grades(out: Path) -> dict[str, dict]:
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def _grade_manually(out: Path, student: str, points: float) -> None:
    """What formgrader's grade handler does for one written answer: manual_score set, no manual grade needed."""
    with Gradebook(f"sqlite:///{out / 'nbgrader' / 'gradebook.db'}", labs.COURSE_ID) as gb:
        grade = gb.find_grade("explain", "lab", NAME, student)
        grade.manual_score, grade.needs_manual_grade = points, False
        gb.db.commit()


@pytest.mark.slow  # real nbgrader autograde and server
def test_merge_builds_one_class_course_with_every_student(out: Path):
    merge = classbook.merge(LESSON, out, list(STUDENTS))
    course = out / "nbgrader"
    assert merge.rebuilt and sorted(merge.merged) == ["alice", "bob", "carol", "dave"], merge
    assert set(merge.skipped) == {"eve", "frank"}
    assert "course not merged" in merge.skipped["eve"] and "no gradebook.db" in merge.skipped["frank"]
    for part in ("source", "release"):
        assert (course / part / NAME / "lab.ipynb").is_file()
    for name in ("alice", "bob", "carol"):
        assert (course / "submitted" / name / NAME / "lab.ipynb").is_file()
        assert (course / "autograded" / name / NAME / "lab.ipynb").is_file()
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", labs.COURSE_ID) as gb:
        assert sorted(s.id for s in gb.students) == ["alice", "bob", "carol", "dave"]
        auto = {s: gb.find_grade("test_add", "lab", NAME, s).auto_score for s in ("alice", "bob", "carol", "dave")}
        assert auto == {"alice": 1.0, "bob": 0.0, "carol": 1.0, "dave": 0.0}
        explain = gb.find_grade("explain", "lab", NAME, "alice")
        assert explain.manual_score is None and explain.needs_manual_grade  # waits for the instructor
        missing = gb.find_grade("explain", "lab", NAME, "dave")
        assert missing.auto_score == 0 and not missing.needs_manual_grade  # nothing to grade: zero, as nbgrader does
    # nbgrader's own command line reads the merged gradebook as a class.
    proc = subprocess.run([sys.executable, "-m", "nbgrader", "db", "student", "list"], cwd=course, env=_nb_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and all(s in proc.stdout + proc.stderr for s in ("alice", "bob", "carol", "dave"))
    command = classbook.formgrader_command(course)
    assert command.startswith(f"cd {course} && ") and "jupyter server" in command


@pytest.mark.slow  # real nbgrader autograde and server
def test_remerge_keeps_manual_grades_of_unchanged_students(out: Path):
    classbook.merge(LESSON, out, list(STUDENTS))
    _grade_manually(out, "alice", 2.0)
    _grade_manually(out, "bob", 1.0)
    nb = out / "bob" / "nbgrader" / "submitted" / labs.STUDENT / NAME / "lab.ipynb"
    nb.write_text(nb.read_text().replace("a - b", "a * b"))  # bob resubmitted and was autograded again
    again = classbook.merge(LESSON, out, list(STUDENTS))
    assert not again.rebuilt and again.merged == ["bob"] and sorted(again.kept) == ["alice", "carol", "dave"]
    with Gradebook(f"sqlite:///{out / 'nbgrader' / 'gradebook.db'}", labs.COURSE_ID) as gb:
        assert gb.find_grade("explain", "lab", NAME, "alice").manual_score == 2.0
        assert gb.find_grade("explain", "lab", NAME, "bob").manual_score is None, "a changed submission is regraded"
    assert "a * b" in (out / "nbgrader" / "submitted" / "bob" / NAME / "lab.ipynb").read_text()


@pytest.mark.slow  # real nbgrader autograde and server
def test_gradebook_merges_manual_grades_pending_and_idempotent(out: Path, tmp_path: Path):
    rows = _batch(out, tmp_path)
    assert (out / "nbgrader" / "gradebook.db").is_file() is False, "run_batch itself only scores; the CLI merges"
    classbook.merge(LESSON, out, [r.student for r in rows if r.rubric is not None])
    header = list(next(csv.reader(open(out / "grades.csv", encoding="utf-8"))))
    assert header == [*batch.GRADES_COLUMNS, *batch.CRITERIA, "manual_pending", "total", "total_max"]
    before = _grades(out)
    assert before["alice"]["manual_pending"] == "yes" and before["alice"]["conceptual_clarity"] == ""
    assert before["alice"]["total"] == "67.5" and before["alice"]["implementation"] == "30"
    _grade_manually(out, "alice", 2.0)  # full marks on the written answer; bob and carol not graded yet
    _grade_manually(out, "carol", 1.0)
    rows, pending = batch.apply_gradebook(LESSON, out)
    after = _grades(out)
    assert after["alice"]["conceptual_clarity"] == "15" and after["alice"]["manual_pending"] == "no"
    assert after["alice"]["total"] == "82.5" and after["carol"]["conceptual_clarity"] == "7.5"
    assert after["bob"]["manual_pending"] == "yes" and after["bob"]["conceptual_clarity"] == ""
    assert "1 manual cell(s) of 2 point(s) await grading" in pending["bob"]
    assert after["dave"]["conceptual_clarity"] == "0" and after["dave"]["manual_pending"] == "no", "no notebook: zero"
    report = json.loads((out / "alice" / "rubric.json").read_text())
    assert report["pending_manual"] == [] and report["score"] == 82.5
    assert report["criteria"]["conceptual_clarity"]["found"] == ["manual grades from formgrader: 2/2"]
    assert "conceptual clarity: 15 / 15" in (out / "alice" / "rubric.md").read_text()
    with Gradebook(f"sqlite:///{out / 'alice' / 'nbgrader' / 'gradebook.db'}", labs.COURSE_ID) as gb:
        assert gb.find_grade("explain", "lab", NAME, labs.STUDENT).manual_score == 2.0, "written back to her course"
    snapshot = {p: p.read_bytes() for p in [out / "grades.csv", *out.glob("*/rubric.json")]}
    batch.apply_gradebook(LESSON, out)
    assert {p: p.read_bytes() for p in snapshot} == snapshot, "merging the manual grades twice changes nothing"


@pytest.mark.slow  # real nbgrader autograde and server
def test_a_broken_course_or_rubric_costs_no_other_row(out: Path, tmp_path: Path):
    calls: list[str] = []
    rows = _batch(out, tmp_path, calls)
    assert [r.student for r in rows] == list(STUDENTS)
    classbook.merge(LESSON, out, [r.student for r in rows if r.rubric is not None])
    _grade_manually(out, "alice", 2.0)
    batch.apply_gradebook(LESSON, out)
    grades = _grades(out)
    assert list(grades) == list(STUDENTS), "one row per student, whatever broke"
    assert grades["frank"]["status"] == "graded" and grades["frank"]["total"] == ""
    assert "rubric not scored: grader error: RuntimeError: rubric engine bug" in grades["frank"]["reason"]
    assert grades["eve"]["manual_pending"] == "yes" and grades["eve"]["implementation"] == "30"
    eve = json.loads((out / "eve" / "rubric.json").read_text())["criteria"]["conceptual_clarity"]["found"]
    assert eve == ["not in the class gradebook: not merged into the class course (see batch's output)"]
    assert grades["alice"]["manual_pending"] == "no"


def test_cli_gradebook_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert cli.main(["gradebook", "--lesson", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no class course at" in err[0] and "--rubric` first" in err[0], err
    (tmp_path / "nbgrader").mkdir()
    (tmp_path / "nbgrader" / "gradebook.db").write_bytes(b"")
    (tmp_path / "grades.json").write_text(json.dumps({"lesson": "05", "rubric": True, "rows": []}))
    assert cli.main(["gradebook", "--lesson", "03", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds lesson 05, not lesson 03" in err[0], err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, token: str, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="GET" if body is None else "PUT",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:  # a local server this test started
        return json.loads(resp.read())


@pytest.mark.slow  # real nbgrader autograde and server
def test_the_formgrader_serves_the_class_and_its_grades_reach_grades_csv(out: Path, tmp_path: Path):
    """The printed command's server (jupyter server + nbgrader's formgrader extension) lists the whole class, and
    a grade written through formgrader's own API is what `gradebook` merges."""
    rows = _batch(out, tmp_path)
    merge = classbook.merge(LESSON, out, [r.student for r in rows if r.rubric is not None])
    port, token = _free_port(), "classbook-test"
    jupyter = Path(sys.executable).with_name("jupyter")
    env = _nb_env() | {"JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt")}
    server = subprocess.Popen([str(jupyter), "server", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                               f"--IdentityProvider.token={token}", "--ServerApp.default_url=/formgrader",
                               *(["--allow-root"] if os.geteuid() == 0 else [])],
                              cwd=merge.course, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(120):
            try:
                subs = _api(port, token, f"/formgrader/api/submissions/{NAME}")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("the formgrader did not answer within 60 s")
        assert sorted(s["student"] for s in subs) == ["alice", "bob", "carol", "dave"]
        notebooks = _api(port, token, f"/formgrader/api/student_notebook_submissions/alice/{NAME}")
        (lab,) = notebooks
        grades = _api(port, token, f"/formgrader/api/grades?submission_id={lab['id']}")
        explain = next(g for g in grades if g["name"] == "explain")
        _api(port, token, f"/formgrader/api/grade/{explain['id']}", {"manual_score": 1.5, "extra_credit": None})
    finally:
        server.terminate()
        server.wait(timeout=30)
    batch.apply_gradebook(LESSON, out)
    assert _grades(out)["alice"]["conceptual_clarity"] == "11.25"
