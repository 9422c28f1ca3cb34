"""Lab notebooks through real nbgrader: generation, headless execution, sandboxed autograding.

Layout: a student keeps the notebooks and lab files in labs/lesson_NN/ and the graded modules in
exercises/lesson_NN/; the autograder reads both (a flat lesson_NN/ folder still works)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from graders.engine import labs, lessons
from labkit import exercises
from tests.conftest import REPO

SOURCE = REPO / "solutions_private" / "lesson_03"
NOTEBOOK = "01_attention_playground.ipynb"
MODULES = ("attention", "lab_experiment")


def lesson_copy(tmp: Path, notebook: Path, code_from: Path = SOURCE) -> Path:
    """A flat lesson_03/ folder (notebook, module and lab file side by side)."""
    folder = tmp / "lesson_03"
    folder.mkdir(parents=True)
    shutil.copy(notebook, folder / NOTEBOOK)
    for stem in MODULES:
        shutil.copy(code_from / f"{stem}.py", folder / f"{stem}.py")
    return folder


def repo_copy(tmp: Path, notebook: Path, code_from: Path = SOURCE) -> tuple[Path, Path]:
    """A student repository: exercises/lesson_03/attention.py, labs/lesson_03/{notebook, lab_experiment.py};
    returns (graded folder, lab folder) as the autograder finds them."""
    (tmp / "exercises" / "lesson_03").mkdir(parents=True)
    (tmp / "labs" / "lesson_03").mkdir(parents=True)
    shutil.copy(code_from / "attention.py", tmp / "exercises" / "lesson_03" / "attention.py")
    shutil.copy(code_from / "lab_experiment.py", tmp / "labs" / "lesson_03" / "lab_experiment.py")
    shutil.copy(notebook, tmp / "labs" / "lesson_03" / NOTEBOOK)
    lesson = lessons.load("03")
    return lessons.find_lesson_dir(tmp, lesson), labs.find_lab_dir(tmp, lesson)


def autograde_repo(graded: Path, lab: Path, out: Path) -> tuple[list[labs.NotebookGrade], str]:
    return labs.autograde(REPO, "03", graded, ("attention",), out, lab_dir=lab, lab_modules=("lab_experiment",))


def test_student_notebook_hides_solutions_and_hidden_tests():
    text = (REPO / "labs" / "lesson_03" / NOTEBOOK).read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "clamp_min(1e-30).log()" not in text and "triu(1)" not in text
    assert "raise NotImplementedError()" in text


ALL_NOTEBOOKS = sorted((REPO / "solutions_private").glob("lesson_[0-9][0-9]/*.ipynb"))
KERNELSPEC = {"name": "llm-course", "display_name": "LLM course (.venv)", "language": "python"}


@pytest.mark.parametrize("folder", ["solutions_private", "labs"])
def test_every_notebook_runs_on_the_course_kernel(folder: str):
    notebooks = sorted((REPO / folder).glob("lesson_[0-9][0-9]/*.ipynb"))
    assert len(notebooks) == len(ALL_NOTEBOOKS) > 0
    for path in notebooks:
        assert json.loads(path.read_text())["metadata"]["kernelspec"] == KERNELSPEC, path
    assert labs.KERNEL_NAME == KERNELSPEC["name"]


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_first_code_cell_finds_the_exercises_before_importing_them(notebook: Path):
    """Decision 2: `exercises("NN")` runs before the student's modules and the lab file are imported."""
    nn = notebook.parent.name.removeprefix("lesson_")
    lesson = lessons.load(nn)
    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code")
    lines = cell.source.splitlines()
    call = next(i for i, ln in enumerate(lines) if f'exercises("{nn}")' in ln)
    assert any(ln.startswith("from labkit import") and "exercises" in ln for ln in lines[:call])
    student = [i for i, ln in enumerate(lines) for m in (*lesson.sandbox_modules, *lesson.lab_modules)
               if ln.startswith((f"import {m}", f"from {m} import"))]
    assert student and min(student) > call, cell.source


def test_exercises_is_found_from_the_lab_folder_and_absent_in_a_flat_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    found = exercises("03", REPO / "labs" / "lesson_03" / "lab_experiment.py")
    assert found == REPO / "exercises" / "lesson_03" and sys.path[0] == str(found)
    monkeypatch.chdir(REPO / "labs" / "lesson_03")  # a notebook's kernel starts in its folder
    assert exercises("3") == found
    flat = tmp_path / "lesson_03"
    flat.mkdir()
    monkeypatch.chdir(flat)
    assert exercises("03") is None and exercises("lesson_03", flat / "lab_experiment.py") is None


def test_find_lab_dir_prefers_labs_and_refuses_links(tmp_path: Path):
    lesson = lessons.load("03")
    graded, lab = repo_copy(tmp_path / "repo", SOURCE / NOTEBOOK)
    assert graded == (tmp_path / "repo" / "exercises" / "lesson_03").resolve()
    assert lab == (tmp_path / "repo" / "labs" / "lesson_03").resolve()
    flat = lesson_copy(tmp_path / "flat", SOURCE / NOTEBOOK)
    assert labs.find_lab_dir(flat.parent, lesson) == labs.find_lab_dir(flat, lesson) == flat.resolve()
    linked = tmp_path / "linked"
    (linked / "exercises" / "lesson_03").mkdir(parents=True)
    (linked / "labs").mkdir()
    (linked / "labs" / "lesson_03").symlink_to(REPO / "solutions_private" / "lesson_03")
    with pytest.raises(lessons.GradingSetupError, match="symbolic link"):
        labs.find_lab_dir(linked, lesson)


def test_autograde_reads_notebooks_and_lab_files_from_the_lab_folder(tmp_path: Path):
    graded, lab = repo_copy(tmp_path, SOURCE / NOTEBOOK)
    inputs = labs._inputs(REPO, "03", graded, ("attention",), lab, ("lab_experiment",))
    assert inputs == {"attention.py": graded / "attention.py", "lab_experiment.py": lab / "lab_experiment.py",
                      NOTEBOOK: lab / NOTEBOOK}


def test_sandboxed_kernelspec_is_the_course_kernel(tmp_path: Path):
    path = labs._kernelspec(tmp_path, sandbox=True)
    spec = json.loads((path / "kernels" / "llm-course" / "kernel.json").read_text())
    assert "kernel_launch.py" in " ".join(spec["argv"]) and not (path / "kernels" / "python3").exists()


def student_project(tmp: Path, notebook: Path) -> Path:
    """A student repository holding the reference code: exercises/lesson_NN (modules, data), labs/lesson_NN."""
    nn = notebook.parent.name
    lesson = lessons.load(nn)
    ex, lab = tmp / "exercises" / nn, tmp / "labs" / nn
    ex.mkdir(parents=True)
    lab.mkdir(parents=True)
    for stem in lesson.sandbox_modules:
        shutil.copy(notebook.parent / f"{stem}.py", ex / f"{stem}.py")
    if (notebook.parent / "data").is_dir():
        shutil.copytree(notebook.parent / "data", ex / "data")
    for stem in lesson.lab_modules:
        shutil.copy(notebook.parent / f"{stem}.py", lab / f"{stem}.py")
    shutil.copy(notebook, lab / notebook.name)
    return lab / notebook.name


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_reference_notebooks_run_headless(tmp_path: Path, monkeypatch, notebook: Path):
    """Every lab notebook executes top to bottom (nbclient) in the student layout, on the kernel its
    metadata names (`llm-course`, registered here in a private JUPYTER_PATH), without flooding its outputs."""
    path = student_project(tmp_path / "project", notebook)
    spec = tmp_path / "jupyter" / "kernels" / "llm-course"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "LLM course (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("LABKIT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(path.parent)}}).execute()
    runs = sorted((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
    assert runs and all((r / "summary.json").exists() for r in runs), "a lab notebook must log its runs with labkit"
    pictures = [p for r in runs for p in (r / "artifacts").glob("*.png")]
    assert pictures and all(p.stat().st_size > 1000 for p in pictures), "a lab notebook must save its figures"
    for cell in nb.cells:  # progress bars are widgets (ipywidgets), not one stream output per update
        streams = [o for o in cell.get("outputs", []) if o.output_type == "stream"]
        assert len(streams) <= 6, f"{len(streams)} stream outputs in one cell: {cell.source[:80]!r}"


@pytest.fixture(scope="module")
def graded_reference(tmp_path_factory) -> tuple[list[labs.NotebookGrade], str, Path]:
    tmp = tmp_path_factory.mktemp("ag")
    out = tmp / "out"
    grades, note = autograde_repo(*repo_copy(tmp / "sub", SOURCE / NOTEBOOK), out)  # the student layout
    return grades, note, out


@pytest.mark.slow
def test_manual_grades_survive_a_regrade_of_the_same_submission(tmp_path: Path):
    """Formgrader's manual grades are read back; re-grading an unchanged submission keeps them."""
    from nbgrader.api import Gradebook

    graded, lab = repo_copy(tmp_path / "sub", SOURCE / NOTEBOOK)
    out = tmp_path / "out"
    (first,), _ = autograde_repo(graded, lab, out)
    assert first.manual_score is None, "nothing graded by hand yet"
    stem = NOTEBOOK.removesuffix(".ipynb")
    with Gradebook(f"sqlite:///{out / 'nbgrader' / 'gradebook.db'}", labs.COURSE_ID) as gb:  # what formgrader does
        grade = gb.find_grade("reflection", stem, "lesson_03", labs.STUDENT)
        grade.manual_score = 2.5
        gb.db.commit()
    (again,), note = autograde_repo(graded, lab, out)
    assert again.manual_score == 2.5 and again.score == first.score and "unchanged" in note
    with open(lab / "lab_experiment.py", "a") as f:
        f.write("\n# a changed lab file\n")
    (changed,), note = autograde_repo(graded, lab, out)
    assert changed.manual_score is None and "unchanged" not in note, "a changed lab file is graded afresh"
    nb = nbformat.read(lab / NOTEBOOK, as_version=4)
    nb.cells[-1].source = "A different reflection."
    nbformat.write(nb, lab / NOTEBOOK)
    (changed,), note = autograde_repo(graded, lab, out)
    assert changed.manual_score is None and "unchanged" not in note, "a changed notebook is graded afresh"


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
    folder = lesson_copy(tmp_path / "sub", REPO / "labs" / "lesson_03" / NOTEBOOK)
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
