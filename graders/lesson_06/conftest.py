import pytest

from graders.lesson_06.bindings import Lesson06


@pytest.fixture(scope="session")
def lesson06(worker) -> Lesson06:
    return Lesson06(worker)
