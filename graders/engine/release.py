"""Write the repository students receive, and prove it holds no solution and no hidden test.

The release is assembled in a temporary folder next to the target, scanned for leaks
(every solution region's code lines, the hidden tests' names and docstrings, any
``solutions_private``/``graders`` path) and only then moved into place, so a leaking
release is never written. Student-only files (README, Makefile, tests/) come from the
instructor repo's ``release/`` folder; pyproject.toml is derived from the instructor's
so markers and ruff settings cannot drift apart. ``labs/`` (lab code stubs, notebooks, the
notes.md templates and each lab's public lab.toml) and ``labkit/`` (with its templates,
rubric_defaults.toml and the `check`/`submit` commands) ship as they are in git.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

from graders.engine import sync
from graders.engine.sandbox import REPO_ROOT

COPIED = ("lessons", "exercises", "labs", "labkit", "constraints.txt", "conftest.py", ".gitignore", "tox.ini")
TEMPLATES = ("README.md", "Makefile", "tests")  # from REPO_ROOT/release/ (leak_allowlist.txt stays there)
FORBIDDEN = ("solutions_private", "graders")
JUNK = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}
INSTRUCTOR_ONLY_DEPENDENCIES = ("nbgrader",)  # used by `llm-grade sync` only
MIN_LEAK_CHARS = 25


class ReleaseError(Exception):
    """The release cannot be written (target not empty, exercises out of sync, a leak found)."""


# --------------------------------------------------------------------------- what goes in
def _listed(root: Path, rel: str) -> list[Path]:
    """Files under ``rel`` that git would ship (tracked or untracked-not-ignored), else every file."""
    try:
        proc = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", rel],
            cwd=root, capture_output=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        proc = None
    if proc is not None and proc.returncode == 0:
        paths = [Path(p) for p in proc.stdout.decode().split("\0") if p]
    else:  # no git, or not a git checkout (an unpacked tarball): take what is there
        base = root / rel
        paths = [p.relative_to(root) for p in ([base] if base.is_file() else base.rglob("*"))]
    return sorted(p for p in paths if (root / p).is_file() and not JUNK & set(p.parts) and p.suffix != ".pyc")


def _lessons_table(readme: str) -> str:
    """The instructor README's "## Lessons" section (table and notes), so both READMEs list the same lessons."""
    match = re.search(r"^## Lessons\n(.*?)(?=^## )", readme, re.M | re.S)
    return match.group(1).strip() if match else "See `lessons/`."


def student_agents(text: str) -> str:
    """AGENTS.md without its instructor section. The student sections name the student commands
    (`make check LESSON=NN`, `make submit LESSON=NN`); a leftover `make grade` (no graders in a
    release) becomes the self-check, so no student file names a target the release lacks."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            skipping = "instructor" in line.lower() or "course repository itself" in line.lower()
        if skipping:
            continue
        kept.append(re.sub(r"`make grade(?: LESSON=\w+)?`", "`make check LESSON=NN`", line))
    text = re.sub(r" The last section is\s+for agents helping instructors[^.]*\.", "", "\n".join(kept))
    return text.rstrip() + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        inline = "[" + ", ".join(_toml_value(v) for v in value) + "]"
        return inline if len(inline) <= 80 else "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def dump_toml(data: dict, prefix: tuple[str, ...] = ()) -> str:
    """Minimal TOML writer for pyproject data (tables of strings, numbers, booleans and lists)."""
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    scalars = {k: v for k, v in data.items() if k not in tables}
    out = []
    if scalars and prefix:
        out.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
    out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    if scalars:
        out.append("")
    for key, table in tables.items():
        out.append(dump_toml(table, (*prefix, key)))
    return "\n".join(out)


def student_pyproject(text: str) -> str:
    """The instructor pyproject.toml minus the grader: no graders package, no llm-grade script."""
    data = tomllib.loads(text)
    project = data["project"]
    project["name"] = "llm-course"
    project["description"] = "An LLM course: lessons, exercises and labs (student repository)."
    project.pop("scripts", None)
    project["dependencies"] = [d for d in project.get("dependencies", []) if not d.startswith(INSTRUCTOR_ONLY_DEPENDENCIES)]
    tool = data.setdefault("tool", {})
    tool["setuptools"] = {"packages": {"find": {"include": ["labkit*"]}}, "package-data": tool.get("setuptools", {}).get("package-data", {})}
    tool.setdefault("pytest", {}).setdefault("ini_options", {})["testpaths"] = ["tests"]
    header = "# Student repository set-up (generated from the course's own pyproject.toml).\n\n"
    return header + dump_toml(data).rstrip() + "\n"


# --------------------------------------------------------------------------- leak scan
REGION = re.compile(r"^[ \t]*#+ ?BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*#+ ?END SOLUTION[^\n]*", re.M | re.S)


def _code_line(line: str) -> str:
    return line.split("  #")[0].strip()


def _strings(obj: object) -> list[str]:
    """Every string in parsed JSON; a list of strings (a notebook cell's lines) as one string."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
        return ["".join(obj)]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    return [s for v in values for s in _strings(v)]


def searchable(path: Path) -> str:
    """A file's text; for a notebook also its decoded cell sources and outputs (JSON escapes hide quotes)."""
    raw = path.read_bytes().decode("utf-8", "replace")
    if path.suffix == ".ipynb":
        try:
            return raw + "\n" + "\n".join(_strings(json.loads(raw)))
        except ValueError:
            pass
    return raw


def solution_lines(root: Path) -> set[str]:
    """Code lines of every solution region (.py files and notebook cells) that the scaffolding given to
    students does not also contain."""
    texts = [searchable(p) for p in sorted((root / "solutions_private").rglob("*")) if p.suffix in (".py", ".ipynb")]
    regions = sync.solution_regions(root) + [m[1] for text in texts for m in REGION.finditer(text)]
    lines = {_code_line(ln) for region in regions for ln in region.splitlines()}
    public = {_code_line(ln) for text in texts for ln in REGION.sub("", text).splitlines()}
    return {ln for ln in lines - public if len(ln) > MIN_LEAK_CHARS and not ln.startswith("#")}


def _test_functions(paths: list[Path]) -> list[ast.FunctionDef]:
    return [
        node
        for path in paths
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


def hidden_test_markers(root: Path) -> set[str]:
    """Hidden tests' names and docstring first lines; a name a visible test also uses is not a leak."""
    visible = {f.name for f in _test_functions(sorted((root / "exercises").rglob("test_*.py")))}
    found = set()
    for func in _test_functions(sorted((root / "graders").glob("lesson_[0-9][0-9]/test_*.py"))):
        if func.name not in visible:
            found.add(func.name)
        doc = (ast.get_docstring(func) or "").strip().splitlines()
        if doc and len(doc[0].strip()) > MIN_LEAK_CHARS:
            found.add(doc[0].strip())
    return found


def allowed(root: Path) -> set[tuple[str, str]]:
    """(release path, code line) pairs from release/leak_allowlist.txt: idioms that are not leaks there."""
    path = root / "release" / "leak_allowlist.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    pairs = [ln.split(" :: ", 1) for ln in lines if " :: " in ln and not ln.startswith("#")]
    return {(p.strip(), code.strip()) for p, code in pairs}


def leaks(release: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every solution line, hidden-test marker or forbidden path found in ``release``."""
    needles = sorted(solution_lines(root) | hidden_test_markers(root))
    patterns = [(n, re.compile(rf"(?<![\w]){re.escape(n)}(?![\w])")) for n in needles]  # test_x must not hit test_x_y
    ok = allowed(root)
    found = []
    for path in sorted(release.rglob("*")):
        rel = path.relative_to(release)
        if set(rel.parts) & set(FORBIDDEN):
            found.append(f"{rel}: instructor-only path")
        elif path.is_file():
            text = searchable(path)
            found += [f"{rel}: contains {n!r}" for n, p in patterns if (rel.as_posix(), n) not in ok and p.search(text)]
    return found


# --------------------------------------------------------------------------- build
def _check_target(out: Path, force: bool, root: Path) -> None:
    if out.is_relative_to(root) or root.is_relative_to(out):
        raise ReleaseError(f"{out} overlaps the instructor repository {root}: write the release outside it")
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ReleaseError(f"{out} is not empty: pass --force to replace the release files in it")
        stale = [name for name in FORBIDDEN if (out / name).exists()]
        if stale:
            raise ReleaseError(f"{out} holds instructor-only {', '.join(stale)}/: remove it first")


def assemble(dest: Path, root: Path = REPO_ROOT) -> None:
    """Write every release file into the empty folder ``dest``."""
    for rel in COPIED:
        for path in _listed(root, rel):
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / path, dest / path)
    templates = root / "release"
    for name in TEMPLATES:
        src = templates / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(*JUNK, "*.pyc"))
        elif name == "README.md":
            readme = (root / "README.md").read_text(encoding="utf-8")
            text = src.read_text(encoding="utf-8").replace("@LESSONS@", _lessons_table(readme))
            (dest / name).write_text(text, encoding="utf-8")
        else:
            shutil.copy2(src, dest / name)
    (dest / "AGENTS.md").write_text(student_agents((root / "AGENTS.md").read_text(encoding="utf-8")), encoding="utf-8")
    (dest / "pyproject.toml").write_text(student_pyproject((root / "pyproject.toml").read_text(encoding="utf-8")), "utf-8")


def build(out: Path, *, force: bool = False, root: Path = REPO_ROOT) -> list[Path]:
    """Write the student release into ``out``; return the top-level entries written."""
    out = out.resolve()
    _check_target(out, force, root)
    drift = sync.check(root)
    if drift:
        raise ReleaseError(f"exercises/ drifted from solutions_private/ ({drift[0].path}, ...): run `llm-grade sync` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        staging = Path(tmp)
        assemble(staging, root)
        found = leaks(staging, root)
        if found:
            raise ReleaseError(f"the release would leak ({len(found)} hit(s)), nothing written; first: {found[0]}")
        out.mkdir(exist_ok=True)
        entries = sorted(staging.iterdir())
        for entry in entries:
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            entry.rename(target)
    _first_commit(out)
    return [out / e.name for e in entries]


def _first_commit(out: Path) -> None:
    """Make a new release a git repository with one commit: labkit's env.json records the commit a run
    came from. A folder that is already a repository is the student's: its history is left alone."""
    if (out / ".git").exists():
        return
    git = shutil.which("git")
    if git is None:
        raise ReleaseError("git is not installed: the release is a git repository (install git, then re-run)")
    who = ["-c", "user.name=LLM course", "-c", "user.email=course@localhost", "-c", "commit.gpgsign=false"]
    steps = {"init": ["init", "-q"], "add": ["add", "-A"], "commit": [*who, "commit", "-q", "-m", "Course release"]}
    for step, args in steps.items():
        proc = subprocess.run([git, *args], cwd=out, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReleaseError(f"git {step} failed in {out}: {proc.stderr.strip()[:200]}")
