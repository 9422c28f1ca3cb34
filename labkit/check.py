"""`python -m labkit check NN`: every rubric part a student can check before submitting.

It runs the lesson's visible tests, then the automatic rubric criteria that need no hidden
material, with the instructor's rules and messages (labkit.rubric is shared): run folders,
declared artifacts, measurement quality, reproducibility (the newest complete run is rerun in a
subprocess of this venv, with its seed and with seed + 1000) and the notes. Hidden tests and
notebook autograded cells run only at the autograder; conceptual clarity is graded by hand.
Exit 0 when everything checkable here passes, else 1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labkit import rubric
from labkit.submit import SubmitError, lesson_folder, normalise, project_root

RERUN_CODE = """import json, sys
from labkit.runlog import rerun
entry, function, config, seed, root, out = sys.argv[1:7]
result = rerun(entry, function, json.loads(config), int(seed), root)
open(out, "w", encoding="utf-8").write(json.dumps(result))
"""
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


def visible_tests(root: Path, nn: str) -> tuple[int, int, int]:
    """Run ``pytest exercises/lesson_NN -q`` here, its output shown as is; return (passed, failed, skipped)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"exercises/lesson_{nn}"]
    shown = Path(sys.executable)
    shown = shown.relative_to(root) if shown.is_relative_to(root) else shown
    print(f"$ {shown} {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).rstrip()
    print(output)
    last = output.splitlines()[-1] if output else ""
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNTS.findall(last)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("xpassed", 0)
    if proc.returncode not in (0, 1) and not failed:
        failed = 1  # collection error, usage error: nothing ran
    return counts.get("passed", 0) + counts.get("xfailed", 0), failed, counts.get("skipped", 0)


def rerun_subprocess(root: Path, run: dict, rules: dict) -> dict | None:
    """Rerun ``run`` with its seed and with seed + OTHER_SEED_OFFSET, each in a fresh python of this venv."""
    request = rubric.rerun_request(run)
    if isinstance(request, str):
        return rubric.compare_rerun(run, request, None, rules)
    entry, function, config, seed = request
    timeout = float(rules.get("reproducibility", {}).get("rerun_timeout", 300))
    entry_path = (root / entry).resolve()
    if not entry_path.is_relative_to(root) or not entry_path.is_file():
        return rubric.compare_rerun(run, f"entrypoint {entry} is not a file of this repository", None, rules)
    print(f"rerunning {run['name']} ({entry}:{function}, seed {seed}, then seed {seed + rubric.OTHER_SEED_OFFSET})...", flush=True)
    t0 = time.perf_counter()
    results: list[dict | str] = []
    with tempfile.TemporaryDirectory(prefix="labkit-check-") as tmp:
        for n, s in enumerate((seed, seed + rubric.OTHER_SEED_OFFSET)):
            out = Path(tmp) / f"rerun-{n}.json"
            args = [str(entry_path), function, json.dumps(config), str(s), str(Path(tmp) / f"runs-{n}"), str(out)]
            try:
                proc = subprocess.run([sys.executable, "-c", RERUN_CODE, *args], cwd=root, capture_output=True,
                                      text=True, timeout=timeout)  # fmt: skip
            except subprocess.TimeoutExpired:
                results.append(f"the rerun with seed {s} ran past {timeout:g} s (reproducibility.rerun_timeout)")
                continue
            if proc.returncode != 0 or not out.is_file():
                tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                results.append(f"the rerun with seed {s} failed: {tail}"[:300])
                continue
            results.append(json.loads(out.read_text(encoding="utf-8")))
    return rubric.compare_rerun(run, results[0], results[1], rules, seconds=time.perf_counter() - t0)


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")


ORDER = ("implementation", "measurement_quality", "reproducibility", "reflection", "conceptual_clarity")


def report(crits: dict[str, rubric.Criterion], tests: tuple[int, int, int]) -> bool:
    """Print found/lost lines per criterion (the instructor's rubric.md wording), then the table; True = all pass."""
    passed, failed, skipped = tests
    ok, rows, got, checkable = True, [], 0.0, 0.0
    for name in ORDER:
        crit = crits[name]
        if crit.found or crit.lost:
            print(f"\n## {name.replace('_', ' ')} ({_points(crit.max)} points)")
            print("\n".join([f"- found: {line}" for line in crit.found] + [f"- lost: {line}" for line in crit.lost]))
        if name == "implementation":
            here = f"visible tests {passed}/{passed + failed}" + (f" ({skipped} skipped)" if skipped else "")
            status = "pass; hidden tests and notebook cells: at the autograder" if not failed else "FAIL: fix the failing visible tests"
            ok &= not failed
        elif name == "conceptual_clarity" or crit.score is None:
            here, status = "-", "manual: graded by your instructor" if name == "conceptual_clarity" else "at the autograder"
        else:
            here = f"{_points(crit.score)} / {_points(crit.max)}"
            full = crit.score >= crit.max - 1e-9
            status = "pass" if full else f"FAIL: {_points(crit.max - crit.score)} point(s) lost, {len(crit.lost)} lost line(s) above"
            ok &= full
            got, checkable = got + crit.score, checkable + crit.max
        rows.append((name, here, status))
    rows.append(("total checkable", f"{_points(got)} / {_points(checkable)}", "pass" if ok else "FAIL"))
    width = max(len(r[1]) for r in rows)
    print(f"\n{'criterion':<20} {'checkable here':<{width}}  status")
    for name, here, status in rows:
        print(f"{name:<20} {here:<{width}}  {status}")
    return ok


def run_check(root: Path, nn: str) -> bool:
    """The whole self-check for lesson ``nn`` of the repository at ``root``; True when everything checkable passes."""
    tests = visible_tests(root, nn)
    rules = rubric.load_rules(nn, root)
    runs, problems = rubric.find_runs(root, nn, rules)
    crits = {name: rubric.Criterion(name, float(rules["weights"][name])) for name in rubric.CRITERIA}
    rubric.implementation_local(crits["implementation"], tests[0], tests[1], nn)
    rubric.measurement_quality(crits["measurement_quality"], runs, rules)
    newest = rubric.newest_complete(runs)
    rerun = rerun_subprocess(root, newest, rules) if newest else None
    rubric.reproducibility(crits["reproducibility"], runs, problems, rules, rerun)
    rubric.reflection(crits["reflection"], root, runs, rules)
    crits["conceptual_clarity"].score = None
    return report(crits, tests)


def main(arg: str) -> int:
    nn = normalise(arg, "check")
    root = project_root()
    lesson_folder(root, nn)
    try:
        ok = run_check(root, nn)
    except rubric.RubricSetupError as exc:
        raise SubmitError(str(exc)) from None
    print("\nall checkable parts pass: `make submit LESSON=" + nn + "`" if ok else "\nsome checkable parts fail (lost lines above)")
    return 0 if ok else 1
