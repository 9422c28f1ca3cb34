"""Grading results: Gradescope's results.json schema, written atomically, and a readable table."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_events(path: Path) -> list[dict]:
    """Events written by the grading run; a torn last line (a crash mid-write) is ignored."""
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


PROBLEM_TAG = "grading problem"  # a test the grader could not judge: not the student's failure, not in pass rates
SKIPPED_TAG = "skipped"


def assemble(
    events: list[dict], *, header: str, elapsed: float, problem: str | None, provenance: dict | None = None
) -> dict:
    """Gradescope-schema results from the run's events.

    A test gets ``status`` "passed"/"failed" only from a verdict about the student's code. A
    skipped test (no CUDA) and a test the grader could not judge (its own exception, or no
    verdict at all) have no status (Gradescope allows that), are tagged, and say so; a
    grading problem keeps its points in ``max_score`` (the score is not final) and is
    listed in ``extra_data.provenance.problems``.
    """
    collected = next((e["tests"] for e in events if e.get("event") == "collected"), [])
    verdicts = {e["nodeid"]: e for e in events if e.get("event") == "result"}
    sandbox = next((e for e in events if e.get("event") == "sandbox"), None)
    problems = [str(e["message"]) for e in events if e.get("event") == "problem"]  # e.g. a test without points
    if problem:
        problems.append(problem)
    tests, test_problems = [], []
    for number, test in enumerate(collected, start=1):
        verdict = verdicts.get(test["nodeid"])
        points = test["points"]
        outcome = verdict["outcome"] if verdict else "no verdict"
        extra: list[str] = []
        status: str | None
        if outcome == "passed":
            status, score, max_score, output = "passed", points, points, verdict["message"]
        elif outcome == "failed":
            status, score, max_score, output = "failed", 0.0, points, verdict["message"]
        elif outcome == "skipped":  # not counted: a GPU test on a machine without CUDA must not cost points
            status, score, max_score, output = None, 0.0, 0.0, f"skipped, not counted: {verdict['message']}"
            extra = [SKIPPED_TAG]
        else:  # "problem" (the grader's own exception) or no verdict: the grader failed, not the student
            why = verdict["message"] if verdict and verdict.get("message") else (
                problem or "the grading run stopped before this test finished")
            status, score, max_score, extra = None, 0.0, points, [PROBLEM_TAG]
            output = (f"grading problem (not your code; this test will be regraded): {why}" if verdict
                      else f"no verdict: {why}")  # fmt: skip
            test_problems.append(f"{test['name']}: {why}")
        entry = {
            "name": test["name"],
            "number": str(number),
            "score": score,
            "max_score": max_score,
            "output": output,
            "tags": list(test["tags"]) + extra,
            "visibility": "visible",
        }
        if status is not None:
            entry["status"] = status
        tests.append(entry)
    if test_problems:
        problems.append(f"{len(test_problems)} test(s) could not be graded; first: {test_problems[0]}"[:500])
    lines = [header]
    if sandbox:
        lines.append(sandbox["summary"])
    lines += [f"grading problem: {p}" for p in problems]
    if not collected:
        lines.append("no tests were collected: nothing could be graded")
    extra_data = {
        "worker_starts": sandbox["starts"] if sandbox else 0,
        "worker_start_seconds": sandbox["start_seconds"] if sandbox else None,
    }
    if provenance is not None:
        extra_data["provenance"] = {**provenance, "problems": problems}
    return {
        "score": round(sum(t["score"] for t in tests), 4),
        "max_score": round(sum(t["max_score"] for t in tests), 4),
        "execution_time": round(elapsed, 2),
        "output": "\n".join(lines),
        "tests": tests,
        "extra_data": extra_data,
    }


def verdict(test: dict) -> str:
    """One word for a test: passed, failed, skipped or "grading problem"."""
    if SKIPPED_TAG in test.get("tags", ()) and "status" not in test:
        return "skipped"
    if PROBLEM_TAG in test.get("tags", ()) and "status" not in test:
        return PROBLEM_TAG
    return str(test.get("status", "failed"))


def problems(res: dict) -> list[str]:
    """The grading problems a results dict records (provenance, else its output lines)."""
    prov = (res.get("extra_data") or {}).get("provenance") if isinstance(res.get("extra_data"), dict) else None
    if isinstance(prov, dict) and isinstance(prov.get("problems"), list):
        return [str(p) for p in prov["problems"]]
    return [ln.removeprefix("grading problem: ") for ln in str(res.get("output", "")).splitlines()
            if ln.startswith("grading problem:")]  # fmt: skip


def _fmt(x: float) -> str:
    return f"{x:g}"


def table(results: dict) -> str:
    """The results as a plain-text table for the terminal."""
    name_width = min(72, max([len(t["name"]) for t in results["tests"]] + [4]))
    lines = [results["output"], ""]
    lines.append(f"{'#':>3}  {'test':<{name_width}}  {'points':>7}  status")
    for t in results["tests"]:
        name = t["name"] if len(t["name"]) <= name_width else t["name"][: name_width - 1] + "…"
        status = verdict(t)
        lines.append(f"{t['number']:>3}  {name:<{name_width}}  {_fmt(t['score']) + '/' + _fmt(t['max_score']):>7}  {status}")
        if t["output"] and status != "skipped":
            lines.append(f"{'':>3}  ↳ {t['output'].splitlines()[0][:160]}")
    lines.append("")
    total = f"total: {_fmt(results['score'])}/{_fmt(results['max_score'])}  ({results['execution_time']:.1f} s)"
    found = problems(results)
    lines.append(total + (f"  NOT FINAL: {len(found)} grading problem(s), see above" if found else ""))
    return "\n".join(lines)
