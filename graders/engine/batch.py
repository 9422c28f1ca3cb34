"""Grade one lesson for a whole class: one results.json per student, grades.csv and pass_rates.csv.

Each student is graded by :func:`graders.engine.run.grade` (its own grading process and
sandboxed worker), with the submissions and output folders hidden from the worker so no
student can read another's work. Per-student results.json files are the durable state:
a re-run skips students that have one (unless ``force``) and rebuilds every CSV row from
them, so an interrupted batch resumes where it stopped and no row is ever lost.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from graders.engine import lessons, provenance, results, runroot, safepath
from graders.engine.run import CALL_TIMEOUT, grade
from graders.engine.server import GradingServer

GRADES_COLUMNS = ("student", "score", "max_score", "status", "reason")
PASS_RATE_COLUMNS = ("test", "max_score", "students_passed", "students_graded", "pass_rate", "grading_problems")


@dataclass
class Row:
    """One student's line in grades.csv; ``results`` is kept for the pass rates."""

    student: str
    score: float | None = None
    max_score: float | None = None
    reason: str = ""
    results: dict | None = None
    skipped: bool = False  # already graded by an earlier run

    @property
    def problems(self) -> list[str]:
        """Grading problems (the grader's, not the student's): the score is not final."""
        return results.problems(self.results) if self.results is not None else []

    @property
    def status(self) -> str:
        if self.results is None:
            return "not graded"
        return "grading problem" if self.problems else "graded"

    def csv(self) -> list[str]:
        num = "" if self.score is None else f"{self.score:g}"
        top = "" if self.max_score is None else f"{self.max_score:g}"
        return [spreadsheet_safe(c) for c in (self.student, num, top, self.status, self.reason)]


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ tab or CR would run as a formula."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def _usable_name(name: str) -> str | None:
    """Why a student folder name cannot be an output folder name, or None if it can."""
    if any(sep in name for sep in ("/", "\\")) or name in (".", ".."):
        return "the folder name contains a path separator"
    if any(ord(c) < 32 for c in name):
        return "the folder name contains a control character"
    return None


def students(submissions: Path) -> list[Path]:
    """Student folders of ``submissions``, sorted; hidden entries and plain files are skipped."""
    if not submissions.is_dir():
        raise lessons.GradingSetupError(f"submissions folder {submissions} does not exist or is not a folder")
    try:
        found = sorted(p for p in submissions.iterdir() if not p.name.startswith(".") and p.is_dir())
    except PermissionError:
        raise lessons.GradingSetupError(f"submissions folder {submissions} is not readable") from None
    if not found:
        raise lessons.GradingSetupError(f"submissions folder {submissions} has no student folders")
    return found


def _reason(res: dict) -> str:
    """One line saying why points were lost (a crash or hang shows up as every test's output)."""
    found = results.problems(res)
    problem = f"grading problem: {found[-1]}" if found else next(
        (ln for ln in res["output"].splitlines() if ln.startswith("no tests were")), "")
    lost = [t for t in res["tests"] if t["score"] < t["max_score"]]
    if not lost:
        return problem
    first = (lost[0]["output"].splitlines() or [""])[0]
    text = f"{len(lost)} of {len(res['tests'])} tests lost points; first: {lost[0]['name']}: {first}"
    return (f"{problem}; " if problem else "") + text[:300]


def _row_from_results(student: str, res: dict, *, skipped: bool = False) -> Row:
    return Row(student, float(res["score"]), float(res["max_score"]), _reason(res), res, skipped)


def _existing(lesson: lessons.Lesson, folder: Path, path: Path, call_timeout: float) -> dict | None:
    """A previous run's results when grading ``folder`` now would give them (same lesson, files, graders,
    no -k, same call timeout, no grading problem); else None and the student is regraded."""
    try:
        safepath.folder(folder.parent, folder.name)  # the student folder itself must not be a link
        lesson_dir = lessons.find_lesson_dir(folder, lesson)
    except (OSError, safepath.UnsafePath, lessons.GradingSetupError):
        return None
    return provenance.reusable(path, lesson, lesson_dir, keyword=None, call_timeout=call_timeout)


def grade_one(lesson: lessons.Lesson, folder: Path, out: Path, hide: tuple[Path, ...], **kwargs: object) -> Row:
    """Grade one student; every failure, even one inside the engine, becomes a row with the reason."""
    why = _usable_name(folder.name)
    if why:
        return Row(folder.name, reason=f"not graded: {why}")
    try:  # a student folder linking to a classmate's (or anywhere) is refused; so is any link below it
        safepath.folder(folder.parent, folder.name)
    except (OSError, safepath.UnsafePath) as exc:
        return Row(folder.name, reason=f"not graded: {exc}"[:300])
    try:
        res = grade(lesson, folder, out / folder.name, hide=hide, **kwargs)
    except lessons.GradingSetupError as exc:
        return Row(folder.name, reason=str(exc))
    except Exception as exc:  # an engine bug must cost one row's grade, never the batch
        return Row(folder.name, reason=f"grader error: {type(exc).__name__}: {exc}"[:300])
    return _row_from_results(folder.name, res)


def grades_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(GRADES_COLUMNS)
    writer.writerows(r.csv() for r in rows)  # cells escaped: a student names their own folder
    return buf.getvalue()


def pass_rates_csv(rows: list[Row]) -> str:
    """Per hidden test: how many graded students passed it.

    A skipped test (no CUDA) does not count, nor does a grading problem (the grader could not
    judge that student's test): those are counted apart, in ``grading_problems``.
    """
    stats: dict[str, list[float]] = {}  # name -> [max_score, passed, graded, problems]
    for row in rows:
        for t in (row.results or {}).get("tests", []):
            entry = stats.setdefault(t["name"], [0.0, 0, 0, 0])
            entry[0] = max(entry[0], float(t["max_score"]))
            word = results.verdict(t)
            if word == "skipped":
                continue
            if word == results.PROBLEM_TAG:
                entry[3] += 1
                continue
            entry[2] += 1
            entry[1] += int(word == "passed" and t["score"] >= t["max_score"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PASS_RATE_COLUMNS)
    for name, (top, passed, graded, problems) in stats.items():
        cells = [name, f"{top:g}", passed, graded, f"{passed / graded:.4f}" if graded else "", problems]
        writer.writerow([spreadsheet_safe(str(c)) for c in cells])
    return buf.getvalue()


def run_batch(
    lesson: lessons.Lesson,
    submissions: Path,
    out: Path,
    *,
    jobs: int = 1,
    force: bool = False,
    call_timeout: float = CALL_TIMEOUT,
    progress: bool = True,
    grade_student: Callable[..., Row] = grade_one,
) -> list[Row]:
    """Grade every student folder of ``submissions`` into ``out``; write the CSVs; return the rows."""
    submissions, out = submissions.resolve(), out.resolve()
    if out.is_relative_to(submissions) or submissions.is_relative_to(out):
        raise lessons.GradingSetupError("the output folder and the submissions folder must not contain each other")
    if jobs < 1:
        raise lessons.GradingSetupError(f"--jobs must be at least 1, got {jobs}")
    folders = students(submissions)
    if out.exists() and not out.is_dir():
        raise lessons.GradingSetupError(f"output path {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Row] = {}
    todo = []
    for folder in folders:
        previous = None if force else _existing(lesson, folder, out / folder.name / "results.json", call_timeout)
        if previous is not None and _usable_name(folder.name) is None:
            rows[folder.name] = _row_from_results(folder.name, previous, skipped=True)
        else:
            todo.append(folder)
    hide = (submissions, out)
    # Split the cores: N gradings with all-core torch pools each oversubscribe and thrash.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    servers: list[GradingServer] = []  # one per job slot (pool thread): pytest and torch imported once per slot
    slot = threading.local()

    def grade_in_slot(folder: Path) -> Row:
        if not hasattr(slot, "server"):
            slot.server = GradingServer()
            servers.append(slot.server)
        return grade_student(lesson, folder, out, hide, call_timeout=call_timeout, threads=threads, server=slot.server)

    try:
        with (
            runroot.run_root(),  # one run folder for the whole batch: the jobs' gradings nest in it, none removes another's
            ThreadPoolExecutor(max_workers=jobs) as pool,
            tqdm(total=len(todo), desc=f"lesson {lesson.number}", unit="student", disable=not progress) as bar,
        ):
            futures = {pool.submit(grade_in_slot, f): f for f in todo}
            for future in as_completed(futures):
                name = futures[future].name
                try:
                    rows[name] = future.result()
                except Exception as exc:  # a replaced grade_student may raise; the row still exists
                    rows[name] = Row(name, reason=f"grader error: {type(exc).__name__}: {exc}"[:300])
                bar.update(1)
    finally:
        for server in servers:
            server.close()
    ordered = [rows[f.name] for f in folders]
    results.write_atomic(out / "grades.csv", grades_csv(ordered))
    results.write_atomic(out / "pass_rates.csv", pass_rates_csv(ordered))
    return ordered
