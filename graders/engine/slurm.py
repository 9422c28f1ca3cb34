"""``llm-grade batch --executor slurm``: one Slurm job per student, as one job array, through submitit.

Each array task runs :func:`graders.engine.batch.grade_student_row` for one student (the same
code path as the local thread pool): the grading process and its sandboxed worker start inside
the job, so under a root slurmd the student code still runs in bubblewrap as a per-worker uid,
never as root. The jobs read the submissions and write ``OUT/<student>/results.json`` on the
shared file system; submitit keeps its pickles and logs in ``OUT/.slurm/`` (hidden from the
worker with the rest of OUT). The submitting side gathers the rows into the same grades.csv.

Faults as the scheduler sees them: a task that ends without a result (cancelled, time limit,
preempted, node failure, out of memory) is a row ``not graded: slurm job A_i ended STATE`` with
Slurm's reason; its results.json is missing or records nothing reusable, so the next batch grades
exactly the missing students (provenance decides). Jobs are submitted ``--requeue``: Slurm
requeues a task lost with its node or preempted, and submitit requeues a task that reached its
time limit once (``max_num_timeout=1``). Ctrl-C on the submitting side cancels the array.

State is read with ``scontrol show job`` (the controller keeps finished jobs for ``MinJobAge``)
and ``sacct`` only when the controller no longer knows a job: a cluster without slurmdbd
has no accounting, and submitit's own watcher relies on sacct.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from graders.engine import lessons, runroot

FOLDER = ".slurm"  # under OUT: submitit's pickles, the array's logs
TERMINAL = {"BOOT_FAIL", "CANCELLED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
            "COMPLETED", "REVOKED", "SPECIAL_EXIT"}  # fmt: skip
POLL_S = 2.0
GONE_AFTER_S = 30.0  # a task the controller and sacct no longer know, without a result, for this long: lost


def grade_task(number: str, folder: str, out: str, hide: list[str], kwargs: dict, previous: object = None) -> object:
    """The body of one array task (runs on the compute node): grade one student, return the row."""
    from graders.engine import batch

    gpus, cpus = int(kwargs.pop("gpus", 0) or 0), int(kwargs.pop("cpus", 1) or 1)
    if not gpus:  # a CPU job: the gpu-marked tests skip (0/0), as on a CPU machine
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or cpus)
    with runroot.run_root():
        return batch.grade_student_row(lessons.load(number), Path(folder), Path(out), tuple(Path(h) for h in hide),
                                       previous=previous, threads=threads, **kwargs)  # fmt: skip


def _scontrol(job_id: str) -> dict[str, dict[str, str]]:
    """Per array task id ("A_i"): JobState, Reason, Restarts, from ``scontrol show job -o``; {} if unknown."""
    try:
        text = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if not array or not task:
            continue
        for part in task.split("%")[0].split(","):  # pending remainder: "3-9%2"
            low, _, high = part.partition("-")
            if low.isdigit():
                for i in range(int(low), int(high or low) + 1):
                    found[f"{array}_{i}"] = fields
    return found


def _sacct(job_id: str) -> dict[str, dict[str, str]]:
    """The same from accounting, when there is one (slurmdbd); {} otherwise."""
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,Reason", "-j", job_id],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        jid, state, reason = [*line.split("|"), "", ""][:3]
        found[jid] = {"JobState": state.split()[0] if state else "", "Reason": reason}
    return found


def _why(task_id: str, fields: dict[str, str]) -> str:
    state = fields.get("JobState", "UNKNOWN")
    reason = fields.get("Reason", "")
    extra = f" ({reason})" if reason and reason != "None" else ""
    restarts = fields.get("Restarts", "0")
    again = f", after {restarts} requeue(s)" if restarts not in ("", "0") else ""
    return f"not graded: slurm job {task_id} ended {state}{extra}{again}; a re-run grades it"


def run(
    lesson: lessons.Lesson,
    todo: list[Path],
    out: Path,
    hide: tuple[Path, ...],
    rows: dict,
    *,
    call_timeout: float,
    force: bool,
    rubric: bool,
    progress: bool,
    partition: str | None = None,
    gpus_per_job: int = 0,
    max_parallel: int | None = None,
    cpus_per_job: int = 1,
    time_limit_min: int = 40,
    submitted: list | None = None,
) -> dict:
    """Grade ``todo`` as one Slurm job array; return {student: Row}. ``submitted`` receives the array's job id."""
    try:
        import submitit
    except ImportError:  # pragma: no cover - a dependency
        raise lessons.GradingSetupError("--executor slurm needs submitit: pip install submitit") from None
    from tqdm import tqdm

    from graders.engine import batch

    if not todo:
        return {}
    if subprocess.run(["sh", "-c", "command -v sbatch"], capture_output=True).returncode:
        raise lessons.GradingSetupError("--executor slurm: sbatch is not on PATH (no Slurm client on this machine)")
    executor = submitit.SlurmExecutor(folder=out / FOLDER / "%j", max_num_timeout=1)
    params: dict = {"time": time_limit_min, "cpus_per_task": cpus_per_job, "job_name": f"llmg-{lesson.number}",
                    "additional_parameters": {"requeue": True}, "signal_delay_s": 60}  # fmt: skip
    if partition:
        params["partition"] = partition
    if gpus_per_job:
        params["gpus_per_node"] = gpus_per_job
    if max_parallel:
        params["array_parallelism"] = max_parallel
    else:
        params["array_parallelism"] = len(todo)
    executor.update_parameters(**params)
    kwargs = {"rubric": rubric, "force": force, "call_timeout": call_timeout, "gpus": gpus_per_job, "cpus": cpus_per_job}
    try:
        with executor.batch():
            jobs = [executor.submit(grade_task, lesson.number, str(f), str(out), [str(h) for h in hide], dict(kwargs),
                                    rows.get(f.name)) for f in todo]  # fmt: skip
    except Exception as exc:  # sbatch refused it (unknown partition, too many GPUs...): one line, nothing graded
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise lessons.GradingSetupError(f"--executor slurm: sbatch refused the array: {(lines or [''])[-1]}"[:400]) from None
    array = jobs[0].job_id.split("_")[0]
    if submitted is not None:
        submitted.append(array)
    done: dict = {}
    pending = dict(zip((j.job_id for j in jobs), zip(todo, jobs, strict=True), strict=True))
    unknown_since: dict[str, float] = {}
    bar = tqdm(total=len(todo), desc=f"lesson {lesson.number} (slurm {array})", unit="student", disable=not progress)
    try:
        while pending:
            states = _scontrol(array)
            for task_id, (folder, job) in list(pending.items()):
                fields = states.get(task_id)
                if job.paths.result_pickle.exists():
                    done[folder.name] = _result_row(batch, folder, job, task_id)
                elif fields is None:  # the controller forgot it: accounting, if any, or lost after a while
                    fields = _sacct(array).get(task_id)
                    if fields is None:
                        unknown_since.setdefault(task_id, time.monotonic())
                        if time.monotonic() - unknown_since[task_id] < GONE_AFTER_S:
                            continue
                        fields = {"JobState": "UNKNOWN", "Reason": "the scheduler no longer knows the job"}
                    if fields.get("JobState") not in TERMINAL and fields.get("JobState") != "UNKNOWN":
                        continue
                    done[folder.name] = _ended_row(batch, folder, job, task_id, fields)
                elif fields.get("JobState") in TERMINAL:
                    time.sleep(0.5)  # the result pickle is written just before the task ends
                    if job.paths.result_pickle.exists():
                        done[folder.name] = _result_row(batch, folder, job, task_id)
                    else:
                        done[folder.name] = _ended_row(batch, folder, job, task_id, fields)
                else:
                    continue
                del pending[task_id]
                bar.update(1)
            if pending:
                time.sleep(POLL_S)
    except BaseException:  # Ctrl-C (or anything else) on the submitting side: no grading left behind
        subprocess.run(["scancel", array], capture_output=True, timeout=60)
        raise
    finally:
        bar.close()
    return done


def _result_row(batch, folder: Path, job, task_id: str):
    try:
        row = job.result()
    except Exception as exc:  # the task raised (an engine bug inside the job): that row only
        text = str(exc).strip().splitlines()
        return batch.Row(folder.name, reason=f"grader error in slurm job {task_id}: {(text or [''])[-1]}"[:300])
    return row if isinstance(row, batch.Row) else batch.Row(folder.name, reason=f"grader error: slurm job {task_id} returned {row!r}"[:300])


def _ended_row(batch, folder: Path, job, task_id: str, fields: dict[str, str]):
    """A task that ended without a result; COMPLETED without a pickle (or FAILED) quotes the task's log."""
    reason = _why(task_id, fields)
    if fields.get("JobState") in ("FAILED", "COMPLETED"):
        try:
            tail = [ln for ln in Path(job.paths.stderr).read_text(errors="replace").splitlines() if ln.strip()][-1:]
        except OSError:
            tail = []
        reason += f": {tail[0]}" if tail else ""
    return batch.Row(folder.name, reason=reason[:300])
