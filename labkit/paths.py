"""Where a lab finds the student's code: ``exercises/lesson_NN`` next to ``labs/lesson_NN``.

A lab file (``labs/lesson_NN/lab_experiment.py`` or a notebook beside it) imports the student's
modules by name (``from attention import ...``). In the repository those modules live in
``exercises/lesson_NN/``; in the grader's sandbox they sit beside the lab file. :func:`exercises`
makes both work without copying code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def lesson_number(value: str | int) -> str | None:
    """ "3", "03" or "lesson_03" -> "03"; None for anything else (each caller words its own error)."""
    digits = re.fullmatch(r"(?:lesson_)?(\d{1,2})", str(value).strip())
    return digits.group(1).zfill(2) if digits else None


def exercises(lesson: str | int, start: Path | str | None = None) -> Path | None:
    """Put ``exercises/lesson_NN`` of this project on ``sys.path`` (first); return it, or None if absent.

    ``lesson``: 3, "03" or "lesson_03". ``start``: where to look up from (default: the current
    folder). None means the modules are expected beside the lab file, as in the grader's sandbox.
    """
    nn = lesson_number(lesson)
    if nn is None:
        raise ValueError(f"not a lesson number: {lesson!r} (use e.g. 3 or '03')")
    name = f"lesson_{nn}"
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "exercises" / name
        if candidate.is_dir():
            path = str(candidate)
            if path not in sys.path:
                sys.path.insert(0, path)
            return candidate
    return None
