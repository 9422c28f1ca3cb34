"""One timer for every speed test: the student's work against the reference's, as a ratio that load cannot bend.

Both sides are single-threaded and measured in CPU time, which other processes on the
machine barely change (wall time doubles when two other jobs share the cores; CPU time
does not). The student's side is the CPU time of the *whole* worker (its cgroup, every
thread and process it started) around the timed request, so a thread that spins while
the student's function is idle is charged to the student. The reference runs here, on
one thread, timed with ``time.thread_time()``, while the worker is frozen: nothing the
submission runs can slow the reference down. Trials are interleaved (reference, student,
reference, student, ...) so slow drifts of the machine hit both sides alike, and the
verdict is the median of per-trial ratios, reported with its spread (the IQR), never
absolute seconds (they depend on the machine).

``clock="wall"`` times both sides by the wall clock instead, for device work (CUDA), where
CPU time says nothing; the worker is still frozen while the reference runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from graders.engine.sandbox import Worker, WorkerDied


@dataclass(frozen=True)
class Ratio:
    """Student time / reference time over interleaved trials: the median and its interquartile range."""

    median: float
    low: float  # 25th percentile
    high: float  # 75th percentile
    trials: int
    ratios: tuple[float, ...]

    @classmethod
    def of(cls, ratios: list[float]) -> Ratio:
        if len(ratios) >= 2:
            low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        else:
            low = high = ratios[0]
        return cls(statistics.median(ratios), low, high, len(ratios), tuple(ratios))

    def __str__(self) -> str:
        return f"{self.median:.2f}x (IQR {self.low:.2f}-{self.high:.2f}x, {self.trials} trials)"


def ratio(
    worker: Worker,
    student: Callable[[int], Any],
    reference: Callable[[int], Any],
    trials: int = 7,
    *,
    check: Callable[[int, Any, Any], None] | None = None,
    warmup: int = 1,
    clock: str = "cpu",
    give_up_above: float | None = None,
) -> Ratio:
    """Time ``reference(i)`` here and ``student(i)`` (one request to ``worker``) in turn for each trial ``i``.

    ``check(i, student_result, reference_result)`` runs after each trial, outside both
    timings (an AssertionError there fails the test as usual). The first ``warmup``
    trials are not counted. With ``give_up_above``, measuring stops once three counted
    trials are all above it (a submission that slow fails anyway; the suite saves time).
    """
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', not {clock!r}")
    threads = torch.get_num_threads()
    worker.call("torch", "set_num_threads", (1,))  # the student's timed calls: one thread, like the reference
    torch.set_num_threads(1)
    ratios: list[float] = []
    try:
        for trial in range(warmup + trials):
            with worker.frozen():
                t0 = time.thread_time() if clock == "cpu" else time.perf_counter()
                want = reference(trial)
                if clock == "wall" and torch.cuda.is_available():
                    torch.cuda.synchronize()
                reference_s = (time.thread_time() if clock == "cpu" else time.perf_counter()) - t0
            starts = worker.starts
            c0 = worker.cpu_seconds() if clock == "cpu" else time.perf_counter()
            got = student(trial)
            c1 = worker.cpu_seconds() if clock == "cpu" else time.perf_counter()
            if worker.starts != starts or not worker.running:
                raise WorkerDied("the worker restarted during a timed call; its time cannot be measured", kind="exited")
            if check is not None:
                check(trial, got, want)
            if trial >= warmup:
                ratios.append((c1 - c0) / max(reference_s, 1e-6))
                if give_up_above is not None and len(ratios) >= 3 and min(ratios) > give_up_above:
                    break
    finally:
        torch.set_num_threads(threads)
        if worker.running:
            worker.call("torch", "set_num_threads", (threads,))
    return Ratio.of(ratios)
