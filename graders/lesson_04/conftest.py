import pytest

from graders.lesson_04.bindings import Lesson04


@pytest.fixture(scope="session")
def lesson04(worker) -> Lesson04:
    return Lesson04(worker)
