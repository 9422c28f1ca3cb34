"""The rubric's automatic rules that measure lab effort, shared by the instructor's rubric and ``make check``.

One module, so a student's self-check and the autograder print the same lines for the same
work. It reads a project (a student's repository or an unpacked submission) as untrusted input
(:mod:`labkit.safepath`: no links, size caps) and never runs anything: reruns are executed by
the caller (the instructor's sandbox, or a subprocess of the student's venv) and their results
are handed to :func:`compare_rerun`, which validates the regenerated artifacts here.
Rules: defaults in ``labkit/rubric_defaults.toml``, a lesson's overrides and artifacts in
``labs/lesson_NN/lab.toml``. Nothing here imports from ``graders/`` (the release has none).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from labkit import artifacts, safepath
from labkit.paths import lesson_number

CRITERIA = ("conceptual_clarity", "implementation", "measurement_quality", "reproducibility", "reflection")
# The five sections of the lab workflow, matched in notes.md headings (first heading per section wins).
SECTIONS = {
    "expected": r"expect",
    "happened": r"happen",
    "surprised": r"surpris",
    "next": r"next",
    "believe": r"believe|evidence",
}
PLACEHOLDER = re.compile(r"^\s*(todo|tbd|fill me( in)?|lorem ipsum.*|\.\.\.|-|n/a|xxx)\s*[.!]?\s*$", re.I | re.S)
TIME_KEY = re.compile(r"(_ms|_s|_seconds)$")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
DEFAULTS = Path(__file__).resolve().parent / "rubric_defaults.toml"
TEMPLATE = Path(__file__).resolve().parent / "templates" / "notes.md"
# Student files are read as regular files under these caps (a link, /dev/zero or a 10 GB file is a finding).
MAX_JSON_BYTES = 1 << 20
MAX_METRICS_BYTES = 16 << 20
MAX_NOTES_BYTES = 1 << 20
MAX_ARTIFACT_BYTES = 4 << 20  # as labkit.runlog.rerun's
MAX_RUNS = 200
OTHER_SEED_OFFSET = 1000
LAB_KEYS = {"artifacts", "rubric"}


class RubricSetupError(ValueError):
    """The rules themselves are broken (a malformed lab.toml or defaults): one line naming the fix."""


@dataclass
class Criterion:
    name: str
    max: float
    score: float | None = 0.0  # None: not scored here (manual, or at the autograder)
    found: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- rules
def _lesson(number: str | int) -> str:
    nn = lesson_number(number)
    if nn is None:
        raise RubricSetupError(f"not a lesson number: {number!r} (use e.g. 03)")
    return nn


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _fill(value: object, dirname: str) -> object:
    if isinstance(value, str):
        return value.replace("{lesson_dir}", dirname)
    if isinstance(value, dict):
        return {k: _fill(v, dirname) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, dirname) for v in value]
    return value


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RubricSetupError(f"{path} is missing: every lab declares its artifacts in labs/lesson_NN/lab.toml") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RubricSetupError(f"{path} is not valid TOML: {exc}".replace("\n", " ")) from None


def load_rules(lesson_number: str | int, root: Path) -> dict:
    """The rules for a lesson: the defaults merged with ROOT/labs/lesson_NN/lab.toml, checked.

    ``rules["artifacts"]`` holds the checked ``[[artifacts]]`` specs; raises :class:`RubricSetupError`.
    """
    nn = _lesson(lesson_number)
    path = Path(root) / "labs" / f"lesson_{nn}" / "lab.toml"
    lab = _toml(path)
    unknown = sorted(set(lab) - LAB_KEYS)
    if unknown:
        raise RubricSetupError(f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(LAB_KEYS))})")
    overrides = lab.get("rubric", {})
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise RubricSetupError(f"{path}: [rubric] must hold tables of overrides, e.g. [rubric.reproducibility]")
    defaults = _toml(DEFAULTS)
    extra = sorted(set(overrides) - set(defaults))
    if extra:
        raise RubricSetupError(f"{path}: unknown rubric table(s) {', '.join(extra)} (allowed: {', '.join(sorted(defaults))})")
    rules = _fill(_merge(defaults, overrides), f"lesson_{nn}")
    weights = rules.get("weights", {})
    if set(weights) != set(CRITERIA) or not all(_is_number(w) and w >= 0 for w in weights.values()):
        raise RubricSetupError(f"{path}: [rubric.weights] must give a number >= 0 for each of {', '.join(CRITERIA)}")
    stochastic = rules["reproducibility"].get("stochastic", [])
    if not (isinstance(stochastic, list) and all(isinstance(k, str) and k for k in stochastic)):
        raise RubricSetupError(f"{path}: [rubric.reproducibility] stochastic must be a list of summary keys")
    specs = lab.get("artifacts", [])
    if not isinstance(specs, list):
        raise RubricSetupError(f"{path}: declare artifacts as [[artifacts]] tables")
    try:
        rules["artifacts"] = [artifacts.check_spec(s, f"{path} artifact {i + 1}") for i, s in enumerate(specs)]
    except ValueError as exc:
        raise RubricSetupError(str(exc)) from None
    rules["lesson"] = nn
    return rules


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _file_specs(rules: dict) -> list[dict]:
    return [s for s in rules.get("artifacts", []) if s["kind"] != "notes_line"]


# ---------------------------------------------------------------------------- runs
def find_runs(project: Path, lesson_number: str | int, rules: dict) -> tuple[list[dict], list[str]]:
    """The lesson's labkit runs under PROJECT/runs (oldest first), and one-line problems found.

    A run belongs to the lesson when its config.json's entrypoint names ``lesson_NN/``. ``rules``
    is accepted for symmetry with the other rules (artifacts are read on demand: :func:`read_artifact`).
    """
    nn = _lesson(lesson_number)
    project = Path(project)
    runs: list[dict] = []
    problems: list[str] = []
    root = Path("runs")
    try:
        if safepath.kind(project, root) != "dir":
            return runs, problems
        listed = safepath.entries(project, root)
    except (safepath.UnsafePath, OSError) as exc:
        return runs, [f"runs/: {exc}"[:200]]
    run_dirs = []
    for name, kind in listed:
        if kind == "link":
            problems.append(f"{name}: a symbolic link, not a run folder (links are refused): copy the folder itself")
        elif kind == "dir":
            run_dirs.append(name)
    if len(run_dirs) > MAX_RUNS:
        problems.append(f"{len(run_dirs)} run folders: only the first {MAX_RUNS} are read (delete failed runs)")
    for name in sorted(run_dirs, key=_natural)[:MAX_RUNS]:
        rel = root / name
        try:
            config = json.loads(safepath.read_text(project, rel / "config.json", MAX_JSON_BYTES))
        except FileNotFoundError:
            problems.append(f"{name}: no config.json (not a labkit run): delete it or log runs with labkit.start_run")
            continue
        except (safepath.UnsafePath, OSError) as exc:
            problems.append(f"{name}: config.json unreadable: {exc}"[:200])
            continue
        except ValueError:
            problems.append(f"{name}: config.json is not valid JSON: delete the run or log it again")
            continue
        if not isinstance(config, dict) or not isinstance(config.get("config", {}), dict):
            problems.append(f"{name}: config.json is not a JSON object with a `config` object: log it with labkit.start_run")
            continue
        if f"lesson_{nn}/" not in str(config.get("entrypoint") or ""):
            continue  # another lesson's run, or a notebook's (no entry point to rerun)
        runs.append(_read_run(project, rel, config, problems))
    return runs, problems


def _natural(name: str) -> list:
    """Run ids in time order: ``...-toy-2`` before ``...-toy-10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _read_run(project: Path, rel: Path, config: dict, problems: list[str]) -> dict:
    name = rel.name
    run = {"dir": project / rel, "rel": rel.as_posix(), "root": project, "name": name, "config": config,
           "env": None, "metrics": [], "summary": None, "ok": True}  # fmt: skip
    for file, key in (("env.json", "env"), ("summary.json", "summary")):
        try:
            value = json.loads(safepath.read_text(project, rel / file, MAX_JSON_BYTES))
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            run[key] = value
        except (OSError, ValueError, safepath.UnsafePath) as exc:
            why = f": {exc}" if isinstance(exc, safepath.UnsafePath) else ""
            fix = ": end the run with run.finish(...)" if file == "summary.json" else ": log runs with labkit.start_run"
            problems.append(f"{name}: {file} missing or unreadable{why}"[:200] + fix)
            run["ok"] = False
    try:
        lines = safepath.read_text(project, rel / "metrics.jsonl", MAX_METRICS_BYTES).splitlines()
        run["metrics"] = [json.loads(line) for line in lines if line.strip()]
        if not all(isinstance(row, dict) for row in run["metrics"]):
            raise ValueError("a line is not a JSON object")
    except (OSError, ValueError, safepath.UnsafePath) as exc:
        why = f": {exc}" if isinstance(exc, safepath.UnsafePath) else ""
        problems.append(f"{name}: metrics.jsonl missing or not JSON lines{why}"[:200] + ": log with run.log(...)")
        run["metrics"] = []
        run["ok"] = False
    if run["ok"] and not run["metrics"]:
        problems.append(f"{name}: no metrics logged: call run.log(...) for every number you interpret")
        run["ok"] = False
    seeds = config.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)):
        problems.append(f"{name}: config.json records no integer seeds: pass seeds=[seed] to start_run")
        run["ok"] = False
    env = run["env"]
    if env is not None and not (env.get("python") and isinstance(env.get("packages"), dict)
                                and env["packages"].get("torch") and env.get("device")):  # fmt: skip
        problems.append(f"{name}: env.json lacks python, torch version or device: log runs with labkit.start_run")
        run["ok"] = False
    try:  # names only; linked folders are not entered, links are not counted
        found = safepath.kind(project, rel / "artifacts") == "dir"
        run["artifacts"] = sorted(Path(f).name for f in safepath.regular_files(project, rel / "artifacts")) if found else []
    except (safepath.UnsafePath, OSError) as exc:
        problems.append(f"{name}: artifacts: {exc}"[:200])
        run["artifacts"] = []
    return run


def read_artifact(run: dict, name: str) -> bytes | str | None:
    """A run's ``artifacts/NAME``: its bytes, None when absent, or a one-line reason it cannot be read."""
    rel = Path(run["rel"]) / "artifacts" / name
    try:
        return safepath.read_bytes(run["root"], rel, MAX_ARTIFACT_BYTES)
    except FileNotFoundError:
        return None
    except (safepath.UnsafePath, OSError) as exc:
        return f"{name}: not read: {exc}"[:200]


def check_artifact(spec: dict, data: bytes | str | None, notes: str = "") -> str | None:
    """:func:`artifacts.validate`, also for a file that could not be read (``data`` is then the reason)."""
    if isinstance(data, str):
        return f"{artifacts.label(spec)}: {data}"
    return artifacts.validate(spec, data, notes)


def newest_complete(runs: list[dict]) -> dict | None:
    """The newest complete run (run ids start with their time), or None."""
    complete = [r for r in runs if r["ok"]]
    return complete[-1] if complete else None


def rerun_request(run: dict) -> tuple[str, str, dict, int] | str:
    """What to rerun: (entry file as recorded, function, config, seed), or a one-line reason it cannot be."""
    entry, _, function = str(run["config"].get("entrypoint") or "").rpartition(":")
    if not entry or not re.fullmatch(r"[A-Za-z_]\w*", function):
        return f"{run['name']} records no entrypoint: pass entrypoint=main to start_run so the run can be re-executed"
    if not entry.endswith(".py"):
        return f"{run['name']}: entrypoint {entry} is not a .py file: log runs from labs/lesson_NN/lab_experiment.py"
    return entry, function, dict(run["config"].get("config", {})), int(run["config"]["seeds"][0])


# ---------------------------------------------------------------------------- rerun comparison
def _close(a: object, b: object, rtol: float) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)
    return a == b


def _decode(rerun: dict, name: str) -> bytes | str | None:
    files = rerun.get("artifacts")
    value = files.get(name) if isinstance(files, dict) else None
    if value is None:
        return "over 4 MiB, not checked: save a smaller file" if isinstance(files, dict) and name in files else None
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else "not sent back as base64"
    except (binascii.Error, ValueError):
        return "not sent back as base64"


def _stochastic_keys(rules: dict, summary: dict) -> list[str]:
    declared = rules.get("reproducibility", {}).get("stochastic", [])
    return list(declared) or [k for k, v in summary.items() if not TIME_KEY.search(k) and _is_number(v)]


def compare_rerun(run: dict, same: dict | str, other: dict | str | None, rules: dict, seconds: float = 0.0) -> dict:
    """Judge the reruns of ``run``: ``same`` with its seed, ``other`` with seed + offset.

    Each is :func:`labkit.runlog.rerun`'s return value or a one-line failure text. The regenerated
    artifacts are validated here, in the caller's process. Returns the verdict :func:`reproducibility` reads.
    """
    cfg = rules.get("reproducibility", {})
    seeds = run["config"].get("seeds") or [0]
    seed = seeds[0] if isinstance(seeds, list) and seeds else 0
    offset = int(cfg.get("other_seed_offset", OTHER_SEED_OFFSET))
    out = {"run": run["name"], "seed": seed, "other_seed": seed + offset, "ok": False, "why": "", "regenerated": False,
           "missing": [], "seed_ok": False, "seed_why": "", "seconds": round(float(seconds), 2)}  # fmt: skip
    logged = run.get("summary") or {}
    rtol, factor = float(cfg.get("rerun_rtol", 1e-4)), float(cfg.get("rerun_time_factor", 0.0))
    if isinstance(same, str):
        out["why"] = same
        out["missing"] = [f"{artifacts.label(s)}: not regenerated (the rerun did not finish)" for s in _file_specs(rules)]
    elif not isinstance(same, dict) or not isinstance(same.get("summary"), dict):
        out["why"] = "the rerun returned no summary: end main() with run.finish(...) and return the run"
    else:
        new = same["summary"]
        diffs = []
        for key, value in logged.items():
            got = new.get(key)
            if TIME_KEY.search(key) and _is_number(value):
                # Timings depend on the machine and its load: present and positive, within `factor` when set.
                ok = _is_number(got) and got > 0 and (not factor or 1 / factor <= got / max(value, 1e-12) <= factor)
            else:
                ok = _close(value, got, rtol)
            if not ok:
                diffs.append(f"{key} logged {value!r}, rerun {got!r}")
        if diffs:
            out["why"] = ("summary differs: " + "; ".join(diffs[:4])
                          + ": the code does not produce this run any more; log a fresh run with the submitted code")  # fmt: skip
        else:
            out["ok"] = True
        for spec in _file_specs(rules):
            why = check_artifact(spec, _decode(same, spec["file"]))
            if why:
                out["missing"].append(f"{why} (in the rerun)")
        out["regenerated"] = not out["missing"]
    if other is None:
        out["seed_why"] = "no rerun with another seed (the same-seed rerun could not start)"
    elif isinstance(other, str):
        out["seed_why"] = f"rerun with seed {seed + offset} failed: {other}"[:300]
    elif not isinstance(other, dict) or not isinstance(other.get("summary"), dict):
        out["seed_why"] = f"rerun with seed {seed + offset} returned no summary: end main() with run.finish(...)"
    else:
        keys = _stochastic_keys(rules, logged)
        absent = [k for k in keys if k not in logged]
        if absent:
            out["seed_why"] = (f"summary has no key(s) {', '.join(absent)} (lab.toml's stochastic keys): "
                               "log them in run.finish(...)")  # fmt: skip
        elif not keys:
            out["seed_why"] = "the summary has no measured number to compare across seeds: log your results in run.finish(...)"
        elif all(_close(logged[k], other["summary"].get(k), rtol) for k in keys):
            out["seed_why"] = (f"summary keys {', '.join(keys)} did not change with the seed: the experiment logs "
                               "constants, not measurements (draw the inputs from the run's seed)")  # fmt: skip
        else:
            out["seed_ok"] = True
    return out


# ---------------------------------------------------------------------------- criteria
def implementation_local(crit: Criterion, passed: int, failed: int, lesson_number: str | int = "NN") -> None:
    """The student's side of implementation: visible tests only; the hidden ones run at the autograder."""
    crit.score = None
    crit.found.append(f"visible tests: {passed} passed, {failed} failed")
    crit.found.append("hidden tests and notebook cells: at the autograder")
    if failed:
        crit.lost.append(f"{failed} visible test(s) fail: fix them first (.venv/bin/pytest exercises/lesson_{_lesson(lesson_number)})")


def measurement_quality(crit: Criterion, runs: list[dict], rules: dict) -> None:
    """Four quarters: a baseline, enough seeds, every declared sweep covered, an ablation."""
    cfg = rules.get("measurement_quality", {})
    word, need = str(cfg.get("baseline_word", "baseline")), int(cfg.get("min_seeds", 3))
    good = [r for r in runs if r["ok"]]
    parts = 0
    keys = ({k for r in good for row in r["metrics"] for k in row} | {k for r in good for k in r["summary"] or {}}
            | {k for r in good for k in r["config"].get("config", {})})  # fmt: skip
    baselines = sorted(k for k in keys if word in k)
    if baselines:
        crit.found.append(f"a baseline is logged ({', '.join(baselines[:3])})")
        parts += 1
    else:
        crit.lost.append(f"no baseline logged: log the reference next to your own numbers under a name containing "
                         f"'{word}' (e.g. run.log({word}_ms=...))")  # fmt: skip
    seeds = sorted({s for r in good for s in r["config"].get("seeds", [])})
    if len(seeds) >= need:
        crit.found.append(f"{len(seeds)} distinct seeds over {len(good)} complete run(s)")
        parts += 1
    else:
        crit.lost.append(f"{len(seeds)} distinct seed(s) over complete runs (need {need}): run the experiment with "
                         f"seeds {', '.join(map(str, range(need)))} to see the spread")  # fmt: skip
    sweeps = [s for s in rules.get("artifacts", []) if s["kind"] == "sweep"]
    sweep_lost = [why for s in sweeps if (why := _sweep_covered(s, good))]
    if not good:  # nothing measured yet: a lesson without a declared sweep does not earn this quarter for free
        crit.lost.append("no complete run to read the sweeps from: run the lab experiment first")
    elif not sweep_lost:
        crit.found.append(f"{len(sweeps)} declared sweep(s) cover their range" if sweeps else "no sweep declared")
        parts += 1
    crit.lost += sweep_lost if good else []
    pair = _ablation(good)
    if pair:
        crit.found.append(f"an ablation: {pair[0]} vs {pair[1]} change only `{pair[2]}`")
        parts += 1
    else:
        crit.lost.append("no ablation: no two complete runs whose config differs in exactly one key: run main() again "
                         "with one config value changed (e.g. main({'<key>': <another value>}, seed=0))")  # fmt: skip
    crit.score = crit.max * parts / 4


def _sweep_covered(spec: dict, good: list[dict]) -> str | None:
    """None when some complete run's file covers the sweep; else the newest such run's reason."""
    reason = None
    for run in reversed(good):
        if spec["file"] not in run["artifacts"]:
            continue
        why = check_artifact(spec, read_artifact(run, spec["file"]))
        if why is None:
            return None
        reason = reason or f"{why} (newest: {run['name']})"
    return reason or check_artifact(spec, None)


def _ablation(good: list[dict]) -> tuple[str, str, str] | None:
    configs = [(r["name"], {k: v for k, v in r["config"].get("config", {}).items() if k not in ("seed", "seeds")}) for r in good]
    for i, (name_a, a) in enumerate(configs):
        for name_b, b in configs[i + 1 :]:
            differ = [k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING)]
            if len(differ) == 1:
                return name_a, name_b, differ[0]
    return None


_MISSING = object()


def reproducibility(crit: Criterion, runs: list[dict], problems: list[str], rules: dict, rerun: dict | None,
                    notes: str | None = None) -> None:  # fmt: skip
    """0.3 complete runs, 0.2 declared artifacts valid, 0.3 same-seed rerun matches and regenerates, 0.2 seed matters.

    ``notes``: notes.md's text for notes_line artifacts; None reads it from the runs' project.
    """
    if notes is None:
        notes = (read_notes(runs[0]["root"], rules)[0] if runs else None) or ""
    if not runs:
        crit.lost.append(f"no labkit runs for lesson {rules.get('lesson', 'NN')} under runs/: run the lab "
                         f"(.venv/bin/python labs/lesson_{rules.get('lesson', 'NN')}/lab_experiment.py)")  # fmt: skip
        crit.lost += problems[:8]
        crit.score = 0.0
        return
    complete = [r for r in runs if r["ok"]]
    crit.found.append(f"{len(complete)}/{len(runs)} run folder(s) complete (config, seeds, env, metrics, summary)")
    crit.lost += problems[:8]
    share = 0.3 * len(complete) / len(runs)
    newest = newest_complete(runs)
    specs = rules.get("artifacts", [])
    if specs:
        bad = []
        for spec in specs:
            data = None if newest is None or spec["kind"] == "notes_line" else read_artifact(newest, spec["file"])
            why = check_artifact(spec, data, notes)
            if why:
                where = "" if spec["kind"] == "notes_line" else f" (in {newest['name'] if newest else 'no complete run'})"
                bad.append(why + where)
        crit.lost += bad
        todo = _todos(newest)
        if bad and todo:
            crit.lost.append(f"{newest['name']} skipped what needs {', '.join(f'`{t}`' for t in todo)} (kind=\"todo\" in "
                             f"metrics.jsonl): implement it in labs/lesson_{rules.get('lesson', 'NN')}/lab_experiment.py "
                             "and run the lab again")  # fmt: skip
        valid = len(specs) - len(bad)
        crit.found.append(f"{valid}/{len(specs)} declared artifact(s) valid" + (f" in {newest['name']}" if newest else ""))
        share += 0.2 * valid / len(specs)
    else:
        share += 0.2
    if rerun is None:
        crit.lost.append("no rerun: no complete run to re-execute (see the run problems above)")
    else:
        if rerun["ok"] and rerun["regenerated"]:
            crit.found.append(f"rerun of {rerun['run']} (seed {rerun['seed']}) matched its summary and regenerated "
                              f"every declared artifact ({rerun['seconds']:g} s)")  # fmt: skip
            share += 0.3
        else:
            if rerun["ok"]:
                crit.found.append(f"rerun of {rerun['run']} (seed {rerun['seed']}) matched its summary")
            else:
                crit.lost.append(f"rerun of {rerun['run']} (seed {rerun['seed']}): {rerun['why']}")
            crit.lost += [f"rerun of {rerun['run']}: {m}" for m in rerun["missing"]]
        if rerun["seed_ok"]:
            crit.found.append(f"rerun with seed {rerun['other_seed']} changed the stochastic summary values")
            share += 0.2
        else:
            crit.lost.append(f"rerun of {rerun['run']} with seed {rerun['other_seed']}: {rerun['seed_why']}")
    crit.score = crit.max * share


def _todos(run: dict | None) -> list[str]:
    """What a run of the provided lab skipped: its ``kind="todo"`` rows' ``missing`` names."""
    rows = run["metrics"] if run else []
    return list(dict.fromkeys(str(r["missing"]) for r in rows if r.get("kind") == "todo" and r.get("missing")))[:8]


# ---------------------------------------------------------------------------- reflection
def read_notes(project: Path, rules: dict) -> tuple[str | None, str]:
    """notes.md's text (None when unread) and, when unread, the one-line reason."""
    rel = rules.get("reflection", {}).get("notes", f"labs/lesson_{rules.get('lesson', 'NN')}/notes.md")
    try:
        return safepath.read_text(Path(project), rel, MAX_NOTES_BYTES), ""
    except FileNotFoundError:
        return None, f"{rel} is missing: write it from the template (the five headings)"
    except (safepath.UnsafePath, OSError, UnicodeDecodeError) as exc:  # a link (to /dev/zero, say), a FIFO, a huge file
        return None, f"{rel} not read: {exc}"[:300]


def _template_lines() -> set[str]:
    try:
        text = TEMPLATE.read_text(encoding="utf-8")
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}


def sections(text: str) -> dict[str, str]:
    """The five sections' own text (template lines removed), by key; absent sections are missing."""
    template = _template_lines()
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            heading = line.lower()
            current = next((k for k, pat in SECTIONS.items() if re.search(pat, heading) and k not in found), None)
            if current:
                found[current] = ""
        elif current and line.strip() not in template:
            found[current] += line + "\n"
    return found


def _round(value: float, digits: int) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def logged_numbers(runs: list[dict]) -> list[float]:
    """Every number in complete runs' metrics and summaries (the ``time`` stamps aside)."""
    out = set()
    for run in runs:
        if not run["ok"]:
            continue
        for row in [*run["metrics"], run["summary"] or {}]:
            out.update(float(v) for k, v in row.items() if k != "time" and _is_number(v))
    return sorted(out)


def _cites(text: str, value: float, digits: int) -> bool:
    """``text`` (a number as written) stands for ``value``: equal at ``digits`` significant digits, or
    within half a unit of the last digit written (``1.85`` for 1.8467)."""
    cited = float(text)
    if _round(cited, digits) == _round(value, digits):
        return True
    mantissa = text.lower().split("e")[0]
    places = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(text.lower().split("e")[1]) if "e" in text.lower() else 0
    return abs(cited - value) <= 0.5 * 10.0 ** (exponent - places) * (1 + 1e-9)


def cited_number(text: str, runs: list[dict], digits: int = 2) -> str | None:
    """The first number in ``text`` that a run logged (small integers, counts in prose, do not count)."""
    logged = logged_numbers(runs)
    for match in NUMBER.finditer(text):
        written = match.group()
        if "." not in written and "e" not in written.lower() and abs(float(written)) < 10:
            continue
        if any(_cites(written, value, digits) for value in logged):
            return written
    return None


def reflection(crit: Criterion, project: Path, runs: list[dict], rules: dict) -> None:
    """Five sections, each >= min_words of the student's own words; 'happened' cites a logged number."""
    cfg = rules.get("reflection", {})
    text, why = read_notes(project, rules)
    if text is None:
        crit.lost.append(why)
        crit.score = 0.0
        return
    found = sections(text)
    need, digits = int(cfg.get("min_words", 25)), int(cfg.get("cite_digits", 2))
    seen: dict[str, str] = {}
    good = 0
    for key in SECTIONS:
        body = found.get(key)
        if body is None:
            crit.lost.append(f"notes.md has no section on '{key}': add a heading with that word (see the template)")
            continue
        words = body.split()
        normal = " ".join(words).lower()
        if words and PLACEHOLDER.match(body):
            crit.lost.append(f"notes.md section '{key}' is a placeholder: write, in your own words, what you {_ASK[key]}")
            continue
        copy = next((k for k, v in seen.items() if v == normal), None) if words else None
        if copy:
            crit.lost.append(f"notes.md section '{key}' repeats section '{copy}' word for word: write, in your own words, "
                             f"what you {_ASK[key]}")  # fmt: skip
            continue
        seen[key] = normal
        if len(words) < need:
            crit.lost.append(f"notes.md section '{key}' has {len(words)} words (need {need}): write, in your own words, "
                             f"what you {_ASK[key]} (template lines do not count)")  # fmt: skip
            continue
        if key == "happened":
            number = cited_number(body, runs, digits)
            if number is None:
                newest = newest_complete(runs)
                where = f"runs/{newest['name']}/summary.json" if newest else "runs/<id>/summary.json"
                crit.lost.append(f"notes.md section 'happened' cites no logged number: quote the values from {where}")
                continue
            crit.found.append(f"'happened' cites the logged value {number}")
        good += 1
    crit.found.append(f"notes.md: {good}/{len(SECTIONS)} sections with real content")
    crit.score = crit.max * good / len(SECTIONS)


_ASK = {
    "expected": "predicted before running, and why",
    "happened": "measured, citing the logged numbers",
    "surprised": "did not expect, and your explanation",
    "next": "would test next, one variable, and why",
    "believe": "now believe and what evidence would change your mind",
}


# ---------------------------------------------------------------------------- the rules, written out
def describe(rules: dict) -> str:
    """Every rule, its points and the fix, as markdown for the lesson's grading section."""
    w = rules["weights"]
    mq, rp, rf = rules.get("measurement_quality", {}), rules.get("reproducibility", {}), rules.get("reflection", {})
    nn = rules.get("lesson", "NN")
    word, seeds = mq.get("baseline_word", "baseline"), mq.get("min_seeds", 3)
    notes, need = rf.get("notes", f"labs/lesson_{nn}/notes.md"), rf.get("min_words", 25)
    offset = rp.get("other_seed_offset", OTHER_SEED_OFFSET)
    stochastic = ", ".join(f"`{k}`" for k in rp.get("stochastic", [])) or "any summary value that is not a timing"
    q, r = float(w["measurement_quality"]) / 4, float(w["reproducibility"])
    total = sum(float(v) for v in w.values())
    lines = [
        f"The rubric has {total:g} points. `make check LESSON={nn}` scores every automatic part except the hidden "
        "tests and the notebook cells, with the messages the autograder prints; each lost point names its fix.",
        "",
        "| criterion | points | how it is scored |",
        "|---|---|---|",
        f"| implementation | {w['implementation']:g} | hidden tests ({float(rules.get('implementation', {}).get('hidden_tests_share', 0.75)):.0%}) "
        "and the notebooks' autograded cells, at the autograder; locally the visible tests show each category |",
        f"| measurement quality | {w['measurement_quality']:g} | four rules of {q:g} points, below |",
        f"| reproducibility | {w['reproducibility']:g} | four rules, below |",
        f"| reflection | {w['reflection']:g} | five notes sections of {float(w['reflection']) / 5:g} points, below |",
        f"| conceptual clarity | {w['conceptual_clarity']:g} | graded by hand from the notebooks' written answers |",
        "",
        "Measurement quality (runs that are complete):",
        f"- {q:g} points: a baseline is logged: a metric, summary or config key containing `{word}`. "
        f"Fix: log the reference next to your number, e.g. `run.log({word}_ms=...)`.",
        f"- {q:g} points: at least {seeds} distinct seeds over your runs. Fix: run the experiment with seeds "
        f"{', '.join(map(str, range(int(seeds))))}.",
        f"- {q:g} points: every declared sweep covers its range (the sweep artifacts below). Fix: extend the sweep.",
        f"- {q:g} points: an ablation: two runs whose config differs in exactly one key (the seed aside). "
        "Fix: run `main()` again with one config value changed.",
        "",
        "Reproducibility:",
        f"- {0.3 * r:g} points x the share of run folders under `runs/` that are complete (config.json with seeds and an "
        "entrypoint, env.json, metrics.jsonl, summary.json). Fix: log with `start_run(..., entrypoint=main)` and end "
        "with `run.finish(...)`; delete broken folders. Extra runs never cost points.",
        f"- {0.2 * r:g} points x the share of the declared artifacts below that are present and valid in the newest "
        "complete run (the notes line in notes.md).",
        f"- {0.3 * r:g} points: the autograder reruns the newest complete run with its seed: every summary value must match "
        f"(relative tolerance {rp.get('rerun_rtol', 1e-4):g}; timings, keys ending in _ms, _s or _seconds, only present "
        "and positive) and the rerun must regenerate every declared artifact file, valid. Fix: submit the run the "
        "submitted code produces.",
        f"- {0.2 * r:g} points: a second rerun with seed + {offset} must change {stochastic}. A run whose numbers do not move "
        "with the seed logs constants, not measurements. Fix: draw the inputs from the run's seed.",
        "",
        f"Reflection (`{notes}`): each of the five sections (headings with *expected*, *happened*, *surprised*, "
        f"*next*, *believe*/*evidence*) needs at least {need} words of your own: the template's lines do not count, "
        "a placeholder or a copy of another section scores 0, and *happened* must quote at least one number your "
        f"runs logged (compared at {rf.get('cite_digits', 2)} significant digits), e.g. from `runs/<id>/summary.json`.",
    ]
    specs = rules.get("artifacts", [])
    if specs:
        lines += ["", "Declared artifacts (`labs/lesson_" + str(nn) + "/lab.toml`), saved with `run.artifact(name)`:", "",
                  "| artifact | what | valid when |", "|---|---|---|"]  # fmt: skip
        for spec in specs:
            what = str(spec.get("what", "")).replace("|", "\\|")
            lines.append(f"| `{spec.get('file', 'notes.md')}` ({spec['kind']}) | {what} | {_valid_when(spec)} |")
    return "\n".join(lines) + "\n"


def _valid_when(spec: dict) -> str:
    kind = spec["kind"]
    if kind == "png":
        return (f"decodes as a PNG, at least {artifacts.MIN_PIXELS}x{artifacts.MIN_PIXELS} px, at least "
                f"{artifacts.MIN_COLOURS} distinct colours (a plotted figure, not a blank)")  # fmt: skip
    if kind == "table":
        return f"a CSV whose header has {', '.join(f'`{c}`' for c in spec['columns'])}, numbers in them, at least one row"
    if kind == "sweep":
        low, high = spec["covers"]
        return f"column `{spec['column']}` spans {low:g} to {high:g} with at least {spec.get('min_points', 2)} distinct values"
    if kind == "tensor":
        return "loads with `torch.load(..., weights_only=True)`"
    return f"a line of notes.md matches `{spec['pattern']}`".replace("|", "\\|")
