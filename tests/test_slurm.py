"""`llm-grade batch --executor slurm` against a real Slurm: a single-node cluster (Debian's slurm-wlm and munge)
that scripts/slurm_cluster.sh starts on this machine. Skipped, with the script's reason, where it cannot start one
(not root, no apt-get, the daemons do not come up)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
LESSON = "02"  # CPU-cheap: a bigram model's losses and sampling
TIMINGS = Path(os.environ.get("LLMG_SLURM_TIMINGS", "/tmp/llmg-slurm-timings.json"))


def _record(**values: float) -> None:
    """Measured seconds, kept in a JSON file (the report quotes them) and printed (pytest -s)."""
    old = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    old.update({k: round(v, 1) for k, v in values.items()})
    TIMINGS.write_text(json.dumps(old, indent=2) + "\n")
    print(values)


@pytest.fixture(scope="module")
def cluster() -> str:
    """The cluster is up (started by the script if needed); skips with the script's reason otherwise."""
    if sys.platform != "linux":
        pytest.skip("the single-node Slurm cluster needs Linux")
    try:
        import submitit  # noqa: F401
    except ImportError:
        pytest.skip("submitit is not installed (pip install submitit==1.5.4)")
    t0 = time.perf_counter()
    proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"no Slurm cluster: {SCRIPT.name} start exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already running" in again.stderr, again.stderr
    _record(setup_script_s=first, setup_script_when_running_s=time.perf_counter() - t0)
    return proc.stderr


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graders.engine.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _grades(out: Path) -> list[dict]:
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _classroom(subs: Path) -> Path:
    """Ten students: correct, untouched stubs, a crash, a hang, one function missing, one reporting its uid, and four
    that are rows without a grading (no lesson folder, another lesson, a linked lesson folder, a reserved name)."""
    ref, stub = REPO / "solutions_private" / f"lesson_{LESSON}", REPO / "exercises" / f"lesson_{LESSON}"
    module = "language_model.py"
    shutil.copytree(ref, subs / "alice" / f"lesson_{LESSON}", ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    shutil.copytree(stub, subs / "bob" / "exercises" / f"lesson_{LESSON}", ignore=shutil.ignore_patterns("__pycache__"))
    broken = {
        "carol": "import os\nos._exit(3)\n",  # crashes its worker
        "erin": "while True:\n    pass\n",  # hangs at import
        "ivan": "import os\nraise RuntimeError('student code as root' if os.getuid() == 0 else 'student code not root')\n",
        "half": (ref / module).read_text().replace("def cross_entropy(", "def _unused(", 1),  # one function missing
    }
    for name, text in broken.items():
        (subs / name / f"lesson_{LESSON}").mkdir(parents=True)
        (subs / name / f"lesson_{LESSON}" / module).write_text(text)
    (subs / "dave").mkdir()  # no lesson folder: a row with its reason
    (subs / "zed" / "lesson_01").mkdir(parents=True)  # another lesson only
    (subs / "mallory").mkdir()
    (subs / "mallory" / f"lesson_{LESSON}").symlink_to(ref)  # a link to the reference: refused
    (subs / "nbgrader").mkdir()  # the batch's own folder name
    return subs


def test_slurm_batch_gives_the_local_grades(cluster: str, tmp_path: Path):
    subs = _classroom(tmp_path / "subs")
    common = ["batch", "--lesson", LESSON, "--submissions", str(subs), "--call-timeout", "3"]
    t0 = time.perf_counter()
    local = _cli(*common, "--out", str(tmp_path / "local"), "--jobs", "2")
    local_s = time.perf_counter() - t0
    assert local.returncode == 0, local.stderr[-2000:]
    t0 = time.perf_counter()
    slurm = _cli(*common, "--out", str(tmp_path / "slurm"), "--executor", "slurm", "--max-parallel", "2")
    slurm_s = time.perf_counter() - t0
    assert slurm.returncode == 0, slurm.stderr[-2000:]
    _record(batch_local_jobs2_s=local_s, batch_slurm_max_parallel2_s=slurm_s)
    assert (tmp_path / "slurm" / "grades.csv").read_text() == (tmp_path / "local" / "grades.csv").read_text()
    assert (tmp_path / "slurm" / "pass_rates.csv").read_text() == (tmp_path / "local" / "pass_rates.csv").read_text()
    by = {r["student"]: r for r in _grades(tmp_path / "slurm")}
    assert len(by) == 10 and float(by["alice"]["score"]) == float(by["alice"]["max_score"]) > 0, by
    assert 0 < float(by["half"]["score"]) < float(by["half"]["max_score"])
    assert "stopped the worker" in by["carol"]["reason"] and "over the 3 s budget" in by["erin"]["reason"]
    assert "student code not root" in by["ivan"]["reason"], "the sandbox applies inside the root slurmd's job"
    assert {by[n]["status"] for n in ("dave", "zed", "mallory", "nbgrader")} == {"not graded"}
    assert (tmp_path / "slurm" / ".slurm").is_dir(), "submitit's folder is on the shared OUT"


def _array_tasks(name: str) -> dict[str, str]:
    """{task id: state} of this user's array tasks with job name ``name`` (squeue)."""
    text = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i %T"], capture_output=True, text=True).stdout
    return dict(line.split() for line in text.splitlines() if line.strip())


def _wait_for(predicate, timeout: float = 120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out waiting")


def test_a_cancelled_job_is_a_row_with_its_reason_and_a_rerun_fills_it(cluster: str, tmp_path: Path):
    subs, out = tmp_path / "subs", tmp_path / "out"
    ref = REPO / "solutions_private" / f"lesson_{LESSON}"
    for name in ("ann", "ben"):
        shutil.copytree(ref, subs / name / f"lesson_{LESSON}", ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    args = ["batch", "--lesson", LESSON, "--submissions", str(subs), "--out", str(out), "--executor", "slurm"]
    proc = subprocess.Popen([sys.executable, "-m", "graders.engine.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:  # ann is task 0 of the array: cancel it once it runs
        running = _wait_for(lambda: [t for t, s in _array_tasks(f"llmg-{LESSON}").items() if t.endswith("_0") and s == "RUNNING"])
        subprocess.run(["scancel", running[0]], check=True)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    by = {r["student"]: r for r in _grades(out)}
    assert by["ann"]["status"] == "not graded" and f"slurm job {running[0]} ended CANCELLED" in by["ann"]["reason"], by
    assert by["ben"]["status"] == "graded" and by["ben"]["score"] == by["ben"]["max_score"]
    t0 = time.perf_counter()
    again = _cli(*args)
    assert again.returncode == 0 and "2 graded (1 from earlier runs)" in again.stdout, again.stdout + again.stderr
    _record(rerun_one_missing_student_slurm_s=time.perf_counter() - t0)
    assert {r["status"] for r in _grades(out)} == {"graded"}


def test_ctrl_c_cancels_the_array(cluster: str, tmp_path: Path):
    subs = tmp_path / "subs"
    shutil.copytree(REPO / "exercises" / f"lesson_{LESSON}", subs / "sam" / f"lesson_{LESSON}")
    (subs / "tom" / f"lesson_{LESSON}").mkdir(parents=True)
    (subs / "tom" / f"lesson_{LESSON}" / "language_model.py").write_text("x = 1\n")
    args = ["batch", "--lesson", LESSON, "--submissions", str(subs), "--out", str(tmp_path / "out"), "--executor", "slurm"]
    proc = subprocess.Popen([sys.executable, "-m", "graders.engine.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(lambda: _array_tasks(f"llmg-{LESSON}"))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    _wait_for(lambda: not _array_tasks(f"llmg-{LESSON}"), timeout=30)  # scancel'd: nothing of the array remains
    assert not (tmp_path / "out" / "grades.csv").exists()
