"""The lesson registry: which lessons have graders, what each declares, and where a submission keeps them.

A lesson is a kit: ``graders/lesson_NN/lesson.toml`` declares everything the engine needs
(title, graded and provided modules, lab modules, the bindings class, rubric overrides,
required artifacts); the rubric's defaults live once in ``graders/engine/rubric_defaults.toml``.
Nothing here imports torch, so the CLI starts fast.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

GRADERS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = GRADERS_DIR.parent
SOLUTIONS_DIR = REPO_ROOT / "solutions_private"
RUBRIC_DEFAULTS = Path(__file__).resolve().parent / "rubric_defaults.toml"
SPEC_KEYS = {"title", "modules", "provided", "lab_modules", "bindings", "artifacts", "rubric"}


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
    rubric: dict = field(default_factory=dict, hash=False)  # rubric defaults merged with the lesson's overrides
    artifacts: tuple[str, ...] = ()  # words some run artifact's name must contain (the rubric checks them)

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
    digits = re.fullmatch(r"(?:lesson_)?(\d{1,2})", str(number).strip())
    if not digits:
        raise GradingSetupError(f"not a lesson number: {number!r} (use e.g. 03)")
    return digits.group(1).zfill(2)


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` laid over it, tables merged key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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


def _fill(value: object, dirname: str) -> object:
    """``{lesson_dir}`` in any rubric string becomes e.g. ``lesson_03``."""
    if isinstance(value, str):
        return value.replace("{lesson_dir}", dirname)
    if isinstance(value, dict):
        return {k: _fill(v, dirname) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, dirname) for v in value]
    return value


def parse(nn: str, path: Path, solutions: Path = SOLUTIONS_DIR) -> Lesson:
    """The lesson declared in ``path`` (a lesson.toml), checked: one-line errors naming the fix."""
    spec = _read_toml(path)
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
    artifacts = spec.get("artifacts", [])
    if not (isinstance(artifacts, list) and all(isinstance(a, str) and a for a in artifacts)):
        raise GradingSetupError(f"{path}: `artifacts` must be a list of words (e.g. [\"loss_curve\"])")
    overrides = spec.get("rubric", {})
    if not isinstance(overrides, dict):
        raise GradingSetupError(f"{path}: `rubric` must be a table of overrides, e.g. [rubric.weights]")
    rubric = _fill(merge(_read_toml(RUBRIC_DEFAULTS), overrides), f"lesson_{nn}")
    rubric.setdefault("reproducibility", {})["required_artifacts"] = list(artifacts)
    return Lesson(
        number=nn, title=title.strip(), modules=modules, lab_modules=_stems(spec, "lab_modules", path),
        provided=provided, bindings=bindings, rubric=rubric, artifacts=tuple(artifacts),
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
    from graders.engine import safepath

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
