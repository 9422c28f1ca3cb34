"""`python -m labkit submit NN`: the zip the course's autograder reads, and nothing else.

The zip mirrors the repository layout (Gradescope unpacks it into /autograder/submission, and the
autograder grades that folder as a repository root): the lesson's own modules from
``exercises/lesson_NN/`` (visible tests and data are the course's, not the student's), the whole lab
folder ``labs/lesson_NN/`` (lab code, notebooks, notes.md), the lesson's run folders under ``runs/``
and ``MANIFEST.json`` with every file's sha256, which the autograder checks first. Entries are
sorted and carry a fixed timestamp, so the same files give the same zip (``created`` in the
manifest follows ``SOURCE_DATE_EPOCH`` when set). Links are refused: the autograder refuses them too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
import zipfile
from pathlib import Path

JUNK = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
MANIFEST = "MANIFEST.json"


class SubmitError(Exception):
    """The submission cannot be written; the message is one line that names the fix."""


def normalise(arg: str | int, command: str = "check") -> str:
    """ "5", "05", "lesson_05" -> "05". Decimal, so 08 is eight (a shell's printf %02d would read octal)."""
    match = re.fullmatch(r"(?:lesson_?)?(\d{1,2})", str(arg).strip(), re.I)
    if not match or int(match[1]) == 0:
        raise SubmitError(f"{arg!r} is not a lesson number: give one, e.g. `make {command} LESSON=5` (5, 05 and lesson_05 work)")
    return f"{int(match[1]):02d}"


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding exercises/ (the repository root)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "exercises").is_dir():
            return folder
    raise SubmitError(f"no exercises/ folder at or above {here}: run this from your course repository")


def lesson_folder(root: Path, nn: str) -> Path:
    """exercises/lesson_NN of this repository, or a one-line error listing the lessons there are."""
    folder = root / "exercises" / f"lesson_{nn}"
    if not folder.is_dir():
        there = sorted(p.name.removeprefix("lesson_") for p in (root / "exercises").glob("lesson_[0-9][0-9]"))
        raise SubmitError(f"there is no lesson {nn} here (no exercises/lesson_{nn}/): lessons are {', '.join(there) or 'none'}")
    return folder


def _refuse_link(root: Path, path: Path) -> None:
    mode = path.lstat().st_mode
    rel = path.relative_to(root).as_posix()
    if stat.S_ISLNK(mode):
        raise SubmitError(f"{rel} is a symbolic link: the autograder refuses links; put the real file there (cp -L)")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SubmitError(f"{rel} is not a regular file: remove it, then run submit again")


def _tree(root: Path, folder: Path) -> list[Path]:
    """Every file under ``folder`` (caches skipped), refusing links anywhere on the way."""
    found = []
    _refuse_link(root, folder)
    for path in sorted(folder.iterdir()):
        if path.name in JUNK or path.suffix == ".pyc":
            continue
        _refuse_link(root, path)
        found += _tree(root, path) if path.is_dir() else [path]
    return found


def belongs(config: object, nn: str) -> bool:
    """A run is lesson NN's when its config.json entrypoint names ``lesson_NN/`` (labkit.rubric.find_runs's rule)."""
    return isinstance(config, dict) and f"lesson_{nn}/" in str(config.get("entrypoint") or "")


def lesson_runs(root: Path, nn: str) -> list[Path]:
    """runs/<id>/ folders whose config.json entrypoint names lesson_NN (unreadable configs are skipped)."""
    runs = root / "runs"
    if not runs.is_dir():
        return []
    _refuse_link(root, runs)
    found = []
    for run in sorted(runs.iterdir()):
        if not run.is_dir() or run.is_symlink():
            if run.is_symlink():
                _refuse_link(root, run)
            continue
        if (run / "config.json").is_symlink():
            _refuse_link(root, run / "config.json")
        try:
            config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if belongs(config, nn):
            found.append(run)
    return found


def files(root: Path, nn: str) -> list[Path]:
    """What the zip holds for lesson ``nn``, sorted, relative to ``root`` (MANIFEST.json aside)."""
    exercises = lesson_folder(root, nn)
    chosen = []
    for path in sorted(exercises.glob("*.py")):
        if not path.name.startswith("test_") and path.name != "conftest.py":
            _refuse_link(root, path)
            chosen.append(path)
    labs = root / "labs" / f"lesson_{nn}"
    if labs.is_dir() or labs.is_symlink():
        chosen += _tree(root, labs)
    for run in lesson_runs(root, nn):
        chosen += _tree(root, run)
    return sorted(p.relative_to(root) for p in chosen)


def manifest(root: Path, nn: str, rels: list[Path]) -> dict:
    """{"lesson", "created", "files": {path: {"sha256", "bytes"}}}: the autograder checks these first."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = time.gmtime(int(epoch)) if epoch and epoch.isdigit() else time.gmtime()
    listed = {}
    for rel in rels:
        data = (root / rel).read_bytes()
        listed[rel.as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return {"lesson": nn, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", when), "files": listed}


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.external_attr = (0o100000 | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def build(root: Path, nn: str, out: Path | None = None) -> tuple[Path, list[str]]:
    """Write submissions/lesson_NN.zip (or ``out``); return its path and the names inside."""
    rels = files(root, nn)
    if not any(r.parts[0] == "exercises" for r in rels):
        raise SubmitError(f"exercises/lesson_{nn}/ holds no module to submit: restore it with git (git checkout -- exercises)")
    out = out or root / "submissions" / f"lesson_{nn}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for rel in rels:
            _add(zf, rel.as_posix(), (root / rel).read_bytes())
        _add(zf, MANIFEST, (json.dumps(manifest(root, nn, rels), indent=2, sort_keys=True) + "\n").encode())
        names = zf.namelist()
    tmp.replace(out)
    return out, names


def main(arg: str) -> int:
    """The `submit` command: write the zip and say what to do with it."""
    nn = normalise(arg, "submit")
    root = project_root()
    out, names = build(root, nn)
    runs = {n.split("/")[1] for n in names if n.startswith("runs/")}
    size = out.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
    print(f"wrote {out.relative_to(root)}: {shown}, {len(names)} files (MANIFEST.json included), {len(runs)} run folder(s)")
    if not (root / "labs" / f"lesson_{nn}" / "notes.md").is_file():
        print(f"note: labs/lesson_{nn}/notes.md is missing: the reflection criterion will score 0")
    if not runs:
        print(f"note: no run folder of lesson {nn} under runs/: measurement and reproducibility will score 0")
    print(f"upload it to your course's autograder (Gradescope assignment 'Lesson {nn}')")
    return 0
