"""A lesson is a kit: its lesson.toml is read and checked, and its provided files come from the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from graders.engine import lessons
from graders.engine.binding import Binding
from tests.conftest import REPO, make_submission

GOOD = 'title = "T"\nmodules = ["twice"]\nbindings = "graders.lesson_99.bindings:Lesson99"\n'


@pytest.mark.parametrize("number", lessons.available())
def test_every_lesson_declares_a_complete_kit(number: str):
    lesson = lessons.load(number)
    module, _, name = lesson.bindings.partition(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    assert issubclass(cls, Binding) and cls.MODULE in lesson.modules, f"{lesson.bindings}: a Binding for one of {lesson.modules}"
    for stem in lesson.modules + lesson.lab_modules:
        assert (REPO / "solutions_private" / lesson.dirname / f"{stem}.py").is_file(), f"no reference {stem}.py"
    for stem, path in lesson.provided.items():
        assert path == REPO / "solutions_private" / lesson.dirname / f"{stem}.py" and path.is_file()
    assert lesson.rubric["reflection"]["notes"] == f"labs/{lesson.dirname}/notes.md"
    assert (REPO / "labs" / lesson.dirname / "lab.toml").is_file(), "the lab's public declaration"
    assert lesson.artifacts and list(lesson.artifacts) == lesson.rubric["artifacts"]
    assert any(a["kind"] == "notes_line" for a in lesson.artifacts), "every lab asks for the rerun line in notes.md"
    assert not (lesson.graders_dir / "conftest.py").exists() and not (lesson.graders_dir / "rubric.toml").exists()
    for name, category in lesson.categories.items():
        assert category["hidden"] and category["visible"], name


def lab_root(tmp_path: Path, lab: str = '[[artifacts]]\nfile = "plot.png"\nkind = "png"\n') -> Path:
    """A scratch instructor repository holding labs/lesson_99/lab.toml."""
    (tmp_path / "labs" / "lesson_99").mkdir(parents=True, exist_ok=True)
    (tmp_path / "labs" / "lesson_99" / "lab.toml").write_text(lab)
    return tmp_path


def test_lab_toml_overrides_merge_over_the_rubric_defaults(tmp_path: Path):
    path = tmp_path / "lesson.toml"
    path.write_text(GOOD)
    lab = '[[artifacts]]\nfile = "plot.png"\nkind = "png"\n[rubric.weights]\nreflection = 0\n[rubric.reproducibility]\nrerun_timeout = 9\n'
    lesson = lessons.parse("99", path, solutions=tmp_path, root=lab_root(tmp_path, lab))
    assert lesson.rubric["weights"]["reflection"] == 0 and lesson.rubric["weights"]["implementation"] == 40
    assert lesson.rubric["reproducibility"] == lesson.rubric["reproducibility"] | {"rerun_timeout": 9, "rerun_rtol": 1e-4}
    assert lesson.artifacts == ({"file": "plot.png", "kind": "png"},) and lesson.categories == {}


def test_categories_are_read_and_checked(tmp_path: Path):
    path = tmp_path / "lesson.toml"
    path.write_text(GOOD + '[categories]\nparity = { hidden = ["test_parity*"], visible = ["test_small"] }\n')
    lesson = lessons.parse("99", path, solutions=tmp_path, root=lab_root(tmp_path))
    assert lesson.categories == {"parity": {"hidden": ["test_parity*"], "visible": ["test_small"]}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title = \n", "not valid TOML"),
        (GOOD + "modles = []\n", "unknown key(s) modles"),
        (GOOD.replace('modules = ["twice"]', "modules = []"), "`modules` names no module"),
        (GOOD.replace('["twice"]', '["twice.py"]'), "`modules` must be a list of module names"),
        (GOOD.replace(":Lesson99", ""), '`bindings` must name the class as "package.module:Class"'),
        (GOOD + 'provided = ["blocks"]\n', "provided file blocks.py has no reference copy"),
        (GOOD + 'provided = ["twice"]\n', "twice cannot be both graded"),
        (GOOD + "rubric = 3\n", "rubric moved to labs/lesson_99/lab.toml"),
        (GOOD + 'artifacts = ["plot"]\n', "artifacts moved to labs/lesson_99/lab.toml"),
        (GOOD + "categories = 3\n", "`categories` must be a table"),
        (GOOD + '[categories]\nparity = { hidden = ["t*"] }\n', "category 'parity' must have exactly `hidden` and `visible`"),
        (GOOD + '[categories]\nparity = { hidden = ["t*"], visible = [] }\n', "`visible` must be a non-empty list"),
        (GOOD, "lab.toml is missing"),
    ],
)
def test_a_broken_lesson_toml_is_one_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "lesson.toml"
    path.write_text(text)
    root = tmp_path / "repo"
    if message != "lab.toml is missing":
        lab_root(root)
    with pytest.raises(lessons.GradingSetupError) as info:
        lessons.parse("99", path, solutions=tmp_path, root=root)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_provided_file_is_graded_from_the_reference_never_the_students(grade_lesson, tmp_path: Path):
    """Lesson 05's blocks.py is given complete: a student copy that would sink gpt.py is never used."""
    reference = REPO / "solutions_private" / "lesson_05"
    hostile = 'raise SystemExit("the student\'s blocks.py was imported")\n'
    files = {"gpt.py": (reference / "gpt.py").read_text(), "blocks.py": hostile}
    res = grade_lesson("05", make_submission(tmp_path / "sub", "05", files), keyword="logits or loss")
    assert res["max_score"] > 0 and res["score"] == res["max_score"], [t["output"] for t in res["tests"] if t["output"]]


def test_every_suite_test_of_a_lesson_carries_its_marker():
    """`pytest tests -m lesson_NN` must select the kit, grading and mutant tests of lesson NN, not a subset."""
    from tests.conftest import _lessons_of

    class Spec:
        def __init__(self, id_: str) -> None:
            self.id = id_

    class Item:
        def __init__(self, id_: str) -> None:
            self.callspec = Spec(id_)

    first = lessons.available()[0]
    for id_ in (first, f"lesson_{first}/a-mutant+another", f"lesson_{first}-{first}", f"lesson_{first}/lab_x"):
        assert _lessons_of(Item(id_)) == {first}, id_
    assert _lessons_of(Item("no-lesson-here")) == set()
