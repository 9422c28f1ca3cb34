"""One source of truth: exercises/ stubs, labs/ files and lesson rubric blocks are generated from
solutions_private/ (and the lesson kits) and never drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graders.engine import sync
from tests.conftest import REPO, run_cli


def test_exercises_are_in_sync():
    drifts = sync.check(REPO)
    assert not drifts, "exercises/ drifted from solutions_private/; run `llm-grade sync`:\n" + "\n".join(d.diff for d in drifts)


def tiny_course(root: Path, *, markers: bool = False) -> Path:
    """A course of one lesson: a graded module, a lab file with a TODO, a lesson kit and the notes template."""
    (root / "solutions_private" / "lesson_03").mkdir(parents=True)
    (root / "lessons").mkdir()
    rubric = f"\n## Grading\n{sync.RUBRIC_BEGIN}\nold text\n{sync.RUBRIC_END}\nAfter.\n" if markers else ""
    (root / "lessons" / "lesson_03.md").write_text(f"# L\n## 1. Add (`add`)\n## 5. Lab: sums\n{rubric}")
    (root / "solutions_private" / "lesson_03" / "m.py").write_text(
        "def add(a, b):\n    # BEGIN SOLUTION\n    return a + b\n    # END SOLUTION\n"
    )
    (root / "solutions_private" / "lesson_03" / "lab_experiment.py").write_text(
        "def looped(a):\n    # BEGIN SOLUTION\n    return a\n    # END SOLUTION\n"
    )
    (root / "graders" / "lesson_03").mkdir(parents=True)
    (root / "graders" / "lesson_03" / "lesson.toml").write_text('title = "Sums"\nmodules = ["m"]\nlab_modules = ["lab_experiment"]\n')
    (root / "labkit" / "templates").mkdir(parents=True)
    (root / "labkit" / "templates" / "notes.md").write_text("# Lesson @NN@ lab notes: @TITLE@\n## What I expected\n")
    (root / "labs" / "lesson_03").mkdir(parents=True)
    (root / "labs" / "lesson_03" / "lab.toml").write_text('[[artifacts]]\nfile = "plot.png"\nkind = "png"\nwhat = "the plot"\n')
    return root


def test_sync_check_cli_reports_drift(tmp_path: Path):
    tiny_course(tmp_path)
    assert run_cli("sync", "--check", "--root", str(tmp_path)).returncode == 1  # never generated
    assert run_cli("sync", "--root", str(tmp_path)).returncode == 0
    check = run_cli("sync", "--check", "--root", str(tmp_path))
    assert check.returncode == 0, check.stdout + check.stderr
    for rel in ("exercises/lesson_03/m.py", "labs/lesson_03/lab_experiment.py", "labs/lesson_03/notes.md"):
        path = tmp_path / rel
        original = path.read_text()
        path.write_text(original + "\n# edited by hand\n")
        drift = run_cli("sync", "--check", "--root", str(tmp_path))
        assert drift.returncode == 1 and "+# edited by hand" not in drift.stdout and "-# edited by hand" in drift.stdout, rel
        assert rel in drift.stdout
        path.write_text(original)


def test_sync_splits_graded_modules_and_lab_files(tmp_path: Path):
    root = tiny_course(tmp_path)
    written = {str(p) for p in sync.write(root)}
    assert written == {"exercises/lesson_03/m.py", "labs/lesson_03/lab_experiment.py", "labs/lesson_03/notes.md"}
    assert not (root / "exercises" / "lesson_03" / "lab_experiment.py").exists()
    lab = (root / "labs" / "lesson_03" / "lab_experiment.py").read_text()
    assert "NotImplementedError" in lab and "section '5. Lab: sums'" in lab, "a lab TODO points to the lab section"
    assert (root / "labs" / "lesson_03" / "notes.md").read_text() == "# Lesson 03 lab notes: Sums\n## What I expected\n"
    assert sync.check(root) == [] and sync.write(root) == []


def test_stale_lab_file_in_exercises_is_drift_and_sync_deletes_it(tmp_path: Path):
    root = tiny_course(tmp_path)
    sync.write(root)
    stale = root / "exercises" / "lesson_03" / "lab_experiment.py"
    stale.write_text("# the old layout\n")
    (drift,) = sync.check(root)
    assert drift.path == Path("exercises/lesson_03/lab_experiment.py") and "labs/lesson_NN" in drift.diff
    assert Path("exercises/lesson_03/lab_experiment.py") in sync.write(root) and not stale.exists()


def test_rubric_block_is_filled_between_the_markers(tmp_path: Path):
    from labkit.rubric import describe, load_rules

    root = tiny_course(tmp_path, markers=True)
    sync.write(root)
    text = (root / "lessons" / "lesson_03.md").read_text()
    block = text.split(sync.RUBRIC_BEGIN)[1].split(sync.RUBRIC_END)[0]
    assert block.strip() == describe(load_rules("03", root)).strip() and "plot.png" in block
    assert "old text" not in text and text.endswith(f"{sync.RUBRIC_END}\nAfter.\n") and text.startswith("# L\n")
    assert sync.check(root) == []
    (root / "labs" / "lesson_03" / "lab.toml").write_text('[[artifacts]]\nfile = "other.png"\nkind = "png"\nwhat = "x"\n')
    assert [d.path for d in sync.check(root)] == [Path("lessons/lesson_03.md")], "a changed lab.toml changes the block"


def test_rubric_markers_must_pair(tmp_path: Path):
    root = tiny_course(tmp_path)
    (root / "lessons" / "lesson_03.md").write_text(f"# L\n## 1. Add (`add`)\n## 5. Lab\n{sync.RUBRIC_END}\n{sync.RUBRIC_BEGIN}\n")
    with pytest.raises(sync.SyncError, match="exactly one"):
        sync.planned(root)


def test_lesson_rubric_blocks_in_this_repo_describe_the_lesson_rules():
    from graders.engine import lessons
    from labkit.rubric import describe

    filled = 0
    for md in sorted((REPO / "lessons").glob("lesson_[0-9][0-9].md")):
        text = md.read_text()
        if sync.RUBRIC_BEGIN in text:
            block = text.split(sync.RUBRIC_BEGIN)[1].split(sync.RUBRIC_END)[0]
            assert block.strip() == describe(lessons.load(md.stem).rubric).strip(), md.name
            filled += 1
    assert filled >= 1, "lesson 03 at least has the generated rubric block"


def test_this_repo_keeps_lab_files_in_labs_only():
    for lesson in sorted((REPO / "solutions_private").glob("lesson_[0-9][0-9]")):
        ex, lab = REPO / "exercises" / lesson.name, REPO / "labs" / lesson.name
        assert not list(ex.glob("*.ipynb")) and not (ex / "lab_experiment.py").exists(), ex
        assert (lab / "lab_experiment.py").is_file() and (lab / "notes.md").is_file()
        assert {p.name for p in lab.glob("*.ipynb")} == {p.name for p in lesson.glob("*.ipynb")}


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


def test_shipped_data_is_one_copy_in_exercises_and_solutions():
    """A lesson's data/ (lesson 05's text, lesson 17's corpus) lives in both trees so the lab runs from either;
    the two copies must be byte-identical (a corpus edited in one place would grade against the other)."""
    pairs = [(p, REPO / "exercises" / p.relative_to(REPO / "solutions_private"))
             for p in sorted((REPO / "solutions_private").glob("lesson_*/data/**/*")) if p.is_file()]  # fmt: skip
    assert pairs, "no shipped data found: the glob is stale"
    different = [str(b.relative_to(REPO)) for a, b in pairs if not b.is_file() or b.read_bytes() != a.read_bytes()]
    assert not different, f"differs from solutions_private (copy it over): {different}"
