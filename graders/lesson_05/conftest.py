import pytest
import torch

from graders.lesson_05.bindings import Lesson05


@pytest.fixture(scope="session")
def lesson05(worker) -> Lesson05:
    # Tiny models: one thread is fastest, and two OpenMP threads on a busy 2-core machine
    # can be 10x slower than one (measured: 300 training steps took 150 s instead of 10 s).
    torch.set_num_threads(1)
    return Lesson05(worker)
