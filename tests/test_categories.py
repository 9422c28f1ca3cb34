"""Every hidden test has a visible counterpart: the `[categories]` of graders/lesson_NN/lesson.toml.

A category names hidden tests by fnmatch patterns on their function names and the visible tests
in exercises/lesson_NN/ that let a student see the same category fail locally, before submitting.
Read with ``ast`` (nothing is imported, so no torch): every hidden test falls in exactly one
category, every pattern and every visible name is real, and a GPU category is shown by GPU tests.
That the visible tests pass on the reference and fail on the stubs is tests/test_visible.py's job.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LESSONS = sorted(p.name.removeprefix("lesson_") for p in (REPO / "graders").glob("lesson_[0-9][0-9]") if p.is_dir())


def _marks(node: ast.expr) -> set[str]:
    """Marker names in a decorator or a `pytestmark` value: pytest.mark.gpu, pytest.mark.points(2), [..]."""
    if isinstance(node, ast.List | ast.Tuple):
        return {m for elt in node.elts for m in _marks(elt)}
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
        return {node.attr}
    return set()


def functions_in(paths: list[Path]) -> dict[str, set[str]]:
    """Module-level test functions of ``paths``: name -> markers (its own and the module's `pytestmark`)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_marks = {
            m
            for node in tree.body
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            for m in _marks(node.value)
        }
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found[node.name] = module_marks | {m for d in node.decorator_list for m in _marks(d)}
    return found


def hidden_tests(nn: str) -> dict[str, set[str]]:
    return functions_in(sorted((REPO / "graders" / f"lesson_{nn}").glob("test_*.py")))


def visible_tests(nn: str) -> dict[str, set[str]]:
    return functions_in(sorted((REPO / "exercises" / f"lesson_{nn}").glob("test_*.py")))


def categories(nn: str) -> dict[str, dict[str, list[str]]]:
    path = REPO / "graders" / f"lesson_{nn}" / "lesson.toml"
    cats = tomllib.loads(path.read_text(encoding="utf-8")).get("categories")
    assert isinstance(cats, dict) and cats, f"{path}: no [categories] table: declare the hidden-test categories"
    for name, cat in cats.items():
        assert isinstance(cat, dict) and set(cat) == {"hidden", "visible"}, (
            f"{path}: category {name!r} must have exactly `hidden` and `visible`, got {sorted(cat) if isinstance(cat, dict) else cat!r}"
        )
        for key in ("hidden", "visible"):
            value = cat[key]
            assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), (
                f"{path}: categories.{name}.{key} must be a non-empty list of test names"
            )
    return cats


def test_every_lesson_with_graders_is_checked():
    assert "03" in LESSONS and "05" in LESSONS, f"lessons found: {LESSONS}"
    for nn in LESSONS:
        assert hidden_tests(nn), f"graders/lesson_{nn} has no hidden test functions"


@pytest.mark.parametrize("nn", LESSONS)
def test_every_hidden_test_is_in_exactly_one_category(nn: str):
    cats = categories(nn)
    hidden = hidden_tests(nn)
    homes = {test: [c for c, cat in cats.items() if any(fnmatch.fnmatchcase(test, p) for p in cat["hidden"])] for test in hidden}
    nowhere = sorted(t for t, where in homes.items() if not where)
    assert not nowhere, f"lesson {nn}: hidden tests in no category: {nowhere}: add them to a category's `hidden` patterns"
    twice = {t: where for t, where in homes.items() if len(where) > 1}
    assert not twice, f"lesson {nn}: hidden tests in more than one category: {twice}: make the patterns disjoint"
    for name, cat in cats.items():
        stale = [p for p in cat["hidden"] if not any(fnmatch.fnmatchcase(t, p) for t in hidden)]
        assert not stale, f"lesson {nn}: categories.{name}.hidden pattern(s) {stale} match no hidden test: fix or remove them"


@pytest.mark.parametrize("nn", LESSONS)
def test_every_category_names_existing_visible_tests(nn: str):
    visible = visible_tests(nn)
    for name, cat in categories(nn).items():
        missing = [t for t in cat["visible"] if t not in visible]
        assert not missing, f"lesson {nn}: categories.{name}.visible names {missing}, not in exercises/lesson_{nn}/test_*.py"


@pytest.mark.parametrize("nn", LESSONS)
def test_gpu_categories_are_shown_by_gpu_tests(nn: str):
    """GPU hidden tests sit in categories shown by `gpu` visible tests; every other category runs on a CPU."""
    hidden, visible = hidden_tests(nn), visible_tests(nn)
    for name, cat in categories(nn).items():
        members = [t for t in hidden if any(fnmatch.fnmatchcase(t, p) for p in cat["hidden"])]
        on_gpu = {t for t in members if "gpu" in hidden[t]}
        if on_gpu:
            assert on_gpu == set(members), (
                f"lesson {nn}: category {name!r} mixes GPU tests {sorted(on_gpu)} with CPU tests: put GPU tests in their own category"
            )
            cpu_only = [t for t in cat["visible"] if "gpu" not in visible.get(t, set())]
            assert not cpu_only, f"lesson {nn}: category {name!r} is GPU-only; its visible tests {cpu_only} need @pytest.mark.gpu"
        else:
            runnable = [t for t in cat["visible"] if "gpu" not in visible.get(t, set())]
            assert runnable, f"lesson {nn}: category {name!r} runs on a CPU but every visible test of it needs a GPU"


def test_markers_are_read_from_decorators_and_pytestmark(tmp_path: Path):
    source = (
        "import pytest\npytestmark = [pytest.mark.lesson_09]\n"
        "@pytest.mark.gpu\n@pytest.mark.points(2)\ndef test_a(): ...\n"
        "def test_b(): ...\ndef helper(): ...\n"
    )
    (tmp_path / "test_x.py").write_text(source, encoding="utf-8")
    assert functions_in([tmp_path / "test_x.py"]) == {"test_a": {"lesson_09", "gpu", "points"}, "test_b": {"lesson_09"}}
