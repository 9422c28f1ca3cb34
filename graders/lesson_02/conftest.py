import pytest

from graders.lesson_02.bindings import Lesson02


@pytest.fixture(scope="session")
def lesson02(worker) -> Lesson02:
    return Lesson02(worker)
