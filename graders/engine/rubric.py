"""The course rubric, scored by the instructor: five criteria; the rules in :mod:`labkit.rubric`.

This module adds what only the instructor has: the hidden graders and the notebooks' autograded
cells (implementation), the sandboxed reruns of the newest logged run (with its seed and with
seed + 1000, the lab files taken from the submission's labs/lesson_NN) and the manual grades
(conceptual clarity, from nbgrader's formgrader). Measurement quality, reproducibility and
reflection are :mod:`labkit.rubric`'s rules, the same ones a student's ``make check`` runs, so
both print the same lines. Regenerated artifacts are validated here, never in the worker.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

from graders.engine import labs, lessons, provenance, results
from graders.engine.sandbox import REPO_ROOT, StudentError, Worker, WorkerDied
from labkit import rubric as shared
from labkit import safepath
from labkit.rubric import CRITERIA, Criterion

__all__ = ["CRITERIA", "Criterion", "find_runs", "load_config", "render", "rerun_latest", "score"]


def load_config(source: lessons.Lesson | Path) -> dict:
    """A lesson's rules (defaults merged with its lab.toml), or a standalone TOML file's, checked.

    One-line errors for a missing or malformed file or weights.
    """
    if isinstance(source, lessons.Lesson):
        cfg, path = source.rubric, REPO_ROOT / "labs" / source.dirname / "lab.toml"
    else:
        path = source
        if not path.exists():
            raise lessons.GradingSetupError(f"no rubric config at {path}")
        try:
            cfg = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise lessons.GradingSetupError(f"{path} is not valid TOML: {exc}") from None
    weights = cfg.get("weights", {})
    if set(weights) != set(CRITERIA) or not all(isinstance(w, int | float) and w >= 0 for w in weights.values()):
        raise lessons.GradingSetupError(f"{path}: [weights] must give a number >= 0 for each of {', '.join(CRITERIA)}")
    return cfg


def find_runs(project: Path, lesson: lessons.Lesson) -> tuple[list[dict], list[str]]:
    """The lesson's labkit runs under SUBMISSION/runs, and the problems found (:func:`labkit.rubric.find_runs`)."""
    return shared.find_runs(project, lesson.number, lesson.rubric)


# ---------------------------------------------------------------------------- criteria
def implementation(crit: Criterion, res: dict, notebooks: list[labs.NotebookGrade], share: float) -> None:
    hidden = res["score"] / res["max_score"] if res["max_score"] else 0.0
    crit.found.append(f"hidden graders: {res['score']:g}/{res['max_score']:g}")
    crit.lost += [f"{'grading problem (the grader, not the student)' if results.verdict(t) == results.PROBLEM_TAG else 'hidden test failed'}: "
                  f"{t['name']}" for t in res["tests"] if t["score"] < t["max_score"]][:8]  # fmt: skip
    auto_max = sum(nb.max_score for nb in notebooks)
    if auto_max:
        auto = sum(nb.score for nb in notebooks)
        crit.found.append(f"notebook autograded cells: {auto:g}/{auto_max:g}")
        for nb in notebooks:
            if nb.problem:
                crit.lost.append(f"{nb.notebook}: {nb.problem}")
            crit.lost += [f"{nb.notebook}: cell {c['cell']} failed" for c in nb.cells if not c["manual"] and c["score"] < c["max_score"]]
        crit.score = crit.max * (share * hidden + (1 - share) * auto / auto_max)
    else:
        crit.score = crit.max * hidden


def conceptual_clarity(crit: Criterion, notebooks: list[labs.NotebookGrade]) -> None:
    """From the manual grades given in nbgrader's formgrader; pending until every cell is graded."""
    manual = sum(nb.manual_max for nb in notebooks)
    if not manual:
        crit.score = None
        crit.found.append("no manually graded cells: grade from notes.md by hand")
        return
    given = [nb.manual_score for nb in notebooks if nb.manual_max]
    if None in given:
        crit.score = None
        crit.found.append(f"{manual:g} notebook point(s) await manual grading in nbgrader's formgrader (OUT/nbgrader)")
        return
    got = sum(given)  # type: ignore[arg-type]
    crit.score = crit.max * got / manual
    crit.found.append(f"manual grades from formgrader: {got:g}/{manual:g}")


# ---------------------------------------------------------------------------- rerun
def _call(worker: Worker, args: tuple, timeout: float) -> dict | str:
    try:
        value = worker.call("labkit.runlog", "rerun", args, timeout=timeout)
    except (StudentError, WorkerDied) as exc:
        return f"the rerun failed: {exc}"[:300].replace("\n", " ")
    return value if isinstance(value, dict) else "the rerun returned no result: main() must return the labkit Run"


def rerun_latest(lesson: lessons.Lesson, submission: Path, lesson_dir: Path, runs: list[dict], rules: dict,
                 hide: tuple[Path, ...]) -> dict | None:  # fmt: skip
    """Re-execute the newest complete run in the sandbox with its seed and with seed + offset; judge both.

    The lab files come from the submission's labs/lesson_NN (the graded modules from ``lesson_dir``,
    provided ones from the reference). None when there is no complete run.
    """
    run = shared.newest_complete(runs)
    if run is None:
        return None
    request = shared.rerun_request(run)
    if isinstance(request, str):
        return shared.compare_rerun(run, request, None, rules)
    entry, function, config, seed = request
    stem = Path(entry).stem
    if stem not in lesson.lab_modules:
        why = (f"entrypoint {entry} is not one of the lesson's lab files "
               f"({', '.join(f'labs/{lesson.dirname}/{s}.py' for s in lesson.lab_modules) or 'none'}): log runs from those")
        return shared.compare_rerun(run, why, None, rules)  # fmt: skip
    lab_dir = labs.find_lab_dir(submission, lesson)
    sources = {}
    for s in lesson.lab_modules:
        rel = (lab_dir / f"{s}.py").relative_to(submission)
        try:
            if safepath.kind(submission, rel) != "file":
                return shared.compare_rerun(run, f"the submission has no regular file {rel.as_posix()}: submit the lab file", None, rules)
        except (safepath.UnsafePath, OSError) as exc:
            return shared.compare_rerun(run, f"{rel.as_posix()} not read: {exc}"[:300], None, rules)
        sources[s] = lab_dir / f"{s}.py"
    cfg = rules.get("reproducibility", {})
    timeout = float(cfg.get("rerun_timeout", 300))
    offset = int(cfg.get("other_seed_offset", shared.OTHER_SEED_OFFSET))
    t0 = time.perf_counter()
    with Worker(lesson_dir, lesson.modules, provided=lesson.provided, sources=sources, timeout=timeout, hide=hide,
                trusted_trees=(REPO_ROOT / "labkit",)) as worker:  # fmt: skip
        same = _call(worker, (f"{stem}.py", function, config, seed), timeout)
        seconds = time.perf_counter() - t0
        other = _call(worker, (f"{stem}.py", function, config, seed + offset), timeout) if isinstance(same, dict) else None
    return shared.compare_rerun(run, same, other, rules, seconds)


# ---------------------------------------------------------------------------- entry point
def score(lesson: lessons.Lesson, submission: Path, out_dir: Path, *, hide: tuple[Path, ...] = ()) -> dict:
    """Score the rubric for one submission; write OUT/rubric.json and OUT/rubric.md."""
    from graders.engine.run import CALL_TIMEOUT, grade

    rules = load_config(lesson)
    submission = submission.resolve()
    lesson_dir = lessons.find_lesson_dir(submission, lesson)
    lab_dir = labs.find_lab_dir(submission, lesson)
    out_dir = out_dir.resolve()
    # An earlier results.json stands only if it is this grading exactly (lesson, files, graders, no -k, no problem).
    res = provenance.reusable(out_dir / "results.json", lesson, lesson_dir, keyword=None, call_timeout=CALL_TIMEOUT)
    if res is None:
        res = grade(lesson, submission, out_dir, hide=hide)
    notebooks, nb_note = labs.autograde(REPO_ROOT, lesson.number, lesson_dir, lesson.modules, out_dir,
                                        hide=(*hide, submission), provided=dict(lesson.provided), lab_dir=lab_dir,
                                        lab_modules=lesson.lab_modules)  # fmt: skip
    # Notes, runs and labs are read inside the submission, never above it.
    runs, problems = shared.find_runs(submission, lesson.number, rules)
    rerun = rerun_latest(lesson, submission, lesson_dir, runs, rules, (*hide, out_dir, submission))
    notes, _ = shared.read_notes(submission, rules)

    crits = {name: Criterion(name, float(rules["weights"][name])) for name in CRITERIA}
    implementation(crits["implementation"], res, notebooks, float(rules.get("implementation", {}).get("hidden_tests_share", 0.75)))
    shared.measurement_quality(crits["measurement_quality"], runs, rules)
    shared.reproducibility(crits["reproducibility"], runs, problems, rules, rerun, notes or "")
    shared.reflection(crits["reflection"], submission, runs, rules)
    conceptual_clarity(crits["conceptual_clarity"], notebooks)
    for nb in notebooks:
        if nb.problem and nb.problem.startswith("notebook missing"):
            crits["conceptual_clarity"].lost.append(f"{nb.notebook} is missing from the submission")

    automatic = [c for c in crits.values() if c.score is not None]
    report = {
        "lesson": lesson.number,
        "submission": str(submission),
        "score": round(sum(c.score for c in automatic), 2),
        "max_score": round(sum(c.max for c in crits.values()), 2),
        "automatic_max": round(sum(c.max for c in automatic), 2),
        "pending_manual": [c.name for c in crits.values() if c.score is None],
        "grading_problems": results.problems(res),  # the hidden tests' score is not final while this is not empty
        "criteria": {c.name: {**asdict(c), "score": None if c.score is None else round(c.score, 2)} for c in crits.values()},
        "notebook_sandbox": nb_note,
        "rerun": rerun,
    }
    results.write_atomic(out_dir / "rubric.json", json.dumps(report, indent=2) + "\n")
    results.write_atomic(out_dir / "rubric.md", render(report))
    return report


def render(report: dict) -> str:
    lines = [f"# Rubric, lesson {report['lesson']}", "",
             f"Automatic score: {report['score']:g} / {report['automatic_max']:g} "
             f"(of {report['max_score']:g}; pending manual: {', '.join(report['pending_manual']) or 'none'})", ""]
    lines += [f"NOT FINAL: grading problem: {p}" for p in report.get("grading_problems", [])]
    for c in report["criteria"].values():
        got = "pending (manual)" if c["score"] is None else f"{c['score']:g} / {c['max']:g}"
        lines.append(f"## {c['name'].replace('_', ' ')}: {got}")
        lines += [f"- found: {f}" for f in c["found"]]
        lines += [f"- lost: {f}" for f in c["lost"]]
        lines.append("")
    lines.append(report["notebook_sandbox"])
    return "\n".join(lines) + "\n"
