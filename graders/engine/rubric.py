"""The course rubric, scored: five criteria; defaults in ``rubric_defaults.toml``, overrides in each ``lesson.toml``.

Automatic parts: implementation (hidden graders + nbgrader autograded cells),
measurement quality (a baseline and more than one run or seed), reproducibility (run
artifacts present and consistent, and a *rerun* of the logged run in the sandbox whose
summary must match) and reflection (notes.md has the five lab-workflow sections with
real content). Conceptual clarity comes from the notebook cells an instructor grades
in nbgrader's formgrader; until then it is reported as pending, never guessed.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from graders.engine import labs, lessons, provenance, results, safepath
from graders.engine.sandbox import REPO_ROOT, StudentError, Worker, WorkerDied

CRITERIA = ("conceptual_clarity", "implementation", "measurement_quality", "reproducibility", "reflection")
# The five sections of the lab workflow (CURRICULUM.md), matched in notes.md headings.
SECTIONS = {
    "expected": r"expect",
    "happened": r"happen",
    "surprised": r"surpris",
    "next": r"next",
    "believe": r"believe|evidence",
}
PLACEHOLDER = re.compile(r"^\s*(todo|tbd|fill me|lorem ipsum|\.\.\.|-|n/a)\s*$", re.I)
TIME_KEY = re.compile(r"(_ms|_s|_seconds)$")
# Student files are read as regular files under these caps (a link, /dev/zero or a 10 GB file is a finding).
MAX_JSON_BYTES = 1 << 20
MAX_METRICS_BYTES = 16 << 20
MAX_NOTES_BYTES = 1 << 20
MAX_RUNS = 200


@dataclass
class Criterion:
    name: str
    max: float
    score: float | None = 0.0  # None: waiting for the instructor
    found: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def load_config(source: lessons.Lesson | Path) -> dict:
    """A lesson's rubric (defaults merged with its lesson.toml overrides), or a standalone TOML file, checked.

    One-line errors for a missing or malformed file or weights.
    """
    if isinstance(source, lessons.Lesson):
        cfg, path = source.rubric, source.graders_dir / "lesson.toml"
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


# ---------------------------------------------------------------------------- runs
def find_runs(project: Path, lesson: lessons.Lesson) -> tuple[list[dict], list[str]]:
    """The lesson's labkit runs under PROJECT/runs (and the lesson folder's runs/), and problems found."""
    runs, problems = [], []
    lesson_dir = f"lesson_{lesson.number}/"
    run_dirs = []
    for root in (Path("runs"), Path("exercises", lesson.dirname, "runs")):
        try:
            if safepath.kind(project, root) != "dir":
                continue
            listed = safepath.entries(project, root)
        except (safepath.UnsafePath, OSError) as exc:
            problems.append(f"{root}: {exc}"[:200])
            continue
        for name, kind in listed:
            if kind == "link":
                problems.append(f"{name}: a symbolic link, not a run folder (links are refused)")
            elif kind == "dir":
                run_dirs.append(project / root / name)
    if len(run_dirs) > MAX_RUNS:
        problems.append(f"{len(run_dirs)} run folders: only the first {MAX_RUNS} are read")
    for run_dir in sorted(run_dirs)[:MAX_RUNS]:
        try:
            config = json.loads(safepath.read_text(project, run_dir / "config.json", MAX_JSON_BYTES))
        except FileNotFoundError:
            problems.append(f"{run_dir.name}: no config.json (not a labkit run)")
            continue
        except (safepath.UnsafePath, OSError) as exc:
            problems.append(f"{run_dir.name}: config.json unreadable: {exc}"[:200])
            continue
        except ValueError:
            problems.append(f"{run_dir.name}: config.json is not valid JSON")
            continue
        if not isinstance(config, dict) or not isinstance(config.get("config", {}), dict):
            problems.append(f"{run_dir.name}: config.json is not a JSON object with a `config` object")
            continue
        if lesson_dir not in str(config.get("entrypoint") or "") and lesson_dir.rstrip("/") not in str(run_dir):
            continue  # another lesson's run
        runs.append(_read_run(project, run_dir, config, problems))
    return runs, problems


def _read_run(project: Path, run_dir: Path, config: dict, problems: list[str]) -> dict:
    run = {"dir": run_dir, "name": run_dir.name, "config": config, "env": None, "metrics": [], "summary": None, "ok": True}
    for name, key in (("env.json", "env"), ("summary.json", "summary")):
        try:
            value = json.loads(safepath.read_text(project, run_dir / name, MAX_JSON_BYTES))
            run[key] = value if isinstance(value, dict) else None
            if run[key] is None:
                raise ValueError("not a JSON object")
        except (OSError, ValueError, safepath.UnsafePath) as exc:
            why = f": {exc}" if isinstance(exc, safepath.UnsafePath) else ""
            problems.append(f"{run_dir.name}: {name} missing or unreadable{why}"[:200])
            run["ok"] = False
    try:
        lines = safepath.read_text(project, run_dir / "metrics.jsonl", MAX_METRICS_BYTES).splitlines()
        run["metrics"] = [json.loads(line) for line in lines if line.strip()]
        if not all(isinstance(row, dict) for row in run["metrics"]):
            raise ValueError("a line is not a JSON object")
    except (OSError, ValueError, safepath.UnsafePath) as exc:
        why = f": {exc}" if isinstance(exc, safepath.UnsafePath) else ""
        problems.append(f"{run_dir.name}: metrics.jsonl missing or not JSON lines{why}"[:200])
        run["metrics"] = []
        run["ok"] = False
    if run["ok"] and not run["metrics"]:
        problems.append(f"{run_dir.name}: no metrics logged")
        run["ok"] = False
    seeds = config.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)):
        problems.append(f"{run_dir.name}: config.json records no integer seeds")
        run["ok"] = False
    env = run["env"] or {}
    if run["env"] is not None and not (env.get("python") and env.get("packages", {}).get("torch") and env.get("device")):
        problems.append(f"{run_dir.name}: env.json lacks python, torch version or device")
        run["ok"] = False
    summary = run["summary"] or {}
    logged = {k: v for row in run["metrics"] for k, v in row.items()}
    inconsistent = [k for k, v in summary.items() if k not in logged or not _close(v, logged_values(run, k), 1e-9)]
    if inconsistent:
        problems.append(f"{run_dir.name}: summary values not found in metrics.jsonl: {', '.join(inconsistent[:4])}")
        run["ok"] = False
    try:  # names only; linked folders are not entered, links are not counted
        found = safepath.kind(project, run_dir / "artifacts") == "dir"
        run["artifacts"] = sorted(Path(f).name for f in safepath.regular_files(project, run_dir / "artifacts")) if found else []
    except (safepath.UnsafePath, OSError) as exc:
        problems.append(f"{run_dir.name}: artifacts: {exc}"[:200])
        run["artifacts"] = []
    return run


def logged_values(run: dict, key: str) -> list:
    return [row[key] for row in run["metrics"] if key in row]


def _close(value: object, candidates: object, rtol: float) -> bool:
    options = candidates if isinstance(candidates, list) else [candidates]
    for c in options:
        if isinstance(value, int | float) and isinstance(c, int | float):
            if math.isclose(value, c, rel_tol=rtol, abs_tol=1e-12):
                return True
        elif value == c:
            return True
    return False


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


def measurement_quality(crit: Criterion, runs: list[dict], cfg: dict) -> None:
    word = cfg.get("baseline_word", "baseline")
    good = [r for r in runs if r["ok"]]
    keys = {k for r in good for row in r["metrics"] for k in row} | {k for r in good for k in r["config"].get("config", {})}
    has_baseline = any(word in k for k in keys)
    seeds = {(s) for r in good for s in r["config"].get("seeds", [])}
    count = max(len(good), len(seeds))
    need = int(cfg.get("min_runs", 2))
    parts = 0.0
    if has_baseline:
        crit.found.append(f"a baseline is logged ({sorted(k for k in keys if word in k)[:3]})")
        parts += 0.5
    else:
        crit.lost.append(f"no baseline: log a metric or config key containing '{word}' next to your own numbers")
    if count >= need:
        crit.found.append(f"{len(good)} complete run(s), {len(seeds)} distinct seed(s)")
        parts += 0.5
    else:
        crit.lost.append(f"only {count} complete run(s)/seed(s): log at least {need} to see the spread")
    crit.score = crit.max * parts


def reproducibility(crit: Criterion, runs: list[dict], problems: list[str], cfg: dict, rerun: dict | None) -> None:
    if not runs:
        crit.lost.append("no labkit runs for this lesson under runs/: run the lab experiment")
        crit.score = 0.0
        return
    complete = [r for r in runs if r["ok"]]
    crit.found.append(f"{len(complete)}/{len(runs)} run folder(s) complete (config, seeds, env, metrics, consistent summary)")
    crit.lost += problems[:8]
    artifact_words = cfg.get("required_artifacts", [])
    names = [a for r in runs for a in r["artifacts"]]
    missing = [w for w in artifact_words if not any(w in n for n in names)]
    crit.lost += [f"no artifact named like '{w}' in any run" for w in missing]
    artifacts_ok = 1.0 - (len(missing) / len(artifact_words) if artifact_words else 0.0)
    if rerun is None:
        rerun_ok = 0.0
    elif rerun["ok"]:
        rerun_ok = 1.0
        crit.found.append(f"rerun of {rerun['run']} matched its summary ({rerun['seconds']:.1f} s)")
    else:
        rerun_ok = 0.0
        crit.lost.append(f"rerun of {rerun['run']}: {rerun['why']}")
    crit.score = crit.max * (0.4 * len(complete) / len(runs) + 0.2 * artifacts_ok + 0.4 * rerun_ok)


def reflection(crit: Criterion, project: Path, cfg: dict) -> None:
    rel = cfg.get("notes", "notes.md")
    try:
        text = safepath.read_text(project, rel, MAX_NOTES_BYTES)
    except FileNotFoundError:
        crit.lost.append(f"{rel} is missing")
        crit.score = 0.0
        return
    except (safepath.UnsafePath, OSError) as exc:  # a link (to /dev/zero, say), a FIFO, a huge file
        crit.lost.append(f"{rel} not read: {exc}"[:300])
        crit.score = 0.0
        return
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            heading = line.lower()
            current = next((k for k, pat in SECTIONS.items() if re.search(pat, heading) and k not in sections), None)
            if current:
                sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    need = int(cfg.get("min_words", 25))
    texts, good = set(), 0
    for key in SECTIONS:
        text = sections.get(key)
        if text is None:
            crit.lost.append(f"notes.md has no section on '{key}' (a heading with that word)")
            continue
        words = len(text.split())
        if PLACEHOLDER.match(text) or words < need or text.strip() in texts:
            crit.lost.append(f"notes.md section '{key}' has {words} words (need {need}, no placeholders or copies)")
            continue
        texts.add(text.strip())
        good += 1
    crit.found.append(f"notes.md: {good}/{len(SECTIONS)} sections with real content")
    crit.score = crit.max * good / len(SECTIONS)


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
def rerun_latest(lesson: lessons.Lesson, lesson_dir: Path, runs: list[dict], cfg: dict, hide: tuple[Path, ...]) -> dict | None:
    """Re-execute the newest complete run from its config.json in the sandbox; compare summaries."""
    import time

    candidates = [r for r in runs if r["ok"] and r["summary"] and r["config"].get("entrypoint")]
    if not candidates:
        return None
    run = candidates[-1]
    entry, _, function = str(run["config"]["entrypoint"]).rpartition(":")
    stem = Path(entry).stem
    if stem not in lesson.lab_modules + lesson.sandbox_modules:
        return {"run": run["name"], "ok": False, "why": f"entrypoint {entry} is not one of the lesson's lab files", "seconds": 0.0}
    t0 = time.perf_counter()
    modules = tuple(dict.fromkeys(lesson.modules + lesson.lab_modules))
    with Worker(lesson_dir, modules, provided=lesson.provided, timeout=float(cfg.get("rerun_timeout", 300)), hide=hide,
                trusted_trees=(REPO_ROOT / "labkit",)) as worker:
        try:
            args = (f"{stem}.py", function, run["config"].get("config", {}), run["config"]["seeds"][0])
            summary = worker.call("labkit.runlog", "rerun", args)
        except (StudentError, WorkerDied) as exc:
            return {"run": run["name"], "ok": False, "why": f"the rerun failed: {exc}"[:300], "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    if type(summary) is not dict:
        return {"run": run["name"], "ok": False, "why": "the rerun returned no summary", "seconds": seconds}
    rtol, factor = float(cfg.get("rerun_rtol", 1e-4)), float(cfg.get("rerun_time_factor", 0.0))
    diffs = []
    for key, logged in run["summary"].items():
        new = summary.get(key)
        if TIME_KEY.search(key) and isinstance(logged, int | float):
            # Timings depend on the machine and its load: present and positive, and within
            # `factor` of the logged value only when a factor is configured.
            ok = isinstance(new, int | float) and new > 0 and (not factor or 1 / factor <= new / max(logged, 1e-12) <= factor)
        else:
            ok = _close(logged, new, rtol)
        if not ok:
            diffs.append(f"{key}: logged {logged!r}, rerun {new!r}")
    if diffs:
        return {"run": run["name"], "ok": False, "why": "; ".join(diffs[:4]), "seconds": seconds}
    return {"run": run["name"], "ok": True, "why": "", "seconds": seconds}


# ---------------------------------------------------------------------------- entry point
def score(lesson: lessons.Lesson, submission: Path, out_dir: Path, *, hide: tuple[Path, ...] = ()) -> dict:
    """Score the rubric for one submission; write OUT/rubric.json and OUT/rubric.md."""
    from graders.engine.run import CALL_TIMEOUT, grade

    cfg = load_config(lesson)
    submission = submission.resolve()
    lesson_dir = lessons.find_lesson_dir(submission, lesson)
    project = submission  # notes, runs and labs are read inside the submission, never above it
    out_dir = out_dir.resolve()
    # An earlier results.json stands only if it is this grading exactly (lesson, files, graders, no -k, no problem).
    res = provenance.reusable(out_dir / "results.json", lesson, lesson_dir, keyword=None, call_timeout=CALL_TIMEOUT)
    if res is None:
        res = grade(lesson, submission, out_dir, hide=hide)
    notebooks, nb_note = labs.autograde(REPO_ROOT, lesson.number, lesson_dir, lesson.modules + lesson.lab_modules,
                                        out_dir, hide=(*hide, submission), provided=dict(lesson.provided))
    runs, problems = find_runs(project, lesson)
    rerun = rerun_latest(lesson, lesson_dir, runs, cfg.get("reproducibility", {}), (*hide, out_dir, submission))

    crits = {name: Criterion(name, float(cfg["weights"][name])) for name in CRITERIA}
    implementation(crits["implementation"], res, notebooks, float(cfg.get("implementation", {}).get("hidden_tests_share", 0.75)))
    measurement_quality(crits["measurement_quality"], runs, cfg.get("measurement_quality", {}))
    reproducibility(crits["reproducibility"], runs, problems, cfg.get("reproducibility", {}), rerun)
    reflection(crits["reflection"], project, cfg.get("reflection", {}))
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
        "rerun": None if rerun is None else {k: v for k, v in rerun.items() if k != "seconds"} | {"seconds": round(rerun["seconds"], 2)},
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
