"""The student release: no solution or hidden test inside, and it works on its own (visible tests run, make test passes)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from graders.engine import release, sync
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release, built once (nbgrader makes every lab notebook: ~30 s), with --force over an earlier one."""
    out = tmp_path_factory.mktemp("release") / "student-repo"
    (out / "lessons").mkdir(parents=True)
    (out / "lessons" / "stale.md").write_text("old\n")
    (out / "keep.txt").write_text("the student repo's own file\n")
    release.build(out, force=True)
    return out


def _files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and ".pytest_cache" not in p.parts and "__pycache__" not in p.parts]


def _text(path: Path) -> str:
    raw = path.read_bytes().decode("utf-8", "replace")
    if path.suffix == ".ipynb":  # cell sources, without JSON escaping
        cells = json.loads(raw).get("cells", [])
        raw += "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    return raw


def _solution_lines() -> set[str]:
    """Code lines (over 25 characters, not comments) of every solution region, .py and notebook cells."""
    regions = list(sync.solution_regions(REPO))
    marker = re.compile(r"^\s*#+ ?BEGIN SOLUTION.*?\n(.*?)^\s*#+ ?END SOLUTION", re.M | re.S)
    for nb in (REPO / "solutions_private").rglob("*.ipynb"):
        regions += [m[1] for c in json.loads(nb.read_text())["cells"] for m in marker.finditer("".join(c["source"]))]
    # Lines the stubs (exercises/ and the labs/ lab stubs) hand out by design are not leaks. The committed stubs are what `sync` plans (a release
    # refuses to build when they drift), and reading them spares a second nbgrader run of every notebook.
    stubs = [p for top in ("exercises", "labs") for p in (REPO / top).glob("lesson_[0-9][0-9]/*") if p.suffix in (".py", ".ipynb")]
    given = "\n".join(p.read_text() for p in stubs if not p.name.startswith("test_") and p.name != "conftest.py")
    lines = {ln.split("  #")[0].strip() for r in regions for ln in r.splitlines()}
    return {ln for ln in lines if len(ln) > 25 and not ln.startswith("#") and ln not in given}


def _hidden_test_text() -> set[str]:
    """Hidden tests' function names (unless a visible test has the same name) and first docstring lines."""
    def functions(paths):
        trees = [ast.parse(p.read_text()) for p in paths]
        return [n for t in trees for n in ast.walk(t) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]

    visible = {f.name for f in functions((REPO / "exercises").rglob("test_*.py"))}
    hidden = functions((REPO / "graders").glob("lesson_*/test_*.py"))
    docs = {(ast.get_docstring(f) or "").strip().split("\n")[0] for f in hidden}
    return {f.name for f in hidden if f.name not in visible} | {d for d in docs if len(d) > 25}


def _allowed() -> set[tuple[str, str]]:
    text = (REPO / "release" / "leak_allowlist.txt").read_text()
    return {tuple(s.strip() for s in ln.split(" :: ", 1)) for ln in text.splitlines() if " :: " in ln and ln[0] != "#"}


@pytest.mark.slow
def test_no_instructor_paths(released: Path):
    for path in released.rglob("*"):
        rel = path.relative_to(released)
        if rel.parts[0] == ".git":  # the release's own one-commit repository (next test), never the instructor's
            continue
        assert not {"solutions_private", "graders", ".git", ".venv"} & set(rel.parts), rel
    assert sorted(p.name for p in (released / "tests").iterdir()) == ["test_student_setup.py"], "instructor tests/ leaked"
    assert (released / "labkit" / "__init__.py").exists() == (REPO / "labkit" / "__init__.py").exists()
    assert {p.name for p in (released / "exercises").glob("lesson_*")} == {p.name for p in (REPO / "exercises").glob("lesson_*")}
    assert {p.name for p in (released / "labs").glob("lesson_*")} == {p.name for p in (REPO / "labs").glob("lesson_*")}


@pytest.mark.slow
def test_no_solution_code_or_hidden_test_text(released: Path):
    needles = _solution_lines() | _hidden_test_text()
    assert "test_parity_with_torch_sdpa" in needles and any("masked_fill" in n for n in needles), "the scan lost its needles"
    allowed = _allowed()
    hits = [
        f"{path.relative_to(released)}: {n}"
        for path in _files(released)
        for n in needles
        if (path.relative_to(released).as_posix(), n) not in allowed and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", _text(path))
    ]
    assert not hits, hits[:20]


def test_leak_scan_catches_a_planted_solution(tmp_path: Path):
    (tmp_path / "notes.md").write_text("scores = scores.masked_fill(~mask, float(\"-inf\"))\n")
    (tmp_path / "t.py").write_text("def test_parity_with_torch_sdpa(): ...\n")
    (tmp_path / "graders").mkdir()
    found = release.leaks(tmp_path)
    assert any("notes.md" in f for f in found) and any("t.py" in f for f in found) and any("instructor-only" in f for f in found)


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_visible_tests_run_and_fail_on_the_stubs(released: Path):
    """On untouched stubs: one line per unimplemented function, not a traceback reprinting each docstring."""
    proc = _pytest(released, "exercises/lesson_03")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "NotImplementedError" in proc.stdout and "error" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
    stubs = [ln for ln in proc.stdout.splitlines() if ": not implemented yet (see lessons/lesson_03.md §" in ln]
    assert {ln.split()[1].rstrip(":") for ln in stubs} == {"causal_mask", "scaled_dot_product_attention"}, proc.stdout
    assert all(ln.startswith("exercises/lesson_03/attention.py:") for ln in stubs), stubs
    assert len(proc.stdout.splitlines()) < 20 and "Args:" not in proc.stdout, proc.stdout


@pytest.mark.slow
def test_the_release_own_tests_pass(released: Path):
    proc = _pytest(released)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_student_files_are_adapted(released: Path):
    readme = (released / "README.md").read_text()
    for word in ("solutions_private", "llm-grade", "make grade", "graders/", "@LESSONS@"):
        assert word not in readme, word
    assert "pytest exercises/lesson_NN" in readme and "| 03 |" in readme
    assert "labs/lesson_NN/" in readme and "make submit LESSON=NN" in readme and "make check LESSON=NN" in readme
    assert "TORCH_INDEX=" in readme and "://" not in readme and ".venv/bin/pytest exercises/lesson_NN" in readme
    makefile = (released / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", makefile, re.M))
    assert {"setup", "test", "kernel", "check", "submit", "lab", "notebooks"} <= targets and "grade" not in targets
    assert "TORCH_INDEX ?=\n" in makefile and "://" not in makefile
    recipes = [ln.strip() for ln in makefile.splitlines() if ln.startswith("\t")]
    tools = {m for ln in recipes for m in re.findall(r"(?:^|[;&|] *)(python|pip|pytest|jupyter|ruff)\b", ln)}
    assert not tools, f"recipes call {tools} from PATH: use $(BIN)/..., a fresh release has no activated venv"
    agents = (released / "AGENTS.md").read_text()
    assert "make grade" not in agents and "For agents working on the course repository" not in agents
    for text in (readme, agents):
        assert set(re.findall(r"`make (\w+)", text)) <= targets
    student = tomllib.loads((released / "pyproject.toml").read_text())
    teacher = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "scripts" not in student["project"] and student["tool"]["setuptools"]["packages"]["find"]["include"] == ["labkit*"]
    assert student["tool"]["pytest"]["ini_options"] == {**teacher["tool"]["pytest"]["ini_options"], "testpaths": ["tests"]}
    assert student["tool"]["ruff"] == teacher["tool"]["ruff"]
    for name in ("constraints.txt", "conftest.py", ".gitignore"):
        assert (released / name).read_bytes() == (REPO / name).read_bytes(), name


@pytest.mark.slow
def test_the_release_is_a_git_repository_with_one_commit(released: Path):
    """labkit's env.json records the commit a run came from: a fresh release has one, and nothing ignored in it."""
    log = subprocess.run(["git", "log", "--format=%s"], cwd=released, capture_output=True, text=True, check=True)
    assert log.stdout.splitlines() == ["Course release"], "the instructor's history must not reach the release"
    tracked = subprocess.run(["git", "ls-files"], cwd=released, capture_output=True, text=True, check=True).stdout
    assert "lessons/lesson_03.md" in tracked.splitlines() and ".venv/" not in tracked


def _make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # A make of its own, not a sub-make of the suite's `make test` (that one would print "Entering directory").
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "lesson", "command"), [("check", "5", "check '5'"), ("submit", "05", "submit '05'"),
                                                            ("check", "lesson_08", "check 'lesson_08'")])  # fmt: skip
def test_student_make_targets_resolve(released: Path, target: str, lesson: str, command: str):
    """`make -n check LESSON=5` / `submit LESSON=05` in the release: the venv's python runs labkit, nothing from PATH."""
    proc = _make(released, "-n", target, f"LESSON={lesson}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f".venv/bin/python -m labkit {command}", proc.stdout


@pytest.mark.slow
def test_labs_ship_with_notes_and_lab_declarations(released: Path):
    lessons = sorted(p.name for p in (REPO / "exercises").glob("lesson_[0-9][0-9]"))
    for name in lessons:
        lab = released / "labs" / name
        assert (lab / "notes.md").is_file() and (lab / "lab.toml").is_file(), name
        assert (lab / "lab.toml").read_bytes() == (REPO / "labs" / name / "lab.toml").read_bytes(), name
    assert (released / "labkit" / "rubric_defaults.toml").is_file() and (released / "labkit" / "templates" / "notes.md").is_file()
    assert (released / "labkit" / "check.py").is_file() and (released / "labkit" / "__main__.py").is_file()


@pytest.mark.slow
def test_submit_in_the_release_writes_the_autograder_zip(released: Path, tmp_path: Path):
    """`python -m labkit submit 03` run the way `make submit` runs it, in a copy of the release."""
    student = tmp_path / "student"
    shutil.copytree(released, student, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache"))
    run = student / "runs" / "20250101-000000-timing"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {}, "seeds": [0], "entrypoint": "labs/lesson_03/lab_experiment.py:main"}))
    proc = subprocess.run([sys.executable, "-m", "labkit", "submit", "3"], cwd=student, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "submissions/lesson_03.zip" in proc.stdout and "Gradescope assignment 'Lesson 03'" in proc.stdout, proc.stdout
    with zipfile.ZipFile(student / "submissions" / "lesson_03.zip") as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MANIFEST.json"))
    assert {"exercises/lesson_03/attention.py", "labs/lesson_03/notes.md", "runs/20250101-000000-timing/config.json"} <= names
    assert not any(Path(n).name.startswith("test_") for n in names) and set(manifest["files"]) == names - {"MANIFEST.json"}


def test_refuses_a_non_empty_folder_unless_forced(tmp_path: Path, released: Path):
    out = tmp_path / "student-repo"
    (out / "lessons").mkdir(parents=True)
    (out / "lessons" / "stale.md").write_text("old\n")
    (out / "keep.txt").write_text("the student repo's own file\n")
    proc = run_cli("release", "--out", str(out))
    assert proc.returncode == 2 and "is not empty: pass --force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (out / "README.md").exists()
    # `released` was built with force over the same kind of folder: ours replaced, the student's own file kept.
    assert (released / "README.md").exists() and (released / "keep.txt").exists()
    assert not (released / "lessons" / "stale.md").exists()


@pytest.mark.parametrize("where", ["inside-repo", "stale-graders"])
def test_refuses_unsafe_targets(tmp_path: Path, where: str):
    out = REPO / "exercises" / "release-here" if where == "inside-repo" else tmp_path / "out"
    if where == "stale-graders":
        (out / "graders").mkdir(parents=True)
    with pytest.raises(release.ReleaseError, match="instructor"):
        release.build(out, force=True)
    assert not (REPO / "exercises" / "release-here").exists()
