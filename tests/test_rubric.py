"""The rubric: five criteria scored from hidden tests, notebooks, run artifacts, a rerun and notes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graders.engine import lessons, rubric
from tests.conftest import REPO, run_cli

NOTES = (Path(__file__).parent / "fixtures" / "lesson_03_notes.md").read_text()


def student_repo(root: Path, *, runs: bool = True, notes: str | None = NOTES) -> Path:
    """A student repository: reference code, the reference notebook, logged runs and notes."""
    lesson = root / "exercises" / "lesson_03"
    shutil.copytree(REPO / "solutions_private" / "lesson_03", lesson)
    if runs:
        code = "import lab_experiment as e\nfor s in (0, 1):\n    e.main({'seq_lens': [16, 32], 'repeats': 2}, seed=s)\n"
        proc = subprocess.run([sys.executable, "-c", code], cwd=lesson, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    if notes is not None:
        (root / "labs" / "lesson_03").mkdir(parents=True)
        (root / "labs" / "lesson_03" / "notes.md").write_text(notes)
    return root


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("rubric")
    out = tmp / "out"
    return rubric.score(lessons.load("03"), student_repo(tmp / "student"), out), out


@pytest.mark.serial  # full marks include the CPU speed verdict
def test_complete_submission_scores_every_automatic_criterion(full_report):
    report, out = full_report
    c = report["criteria"]
    assert c["implementation"]["score"] == c["implementation"]["max"], c["implementation"]
    assert c["measurement_quality"]["score"] == c["measurement_quality"]["max"], c["measurement_quality"]
    assert c["reproducibility"]["score"] == c["reproducibility"]["max"], c["reproducibility"]
    assert c["reflection"]["score"] == c["reflection"]["max"], c["reflection"]
    assert c["conceptual_clarity"]["score"] is None and report["pending_manual"] == ["conceptual_clarity"]
    assert report["rerun"]["ok"] is True
    assert json.loads((out / "rubric.json").read_text()) == report
    assert "## reproducibility: 20 / 20" in (out / "rubric.md").read_text()


def test_missing_pieces_lose_points_with_reasons(tmp_path: Path):
    root = student_repo(tmp_path / "student", runs=False, notes="# notes\n## What I expected\nTODO\n")
    (root / "exercises" / "lesson_03" / "01_attention_playground.ipynb").unlink()
    report = rubric.score(lessons.load("03"), root, tmp_path / "out")
    c = report["criteria"]
    assert c["reproducibility"]["score"] == 0 and "no labkit runs" in c["reproducibility"]["lost"][0]
    assert c["measurement_quality"]["score"] == 0
    assert c["reflection"]["score"] == 0 and any("'expected'" in x for x in c["reflection"]["lost"])
    assert c["implementation"]["score"] < c["implementation"]["max"]
    assert any("missing from the submission" in x for x in c["implementation"]["lost"])


def test_broken_run_folders_are_reported(tmp_path: Path):
    runs = tmp_path / "runs"
    (runs / "no-config").mkdir(parents=True)
    bad = runs / "no-metrics"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"entrypoint": "exercises/lesson_03/lab_experiment.py:main", "seeds": [0]}))
    found, problems = rubric.find_runs(tmp_path, lessons.load("03"))
    assert len(found) == 1 and not found[0]["ok"]
    assert any("no-config: no config.json" in p for p in problems)
    assert any("no-metrics: metrics.jsonl missing" in p for p in problems)


def test_rerun_mismatch_is_caught(tmp_path: Path):
    root = student_repo(tmp_path / "student", notes=None)
    run = sorted((root / "runs").iterdir())[-1]
    summary = json.loads((run / "summary.json").read_text())
    summary["entropy_masked"] += 0.5  # a hand-edited result the code does not produce
    (run / "summary.json").write_text(json.dumps(summary))
    metrics = (run / "metrics.jsonl").read_text().replace(
        f'"entropy_masked": {summary["entropy_masked"] - 0.5}', f'"entropy_masked": {summary["entropy_masked"]}'
    )
    (run / "metrics.jsonl").write_text(metrics)
    found, _ = rubric.find_runs(root, lessons.load("03"))
    result = rubric.rerun_latest(lessons.load("03"), root / "exercises" / "lesson_03", found, {}, ())
    assert result is not None and not result["ok"] and "entropy_masked" in result["why"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("[weights\n", "not valid TOML"), ("[weights]\nimplementation = 1\n", "[weights] must give a number")],
)
def test_malformed_rubric_config_is_one_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    with pytest.raises(lessons.GradingSetupError, match=message.replace("[", r"\[")):
        rubric.load_config(path)


def test_rubric_cli_setup_error(tmp_path: Path):
    proc = run_cli("rubric", "--lesson", "03", "--submission", str(tmp_path / "nobody"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("llm-grade: error:") and "does not exist" in proc.stderr


@pytest.mark.parametrize("number", lessons.available())
def test_every_lesson_with_a_lab_has_a_valid_rubric(number: str):
    lesson = lessons.load(number)
    notebooks = sorted((REPO / "solutions_private" / lesson.dirname).glob("*.ipynb"))
    if not notebooks:
        assert not lesson.lab_modules, f"lesson {number} names lab modules but has no notebook"
        return
    cfg = rubric.load_config(lesson)
    assert sum(cfg["weights"].values()) == 100
    for stem in lesson.lab_modules:
        assert (REPO / "solutions_private" / lesson.dirname / f"{stem}.py").exists()
    assert cfg["reflection"]["notes"] == f"labs/{lesson.dirname}/notes.md"


def test_hostile_files_are_findings_and_a_forged_result_is_regraded(tmp_path: Path):
    """Before: notes.md -> /dev/zero raised MemoryError (no rubric.json), and any results.json in OUT was trusted."""
    root = student_repo(tmp_path / "student", runs=False, notes=None)
    stub = REPO / "exercises" / "lesson_03" / "attention.py"
    shutil.copy(stub, root / "exercises" / "lesson_03" / "attention.py")
    (root / "labs" / "lesson_03").mkdir(parents=True)
    (root / "labs" / "lesson_03" / "notes.md").symlink_to("/dev/zero")
    elsewhere = tmp_path / "elsewhere" / "run-0"  # a run folder outside the submission, linked in
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.json").write_text(json.dumps({"entrypoint": "exercises/lesson_03/lab_experiment.py:main"}))
    runs = root / "runs"
    runs.mkdir()
    (runs / "linked").symlink_to(elsewhere)
    (runs / "zero").mkdir()
    (runs / "zero" / "config.json").symlink_to("/dev/zero")
    (runs / "fifo").mkdir()
    os.mkfifo(runs / "fifo" / "config.json")  # would block a plain open()
    huge = runs / "huge"
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({"entrypoint": "exercises/lesson_03/lab_experiment.py:main", "seeds": [0]}))
    with open(huge / "metrics.jsonl", "wb") as f:
        f.truncate(200 << 20)  # 200 MB (sparse): over the cap
    out = tmp_path / "out"
    out.mkdir()
    forged = {"score": 28.0, "max_score": 28.0, "tests": [], "output": "forged", "extra_data": {}}
    (out / "results.json").write_text(json.dumps(forged))
    report = rubric.score(lessons.load("03"), root, out)
    assert json.loads((out / "rubric.json").read_text()) == report
    c = report["criteria"]
    assert any("notes.md not read" in x and "symbolic link" in x for x in c["reflection"]["lost"]), c["reflection"]
    assert c["reflection"]["score"] == 0
    lost = "\n".join(c["reproducibility"]["lost"])
    assert "linked: a symbolic link" in lost and "zero: config.json unreadable" in lost, lost
    assert "fifo: config.json unreadable" in lost and "not a regular file" in lost, lost
    assert "huge: metrics.jsonl missing or not JSON lines" in lost and "byte limit" in lost, lost
    assert "hidden graders: 0/28" in c["implementation"]["found"], "the forged results.json must not be used"
    assert json.loads((out / "results.json").read_text())["extra_data"]["provenance"]["lesson"] == "03"
