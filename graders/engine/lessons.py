"""The lesson registry: which lessons have graders, what each declares, and where a submission keeps them.

A lesson is a kit: ``graders/lesson_NN/lesson.toml`` declares the private part (title, graded and
provided modules, lab modules, the bindings class, hidden-test categories); the public part, the
lab's required artifacts and rubric overrides, is ``labs/lesson_NN/lab.toml``, shipped to students
and read here from the INSTRUCTOR's repository (never a submission's copy) by :mod:`labkit.rubric`
over ``labkit/rubric_defaults.toml``. Nothing here imports torch, so the CLI starts fast.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from labkit.paths import lesson_number  # stdlib only: the CLI still starts fast

GRADERS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = GRADERS_DIR.parent
SOLUTIONS_DIR = REPO_ROOT / "solutions_private"
SPEC_KEYS = {"title", "modules", "provided", "lab_modules", "bindings", "categories"}
MOVED_KEYS = {"artifacts", "rubric"}  # now in labs/lesson_NN/lab.toml


class GradingSetupError(Exception):
    """The grader itself cannot run (unknown lesson, missing or unreadable submission)."""


@dataclass(frozen=True)
class Lesson:
    number: str  # "03"
    title: str
    modules: tuple[str, ...]  # the student's graded module files (stems), copied into the sandbox
    lab_modules: tuple[str, ...] = ()  # the lab's own files, for notebook autograding and reruns
    provided: dict[str, Path] = field(default_factory=dict, hash=False)  # stem -> trusted reference copy
    bindings: str = ""  # "package.module:Class", built on the worker by the plugin's `lesson` fixture
    rubric: dict = field(default_factory=dict, hash=False)  # labkit.rubric.load_rules: defaults + lab.toml
    artifacts: tuple[dict, ...] = field(default=(), hash=False)  # lab.toml's [[artifacts]] specs, checked
    categories: dict = field(default_factory=dict, hash=False)  # name -> {"hidden": [patterns], "visible": [names]}

    @property
    def dirname(self) -> str:
        return f"lesson_{self.number}"

    @property
    def graders_dir(self) -> Path:
        return GRADERS_DIR / self.dirname

    @property
    def sandbox_modules(self) -> tuple[str, ...]:
        """Every module file the worker holds: the student's graded ones and the provided ones."""
        return tuple(dict.fromkeys(self.modules + tuple(self.provided)))


def available() -> list[str]:
    return sorted(p.name.removeprefix("lesson_") for p in GRADERS_DIR.glob("lesson_[0-9][0-9]") if p.is_dir())


def normalise(number: str) -> str:
    """ "3", "03" or "lesson_03" -> "03"."""
    nn = lesson_number(number)
    if nn is None:
        raise GradingSetupError(f"not a lesson number: {number!r} (use e.g. 03)")
    return nn


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GradingSetupError(f"{path} is missing: every lesson declares itself in lesson.toml") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GradingSetupError(f"{path} is not valid TOML: {exc}") from None


def _stems(spec: dict, key: str, path: Path, *, required: bool = False) -> tuple[str, ...]:
    value = spec.get(key, [])
    if not (isinstance(value, list) and all(isinstance(v, str) and re.fullmatch(r"[A-Za-z_]\w*", v) for v in value)):
        raise GradingSetupError(f"{path}: `{key}` must be a list of module names (file stems, e.g. [\"attention\"])")
    if required and not value:
        raise GradingSetupError(f"{path}: `{key}` names no module: list the student's graded files")
    return tuple(value)


def _categories(spec: dict, path: Path) -> dict:
    """``[categories]``: name -> {hidden = [fnmatch patterns of hidden test names], visible = [visible test names]}."""
    value = spec.get("categories", {})
    fix = "write [categories.NAME] tables with hidden = [\"test_x*\"] and visible = [\"test_y\"]"
    if not isinstance(value, dict):
        raise GradingSetupError(f"{path}: `categories` must be a table: {fix}")
    for name, cat in value.items():
        if not isinstance(cat, dict) or set(cat) != {"hidden", "visible"}:
            raise GradingSetupError(f"{path}: category {name!r} must have exactly `hidden` and `visible`: {fix}")
        for key in ("hidden", "visible"):
            names = cat[key]
            if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)):
                raise GradingSetupError(f"{path}: category {name!r}: `{key}` must be a non-empty list of test names")
    return {name: {"hidden": list(cat["hidden"]), "visible": list(cat["visible"])} for name, cat in value.items()}


def parse(nn: str, path: Path, solutions: Path = SOLUTIONS_DIR, root: Path = REPO_ROOT) -> Lesson:
    """The lesson declared in ``path`` (a lesson.toml) and ``root``/labs/lesson_NN/lab.toml, checked.

    One-line errors naming the fix. ``root`` is the instructor's repository (tests pass a scratch one).
    """
    from labkit import rubric

    spec = _read_toml(path)
    moved = sorted(set(spec) & MOVED_KEYS)
    if moved:
        raise GradingSetupError(f"{path}: {', '.join(moved)} moved to labs/lesson_{nn}/lab.toml (the lab's public declaration)")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise GradingSetupError(f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(SPEC_KEYS))})")
    title, bindings = spec.get("title"), spec.get("bindings")
    if not isinstance(title, str) or not title.strip():
        raise GradingSetupError(f"{path}: `title` must be a non-empty string")
    if not isinstance(bindings, str) or not re.fullmatch(r"[\w.]+:\w+", bindings):
        raise GradingSetupError(f"{path}: `bindings` must name the class as \"package.module:Class\"")
    modules = _stems(spec, "modules", path, required=True)
    provided_stems = _stems(spec, "provided", path)
    both = sorted(set(modules) & set(provided_stems))
    if both:
        raise GradingSetupError(f"{path}: {', '.join(both)} cannot be both graded (`modules`) and `provided`")
    provided = {}
    for stem in provided_stems:
        src = solutions / f"lesson_{nn}" / f"{stem}.py"
        if not src.is_file():
            raise GradingSetupError(f"{path}: provided file {stem}.py has no reference copy at {src}")
        provided[stem] = src
    try:
        rules = rubric.load_rules(nn, root)
    except rubric.RubricSetupError as exc:
        raise GradingSetupError(str(exc)) from None
    return Lesson(
        number=nn, title=title.strip(), modules=modules, lab_modules=_stems(spec, "lab_modules", path),
        provided=provided, bindings=bindings, rubric=rules, artifacts=tuple(rules["artifacts"]),
        categories=_categories(spec, path),
    )  # fmt: skip


def load(number: str) -> Lesson:
    """The lesson ``number`` ("3", "03" or "lesson_03"), from its ``lesson.toml``."""
    try:
        nn = normalise(number)
    except GradingSetupError:
        nn = None
    if nn not in available():
        raise GradingSetupError(f"unknown lesson {number!r}: choose one of {', '.join(available()) or 'none'}")
    return parse(nn, GRADERS_DIR / f"lesson_{nn}" / "lesson.toml")


def find_lesson_dir(submission: Path, lesson: Lesson) -> Path:
    """The submission's ``lesson_NN`` folder: PATH/exercises/lesson_NN, PATH/lesson_NN or PATH itself.

    PATH (the instructor's) is resolved; below it no step may be a symbolic link: a linked
    ``exercises/`` or ``lesson_NN/`` could point at the reference solutions or a classmate's work.
    """
    from labkit import safepath

    submission = submission.resolve()
    if not submission.exists():
        raise GradingSetupError(f"submission path {submission} does not exist")
    if not submission.is_dir():
        raise GradingSetupError(f"submission path {submission} is not a folder: pass a repo root or a folder of lesson_NN/")
    candidates = [Path("exercises", lesson.dirname), Path(lesson.dirname)]
    if submission.name == lesson.dirname:
        candidates.append(Path("."))
    for rel in candidates:
        try:
            found = safepath.kind(submission, rel)
        except safepath.UnsafePath as exc:
            raise GradingSetupError(f"submission not graded: {exc}") from None
        except PermissionError:
            raise GradingSetupError(f"submission folder {submission / rel} is not readable") from None
        if found == "dir":
            path = submission / rel if rel != Path(".") else submission
            try:
                next(path.iterdir(), None)
            except PermissionError:
                raise GradingSetupError(f"submission folder {path} is not readable") from None
            return path
    looked = " and ".join(str(submission / p) for p in candidates[:2])
    raise GradingSetupError(f"submission {submission} has no {lesson.dirname}/ folder (looked in {looked})")
