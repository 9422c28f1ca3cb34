"""Grade one lesson of one submission: hidden tests in a grading process, results written.

The hidden tests run under pytest in a child process of the CLI (the grader's
process), which talks to the sandboxed worker. This process only assembles the
verdicts that child logged, so even if it dies, results.json is still written and
every test without a verdict scores 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from graders.engine import launcher, lessons, provenance, results, runroot
from graders.engine.sandbox import REPO_ROOT

if TYPE_CHECKING:
    from graders.engine.server import GradingServer

RUN_TIMEOUT = 30 * 60  # whole hidden suite; per-call and per-test limits are far lower
TEST_TIMEOUT = 300
CALL_TIMEOUT = 60.0  # one request to the worker; three timeouts and the submission is given up


def grade(
    lesson: lessons.Lesson,
    submission: Path,
    out_dir: Path,
    *,
    hide: tuple[Path, ...] = (),
    keyword: str | None = None,
    call_timeout: float = CALL_TIMEOUT,
    run_timeout: float = RUN_TIMEOUT,
    threads: int | None = None,
    server: GradingServer | None = None,  # run in a forked child of this zygote (graders.engine.server) instead
    allow_unsandboxed: bool | None = None,  # --allow-unsandboxed (None: LLMG_ALLOW_UNSANDBOXED=1): a weakened worker
) -> dict:
    """Grade ``submission`` on ``lesson``; write ``out_dir/results.json``; return the results."""
    lesson_dir = lessons.find_lesson_dir(submission.resolve(), lesson)
    graded_from = provenance.expected(lesson, lesson_dir, keyword=keyword, call_timeout=call_timeout)  # before it runs
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    hide = (*hide, out_dir, submission.resolve())
    t0 = time.perf_counter()
    if allow_unsandboxed is None:
        allow_unsandboxed = launcher.allowed_unsandboxed()
    launcher.choose(allow_unsandboxed)  # fail closed before anything runs: SandboxUnavailable, one line
    with runroot.run_root() as root, tempfile.TemporaryDirectory(prefix="llmg-run-", dir=root) as tmp:
        events = Path(tmp) / "events.jsonl"
        cmd = [
            sys.executable, "-m", "pytest", str(lesson.graders_dir),
            "-p", "graders.engine.plugin", "-p", "no:cacheprovider",
            "-c", str(REPO_ROOT / "pyproject.toml"), "--rootdir", str(REPO_ROOT),
            "-q", "--no-header", "-o", "console_output_style=classic", f"--timeout={TEST_TIMEOUT}",
            f"--llmg-lesson-dir={lesson_dir}", f"--llmg-modules={','.join(lesson.modules)}",
            f"--llmg-events={events}", f"--llmg-call-timeout={call_timeout}", f"--llmg-lesson={lesson.number}",
        ]  # fmt: skip
        cmd += [f"--llmg-hide={p}" for p in hide]
        if keyword:
            cmd += ["-k", keyword]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
        env[launcher.ALLOW_ENV] = "1" if allow_unsandboxed else "0"
        if threads:  # torch in the grading process reads this; the worker gets the same count
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        problem = None
        log_path = out_dir / "grader.log"
        with open(log_path, "wb") as log:
            try:
                io = {"cwd": REPO_ROOT, "env": env, "stdout": log, "stderr": subprocess.STDOUT, "timeout": run_timeout}
                if server is not None:
                    proc = server.run(cmd, **io)
                else:  # the grading process dies with this one (a killed CLI leaves no grading behind)
                    proc = subprocess.run(cmd, **io, preexec_fn=launcher.die_with_parent)
                if proc.returncode not in (0, 1, 5):  # 0 all passed, 1 some failed, 5 none collected
                    problem = f"the grading process ended with status {proc.returncode} (see {log_path})"
            except subprocess.TimeoutExpired:
                problem = f"the whole grading run passed its {run_timeout:g} s limit"
        cap_log(log_path)
        header = f"lesson {lesson.number} ({lesson.title}); submission {lesson_dir}"
        res = results.assemble(results.read_events(events), header=header, elapsed=time.perf_counter() - t0, problem=problem,
                               provenance=graded_from)
    results.write_atomic(out_dir / "results.json", json.dumps(res, indent=2) + "\n")
    return res


LOG_BYTES = 16 << 20  # the plugin caps pytest's own output at 8 MiB; this catches anything written around it


def cap_log(path: Path, limit: int = LOG_BYTES) -> None:
    """Keep grader.log under ``limit`` bytes: its head and its tail, with a line saying what was cut."""
    try:
        size = path.stat().st_size
        if size <= limit:
            return
        with open(path, "r+b") as f:
            f.seek(size - limit // 4)
            tail = f.read()
            f.seek(limit // 2)
            f.write(f"\n[grader.log: {size - limit // 2 - len(tail)} bytes cut]\n".encode() + tail)
            f.truncate()
    except OSError:
        pass
