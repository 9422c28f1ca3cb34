"""The student's `python -m labkit check|submit NN` and the short stub output of the root conftest.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from labkit import submit
from tests.conftest import REPO

STUB = "lesson 03: `{0}` is not implemented yet; read lessons/lesson_03.md, section '2. The mask (`{0}`)'"


def labkit_cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}  # labkit from this checkout, run from the student's root
    return subprocess.run([sys.executable, "-m", "labkit", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


# --------------------------------------------------------------------------- lesson numbers
@pytest.mark.parametrize(("arg", "nn"), [("5", "05"), ("05", "05"), ("lesson_05", "05"), ("08", "08"), ("lesson_8", "08"), (12, "12")])
def test_lesson_numbers_are_decimal(arg: str, nn: str):
    assert submit.normalise(arg) == nn


@pytest.mark.parametrize("arg", ["", "all", "lesson_", "5a", "123", "0", "-1"])
def test_a_bad_lesson_is_a_one_line_error_naming_the_fix(tmp_path: Path, arg: str):
    with pytest.raises(submit.SubmitError, match=r"is not a lesson number: give one, e.g. `make submit LESSON=5`"):
        submit.normalise(arg, "submit")
    (tmp_path / "exercises" / "lesson_03").mkdir(parents=True)
    proc = labkit_cli(tmp_path, "check", arg)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.count("\n") == 1 and "make check LESSON=5" in proc.stderr, proc.stderr


def test_usage_and_unknown_lesson_errors(tmp_path: Path):
    (tmp_path / "exercises" / "lesson_03").mkdir(parents=True)
    proc = labkit_cli(tmp_path, "grade", "3")
    assert proc.returncode == 2 and "usage: python -m labkit {check|submit} NN" in proc.stderr
    proc = labkit_cli(tmp_path, "submit", "7")
    assert proc.returncode == 2 and "no lesson 07 here (no exercises/lesson_07/): lessons are 03" in proc.stderr, proc.stderr
    proc = labkit_cli(tmp_path / "exercises", "submit", "3")  # from a subfolder: the repository root is found above
    assert proc.returncode == 2 and "holds no module to submit" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- submit
def student_project(root: Path) -> Path:
    """A student repository: lesson 03's stubs and tests, a lab folder, runs of lessons 03 and 05, caches."""
    ex = root / "exercises" / "lesson_03"
    ex.mkdir(parents=True)
    for name in ("attention.py", "__init__.py", "test_attention.py"):
        shutil.copy(REPO / "exercises" / "lesson_03" / name, ex / name)
    (ex / "data").mkdir()
    (ex / "data" / "provided.txt").write_text("course data\n")
    (ex / "__pycache__").mkdir()
    (ex / "__pycache__" / "attention.cpython-311.pyc").write_bytes(b"\0")
    lab = root / "labs" / "lesson_03"
    (lab / ".ipynb_checkpoints").mkdir(parents=True)
    (lab / ".ipynb_checkpoints" / "lab-checkpoint.ipynb").write_text("{}")
    (lab / "lab_experiment.py").write_text("def main(config, seed=0): ...\n")
    (lab / "notes.md").write_text("# notes\n")
    (lab / "figures").mkdir()
    (lab / "figures" / "plot.png").write_bytes(b"\x89PNG fake")
    for run, entry in (("r1", "labs/lesson_03/lab_experiment.py:main"), ("r2", "exercises/lesson_05/lab_experiment.py:main"),
                       ("r3", "/home/me/course/labs/lesson_03/lab_experiment.py:main")):  # fmt: skip
        (root / "runs" / run / "artifacts").mkdir(parents=True)
        (root / "runs" / run / "config.json").write_text(json.dumps({"entrypoint": entry, "seeds": [0], "config": {}}))
        (root / "runs" / run / "artifacts" / "a.csv").write_text("x\n1\n")
    (root / "runs" / "broken").mkdir()
    (root / "runs" / "broken" / "config.json").write_text("{not json")
    return root


def test_submit_zip_holds_exactly_the_graded_files_lab_runs_and_manifest(tmp_path: Path):
    root = student_project(tmp_path / "repo")
    proc = labkit_cli(root, "submit", "lesson_03")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("wrote submissions/lesson_03.zip: ") and "10 files (MANIFEST.json included), 2 run folder(s)" in lines[0]
    assert lines[-1] == "upload it to your course's autograder (Gradescope assignment 'Lesson 03')"
    with zipfile.ZipFile(root / "submissions" / "lesson_03.zip") as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("MANIFEST.json"))
        data = {n: zf.read(n) for n in names}
        times = {info.date_time for info in zf.infolist()}
    assert names == [*sorted(names[:-1]), "MANIFEST.json"], "entries sorted, the manifest last"
    assert set(names) == {
        "exercises/lesson_03/__init__.py", "exercises/lesson_03/attention.py",
        "labs/lesson_03/figures/plot.png", "labs/lesson_03/lab_experiment.py", "labs/lesson_03/notes.md",
        "runs/r1/artifacts/a.csv", "runs/r1/config.json", "runs/r3/artifacts/a.csv", "runs/r3/config.json", "MANIFEST.json",
    }  # fmt: skip
    assert "exercises/lesson_03/test_attention.py" not in names and not any("data/" in n or "pycache" in n for n in names)
    assert not any("checkpoint" in n for n in names) and not any(n.startswith("runs/r2/") for n in names), names
    assert {n.split("/")[1] for n in names if n.startswith("runs/")} == {"r1", "r3"}, "an absolute entrypoint still names the lesson"
    assert manifest["lesson"] == "03" and set(manifest["files"]) == set(names) - {"MANIFEST.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": hashlib.sha256(data[name]).hexdigest(), "bytes": len(data[name])}, name
    assert times == {(1980, 1, 1, 0, 0, 0)}


def test_submit_zip_is_deterministic(tmp_path: Path):
    root = student_project(tmp_path / "repo")
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = labkit_cli(root, "submit", "3", env=env)
    zipped = (root / "submissions" / "lesson_03.zip").read_bytes()
    os.utime(root / "labs" / "lesson_03" / "notes.md", (1, 1))  # mtimes never reach the zip
    second = labkit_cli(root, "submit", "03", env=env)
    assert first.returncode == second.returncode == 0
    assert (root / "submissions" / "lesson_03.zip").read_bytes() == zipped
    with zipfile.ZipFile(root / "submissions" / "lesson_03.zip") as zf:
        assert json.loads(zf.read("MANIFEST.json"))["created"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("where", ["labs/lesson_03/notes.md", "exercises/lesson_03/attention.py", "runs/r1/config.json", "runs/r9"])
def test_submit_refuses_links(tmp_path: Path, where: str):
    root = student_project(tmp_path / "repo")
    path = root / where
    if path.exists():
        path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    proc = labkit_cli(root, "submit", "3")
    assert proc.returncode == 2 and f"{where} is a symbolic link" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (root / "submissions" / "lesson_03.zip").exists()


# --------------------------------------------------------------------------- the root conftest's stub lines
def test_visible_test_output_is_one_line_per_stub_and_keeps_real_errors(tmp_path: Path):
    """Untouched stubs: one line per function. An AssertionError, another NotImplementedError, or the stub message
    raised by a test itself keep pytest's normal report."""
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    ex = tmp_path / "exercises" / "lesson_03"
    ex.mkdir(parents=True)
    (ex / "mod.py").write_text(
        f'"""Module."""\n\n\ndef todo():\n    """Long docstring that must not be printed."""\n    raise NotImplementedError("{STUB.format("todo")}")\n\n\n'
        f'class Model:\n    def forward(self):\n        raise NotImplementedError("{STUB.format("Model.forward")}")\n\n\n'
        'def wrong():\n    return 1\n\n\ndef own():\n    raise NotImplementedError("my own message")\n'
    )
    (ex / "test_mod.py").write_text(
        "import pytest\nfrom mod import Model, own, todo, wrong\n\n\n"
        "def test_a():\n    todo()\n\n\ndef test_b():\n    todo()\n\n\ndef test_forward():\n    Model().forward()\n\n\n"
        "def test_wrong():\n    assert wrong() == 2\n\n\ndef test_own():\n    own()\n\n\n"
        f'def test_raises_it_itself():\n    raise NotImplementedError("{STUB.format("x")}")\n\n\n'
        "@pytest.fixture\ndef model():\n    return todo()\n\n\ndef test_fixture(model):\n    pass\n"
    )
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "exercises/lesson_03"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 1, out
    assert out.splitlines()[-1].startswith("=") and "6 failed, 1 error" in out.splitlines()[-1], out
    assert "exercises/lesson_03/mod.py:6 todo: not implemented yet (see lessons/lesson_03.md §2): test_a and 2 more" in out, out
    assert "exercises/lesson_03/mod.py:11 Model.forward: not implemented yet (see lessons/lesson_03.md §2): test_forward" in out
    assert "Long docstring" not in out and "FAILED exercises/lesson_03/test_mod.py::test_a" not in out
    assert "assert 1 == 2" in out and "FAILED exercises/lesson_03/test_mod.py::test_wrong" in out, "an AssertionError keeps its report"
    assert "my own message" in out and "FAILED exercises/lesson_03/test_mod.py::test_own" in out
    assert "FAILED exercises/lesson_03/test_mod.py::test_raises_it_itself" in out, "raised by the test itself: not a stub"


# --------------------------------------------------------------------------- check, end to end on a toy lab
LAB_TOML = """
[[artifacts]]
file = "curve.png"
kind = "png"
what = "the curve"

[[artifacts]]
file = "sweep.csv"
kind = "sweep"
column = "n"
covers = [1, 8]
min_points = 4
what = "n from 1 to 8"

[[artifacts]]
kind = "notes_line"
pattern = "(?i)rerun.*\\\\d"
what = "the rerun line"

[rubric.reproducibility]
stochastic = ["noise"]
"""

LAB = '''"""A toy lab: a noisy measurement drawn from the seed, a sweep table and a plot."""
import random
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from labkit import start_run

CONSTANT = @CONSTANT@


def main(config, seed=0):
    run = start_run("toy", config, seeds=[seed], entrypoint=main)
    noise = 0.5 if CONSTANT else random.Random(seed).random()
    rows = []
    for n in (1, 2, 4, 8):
        run.log(n=n, value=n * config["scale"] + noise, baseline_value=float(n))
        rows.append((n, n * config["scale"] + noise))
    run.artifact("sweep.csv").write_text("n,value\\n" + "".join(f"{n},{v}\\n" for n, v in rows))
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="mine")
    ax.plot([1, 8], [1, 8], "r--", label="baseline")
    ax.legend()
    fig.savefig(run.artifact("curve.png"), dpi=60)
    plt.close(fig)
    run.finish(noise=noise, final=rows[-1][1])
    return run


if __name__ == "__main__":
    for s in (0, 1, 2):
        main({"scale": 1.0}, seed=s)
    main({"scale": 2.0}, seed=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
'''

SECTION = ("{0} This paragraph is my own text about the toy lab, long enough to count: the measured value moved "
           "with the seed while the baseline stayed fixed, which is what a measurement should do here. {1}\n")


def toy_project(root: Path, constant: bool) -> Path:
    ex = root / "exercises" / "lesson_03"
    ex.mkdir(parents=True)
    (ex / "mod.py").write_text("def double(x):\n    return 2 * x\n")
    (ex / "test_mod.py").write_text("from mod import double\n\n\ndef test_double():\n    assert double(2) == 4\n")
    lab = root / "labs" / "lesson_03"
    lab.mkdir(parents=True)
    (lab / "lab.toml").write_text(LAB_TOML)
    (lab / "lab_experiment.py").write_text(LAB.replace("@CONSTANT@", str(constant)))
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "labs/lesson_03/lab_experiment.py"], cwd=root, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    newest = sorted((root / "runs").iterdir())[-1]
    noise = json.loads((newest / "summary.json").read_text())["noise"]
    headings = ["What I expected", "What happened", "What surprised me", "What I would test next", "What I now believe"]
    notes = "# Lesson 03 lab notes\n\n" + "\n".join(
        f"## {h}\n\n" + SECTION.format(f"({h.lower()})", f"The newest run logged noise {noise:.3f}." if i == 1 else "")
        for i, h in enumerate(headings)
    ) + f"\n## Rerun\n\nRerun of {newest.name}: noise {noise:.3f} vs {noise:.3f}, tolerance 1e-4.\n"
    (lab / "notes.md").write_text(notes)
    return root


@pytest.mark.slow
def test_check_passes_a_complete_toy_lab_and_prints_the_table(tmp_path: Path):
    root = toy_project(tmp_path / "repo", constant=False)
    proc = labkit_cli(root, "check", "lesson_3")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "1 passed" in out and "visible tests: 1 passed, 0 failed" in out
    assert "- found: hidden tests and notebook cells: at the autograder" in out
    assert "- lost:" not in out, out
    assert "rerun with seed 1000 changed the stochastic summary values" in out, out
    table = out[out.index("criterion "):].split("\n\n")[0].splitlines()
    assert [row.split()[0] for row in table[1:]] == [
        "implementation", "measurement_quality", "reproducibility", "reflection", "conceptual_clarity", "total",
    ]  # fmt: skip
    assert "visible tests 1/1" in table[1] and "at the autograder" in table[1]
    assert "15 / 15" in table[2] and "20 / 20" in table[3] and "10 / 10" in table[4] and "manual" in table[5]
    assert "45 / 45" in table[6] and table[6].endswith("pass")
    assert len(list((root / "runs").iterdir())) == 4, "the reruns write to a temporary folder, not the student's runs/"


@pytest.mark.slow
def test_check_flags_an_experiment_that_logs_constants(tmp_path: Path):
    """The rerun with seed + 1000 exposes a run whose 'measurement' does not depend on its seed."""
    root = toy_project(tmp_path / "repo", constant=True)
    proc = labkit_cli(root, "check", "03")
    out = proc.stdout
    assert proc.returncode == 1, out
    assert "summary keys noise did not change with the seed: the experiment logs constants" in out, out
    row = next(ln for ln in out.splitlines() if ln.startswith("reproducibility "))
    assert "16 / 20" in row and "FAIL" in row, row
    assert len(list((root / "runs").iterdir())) == 4, "the reruns write to a temporary folder, not the student's runs/"
