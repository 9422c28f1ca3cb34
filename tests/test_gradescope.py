"""The Gradescope autograder zip: the right files only, and run_autograder grades like `llm-grade run`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from graders.engine import gradescope, lessons
from tests.conftest import REPO, run_cli

FORBIDDEN_PARTS = {"__pycache__", ".venv", "tests", "exercises", "lessons", ".git"}


def unpack(zip_path: Path, dest: Path) -> None:
    """Unzip keeping the Unix modes (zipfile drops them; Gradescope's unzip keeps them)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = info.external_attr >> 16 & 0o777
            if mode:
                path.chmod(mode)


@pytest.mark.parametrize("lesson", lessons.available())
def test_zip_holds_what_grading_needs_and_nothing_else(tmp_path: Path, lesson: str):
    spec = lessons.load(lesson)
    names = gradescope.build(spec, tmp_path / "autograder.zip")
    assert {"setup.sh", "run_autograder", "source/pyproject.toml", "source/constraints.txt"} <= set(names)
    assert "source/graders/engine/run.py" in names and "source/graders/engine/worker_main.py" in names
    assert f"source/labs/{spec.dirname}/lab.toml" in names, "the rubric reads the instructor's copy of lab.toml"
    assert not any(n.startswith("source/labs/") and not n.endswith("/lab.toml") for n in names), "only lab.toml of labs/"
    hidden = {p.relative_to(REPO).as_posix() for p in spec.graders_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {f"source/{h}" for h in hidden} <= set(names)
    if (REPO / "solutions_private" / spec.dirname).is_dir():
        assert any(n.startswith(f"source/solutions_private/{spec.dirname}/") for n in names)
    for name in names:
        assert not FORBIDDEN_PARTS & set(Path(name).parts) and not name.endswith(".pyc"), name
        assert name in ("setup.sh", "run_autograder", "README.md") or name.startswith("source/"), name
    other = {Path(n).parts[2] for n in names if n.startswith(("source/graders/lesson_", "source/solutions_private/"))}
    needed = {p.name for p in gradescope.source_folders(spec) if p.name.startswith("lesson_")}
    assert other == needed and spec.dirname in needed


def test_scripts_are_executable_and_pinned(tmp_path: Path):
    gradescope.build(lessons.load("03"), tmp_path / "a.zip")
    unpack(tmp_path / "a.zip", tmp_path / "root")
    for name in ("setup.sh", "run_autograder"):
        path = tmp_path / "root" / name
        assert os.access(path, os.X_OK) and path.read_text().startswith("#!/usr/bin/env bash\n"), name
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, f"{name}: bash syntax error"
    setup = (tmp_path / "root" / "setup.sh").read_text()
    assert "torch==2.13.0" in setup and "python3.11 python3.11-venv" in setup and "-m venv" in setup
    assert '-c "$ROOT/source/constraints.txt" -e "$ROOT/source"' in setup
    assert "uid 65534" in (tmp_path / "root" / "README.md").read_text()
    gradescope.build(lessons.load("03"), tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes(), "the zip must be reproducible"


def run_autograder(root: Path) -> dict:
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "LLMG_BIN": str(Path(sys.executable).parent)}
    proc = subprocess.run([str(root / "run_autograder")], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((root / "results" / "results.json").read_text())


@pytest.fixture
def gradescope_root(tmp_path: Path) -> Path:
    """The zip unpacked as Gradescope lays it out: root/{setup.sh,run_autograder,source/,submission/,results/}."""
    gradescope.build(lessons.load("03"), tmp_path / "autograder.zip")
    root = tmp_path / "autograder"
    unpack(tmp_path / "autograder.zip", root)
    (root / "submission").mkdir()
    (root / "results").mkdir()
    return root


@pytest.mark.serial  # full marks include the CPU speed verdict
def test_run_autograder_gives_full_marks_to_the_reference(gradescope_root: Path):
    shutil.copytree(REPO / "solutions_private" / "lesson_03", gradescope_root / "submission" / "lesson_03")
    res = run_autograder(gradescope_root)
    assert res["score"] == res["max_score"] > 0, [t["output"] for t in res["tests"] if t["score"] < t["max_score"]]
    assert "sandbox:" in res["output"] and str(gradescope_root / "submission") in res["output"]
    where = subprocess.run(
        [sys.executable, "-c", "import graders; print(graders.__file__)"],
        cwd=gradescope_root / "source", capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(gradescope_root / "source")), "run_autograder must grade with the zip's own source"


def test_run_autograder_gives_zero_to_an_uploaded_stub(gradescope_root: Path):
    """Bare files uploaded without their lesson_03/ folder are still found, and a stub scores 0."""
    shutil.copy(REPO / "exercises" / "lesson_03" / "attention.py", gradescope_root / "submission")
    res = run_autograder(gradescope_root)
    assert res["score"] == 0 and res["max_score"] > 0
    counted = [t for t in res["tests"] if t["max_score"] > 0]
    assert counted and all("NotImplementedError" in t["output"] for t in counted)


@pytest.mark.parametrize(("lesson", "out", "message"), [("42", "a.zip", "unknown lesson"), ("03", ".", "is a folder")])
def test_gradescope_errors_are_one_line(tmp_path: Path, lesson: str, out: str, message: str):
    proc = run_cli("gradescope", "--lesson", lesson, "--out", str(tmp_path / out))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("link", ["exercises/lesson_03", "lesson_03", "exercises", "attention.py"])
def test_run_autograder_refuses_links_to_the_reference(gradescope_root: Path, link: str):
    """Before: a submission whose exercises/lesson_03 links to the fixed path source/solutions_private/lesson_03
    scored 28/28 (`-d` follows links). Now it scores 0 with the reason, whatever the link is."""
    reference = gradescope_root / "source" / "solutions_private"
    target = {"exercises/lesson_03": reference / "lesson_03", "lesson_03": reference / "lesson_03",
              "exercises": reference, "attention.py": reference / "lesson_03" / "attention.py"}[link]  # fmt: skip
    path = gradescope_root / "submission" / link
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    res = run_autograder(gradescope_root)
    assert res["score"] == 0, res["output"]
    if link == "attention.py":  # a bare upload: flattened, the link kept as a link, and the worker refuses it
        assert res["max_score"] > 0 and res["extra_data"]["provenance"]["files"]["attention.py"].startswith("unreadable")
    else:
        assert "is a symbolic link" in res["output"] and res["tests"] == [], res["output"]


# --------------------------------------------------------------------------- the student's `make submit` zip
def student_zip(tmp_path: Path, lesson: str = "03") -> Path:
    """`make submit LESSON=NN` on a copy of this repository's student files (stubs, lab, one run)."""
    from labkit import submit

    project = tmp_path / "student"
    shutil.copytree(REPO / "exercises" / f"lesson_{lesson}", project / "exercises" / f"lesson_{lesson}",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    labs = REPO / "labs" / f"lesson_{lesson}"
    if labs.is_dir():
        shutil.copytree(labs, project / "labs" / f"lesson_{lesson}", ignore=shutil.ignore_patterns("__pycache__"))
    run = project / "runs" / "20250101-000000-timing"
    run.mkdir(parents=True)
    entry = f"labs/lesson_{lesson}/lab_experiment.py:run_experiment"
    (run / "config.json").write_text(json.dumps({"config": {}, "seeds": [0], "entrypoint": entry}))
    out, _ = submit.build(project, lesson)
    return out


def unpack_submission(zip_path: Path, root: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(root / "submission")  # what Gradescope does with an uploaded zip
    return root / "submission"


def test_manifest_of_a_submit_zip_is_checked(tmp_path: Path):
    sub = unpack_submission(student_zip(tmp_path), tmp_path)
    assert gradescope.verify_manifest(sub) is None
    assert gradescope.verify_manifest(tmp_path) is None, "an upload without MANIFEST.json is graded as before"
    (sub / "exercises" / "lesson_03" / "attention.py").write_text("# edited after make submit\n")
    (sub / "extra.py").write_text("x = 1\n")
    why = gradescope.verify_manifest(sub)
    assert why and "exercises/lesson_03/attention.py changed after `make submit`" in why and "extra.py is not in" in why
    assert "make submit LESSON=NN" in why and "\n" not in why
    (sub / "MANIFEST.json").write_text("{not json")
    assert "MANIFEST.json unreadable" in gradescope.verify_manifest(sub)


def test_run_autograder_reports_a_manifest_mismatch_as_the_reason(gradescope_root: Path, tmp_path: Path):
    shutil.rmtree(gradescope_root / "submission")
    sub = unpack_submission(student_zip(tmp_path), gradescope_root)
    (sub / "runs" / "20250101-000000-timing" / "config.json").unlink()
    res = run_autograder(gradescope_root)
    assert res["score"] == 0 and res["tests"] == [] and res["extra_data"]["manifest"] == "mismatch"
    assert "runs/20250101-000000-timing/config.json is missing" in res["output"], res["output"]


def test_run_autograder_grades_the_submit_zip_layout(gradescope_root: Path, tmp_path: Path):
    """The zip `make submit` writes, unpacked by Gradescope, is graded as a repository root (stubs: 0 points)."""
    shutil.rmtree(gradescope_root / "submission")
    sub = unpack_submission(student_zip(tmp_path), gradescope_root)
    assert (sub / "MANIFEST.json").is_file() and (sub / "exercises" / "lesson_03" / "attention.py").is_file()
    res = run_autograder(gradescope_root)
    assert res["max_score"] > 0 and res["score"] == 0, res["output"]
    counted = [t for t in res["tests"] if t["max_score"] > 0]
    assert counted and all("NotImplementedError" in t["output"] for t in counted)
    assert str(sub) in res["output"], "graded the unpacked zip itself, not a flattened copy"


def test_no_package_host_is_named():
    text = (REPO / "graders" / "engine" / "gradescope.py").read_text()
    assert "://" not in text.replace("#!/usr/bin/env", ""), "never name package hosts: say where to look instead"
