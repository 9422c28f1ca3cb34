"""Repository-wide pytest set-up: the markers, and `gpu` tests skip cleanly on a machine without CUDA.

Markers are registered here, not listed in pyproject.toml: `lesson_NN` exists for every lesson
found (its text, exercises or graders), so a new lesson needs no edit here. This file also ships
in the student repository, so it imports nothing of the grader.
"""

import re
from pathlib import Path

import pytest

MARKERS = (
    "gpu: needs CUDA; skipped cleanly without it",
    "slow: takes more than a few seconds",
    "points(n): points a hidden grader test is worth",
)


def lesson_numbers(root: Path) -> list[str]:
    """NN of every lessons/lesson_NN.md, exercises/lesson_NN/ and graders/lesson_NN/ under ``root``."""
    found = {m[1] for p in root.glob("*/lesson_*") if (m := re.fullmatch(r"lesson_(\d\d)(?:\.md)?", p.name))}
    return sorted(found)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    for nn in lesson_numbers(Path(__file__).resolve().parent):
        config.addinivalue_line("markers", f"lesson_{nn}: lesson {nn}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
