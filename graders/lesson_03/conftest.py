import pytest

from graders.lesson_03.bindings import Lesson03


@pytest.fixture(scope="session")
def lesson03(worker) -> Lesson03:
    return Lesson03(worker)
