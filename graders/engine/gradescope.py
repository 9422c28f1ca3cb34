"""Build the Gradescope autograder zip for one lesson: setup.sh, run_autograder and source/.

A student uploads the zip `make submit LESSON=NN` writes (labkit/submit.py); Gradescope unpacks it
into /autograder/submission: exercises/lesson_NN/, labs/lesson_NN/, runs/ and MANIFEST.json.
``run_autograder`` checks MANIFEST.json first (:func:`verify_manifest`): a file that is missing,
changed or not listed gives a zero with that reason, before any grading. An upload without a
manifest (bare files, a folder) is graded as before.

Gradescope unpacks the zip into /autograder, runs ``setup.sh`` once (as root) while
building the image, then ``run_autograder`` for every submission, which must leave
/autograder/results/results.json. ``source/`` holds only what grading needs: the
engine, this lesson's hidden tests (and any other lesson's graders or references they
import), the lesson's reference solution, its labs/lesson_NN/lab.toml, labkit/, pyproject.toml
and constraints.txt. The zip
is deterministic (fixed timestamps, sorted entries) so two builds can be compared.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import zipfile
from pathlib import Path

from graders.engine import lessons
from graders.engine.lessons import REPO_ROOT  # not sandbox's: that imports torch
from labkit import safepath

SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".venv", "tests", "exercises"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, while building the autograder image.
# It installs Python 3.11 when the image lacks it (Ubuntu 22.04 has it in its archive; other
# releases get it from the deadsnakes PPA), builds a venv from the *system* python3.11 so the
# sandbox can run the interpreter as uid 65534, and installs torch (pinned) and the grader.
# TORCH_INDEX_URL (optional): the CPU wheel index from PyTorch's install page, for the CPU-only wheel.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
VENV="${LLMG_VENV:-$ROOT/venv}"
export DEBIAN_FRONTEND=noninteractive
if ! command -v python3.11 >/dev/null 2>&1 || ! python3.11 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt-get update
    if ! apt-get install -y python3.11 python3.11-venv; then
        apt-get install -y software-properties-common
        add-apt-repository -y ppa:deadsnakes/ppa
        apt-get update
        apt-get install -y python3.11 python3.11-venv
    fi
fi
apt-get install -y util-linux >/dev/null 2>&1 || true  # `unshare`, for the sandbox's namespaces
PY="$(test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3.11)"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
"$VENV/bin/pip" install -c "$ROOT/source/constraints.txt" -e "$ROOT/source"
chmod -R a+rX "$VENV"  # the sandboxed worker runs this venv's python as uid 65534
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission, as root. Results: $ROOT/results/results.json.
# AUTOGRADER_ROOT (default /autograder) and LLMG_BIN (default $ROOT/venv/bin) can be overridden.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
BIN="${LLMG_BIN:-$ROOT/venv/bin}"
LESSON=@LESSON@
SUB="$ROOT/submission"
mkdir -p "$ROOT/results"
# The `make submit` zip carries MANIFEST.json: every file's sha256. A mismatch is a zero with the reason.
if ! (cd "$ROOT/source" && "$BIN/python" -m graders.engine.gradescope verify "$SUB" "$ROOT/results"); then
    exit 0
fi
# An upload of bare files (no exercises/ or lesson_NN/ folder) is graded as lesson_NN/ itself.
# `-d` follows links, and this path is fixed: a link (exercises/ or lesson_NN/ pointing at
# source/solutions_private/...) is never flattened here; `llm-grade run` refuses it with the reason.
present() { [ -e "$1" ] || [ -L "$1" ]; }
if ! present "$SUB/exercises/lesson_$LESSON" && ! present "$SUB/lesson_$LESSON" && [ ! -L "$SUB/exercises" ]; then
    FLAT="$(mktemp -d)"
    mkdir -p "$FLAT/lesson_$LESSON"
    cp -R -P "$SUB/." "$FLAT/lesson_$LESSON/" 2>/dev/null || true  # links stay links: the grader refuses them
    chmod -R a+rX "$FLAT"
    SUB="$FLAT"
fi
# Run from source/ so `graders` is imported from this zip's copy, whatever else is installed.
cd "$ROOT/source"
"$BIN/python" -m graders.engine.cli run --lesson "$LESSON" --submission "$SUB" --out "$ROOT/results" \\
    2> "$ROOT/results/stderr.txt"
status=$?
cat "$ROOT/results/stderr.txt" >&2
if [ ! -s "$ROOT/results/results.json" ]; then
    # The grader could not run (for example no lesson folder): zero, with the reason for the student.
    "$BIN/python" - "$ROOT/results" "$status" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
why = (out / "stderr.txt").read_text(errors="replace").strip() or f"the grader exited with status {sys.argv[2]}"
out.joinpath("results.json").write_text(json.dumps({"score": 0.0, "output": why[-2000:], "tests": []}, indent=2))
EOF
fi
exit 0
"""

README = """# Autograder for lesson @LESSON@ (@TITLE@)

Built by `llm-grade gradescope --lesson @LESSON@`. Upload this zip as a Gradescope
"Autograder" (Ubuntu base image). Layout:

- `setup.sh`: run once by Gradescope, as root. Installs Python 3.11 with apt-get if missing
  (Ubuntu 22.04 archive, else the deadsnakes PPA), makes `/autograder/venv` from the system
  `python3.11`, then `pip install torch==2.13.0` and `pip install -c constraints.txt -e source`.
  Set `TORCH_INDEX_URL` in it to the CPU wheel index from PyTorch's install page for the smaller CPU wheel.
- `run_autograder`: run for every submission. The zip a student's `make submit LESSON=@LESSON@` writes
  (repository layout plus `MANIFEST.json`) is checked against its manifest first: a missing, changed
  or unlisted file scores zero with that reason. It grades `/autograder/submission` (a repository
  root with `exercises/lesson_@LESSON@/`, a folder holding `lesson_@LESSON@/`, or the lesson's
  files uploaded bare) with `llm-grade run` and writes `/autograder/results/results.json`. If the
  grader cannot run at all, it writes a zero score with the reason. `AUTOGRADER_ROOT` and
  `LLMG_BIN` override `/autograder` and `/autograder/venv/bin` (for testing elsewhere).
- `source/`: the grading engine, the hidden tests and the reference solution. Never give it out.

Student code never runs in the grader's process: it runs in the sandboxed worker described in the
course README. Gradescope runs the autograder as root, so the worker starts in its own network,
mount and pid namespaces, with `source/`, the results folder and the submission folder hidden, and
then drops to the unprivileged uid 65534 (`nobody`) before any student code is imported. That drop
needs the venv's interpreter to be readable by uid 65534, which is why `setup.sh` builds the venv
from the system `python3.11` and makes it world-readable. The `sandbox:` line at the top of every
result says which protections were in force.
"""


class ExportError(Exception):
    """The autograder zip cannot be written (bad output path)."""


def _imported_lessons(folder: Path) -> set[tuple[str, str]]:
    """(top package, lesson folder) pairs that the graders in ``folder`` import, e.g. ("solutions_private", "lesson_03")."""
    found = set()
    for path in folder.rglob("*.py"):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if len(parts) > 1 and parts[0] in ("graders", "solutions_private") and parts[1].startswith("lesson_"):
                    found.add((parts[0], parts[1]))
    return found


def source_folders(lesson: lessons.Lesson, root: Path = REPO_ROOT) -> list[Path]:
    """Folders (relative to ``root``) that grading ``lesson`` needs, following graders' imports."""
    wanted = {("graders", lesson.dirname), ("solutions_private", lesson.dirname)}
    done: set[tuple[str, str]] = set()
    while wanted - done:
        top, name = sorted(wanted - done)[0]
        done.add((top, name))
        if top == "graders" and (root / top / name).is_dir():
            wanted |= _imported_lessons(root / top / name)
    extra = [Path("labkit")] if (root / "labkit").is_dir() else []  # the engine's lab checks copy it
    # The rubric reads each lab's public declaration from the instructor copy, never the submission's.
    declared = [Path("labs", n, "lab.toml") for t, n in sorted(done) if t == "graders" and (root / "labs" / n / "lab.toml").is_file()]
    return [Path("graders", "engine"), *extra] + [Path(t, n) for t, n in sorted(done) if (root / t / n).is_dir()] + declared


def _files(root: Path, rel: Path) -> list[Path]:
    base = root / rel
    if base.is_file():
        return [rel]
    return sorted(
        p.relative_to(root)
        for p in base.rglob("*")
        if p.is_file() and not p.is_symlink() and not SKIP_PARTS & set(p.relative_to(root).parts) and p.suffix != ".pyc"
    )


def _add(zf: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def build(lesson: lessons.Lesson, out: Path, root: Path = REPO_ROOT) -> list[str]:
    """Write the autograder zip for ``lesson`` to ``out``; return the names it holds."""
    if out.is_dir():
        raise ExportError(f"{out} is a folder: give the path of the .zip to write")
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist")
    rels = [Path("pyproject.toml"), Path("constraints.txt"), Path("conftest.py"), Path("graders", "__init__.py")]
    rels = [r for r in rels if (root / r).is_file()]
    for folder in source_folders(lesson, root):
        rels += _files(root, folder)
    text = {"@LESSON@": lesson.number, "@TITLE@": lesson.title}

    def fill(template: str) -> bytes:
        for key, value in text.items():
            template = template.replace(key, value)
        return template.encode()

    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        _add(zf, "setup.sh", fill(SETUP_SH), 0o755)
        _add(zf, "run_autograder", fill(RUN_AUTOGRADER), 0o755)
        _add(zf, "README.md", fill(README), 0o644)
        for rel in sorted(set(rels)):
            _add(zf, f"source/{rel.as_posix()}", (root / rel).read_bytes(), 0o644)
        names = zf.namelist()
    tmp.replace(out)
    return names


# --------------------------------------------------------------------------- the student's zip
MANIFEST = "MANIFEST.json"
MAX_MANIFEST_BYTES = 4 << 20
MAX_FILE_BYTES = 256 << 20
RESUBMIT = "run `make submit LESSON=NN` again and upload the new submissions/lesson_NN.zip unchanged"


def _listed_files(sub: Path, rel: str = "") -> list[str]:
    """Every regular file under ``sub`` (relative, posix), links refused with the reason."""
    found = []
    for name, kind in safepath.entries(sub, rel or "."):
        path = f"{rel}/{name}" if rel else name
        if kind == "dir":
            found += _listed_files(sub, path)
        elif kind == "file":
            found.append(path)
        else:
            raise safepath.UnsafePath(f"{path} is a {'symbolic link' if kind == 'link' else kind}, not a file")
    return found


def verify_manifest(sub: Path) -> str | None:
    """None when ``sub`` has no MANIFEST.json or matches it exactly; else the one-line reason (and the fix)."""
    try:
        if safepath.kind(sub, MANIFEST) == "missing":
            return None
        data = json.loads(safepath.read_text(sub, MANIFEST, MAX_MANIFEST_BYTES))
    except (safepath.UnsafePath, OSError, ValueError) as exc:
        return f"{MANIFEST} unreadable ({exc}): {RESUBMIT}"[:500]
    listed = data.get("files") if isinstance(data, dict) else None
    if not isinstance(listed, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in listed.values()):
        return f"{MANIFEST} has no {{path: {{sha256, bytes}}}} table under 'files': {RESUBMIT}"
    try:
        present = set(_listed_files(sub)) - {MANIFEST}
    except (safepath.UnsafePath, OSError) as exc:
        return f"the submission holds {exc}: {RESUBMIT}"[:500]
    problems = [f"{p} is missing" for p in sorted(set(listed) - present)]
    problems += [f"{p} is not in {MANIFEST}" for p in sorted(present - set(listed))]
    for path in sorted(set(listed) & present):
        try:
            digest = hashlib.sha256(safepath.read_bytes(sub, path, MAX_FILE_BYTES)).hexdigest()
        except (safepath.UnsafePath, OSError) as exc:
            problems.append(f"{path} unreadable ({exc})")
            continue
        if digest != listed[path]["sha256"]:
            problems.append(f"{path} changed after `make submit` (sha256 differs)")
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"the submission does not match its {MANIFEST}: {'; '.join(problems[:3])}{more}: {RESUBMIT}"


def _verify_main(sub: Path, results_dir: Path) -> int:
    """run_autograder's first step: on a mismatch write a zero results.json with the reason, exit 1."""
    why = verify_manifest(sub)
    if why is None:
        return 0
    results_dir.mkdir(parents=True, exist_ok=True)
    result = {"score": 0.0, "output": why, "tests": [], "extra_data": {"manifest": "mismatch"}}
    (results_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(why, file=sys.stderr)
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "verify":
        sys.exit("usage: python -m graders.engine.gradescope verify SUBMISSION RESULTS_DIR")
    sys.exit(_verify_main(Path(sys.argv[2]), Path(sys.argv[3])))
