"""Grade one lesson for a whole class: one results.json per student, grades.csv and pass_rates.csv.

Each student is graded by :func:`graders.engine.run.grade` (its own grading process and
sandboxed worker), with the submissions and output folders hidden from the worker so no
student can read another's work. Per-student results.json files are the durable state:
a re-run skips students that have one (unless ``force``) and rebuilds every CSV row from
them, so an interrupted batch resumes where it stopped and no row is ever lost.

With ``rubric``, each graded student's five-criteria rubric is scored after the hidden tests
(OUT/<student>/rubric.json, reused while the submission, graders and rules are unchanged),
grades.csv gains a column per criterion, ``manual_pending`` and ``total``, and the students'
autograded notebooks are merged into one class course, OUT/nbgrader, for the formgrader
(:mod:`graders.engine.classbook`). OUT/grades.json keeps the rows for ``llm-grade gradebook``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
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
CRITERIA = ("conceptual_clarity", "implementation", "measurement_quality", "reproducibility", "reflection")
RUBRIC_COLUMNS = (*CRITERIA, "manual_pending", "total", "total_max")
RESERVED = ("nbgrader", "grades.csv", "grades.json", "pass_rates.csv")  # batch's own entries in OUT
RUBRIC_FROM = "rubric-from.json"  # beside rubric.json: what it was scored from (a resumed batch reuses it)
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
    rubric: dict | None = None  # rubric.json, with batch --rubric
    rubric_reason: str = ""  # why the rubric was not scored
    manual_reason: str = ""  # why `llm-grade gradebook` could not read the manual grades (not recorded: retried)
    recorded: dict | None = None  # the row as OUT/grades.json recorded it (`llm-grade gradebook` rebuilds from it)

    @property
    def problems(self) -> list[str]:
        """Grading problems (the grader's, not the student's): the score is not final."""
        if self.recorded is not None:
            return list(self.recorded.get("problems", []))
        return results.problems(self.results) if self.results is not None else []

    @property
    def status(self) -> str:
        if self.recorded is not None:
            return str(self.recorded.get("status", ""))
        if self.results is None:
            return "not graded"
        return "grading problem" if self.problems else "graded"

    def csv(self, with_rubric: bool = False) -> list[str]:
        num = "" if self.score is None else f"{self.score:g}"
        top = "" if self.max_score is None else f"{self.max_score:g}"
        reason = "; ".join(r for r in (self.reason, self.rubric_reason, self.manual_reason) if r)[:400]
        cells = [self.student, num, top, self.status, reason]
        if with_rubric:
            cells += rubric_cells(self.rubric)
        return [spreadsheet_safe(c) for c in cells]

    def record(self) -> dict:
        """The row for OUT/grades.json (names unescaped: grades.csv's cells are not reversible)."""
        return {"student": self.student, "score": self.score, "max_score": self.max_score, "status": self.status,
                "problems": self.problems, "reason": self.reason, "rubric": self.rubric is not None,
                "rubric_reason": self.rubric_reason}


def rubric_cells(report: dict | None) -> list[str]:
    """Criterion scores ('' while pending), manual_pending (yes/no), total and its maximum, from rubric.json."""
    if report is None:
        return [""] * len(RUBRIC_COLUMNS)
    crits = report.get("criteria", {})
    scores = [crits.get(name, {}).get("score") for name in CRITERIA]
    pending = "yes" if report.get("pending_manual") else "no"
    return [*("" if s is None else f"{s:g}" for s in scores), pending, f"{report['score']:g}", f"{report['max_score']:g}"]


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ tab or CR would run as a formula."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def _usable_name(name: str) -> str | None:
    """Why a student folder name cannot be an output folder name, or None if it can."""
    if any(sep in name for sep in ("/", "\\")) or name in (".", ".."):
        return "the folder name contains a path separator"
    if any(ord(c) < 32 for c in name):
        return "the folder name contains a control character"
    if name in RESERVED:
        return f"the folder name {name!r} is reserved for the batch's own output: rename the student folder"
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


def _submission_digest(folder: Path) -> str:
    """sha256 over every regular file of a student folder (runs, notes and notebooks count for the rubric)."""
    h = hashlib.sha256()
    for top, dirs, names in os.walk(folder):  # links are not followed (grading refuses them anyway)
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".ipynb_checkpoints", ".git"))
        for n in sorted(names):
            p = Path(top, n)
            if p.is_file() and not p.is_symlink():
                h.update(p.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def _rubric_provenance(lesson: lessons.Lesson, folder: Path) -> dict:
    engine, graders = provenance.grader_hashes(lesson)
    rules = json.dumps(getattr(lesson, "rubric", None), sort_keys=True, default=str)
    return {"lesson": lesson.number, "submission": _submission_digest(folder), "engine": engine, "graders": graders,
            "rules": "sha256:" + hashlib.sha256(rules.encode()).hexdigest()}


def _earlier_rubric(out_dir: Path, wanted: dict) -> dict | None:
    """rubric.json when it was scored from exactly this submission, engine, graders and rules, without a grading problem."""
    try:
        if json.loads((out_dir / RUBRIC_FROM).read_text()) != wanted:
            return None
        report = json.loads((out_dir / "rubric.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and not report.get("grading_problems") else None


def score_rubric(lesson: lessons.Lesson, folder: Path, out_dir: Path, hide: tuple[Path, ...], force: bool = False) -> dict:
    """The student's rubric: an earlier OUT/<student>/rubric.json if nothing changed (its manual grades kept), else scored."""
    from graders.engine import rubric

    wanted = _rubric_provenance(lesson, folder)
    report = None if force else _earlier_rubric(out_dir, wanted)
    if report is None:
        (out_dir / RUBRIC_FROM).unlink(missing_ok=True)
        report = rubric.score(lesson, folder, out_dir, hide=hide)
        results.write_atomic(out_dir / RUBRIC_FROM, json.dumps(wanted, indent=2) + "\n")
    return report


def grades_csv(rows: list[Row], with_rubric: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(GRADES_COLUMNS + (RUBRIC_COLUMNS if with_rubric else ()))
    writer.writerows(r.csv(with_rubric) for r in rows)  # cells escaped: a student names their own folder
    return buf.getvalue()


def write_grades(out: Path, lesson: str, rows: list[Row], with_rubric: bool) -> None:
    """grades.csv, and grades.json (the rows, for `llm-grade gradebook`)."""
    results.write_atomic(out / "grades.csv", grades_csv(rows, with_rubric))
    record = {"lesson": lesson, "rubric": with_rubric, "rows": [r.record() for r in rows]}
    results.write_atomic(out / "grades.json", json.dumps(record, indent=2) + "\n")


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


def grade_student_row(
    lesson: lessons.Lesson,
    folder: Path,
    out: Path,
    hide: tuple[Path, ...],
    *,
    previous: Row | None = None,
    rubric: bool = False,
    force: bool = False,
    call_timeout: float = CALL_TIMEOUT,
    threads: int | None = None,
    server: GradingServer | None = None,
    grade_student: Callable[..., Row] = grade_one,
    rubric_student: Callable[..., dict] = score_rubric,
) -> Row:
    """One student's grading, the same under every executor: the hidden tests (unless ``previous`` is an earlier
    run's row), then with ``rubric`` the rubric. Every failure is a row with its reason."""
    row = previous
    if row is None:
        row = grade_student(lesson, folder, out, hide, call_timeout=call_timeout, threads=threads, server=server)
    if rubric and row.results is not None:
        try:  # after the hidden tests, which it reuses (results.json's provenance)
            row.rubric = rubric_student(lesson, folder, out / folder.name, hide, force=force)
        except lessons.GradingSetupError as exc:
            row.rubric_reason = f"rubric not scored: {exc}"[:300]
        except Exception as exc:  # an engine bug costs this student's rubric, never the batch
            row.rubric_reason = f"rubric not scored: grader error: {type(exc).__name__}: {exc}"[:300]
    return row


def _run_local(
    lesson: lessons.Lesson,
    todo: list[Path],
    out: Path,
    hide: tuple[Path, ...],
    rows: dict[str, Row],
    *,
    jobs: int,
    progress: bool,
    **kwargs: object,
) -> None:
    """The default executor: ``jobs`` threads on this machine, each with one grading server; fills ``rows``."""
    # Split the cores: N gradings with all-core torch pools each oversubscribe and thrash.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    servers: list[GradingServer] = []  # one per job slot (pool thread): pytest and torch imported once per slot
    slot = threading.local()

    def grade_in_slot(folder: Path) -> Row:
        if not hasattr(slot, "server"):
            slot.server = GradingServer()
            servers.append(slot.server)
        return grade_student_row(lesson, folder, out, hide, previous=rows.get(folder.name), threads=threads,
                                 server=slot.server, **kwargs)  # fmt: skip

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


def run_batch(
    lesson: lessons.Lesson,
    submissions: Path,
    out: Path,
    *,
    jobs: int = 1,
    force: bool = False,
    call_timeout: float = CALL_TIMEOUT,
    progress: bool = True,
    rubric: bool = False,
    grade_student: Callable[..., Row] = grade_one,
    rubric_student: Callable[..., dict] = score_rubric,
    executor: str = "local",
    slurm_options: dict | None = None,
) -> list[Row]:
    """Grade every student folder of ``submissions`` into ``out`` (and score their rubric); write the CSVs; return the rows.

    ``executor``: "local" (a thread pool of ``jobs`` slots on this machine) or "slurm" (one job per student
    in a Slurm job array, :mod:`graders.engine.slurm`, with ``slurm_options``); both grade a student with
    :func:`grade_student_row`.
    """
    submissions, out = submissions.resolve(), out.resolve()
    if out.is_relative_to(submissions) or submissions.is_relative_to(out):
        raise lessons.GradingSetupError("the output folder and the submissions folder must not contain each other")
    if jobs < 1:
        raise lessons.GradingSetupError(f"--jobs must be at least 1, got {jobs}")
    if rubric and call_timeout != CALL_TIMEOUT:  # the rubric reuses results.json only when graded as it grades
        raise lessons.GradingSetupError(f"--rubric grades with the default call timeout ({CALL_TIMEOUT:g} s): drop --call-timeout")
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
            if not rubric:
                continue  # with --rubric it still goes through a slot: its rubric may need scoring
        todo.append(folder)
    hide = (submissions, out)
    if executor == "slurm":
        from graders.engine import slurm

        done = slurm.run(lesson, todo, out, hide, rows, call_timeout=call_timeout, force=force, rubric=rubric,
                         progress=progress, **(slurm_options or {}))  # fmt: skip
        rows.update(done)
    elif executor != "local":
        raise lessons.GradingSetupError(f"unknown executor {executor!r}: local or slurm")
    else:
        _run_local(lesson, todo, out, hide, rows, jobs=jobs, force=force, call_timeout=call_timeout, progress=progress,
                   rubric=rubric, grade_student=grade_student, rubric_student=rubric_student)  # fmt: skip
    ordered = [rows[f.name] for f in folders]
    write_grades(out, lesson.number, ordered, rubric)
    results.write_atomic(out / "pass_rates.csv", pass_rates_csv(ordered))
    return ordered


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def apply_gradebook(lesson: str, out: Path) -> tuple[list[Row], dict[str, str]]:
    """Manual grades from the class course OUT/nbgrader into each student's rubric.json and grades.csv.

    Idempotent: every cell is recomputed from the class gradebook and the rubric. Returns the rows and,
    per student still pending, why.
    """
    from graders.engine import classbook, rubric

    out = out.resolve()
    course = out / classbook.CLASS_DIR
    again = f"run `llm-grade batch --lesson {lesson} --submissions DIR --out {out} --rubric` first"
    if not (course / "gradebook.db").is_file():
        raise classbook.ClassbookError(f"no class course at {course}: {again}")
    record = _read_json(out / "grades.json")
    if record is None or not record.get("rubric") or not isinstance(record.get("rows"), list):
        raise classbook.ClassbookError(f"{out / 'grades.json'} is missing or was not written by batch --rubric: {again}")
    if record.get("lesson") != lesson:
        raise classbook.ClassbookError(f"{out} holds lesson {record.get('lesson')}, not lesson {lesson}: pass --lesson {record.get('lesson')}")
    merged = classbook.read_record(course).get("students") or {}
    rows, pending = [], {}
    for entry in record["rows"]:
        name = str(entry["student"])
        row = Row(name, entry.get("score"), entry.get("max_score"), entry.get("reason", ""),
                  rubric_reason=entry.get("rubric_reason", ""), recorded=entry)  # fmt: skip
        report = _read_json(out / name / "rubric.json") if entry.get("rubric") else None  # scored by that batch
        if report is not None:
            try:
                manual = classbook.manual_grades(course, lesson, name) if name in merged else None
                classbook.apply_manual(report, manual, "not merged into the class course (see batch's output)")
                if manual is not None:
                    classbook.write_back(out / name / classbook.CLASS_DIR, lesson, manual)
                results.write_atomic(out / name / "rubric.json", json.dumps(report, indent=2) + "\n")
                results.write_atomic(out / name / "rubric.md", rubric.render(report))
                row.rubric = report
            except Exception as exc:  # one student's unreadable grades never cost another's row
                row.rubric = _read_json(out / name / "rubric.json")  # as it was: the row keeps its automatic scores
                row.manual_reason = f"manual grades not read: {type(exc).__name__}: {exc}"[:300]
            if row.rubric is not None and "conceptual_clarity" in row.rubric["pending_manual"]:
                pending[name] = row.rubric["criteria"]["conceptual_clarity"]["found"][0]
        rows.append(row)
    write_grades(out, lesson, rows, True)
    return rows, pending
