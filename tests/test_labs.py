"""Lab notebooks through real nbgrader: generation, headless execution, sandboxed autograding."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from graders.engine import labs
from tests.conftest import REPO

SOURCE = REPO / "solutions_private" / "lesson_03"
NOTEBOOK = "01_attention_playground.ipynb"
MODULES = ("attention", "lab_experiment")


def lesson_copy(tmp: Path, notebook: Path, code_from: Path = SOURCE) -> Path:
    folder = tmp / "lesson_03"
    folder.mkdir(parents=True)
    shutil.copy(notebook, folder / NOTEBOOK)
    for stem in MODULES:
        shutil.copy(code_from / f"{stem}.py", folder / f"{stem}.py")
    return folder


def test_student_notebook_hides_solutions_and_hidden_tests():
    text = (REPO / "exercises" / "lesson_03" / NOTEBOOK).read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "clamp_min(1e-30).log()" not in text and "triu(1)" not in text
    assert "raise NotImplementedError()" in text


ALL_NOTEBOOKS = sorted((REPO / "solutions_private").glob("lesson_[0-9][0-9]/*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_reference_notebooks_run_headless(tmp_path: Path, monkeypatch, notebook: Path):
    """Every lab notebook executes top to bottom (nbclient) against the reference code."""
    folder = tmp_path / notebook.parent.name
    shutil.copytree(notebook.parent, folder)
    monkeypatch.setenv("LABKIT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(folder / notebook.name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    runs = sorted((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
    assert runs and all((r / "summary.json").exists() for r in runs), "a lab notebook must log its runs with labkit"
    pictures = [p for r in runs for p in (r / "artifacts").glob("*.png")]
    assert pictures and all(p.stat().st_size > 1000 for p in pictures), "a lab notebook must save its figures"


@pytest.fixture(scope="module")
def graded_reference(tmp_path_factory) -> tuple[list[labs.NotebookGrade], str, Path]:
    tmp = tmp_path_factory.mktemp("ag")
    out = tmp / "out"
    grades, note = labs.autograde(REPO, "03", lesson_copy(tmp / "sub", SOURCE / NOTEBOOK), MODULES, out)
    return grades, note, out


@pytest.mark.slow
def test_manual_grades_survive_a_regrade_of_the_same_submission(tmp_path: Path):
    """Formgrader's manual grades are read back; re-grading an unchanged submission keeps them."""
    from nbgrader.api import Gradebook

    folder = lesson_copy(tmp_path / "sub", SOURCE / NOTEBOOK)
    out = tmp_path / "out"
    (first,), _ = labs.autograde(REPO, "03", folder, MODULES, out)
    assert first.manual_score is None, "nothing graded by hand yet"
    stem = NOTEBOOK.removesuffix(".ipynb")
    with Gradebook(f"sqlite:///{out / 'nbgrader' / 'gradebook.db'}", labs.COURSE_ID) as gb:  # what formgrader does
        grade = gb.find_grade("reflection", stem, "lesson_03", labs.STUDENT)
        grade.manual_score = 2.5
        gb.db.commit()
    (again,), note = labs.autograde(REPO, "03", folder, MODULES, out)
    assert again.manual_score == 2.5 and again.score == first.score and "unchanged" in note
    nb = nbformat.read(folder / NOTEBOOK, as_version=4)
    nb.cells[-1].source = "A different reflection."
    nbformat.write(nb, folder / NOTEBOOK)
    (changed,), note = labs.autograde(REPO, "03", folder, MODULES, out)
    assert changed.manual_score is None and "unchanged" not in note, "a changed submission is graded afresh"


@pytest.mark.slow
def test_autograde_gives_reference_full_marks(graded_reference):
    grades, note, out = graded_reference
    (grade,) = grades
    assert grade.problem is None and grade.score == grade.max_score == 4.0
    assert grade.manual_max == 3.0, "the reflection cell waits for the formgrader"
    assert (out / "nbgrader" / "gradebook.db").exists() and (out / "nbgrader" / "autograded").is_dir()
    if os.geteuid() == 0:
        assert "own uid" in note


@pytest.mark.slow
def test_autograde_gives_student_version_zero(tmp_path: Path):
    folder = lesson_copy(tmp_path / "sub", REPO / "exercises" / "lesson_03" / NOTEBOOK)
    (grade,), _ = labs.autograde(REPO, "03", folder, MODULES, tmp_path / "out")
    assert grade.max_score == 4.0 and grade.score == 0.0


@pytest.mark.slow
def test_failed_autograde_leaves_no_stale_score(graded_reference, tmp_path: Path):
    _, _, out = graded_reference
    nb = nbformat.read(SOURCE / NOTEBOOK, as_version=4)
    entropy = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "attention_entropy")
    entropy.source = "import os\nos._exit(1)  # kills the kernel"
    broken = tmp_path / "broken.ipynb"
    nbformat.write(nb, broken)
    (grade,), _ = labs.autograde(REPO, "03", lesson_copy(tmp_path / "sub", broken), MODULES, out)  # same OUT
    assert grade.score == 0.0, "a failed autograde must not keep the earlier full score"
    assert grade.problem is not None or all(c["score"] == 0 for c in grade.cells if not c["manual"])


@pytest.mark.slow
def test_missing_notebook_is_reported(tmp_path: Path):
    folder = lesson_copy(tmp_path / "sub", SOURCE / NOTEBOOK)
    (folder / NOTEBOOK).unlink()
    (grade,), _ = labs.autograde(REPO, "03", folder, MODULES, tmp_path / "out")
    assert grade.score == 0.0 and grade.problem == "notebook missing from the submission"


@pytest.mark.slow
def test_kernel_cannot_read_the_gradebook_or_sources(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("the kernel sandbox needs a root grader")
    nb = nbformat.read(SOURCE / NOTEBOOK, as_version=4)
    entropy = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "attention_entropy")
    entropy.source = (
        "import glob, json, os\n"
        "def readable(p):\n"
        "    try:\n"
        "        return bool(os.listdir(p)) if os.path.isdir(p) else bool(open(p, 'rb').read(1))\n"
        "    except OSError:\n"
        "        return False\n"
        "seen = {p: readable(p) for p in glob.glob('../../../**', recursive=True)}\n"
        "leaks = [p for p, ok in seen.items() if ok and ('source' in p or 'gradebook' in p or 'release' in p)]\n"
        f"leaks += [p for p in ({str(REPO / 'solutions_private')!r},) if readable(p)]\n"
        "assert not leaks, leaks\n"
        "assert 60000 <= os.getuid() < 65534\n"
        "def attention_entropy(weights):\n"
        "    return -(weights * weights.clamp_min(1e-30).log()).sum(dim=-1)\n"
    )
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    (grade,), _ = labs.autograde(REPO, "03", lesson_copy(tmp_path / "sub", path), MODULES, tmp_path / "out")
    cells = {c["cell"]: c["score"] for c in grade.cells}
    assert cells["test_attention_entropy"] == 2.0, json.dumps(grade.cells)


@pytest.mark.slow
def test_notebooks_get_the_reference_copy_of_provided_files(tmp_path: Path):
    """Lesson 05's blocks.py is given complete: the kernel imports the reference's, never the student's."""
    from graders.engine import lessons

    lesson = lessons.load("05")
    assert "blocks" in lesson.provided
    reference = REPO / "solutions_private" / "lesson_05"
    folder = tmp_path / "sub" / "lesson_05"
    folder.mkdir(parents=True)
    for path in [*reference.glob("*.ipynb"), *(reference / f"{m}.py" for m in lesson.modules + lesson.lab_modules)]:
        shutil.copy(path, folder / path.name)
    (folder / "blocks.py").write_text("raise ImportError('a student copy of a provided file')\n")
    grades, _ = labs.autograde(REPO, "05", folder, lesson.modules + lesson.lab_modules, tmp_path / "out",
                               provided=dict(lesson.provided))
    assert grades and all(g.problem is None and g.score == g.max_score > 0 for g in grades), grades
