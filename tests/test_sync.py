"""One source of truth: exercises/ stubs are generated from solutions_private/ and never drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graders.engine import sync
from tests.conftest import REPO, run_cli


def test_exercises_are_in_sync():
    drifts = sync.check(REPO)
    assert not drifts, "exercises/ drifted from solutions_private/; run `llm-grade sync`:\n" + "\n".join(d.diff for d in drifts)


def test_sync_check_cli_reports_drift(tmp_path: Path):
    (tmp_path / "solutions_private" / "lesson_03").mkdir(parents=True)
    (tmp_path / "lessons").mkdir()
    (tmp_path / "lessons" / "lesson_03.md").write_text("# L\n## 1. Add (`add`)\n")
    (tmp_path / "solutions_private" / "lesson_03" / "m.py").write_text(
        "def add(a, b):\n    # BEGIN SOLUTION\n    return a + b\n    # END SOLUTION\n"
    )
    assert run_cli("sync", "--check", "--root", str(tmp_path)).returncode == 1  # never generated
    assert run_cli("sync", "--root", str(tmp_path)).returncode == 0
    check = run_cli("sync", "--check", "--root", str(tmp_path))
    assert check.returncode == 0, check.stdout + check.stderr
    stub = tmp_path / "exercises" / "lesson_03" / "m.py"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    drift = run_cli("sync", "--check", "--root", str(tmp_path))
    assert drift.returncode == 1 and "+# edited by hand" not in drift.stdout and "-# edited by hand" in drift.stdout


def test_stub_body_is_uniform_and_points_to_the_lesson():
    source = (REPO / "solutions_private" / "lesson_03" / "attention.py").read_text()
    stub = sync.generate_py(source, Path("attention.py"), "03", REPO / "lessons" / "lesson_03.md")
    assert "BEGIN SOLUTION" not in stub and "END SOLUTION" not in stub
    for function in ("causal_mask", "scaled_dot_product_attention"):
        body = [line.strip() for line in stub.splitlines() if f"`{function}`" in line]
        assert len(body) == 2, body
        assert body[0].startswith("# TODO(lesson 03): implement") and "lessons/lesson_03.md" in body[0]
        assert body[1].startswith('raise NotImplementedError("lesson 03:') and "section '" in body[1]
    compile(stub, "attention.py", "exec")


@pytest.mark.parametrize(
    ("source", "lesson_md", "message"),
    [
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "## (`f`)\n", "no end solution"),
        ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n", "## (`f`)\n", "nested"),
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n", "## nothing here\n", "no heading naming `f`"),
        ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "## (`f`)\n", "inside a function"),
    ],
)
def test_bad_solution_files_give_clear_errors(tmp_path: Path, source: str, lesson_md: str, message: str):
    md = tmp_path / "lesson_03.md"
    md.write_text(lesson_md)
    with pytest.raises(sync.SyncError, match=message):
        sync.generate_py(source, tmp_path / "m.py", "03", md)


def test_no_solution_code_in_exercises():
    exercise_text = "\n".join(p.read_text() for p in (REPO / "exercises").rglob("*.py"))
    # A line the instructor also ships as provided code (outside every solution region) is no secret.
    region = re.compile(r"^[ \t]*# BEGIN SOLUTION.*?# END SOLUTION[^\n]*\n", re.M | re.S)
    provided = "\n".join(region.sub("", p.read_text()) for p in (REPO / "solutions_private").rglob("*.py"))
    for solution in sync.solution_regions(REPO):
        for line in solution.splitlines():
            code = line.strip()
            if len(code) > 25 and not code.startswith("#") and code not in provided:
                assert code not in exercise_text, f"solution line leaked into exercises/: {code}"
