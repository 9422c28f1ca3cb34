"""The speed tests' timer: what it charges to whom, checked on CPU time (no wall-clock thresholds).

The assertions compare CPU seconds that differ by orders of magnitude (a spinning thread
versus a sleeping function), so load on the machine cannot flip them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from graders.engine import timing
from graders.engine.sandbox import Worker
from tests.conftest import scratch_worker

MODULE = '''
import threading, time

import torch

_spinning = []


def spin():
    """Start a background thread that burns CPU whenever it can (forever)."""
    def burn():
        while True:
            pass
    threading.Thread(target=burn, daemon=True).start()
    _spinning.append(True)
    return len(_spinning)


def idle(seconds):
    """The 'student function': sleeps, so it costs no CPU of its own."""
    time.sleep(seconds)
    return torch.get_num_threads()
'''


@pytest.fixture
def worker(tmp_path: Path):
    with scratch_worker(tmp_path, {"timed": MODULE}, timeout=30) as w:
        yield w


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_ratio_statistics():
    r = timing.Ratio.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (r.median, r.low, r.high, r.trials) == (3.0, 2.0, 4.0, 5)
    assert str(r) == "3.00x (IQR 2.00-4.00x, 5 trials)"
    assert timing.Ratio.of([2.5]).low == 2.5


def test_a_spinning_thread_is_charged_to_the_student_and_never_slows_the_reference(worker: Worker):
    threads_seen: list[int] = []
    frozen_cpu: list[float] = []

    def student(trial: int) -> None:
        threads_seen.append(worker.call("timed", "idle", (0.3,)))

    def reference(trial: int) -> None:
        c0 = worker.cpu_seconds()
        _burn(0.05)
        time.sleep(0.2)  # the worker's spinner would run now if it were not frozen
        frozen_cpu.append(worker.cpu_seconds() - c0)

    quiet = timing.ratio(worker, student, reference, trials=3)
    assert worker.call("timed", "spin") == 1
    spun = timing.ratio(worker, student, reference, trials=3)
    # Sleeping costs the worker ~no CPU: the quiet ratio is small. The spinner runs for
    # ~0.3 s of each student call (>= 0.05 s of CPU even on a crowded machine) against
    # the reference's 0.05 s: it is charged to the student.
    assert quiet.median < 0.5, quiet
    assert spun.median > 1.0 and spun.median > 4 * quiet.median, (quiet, spun)
    assert max(frozen_cpu) < 0.02, f"the worker ran while the reference was timed: {frozen_cpu}"
    assert set(threads_seen) == {1}, f"timed student calls ran with {threads_seen} torch threads, not 1"
    assert worker.call("timed", "idle", (0,)) == pytest.importorskip("torch").get_num_threads()  # restored


def test_checks_run_every_trial_and_hopeless_submissions_stop_early(worker: Worker):
    checked: list[int] = []
    worker.call("timed", "spin")
    r = timing.ratio(
        worker,
        lambda trial: worker.call("timed", "idle", (0.2,)),
        lambda trial: _burn(0.002),
        trials=7,
        check=lambda trial, got, want: checked.append(trial),
        give_up_above=3.0,
    )
    assert r.trials == 3 and checked == [0, 1, 2, 3], (r, checked)  # warm-up trial 0 checked, not counted
    with pytest.raises(AssertionError, match="wrong"):
        timing.ratio(worker, lambda t: 1, lambda t: 2, trials=2, check=lambda t, got, want: _fail("wrong answer"))


def _fail(message: str) -> None:
    raise AssertionError(message)
