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


def assemble(events: list[dict], *, header: str, elapsed: float, problem: str | None) -> dict:
    """Gradescope-schema results from the run's events. A collected test with no verdict scores 0."""
    collected = next((e["tests"] for e in events if e.get("event") == "collected"), [])
    verdicts = {e["nodeid"]: e for e in events if e.get("event") == "result"}
    sandbox = next((e for e in events if e.get("event") == "sandbox"), None)
    tests = []
    for number, test in enumerate(collected, start=1):
        verdict = verdicts.get(test["nodeid"])
        points = test["points"]
        if verdict is None:
            status, score, max_score = "failed", 0.0, points
            output = f"no verdict: {problem or 'the grading run stopped before this test finished'}"
        elif verdict["outcome"] == "skipped":
            # Not counted: a GPU test on a machine without CUDA must not cost points.
            status, score, max_score = "passed", 0.0, 0.0
            output = f"skipped, not counted: {verdict['message']}"
        else:
            passed = verdict["outcome"] == "passed"
            status, score, max_score = ("passed" if passed else "failed"), (points if passed else 0.0), points
            output = verdict["message"]
        tags = list(test["tags"]) + (["skipped"] if verdict and verdict["outcome"] == "skipped" else [])
        tests.append(
            {
                "name": test["name"],
                "number": str(number),
                "score": score,
                "max_score": max_score,
                "status": status,
                "output": output,
                "tags": tags,
                "visibility": "visible",
            }
        )
    lines = [header]
    if sandbox:
        lines.append(sandbox["summary"])
    if problem:
        lines.append(f"grading problem: {problem}")
    if not collected:
        lines.append("no tests were collected: nothing could be graded")
    return {
        "score": round(sum(t["score"] for t in tests), 4),
        "max_score": round(sum(t["max_score"] for t in tests), 4),
        "execution_time": round(elapsed, 2),
        "output": "\n".join(lines),
        "tests": tests,
        "extra_data": {"worker_starts": sandbox["starts"] if sandbox else 0,
                       "worker_start_seconds": sandbox["start_seconds"] if sandbox else None},
    }


def _fmt(x: float) -> str:
    return f"{x:g}"


def table(results: dict) -> str:
    """The results as a plain-text table for the terminal."""
    name_width = min(72, max([len(t["name"]) for t in results["tests"]] + [4]))
    lines = [results["output"], ""]
    lines.append(f"{'#':>3}  {'test':<{name_width}}  {'points':>7}  status")
    for t in results["tests"]:
        name = t["name"] if len(t["name"]) <= name_width else t["name"][: name_width - 1] + "…"
        status = "skipped" if "skipped" in t["tags"] else t["status"]
        lines.append(f"{t['number']:>3}  {name:<{name_width}}  {_fmt(t['score']) + '/' + _fmt(t['max_score']):>7}  {status}")
        if t["output"] and status != "skipped":
            lines.append(f"{'':>3}  ↳ {t['output'].splitlines()[0][:160]}")
    lines.append("")
    lines.append(f"total: {_fmt(results['score'])}/{_fmt(results['max_score'])}  ({results['execution_time']:.1f} s)")
    return "\n".join(lines)
