import pytest

from graders.lesson_01.bindings import Lesson01


@pytest.fixture(scope="session")
def lesson01(worker) -> Lesson01:
    return Lesson01(worker)
