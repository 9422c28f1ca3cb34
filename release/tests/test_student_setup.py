"""Your set-up works: run by `make test`. These checks pass before you have solved anything.

They check that torch is the pinned version, that every exercise module imports (a stub
imports fine; it only raises when called), that the visible tests are collected without
errors, and that each stub points at a lesson section that exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSON_DIRS = sorted(p for p in (ROOT / "exercises").glob("lesson_[0-9][0-9]") if any(p.glob("*.py")))


def _modules(lesson_dir: Path) -> list[str]:
    return sorted(p.stem for p in lesson_dir.glob("*.py") if not p.name.startswith("test_") and p.stem not in ("conftest", "__init__"))


def test_torch_is_the_pinned_version():
    import torch

    pin = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)
    assert pin, "constraints.txt pins no torch version"
    assert torch.__version__.split("+")[0] == pin.group(1), f"torch {torch.__version__}: run `make setup` again"


@pytest.mark.parametrize("lesson_dir", LESSON_DIRS, ids=lambda p: p.name)
def test_exercise_modules_import(lesson_dir: Path):
    """Each module imports on its own, the way the autograder loads it (its folder on sys.path)."""
    code = "import importlib, sys; sys.path.insert(0, sys.argv[1]); [importlib.import_module(m) for m in sys.argv[2:]]"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(lesson_dir), *_modules(lesson_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_visible_tests_are_collected():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "exercises"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.lower().splitlines()[-1], proc.stdout[-3000:]


def test_labkit_imports():
    if not (ROOT / "labkit").is_dir():
        pytest.skip("this release has no labkit/")
    import labkit

    assert Path(labkit.__file__).resolve().is_relative_to(ROOT), f"labkit imported from {labkit.__file__}, not this repository"


def test_every_stub_points_to_a_real_lesson_section():
    pointer = re.compile(r"read (lessons/lesson_\d\d\.md), section '([^']+)'")
    for path in (ROOT / "exercises").rglob("*.py"):
        for lesson, section in set(pointer.findall(path.read_text(encoding="utf-8"))):
            text = (ROOT / lesson).read_text(encoding="utf-8") if (ROOT / lesson).exists() else ""
            headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
            assert section in headings, f"{path.relative_to(ROOT)} points to a missing section {section!r} of {lesson}"


def test_check_and_submit_commands_import():
    """`make check` and `make submit` run `python -m labkit check|submit NN`: both import here."""
    code = "import labkit.__main__, labkit.check, labkit.submit; print(labkit.submit.normalise('lesson_08'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "08", proc.stderr[-3000:]


@pytest.mark.parametrize("lesson_dir", LESSON_DIRS, ids=lambda p: p.name)
def test_every_lesson_has_its_lab_folder_and_notes(lesson_dir: Path):
    """Lab work lives in labs/lesson_NN/: the notes template with the five headings the rubric reads, and lab.toml."""
    lab = ROOT / "labs" / lesson_dir.name
    notes = lab / "notes.md"
    assert notes.is_file(), f"{notes.relative_to(ROOT)} is missing: restore it with `git checkout -- labs`"
    headings = " ".join(line.lower() for line in notes.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
    for word in ("expect", "happen", "surpris", "next", "believe"):
        assert word in headings, f"{notes.relative_to(ROOT)} lost its '{word}' heading: the rubric reads it"
    assert (lab / "lab.toml").is_file(), f"{lab.relative_to(ROOT)}/lab.toml is missing: restore it with git"
