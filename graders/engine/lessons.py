"""The lesson registry: which lessons have graders, and where a submission keeps them."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

GRADERS_DIR = Path(__file__).resolve().parent.parent


class GradingSetupError(Exception):
    """The grader itself cannot run (unknown lesson, missing or unreadable submission)."""


@dataclass(frozen=True)
class Lesson:
    number: str  # "03"
    title: str
    modules: tuple[str, ...]  # allow-listed student module files (stems) copied into the sandbox
    lab_modules: tuple[str, ...] = ()  # the lab's own files, for notebook autograding and reruns

    @property
    def dirname(self) -> str:
        return f"lesson_{self.number}"

    @property
    def graders_dir(self) -> Path:
        return GRADERS_DIR / self.dirname


def available() -> list[str]:
    return sorted(p.name.removeprefix("lesson_") for p in GRADERS_DIR.glob("lesson_[0-9][0-9]") if p.is_dir())


def normalise(number: str) -> str:
    """ "3", "03" or "lesson_03" -> "03"."""
    digits = re.fullmatch(r"(?:lesson_)?(\d{1,2})", str(number).strip())
    if not digits:
        raise GradingSetupError(f"not a lesson number: {number!r} (use e.g. 03)")
    return digits.group(1).zfill(2)


def load(number: str) -> Lesson:
    """The lesson ``number`` ("3", "03" or "lesson_03")."""
    try:
        nn = normalise(number)
    except GradingSetupError:
        nn = None
    if nn not in available():
        raise GradingSetupError(f"unknown lesson {number!r}: choose one of {', '.join(available()) or 'none'}")
    spec = importlib.import_module(f"graders.lesson_{nn}")
    return Lesson(number=nn, title=spec.TITLE, modules=tuple(spec.MODULES), lab_modules=tuple(getattr(spec, "LAB_MODULES", ())))




def find_lesson_dir(submission: Path, lesson: Lesson) -> Path:
    """The submission's ``lesson_NN`` folder: PATH/exercises/lesson_NN, PATH/lesson_NN or PATH itself."""
    if not submission.exists():
        raise GradingSetupError(f"submission path {submission} does not exist")
    if not submission.is_dir():
        raise GradingSetupError(f"submission path {submission} is not a folder: pass a repo root or a folder of lesson_NN/")
    candidates = [submission / "exercises" / lesson.dirname, submission / lesson.dirname]
    if submission.name == lesson.dirname:
        candidates.append(submission)
    for path in candidates:
        if path.is_dir():
            try:
                next(path.iterdir(), None)
            except PermissionError:
                raise GradingSetupError(f"submission folder {path} is not readable") from None
            return path
    looked = " and ".join(str(p) for p in candidates[:2])
    raise GradingSetupError(f"submission {submission} has no {lesson.dirname}/ folder (looked in {looked})")
