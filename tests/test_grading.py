"""The engine end to end: full marks for the reference, zero for the stubs, clear errors on bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from graders.engine import lessons, provenance, results
from graders.engine.run import grade
from tests.conftest import REPO, SPEED_LESSONS, SUBMISSIONS, lesson_param, make_submission, run_cli

LESSONS = lessons.available()
GRADESCOPE_TEST_KEYS = {"name", "number", "score", "max_score", "status", "output", "tags", "visibility"}


def assert_full_marks(res: dict) -> None:
    lost = {t["name"]: t["output"] for t in res["tests"] if t["score"] < t["max_score"]}
    assert not lost and res["score"] == res["max_score"] > 0, lost


def check_schema(res: dict) -> None:
    assert {"score", "max_score", "execution_time", "output", "tests"} <= set(res)
    assert res["tests"], "no tests in results"
    for t in res["tests"]:
        assert GRADESCOPE_TEST_KEYS - {"status"} <= set(t), t
        if "status" in t:  # a verdict on the student's code
            assert t["status"] in ("passed", "failed") and 0 <= t["score"] <= t["max_score"]
        else:  # Gradescope allows no status: a skipped test, or one the grader could not judge
            assert {"skipped", "grading problem"} & set(t["tags"]) and t["score"] == 0, t
        if "skipped" in t["tags"]:
            assert t["max_score"] == 0 and t["output"].startswith("skipped, not counted") and "status" not in t, t
    assert res["score"] == pytest.approx(sum(t["score"] for t in res["tests"]))
    prov = res["extra_data"]["provenance"]
    assert {"lesson", "engine", "graders", "files", "keyword", "call_timeout", "problems"} <= set(prov)


@pytest.mark.parametrize("lesson", [lesson_param(n) for n in LESSONS])
def test_reference_solution_gets_full_marks(grade_lesson, lesson: str):
    res = grade_lesson(lesson, REPO / "solutions_private")
    check_schema(res)
    assert_full_marks(res)


def _alternatives() -> list:
    """tests/submissions/lesson_NN_alternative*/: other correct implementations the spec allows (07, 11-18)."""
    found = []
    for folder in sorted(SUBMISSIONS.glob("lesson_*_alternative*")):
        nn = folder.name.split("_")[1]
        if nn in LESSONS:
            marks = (pytest.mark.serial,) if nn in SPEED_LESSONS else ()
            found.append(pytest.param(nn, folder, marks=marks, id=f"lesson_{nn}-{folder.name.split('_', 2)[2]}"))
    return found


@pytest.mark.parametrize(("lesson", "folder"), _alternatives())
def test_alternative_correct_implementations_get_full_marks(grade_lesson, lesson: str, folder: Path):
    """The graders accept every correct implementation the spec allows, not only the reference's way."""
    assert_full_marks(grade_lesson(lesson, folder))


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
    assert no_verdict and all(t["score"] == 0 and "status" not in t and "grading problem" in t["tags"] for t in no_verdict)
    assert "passed its 6 s limit" in res["output"]
    assert any("passed its 6 s limit" in p for p in res["extra_data"]["provenance"]["problems"])
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


# ---------------------------------------------------------------------------- honest verdicts, provenance, links
SCRATCH_STUDENT = '''
def add(a, b):
    return a + b


def boom():
    raise ValueError("student bug")


def huge(n):
    return "x" * n
'''

SCRATCH_TESTS = '''
import pytest
import torch

HUGE = 12_000_000  # under the wire's 16 MiB structure cap, so it reaches the grader


@pytest.fixture
def broken_reference():
    raise RuntimeError("the reference model could not be built: SECRET-REFERENCE-DETAIL")


@pytest.mark.points(1)
def test_right(worker):
    assert worker.call("scratch", "add", (1, 2)) == 3


@pytest.mark.points(2)
def test_wrong(worker):
    assert worker.call("scratch", "add", (1, 1)) == 3, "add(1, 1) should be 3 in this scratch lesson"


@pytest.mark.points(1)
def test_student_raises(worker):
    worker.call("scratch", "boom")


@pytest.mark.points(4)
def test_reference_breaks(worker):
    assert worker.call("scratch", "add", (1, 2)) == 3
    {}["SECRET-REFERENCE-DETAIL"]  # the grader's own bug (an API change, say): never the student's failure


@pytest.mark.points(1)
def test_fixture_breaks(worker, broken_reference):
    pass


@pytest.mark.points(1)
@pytest.mark.gpu
def test_on_gpu(worker):
    assert torch.cuda.is_available()


@pytest.mark.points(1)
def test_huge_value(worker):
    value = worker.call("scratch", "huge", (HUGE,))
    print(value)  # captured, and shown in grader.log with the failure
    assert value == "short", f"got {value}"
'''


@dataclasses.dataclass(frozen=True)
class ScratchLesson(lessons.Lesson):
    """A real lesson whose hidden tests live in a scratch folder (graded by the real engine and plugin)."""

    folder: Path = Path()

    @property
    def graders_dir(self) -> Path:
        return self.folder


def scratch_lesson(tmp_path: Path, tests: str) -> tuple[ScratchLesson, Path]:
    graders = tmp_path / "graders_scratch"
    graders.mkdir()
    (graders / "test_scratch_hidden.py").write_text(tests)
    sub = make_submission(tmp_path / "student", "03", {"scratch.py": SCRATCH_STUDENT})
    return ScratchLesson(number="03", title="scratch", modules=("scratch",), folder=graders), sub


def test_verdicts_are_honest(tmp_path: Path, grading_server, monkeypatch: pytest.MonkeyPatch, capsys):
    """A grader's own exception is a grading problem (not a fail), a skip is not a pass, messages are short."""
    import torch

    lesson, sub = scratch_lesson(tmp_path, SCRATCH_TESTS)
    res = grade(lesson, sub, tmp_path / "out", server=grading_server)
    check_schema(res)
    by = {t["name"].removeprefix("test_"): t for t in res["tests"]}
    assert (by["right"].get("status"), by["right"]["score"]) == ("passed", 1)
    assert by["wrong"]["status"] == "failed" and by["wrong"]["output"].startswith("add(1, 1) should be 3")
    assert by["student_raises"]["status"] == "failed" and "ValueError" in by["student_raises"]["output"]
    for name, phase in (("reference_breaks", "the grader raised KeyError"), ("fixture_breaks", "setup error: the grader")):
        t = by[name]
        assert "status" not in t and "grading problem" in t["tags"] and t["score"] == 0 and t["max_score"] > 0, t
        assert phase in t["output"] and "not your code" in t["output"], t
        assert "SECRET-REFERENCE-DETAIL" not in t["output"], "a grading problem must not show the grader's message"
    if torch.cuda.is_available():
        assert by["on_gpu"]["status"] == "passed"
    else:
        t = by["on_gpu"]
        assert "status" not in t and "skipped" in t["tags"] and (t["score"], t["max_score"]) == (0, 0), t
    huge = by["huge_value"]
    assert huge["status"] == "failed" and len(huge["output"]) < 1600 and "characters cut" in huge["output"], huge
    log = (tmp_path / "out" / "grader.log").stat().st_size
    assert log < 9 << 20, f"grader.log is {log} bytes: a 12 MB student value must not reach it whole"
    problems = res["extra_data"]["provenance"]["problems"]
    assert problems and "2 test(s) could not be graded" in problems[0]
    assert "grading problem:" in res["output"]
    table = results.table(res)
    assert "NOT FINAL" in table and "grading problem" in table
    assert "passed" not in [ln.split()[-1] for ln in table.splitlines() if "on_gpu" in ln and "skipped" in ln]
    # `llm-grade run` exits 1 when the score is not final (this very result, through the real CLI code).
    from graders.engine import cli, run

    monkeypatch.setenv("LLMG_ALLOW_UNSANDBOXED", "0")  # the CLI sets it; restored after the test
    monkeypatch.setattr(run, "grade", lambda *a, **k: res)
    monkeypatch.setattr(lessons, "load", lambda nn: lesson)
    assert cli.main(["run", "--lesson", "03", "--submission", str(sub), "--out", str(tmp_path / "cli")]) == 1
    assert "grading problem" in capsys.readouterr().out


def test_a_hidden_test_without_points_fails_collection(tmp_path: Path, grading_server):
    lesson, sub = scratch_lesson(tmp_path, "import pytest\n\n@pytest.mark.points(1)\ndef test_a():\n    pass\n\n"
                                           "def test_forgot_points():\n    pass\n")
    res = grade(lesson, sub, tmp_path / "out", server=grading_server)
    assert res["tests"] == [] and res["score"] == res["max_score"] == 0
    problems = res["extra_data"]["provenance"]["problems"]
    assert any("test_forgot_points has no @pytest.mark.points" in p for p in problems), problems
    assert "nothing could be graded" in res["output"]


def test_provenance_records_what_was_graded(tmp_path: Path, grading_server):
    sub = make_submission(tmp_path / "s", "03", {"attention.py": (REPO / "exercises/lesson_03/attention.py").read_text()})
    res = grade(lessons.load("3"), sub, tmp_path / "out", keyword="softmax", call_timeout=20, server=grading_server)
    prov = res["extra_data"]["provenance"]
    text = (sub / "lesson_03" / "attention.py").read_bytes()
    assert prov["lesson"] == "03" and prov["keyword"] == "softmax" and prov["call_timeout"] == 20.0
    assert prov["files"] == {"attention.py": "sha256:" + hashlib.sha256(text).hexdigest()}
    assert prov["engine"].startswith("sha256:") and prov["graders"].startswith("sha256:") and prov["problems"] == []
    want = provenance.expected(lessons.load("03"), sub / "lesson_03", keyword="softmax", call_timeout=20)
    assert provenance.mismatch(res, want) is None
    assert provenance.mismatch(res, {**want, "keyword": None}) == "its keyword differs"
    assert provenance.mismatch(res, provenance.expected(lessons.load("04"), sub / "lesson_03", keyword="softmax",
                                                        call_timeout=20)) is not None


@pytest.mark.parametrize(
    ("layout", "shown"),
    [
        ("exercises/lesson_03", "exercises/lesson_03"),  # the lesson folder itself is a link to the reference
        ("exercises", "exercises"),  # a folder above it is
        ("lesson_03", "lesson_03"),
    ],
)
def test_a_linked_lesson_folder_is_refused(tmp_path: Path, layout: str, shown: str):
    """Before: exercises/lesson_03 -> solutions_private/lesson_03 scored 28/28. Now: not graded, one line."""
    sub = tmp_path / "student"
    link = sub / layout
    link.parent.mkdir(parents=True)
    target = REPO / "solutions_private" / ("lesson_03" if layout.endswith("lesson_03") else "")
    if layout == "exercises":  # exercises -> a tree holding lesson_03/ (the reference)
        target = REPO / "solutions_private"
    link.symlink_to(target)
    proc = run_cli("run", "--lesson", "03", "--submission", str(sub), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stdout
    line = proc.stderr.strip()
    assert "\n" not in line and f"{shown} in {sub} is a symbolic link" in line, line
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_linked_module_file_scores_nothing(tmp_path: Path, grade_lesson):
    sub = tmp_path / "student"
    (sub / "lesson_03").mkdir(parents=True)
    (sub / "lesson_03" / "attention.py").symlink_to(REPO / "solutions_private" / "lesson_03" / "attention.py")
    res = grade_lesson("03", sub)
    assert res["score"] == 0 and res["extra_data"]["provenance"]["files"]["attention.py"].startswith("unreadable")


@pytest.mark.parametrize("given", ["8", "08", "lesson_08", "3", "03", "lesson_03"])
def test_make_grade_accepts_every_spelling_of_a_lesson(given: str):
    """Before: `make grade LESSON=08` wrote to grading-out/lesson_00 (printf read 08 as octal)."""
    proc = subprocess.run(
        ["make", "-n", "-s", "-o", ".venv/.installed", "-o", "sandbox-tools", "grade", f"LESSON={given}", "OUT=/x/out"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    nn = lessons.normalise(given)
    assert f"run --lesson {given} --submission . --out /x/out/lesson_{nn}" in proc.stdout, proc.stdout
