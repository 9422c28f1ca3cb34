"""Lab notebooks through real nbgrader: student versions, and sandboxed autograding.

The source notebooks (nbgrader cell metadata, ``### BEGIN SOLUTION`` and ``### BEGIN
HIDDEN TESTS`` regions) live in ``solutions_private/lesson_NN/``. The nbgrader course
directory and its config are generated here, never kept by hand:

- ``generate``: ``nbgrader generate_assignment`` in a throw-away course; its release
  notebooks become ``labs/lesson_NN/*.ipynb`` (``llm-grade sync`` writes them and
  ``sync --check`` covers them).
- ``autograde``: a fresh course per submission under ``OUT/nbgrader/`` with a real
  SQLite gradebook; ``nbgrader autograde`` runs as the grader inside an empty network
  namespace with loopback up (the kernel talks to nbgrader over 127.0.0.1), and the
  kernel that runs student code is started through a sandboxing kernelspec
  (``kernel_launch.py``: the worker's launcher, allow-list file system, a uid and cgroup of
  its own). A fresh gradebook per run means a failed run can never leave a stale score. Manual cells stay ungraded for nbgrader's formgrader.

A submission keeps its notebooks and lab files in ``labs/lesson_NN/`` (:func:`find_lab_dir`) and its
graded modules in ``exercises/lesson_NN/``; the kernel gets them all flat in one folder, where
``labkit.exercises`` finds no ``exercises/`` and the imports resolve beside the notebook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

COURSE_ID = "llm-course"
KERNEL_NAME = "llm-course"  # every notebook's kernelspec name; `make kernel` registers it, the autograder shadows it
STUDENT = "student"
AUTOGRADE_TIMEOUT = 600
ENGINE_DIR = Path(__file__).resolve().parent


class LabError(Exception):
    """A notebook could not be generated or graded for a reason the grader owns."""


def source_notebooks(root: Path, lesson: str) -> list[Path]:
    return sorted((root / "solutions_private" / f"lesson_{lesson}").glob("*.ipynb"))


def find_lab_dir(submission: Path, lesson) -> Path:
    """The submission's lab folder: SUBMISSION/labs/lesson_NN, else its lesson folder (a flat lesson_NN/).

    ``lesson`` is a :class:`graders.engine.lessons.Lesson`. As in ``lessons.find_lesson_dir``, no
    step below the (instructor-given, resolved) submission path may be a symbolic link: a linked
    ``labs/`` could point at the reference solutions or a classmate's work.
    """
    from graders.engine import lessons, safepath

    root = submission.resolve()
    if root.is_dir() and root.name != lesson.dirname:
        rel = Path("labs", lesson.dirname)
        try:
            found = safepath.kind(root, rel)
        except safepath.UnsafePath as exc:
            raise lessons.GradingSetupError(f"submission not graded: {exc}") from None
        except PermissionError:
            raise lessons.GradingSetupError(f"submission folder {root / rel} is not readable") from None
        if found == "dir":
            return root / rel
    return lessons.find_lesson_dir(submission, lesson)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"  # nbgrader calls `alembic`
    return env


def _nbgrader(course: Path, *args: str, env: dict | None = None, wrap: list[str] | None = None, timeout: float = 300):
    cmd = [*(wrap or []), sys.executable, "-m", "nbgrader", *args, "--force"]
    return subprocess.run(cmd, cwd=course, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def make_course(course: Path, root: Path, lesson: str) -> list[Path]:
    """A fresh nbgrader course with lesson NN's source notebooks, assignment generated."""
    if course.exists():
        shutil.rmtree(course)
    (course / "source" / f"lesson_{lesson}").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
        f"c.ExecutePreprocessor.timeout = {AUTOGRADE_TIMEOUT}\n"
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE\\nraise NotImplementedError()'}\n"
        f"c.ExecutePreprocessor.kernel_name = {KERNEL_NAME!r}\n"  # never a kernel the submission names
    )
    notebooks = source_notebooks(root, lesson)
    for nb in notebooks:
        shutil.copy(nb, course / "source" / f"lesson_{lesson}" / nb.name)
    if notebooks:
        proc = _nbgrader(course, "generate_assignment", f"lesson_{lesson}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise LabError(f"nbgrader generate_assignment failed for lesson {lesson}: {' | '.join(tail)}")
    return notebooks


def student_notebooks(root: Path, only: str | None = None) -> dict[Path, str]:
    """labs/lesson_NN/<name>.ipynb -> contents, as nbgrader releases them."""
    files: dict[Path, str] = {}
    for lesson_dir in sorted((root / "solutions_private").glob("lesson_[0-9][0-9]")):
        lesson = lesson_dir.name.removeprefix("lesson_")
        if (only is not None and lesson != only) or not source_notebooks(root, lesson):
            continue
        with tempfile.TemporaryDirectory(prefix="llmg-nbgen-") as tmp:
            course = Path(tmp) / "course"
            for nb in make_course(course, root, lesson):
                released = course / "release" / f"lesson_{lesson}" / nb.name
                files[Path("labs") / lesson_dir.name / nb.name] = released.read_text(encoding="utf-8")
    return files


@dataclass
class NotebookGrade:
    notebook: str
    score: float
    max_score: float  # autograded cells only
    manual_max: float  # points for the instructor in formgrader
    cells: list[dict]
    problem: str | None = None
    manual_score: float | None = None  # None until every manual cell is graded in formgrader


def _kernelspec(course: Path, sandbox: bool) -> Path:
    """The notebooks' kernelspec (`llm-course`), starting the kernel through the sandbox (see kernel_launch.py).

    It sits first on JUPYTER_PATH, so it shadows a `llm-course` kernel registered by `make kernel`."""
    spec_dir = course / ".jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-I", str(ENGINE_DIR / "kernel_launch.py"), "{connection_file}"]
    if not sandbox:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "Python 3 (sandboxed)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir.parent.parent


def _inputs(root: Path, lesson: str, submission_lesson_dir: Path, modules: tuple[str, ...],
            lab_dir: Path | None, lab_modules: tuple[str, ...]) -> dict[str, Path]:
    """File name in the kernel's folder -> the submission file it comes from (present or not).

    Notebooks and lab modules come from the lab folder, graded modules from the lesson folder;
    a lab module wins over a graded module of the same stem (the lab's own file)."""
    lab = lab_dir or submission_lesson_dir
    files = {f"{stem}.py": submission_lesson_dir / f"{stem}.py" for stem in modules}
    files.update((f"{stem}.py", lab / f"{stem}.py") for stem in lab_modules)
    files.update((nb.name, lab / nb.name) for nb in source_notebooks(root, lesson))
    return files


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def autograde(root: Path, lesson: str, submission_lesson_dir: Path, modules: tuple[str, ...], out_dir: Path,
              hide: tuple[Path, ...] = (), provided: dict[str, Path] | None = None, lab_dir: Path | None = None,
              lab_modules: tuple[str, ...] = ()) -> tuple[list[NotebookGrade], str]:
    """Autograde every lab notebook of ``lesson`` in the submission; (grades, sandbox note).

    ``submission_lesson_dir`` holds the graded ``modules`` (exercises/lesson_NN); ``lab_dir``
    (:func:`find_lab_dir`; default: the lesson folder) holds the notebooks and ``lab_modules``.
    ``provided`` (stem -> trusted reference file) are the files given complete to students: the
    kernel gets the reference's copy, never the student's.

    The course is built in a temporary folder (the output folder may sit inside the
    instructor's tree, which the kernel must not see) and copied to ``OUT/nbgrader/``
    afterwards, gradebook included, for the formgrader.
    """
    from graders.engine import launcher, runroot, sandbox

    dest = out_dir / "nbgrader"
    provided = provided or {}
    inputs = {name: src for name, src in _inputs(root, lesson, submission_lesson_dir, modules, lab_dir, lab_modules).items()
              if name.removesuffix(".py") not in provided}
    reused = _unchanged_course(dest, root, lesson, inputs)
    if reused is not None:
        return reused, "notebook grades read from OUT/nbgrader (submission unchanged since it was autograded)"
    mode, weakened = launcher.choose()  # SandboxUnavailable under root without a sandbox (fail closed)
    with runroot.run_root() as run, tempfile.TemporaryDirectory(prefix="nbcourse-", dir=run) as tmp:
        os.chmod(tmp, 0o755)  # the kernel's uid must reach its notebook folder (bubblewrap binds it as that uid)
        course = Path(tmp) / "course"
        notebooks = make_course(course, root, lesson)  # fresh gradebook: no stale score survives
        if not notebooks:
            return [], "no lab notebooks for this lesson"
        submitted = course / "submitted" / STUDENT / f"lesson_{lesson}"
        submitted.mkdir(parents=True)
        # The notebook imports the lesson's modules and lab files from its own folder: all flat here.
        for name, src in inputs.items():
            if _regular(src):
                shutil.copyfile(src, submitted / name)
        missing = [nb.name for nb in notebooks if not (submitted / nb.name).is_file()]
        for stem, trusted in provided.items():
            shutil.copy(trusted, submitted / f"{stem}.py")
        shutil.copytree(sandbox.REPO_ROOT / "labkit", submitted / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
        # The kernel sees an allow-list (system, venv, its notebook folder): never the sources,
        # hidden tests, gradebook or another kernel's connection file; it runs as a uid of its own.
        strong = mode != "none" or os.geteuid() == 0
        env = _env()
        env["JUPYTER_PATH"] = str(_kernelspec(course, strong))
        env["JUPYTER_RUNTIME_DIR"] = str(course / ".runtime")
        env["HOME"] = str(course / ".home")
        for d in (course / ".runtime", course / ".home"):
            d.mkdir(exist_ok=True)
        wrap, note = None, f"notebook kernel: not sandboxed ({weakened})"
        if strong:
            note = f"notebook kernel: launcher {mode}, file-system allow-list, own uid, cgroup, private /tmp and IPC"
            if weakened:
                note = f"notebook kernel: launcher {mode}, WEAKENED: {weakened}"
        if os.geteuid() == 0 and shutil.which("unshare"):
            # nbgrader (trusted) in an empty network namespace with loopback up; the kernel shares it.
            wrap = ["unshare", "--net", "--fork", "--kill-child", sys.executable, "-I", str(ENGINE_DIR / "lo_up.py")]
            note += "; empty network namespace (loopback up)"
        problem = None
        if len(missing) < len(notebooks):
            proc = _nbgrader(course, "autograde", f"lesson_{lesson}", "--student", STUDENT, env=env, wrap=wrap,
                             timeout=AUTOGRADE_TIMEOUT)
            (course / "autograde.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                problem = f"nbgrader autograde failed (see {out_dir / 'nbgrader' / 'autograde.log'})"
        grades = [_read_grade(course, lesson, nb.name, nb.name in missing, problem) for nb in notebooks]
        (course / "graded-from.json").write_text(json.dumps({"problem": problem, "missing": missing}))
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(course, dest, ignore=shutil.ignore_patterns(".runtime", ".home", ".jupyter", "labkit", "__pycache__"))
    return grades, note


def _unchanged_course(dest: Path, root: Path, lesson: str, inputs: dict[str, Path]) -> list[NotebookGrade] | None:
    """The grades in an earlier OUT/nbgrader if the submission's notebooks, modules and lab files
    (``inputs``: name in the kernel's folder -> submission file) are byte-identical to what was
    autograded there: re-grading would wipe the instructor's manual grades, and a changed
    submission must be graded afresh."""
    record = dest / "graded-from.json"
    submitted = dest / "submitted" / STUDENT / f"lesson_{lesson}"
    if not record.exists():
        return None
    for name, new in inputs.items():
        old, present = submitted / name, _regular(new)
        if present != old.is_file() or (present and new.read_bytes() != old.read_bytes()):
            return None
    info = json.loads(record.read_text())
    return [_read_grade(dest, lesson, nb.name, nb.name in info["missing"], info["problem"])
            for nb in source_notebooks(root, lesson)]


def _read_grade(course: Path, lesson: str, name: str, missing: bool, problem: str | None) -> NotebookGrade:
    from nbgrader.api import Gradebook, MissingEntry

    stem = name.removesuffix(".ipynb")
    autograded = course / "autograded" / STUDENT / f"lesson_{lesson}" / name
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as gb:
        nb_def = gb.find_notebook(stem, f"lesson_{lesson}")
        cells, score, max_score, manual_max = [], 0.0, 0.0, 0.0
        why = "notebook missing from the submission" if missing else problem
        if why is None and not autograded.exists():
            why = "nbgrader produced no autograded notebook"
        manual_scores: list[float | None] = []
        for cell in nb_def.grade_cells:
            auto = cell.cell_type == "code"
            try:
                grade = gb.find_grade(cell.name, stem, f"lesson_{lesson}", STUDENT) if why is None else None
            except MissingEntry:
                grade = None
            if not auto:
                manual_max += cell.max_score
                given = None if grade is None or grade.manual_score is None else float(grade.manual_score)
                manual_scores.append(given)
                cells.append({"cell": cell.name, "max_score": cell.max_score, "score": given, "manual": True})
                continue
            max_score += cell.max_score
            got = float(grade.score or 0.0) if grade is not None else 0.0
            score += got
            cells.append({"cell": cell.name, "max_score": cell.max_score, "score": got, "manual": False})
        manual = None if not manual_scores or None in manual_scores else sum(manual_scores)  # type: ignore[arg-type]
    return NotebookGrade(name, score, max_score, manual_max, cells, why, manual)
