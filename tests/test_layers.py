"""The engine's layers stay apart: what runs next to student code imports nothing else of the engine.

The worker's own files (``worker_main.py`` and the ``wire.py`` format it speaks) are copied into
the sandbox, and ``launch.py`` runs there before student code to drop privileges; an import of
``graders.engine`` from them would pull the grader (and its view of the instructor tree) into the
sandbox. Checked on the source, so a new import fails here before any grading.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "graders" / "engine"
SANDBOX_SIDE = ("worker_main.py", "wire.py", "launch.py")


def copied_into_worker() -> set[str]:
    """Engine files some engine module copies into a worker folder (``copyfile(ENGINE_DIR / "x.py", ...)``)."""
    pattern = re.compile(r"copy\w*\(\s*ENGINE_DIR\s*/\s*\"(\w+\.py)\"")
    return {m for path in ENGINE.glob("*.py") for m in pattern.findall(path.read_text(encoding="utf-8"))}


def engine_imports(path: Path) -> list[str]:
    """``graders`` imports and relative imports in ``path`` (at any depth: inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "graders"]
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "graders"):
            found.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import ...")
    return found


def test_every_file_copied_into_the_worker_is_checked():
    assert copied_into_worker() <= set(SANDBOX_SIDE), f"add {copied_into_worker() - set(SANDBOX_SIDE)} to SANDBOX_SIDE"


@pytest.mark.parametrize("name", SANDBOX_SIDE)
def test_sandbox_side_imports_nothing_of_the_engine(name: str):
    path = ENGINE / name
    assert path.is_file(), f"{path} is gone: update SANDBOX_SIDE"
    assert not engine_imports(path), f"{name} imports the engine: {engine_imports(path)}"


def test_the_check_sees_imports(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from graders.engine import sandbox\n    from . import wire\n")
    assert [line.split(":")[0] for line in engine_imports(probe)] == ["line 4", "line 5"]
