"""What a result was graded from, so an earlier result is reused only when regrading would give the same one.

Each results.json records (in ``extra_data.provenance``, inside Gradescope's schema) the
lesson, a hash of the engine and one of the lesson's graders (hidden tests, the graders and
references they import, the provided files copied into the worker), the hash of every
graded student file, the ``-k`` expression, the call timeout and any grading problem.
``batch`` and ``rubric`` reuse a result only when all of these match what grading now
would use and it recorded no grading problem: a wrong lesson, a resubmission, a changed
grader or a partial ``-k`` run is regraded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from graders.engine import lessons
from labkit import safepath

FORMAT = 1
MAX_MODULE_BYTES = 1 << 20  # the worker refuses bigger modules; their hash is then "unreadable"
_ROOT_FILES = ("pyproject.toml", "conftest.py", "graders/__init__.py")  # pytest's config and the package root
_SKIP = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}


def _tree_files(root: Path, rel: Path) -> list[Path]:
    base = root / rel
    if base.is_file():
        return [rel]
    if not base.is_dir():
        return []
    return sorted(
        p.relative_to(root)
        for p in base.rglob("*")
        if p.is_file() and not p.is_symlink() and not _SKIP & set(p.parts) and p.suffix != ".pyc"
    )


def _digest(root: Path, rels: list[Path]) -> str:
    h = hashlib.sha256()
    for rel in sorted(set(rels)):
        h.update(rel.as_posix().encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def grader_hashes(lesson: lessons.Lesson, root: Path = lessons.REPO_ROOT) -> tuple[str, str]:
    """(engine hash, lesson graders hash). The graders cover what the Gradescope zip ships for the lesson."""
    from graders.engine.gradescope import source_folders  # the folders grading this lesson needs

    engine: list[Path] = [Path(f) for f in _ROOT_FILES if (root / f).is_file()]
    graders: list[Path] = []
    for folder in source_folders(lesson, root):
        (engine if folder.parts[0] in ("labkit",) or folder == Path("graders", "engine") else graders).extend(
            _tree_files(root, folder)
        )
    for src in lesson.provided.values():  # normally inside solutions_private/lesson_NN already
        src = Path(src).resolve()
        graders.append(src.relative_to(root) if src.is_relative_to(root) else src)
    return _digest(root, engine), _digest(root, graders)


def student_hashes(lesson: lessons.Lesson, lesson_dir: Path) -> dict[str, str | None]:
    """sha256 of each graded module file (None: missing; "unreadable: ...": a link, too big, not a file)."""
    out: dict[str, str | None] = {}
    for stem in lesson.modules:
        name = f"{stem}.py"
        try:
            out[name] = "sha256:" + hashlib.sha256(safepath.read_bytes(lesson_dir, name, MAX_MODULE_BYTES)).hexdigest()
        except FileNotFoundError:
            out[name] = None
        except (safepath.UnsafePath, OSError) as exc:
            out[name] = f"unreadable: {exc}"[:200]
    return out


def expected(lesson: lessons.Lesson, lesson_dir: Path, *, keyword: str | None, call_timeout: float) -> dict:
    """The provenance a grading of ``lesson_dir`` would record now (before any problem is known)."""
    engine, graders = grader_hashes(lesson)
    return {
        "format": FORMAT,
        "lesson": lesson.number,
        "engine": engine,
        "graders": graders,
        "files": student_hashes(lesson, lesson_dir),
        "keyword": keyword or None,
        "call_timeout": float(call_timeout),
        "submission": str(lesson_dir),
        "problems": [],
    }


_NOT_COMPARED = {"submission", "problems"}  # where it was is not what it was; problems forbid reuse anyway


def of(res: object) -> dict | None:
    """The provenance recorded in a results dict, or None."""
    if not isinstance(res, dict):
        return None
    prov = (res.get("extra_data") or {}).get("provenance") if isinstance(res.get("extra_data"), dict) else None
    return prov if isinstance(prov, dict) else None


def mismatch(res: object, want: dict) -> str | None:
    """Why ``res`` may not stand in for a grading that would record ``want``; None when it may."""
    prov = of(res)
    if prov is None:
        return "it records no provenance"
    if prov.get("problems"):
        return f"it had a grading problem: {prov['problems'][0]}"[:200]
    for key in sorted(set(want) | set(prov)):
        if key not in _NOT_COMPARED and prov.get(key) != want.get(key):
            return f"its {key} differs"
    return None


def reusable(path: Path, lesson: lessons.Lesson, lesson_dir: Path, *, keyword: str | None, call_timeout: float) -> dict | None:
    """The results at ``path`` when they match a grading of ``lesson_dir`` now exactly, else None."""
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(res, dict) and {"score", "max_score", "tests", "output"} <= set(res)):
        return None
    want = expected(lesson, lesson_dir, keyword=keyword, call_timeout=call_timeout)
    return res if mismatch(res, want) is None else None
