"""Hostile submissions score zero, and the run still completes with every result written.

All of them are graded once, in one grading server (:func:`graders.engine.server.grade_many`),
by module-scoped fixtures; the tests then check each one's results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graders.engine import lessons
from graders.engine.server import GradingServer, grade_many
from tests.conftest import REPO, make_submission

# The first test's time includes grading all of them (pytest-timeout counts fixture set-up).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

STUB = (REPO / "exercises" / "lesson_03" / "attention.py").read_text()

# Wrong-but-well-formed answers: right shapes and dtypes, wrong values.
GARBAGE = '''
import torch

def causal_mask(seq_len, device=None):
    return torch.ones(seq_len, seq_len, dtype=torch.bool)

def scaled_dot_product_attention(q, k, v, mask=None):
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    return (torch.zeros(*batch, q.shape[-2], v.shape[-1], dtype=q.dtype),
            torch.zeros(*batch, q.shape[-2], k.shape[-2], dtype=q.dtype))
'''

HOSTILE = {
    "sys-exit-at-import": "import sys\nsys.exit(0)\n" + GARBAGE,
    "os-exit-at-import": "import os\nos._exit(0)\n" + GARBAGE,
    "os-exit-at-call": GARBAGE.replace("    batch = torch.broadcast", "    import os; os._exit(1)\n    batch = torch.broadcast")
    .replace("    return torch.ones(seq_len", "    import os; os._exit(1)\n    return torch.ones(seq_len"),
    "infinite-loop-at-call": GARBAGE.replace("    batch = torch.broadcast", "    while True: pass\n    batch = torch.broadcast")
    .replace("    return torch.ones(seq_len", "    while True: pass\n    return torch.ones(seq_len"),
    "memory-hog-at-import": "hog = bytearray(64 << 30)\n" + GARBAGE,
    "patched-asserts": (
        "import torch, torch.testing, math, builtins\n"
        "torch.allclose = lambda *a, **k: True\n"
        "torch.equal = lambda *a, **k: True\n"
        "torch.testing.assert_close = lambda *a, **k: None\n"
        "math.isclose = lambda *a, **k: True\n"
        + GARBAGE
    ),
    "always-equal-tensor": GARBAGE.replace(
        "import torch\n",
        "import torch\nclass Eq(torch.Tensor):\n    def __eq__(self, o): return True\n"
        "    def __ne__(self, o): return False\n",
    ).replace("return (torch.zeros(", "return (Eq(2), torch.zeros(").replace(
        "    return torch.ones(seq_len, seq_len, dtype=torch.bool)", "    return torch.ones(seq_len, seq_len, dtype=torch.bool).as_subclass(Eq)"
    ),
    "unpicklable-return": GARBAGE.replace("def causal_mask(seq_len, device=None):\n    return", "def causal_mask(seq_len, device=None):\n    return lambda: 0 or"),
}


FORCED_PASS = (
    "import pytest\n"
    "@pytest.hookimpl(wrapper=True)\n"
    "def pytest_runtest_makereport(item, call):\n"
    "    report = yield\n"
    "    report.outcome = 'passed'\n"
    "    return report\n"
)
REFERENCE = REPO / "solutions_private" / "lesson_03" / "attention.py"
# Submissions that call nothing slowly: graded with the default call timeout.
TRICKS = {
    "conftest-and-sitecustomize": {
        "attention.py": STUB,
        "conftest.py": FORCED_PASS,
        "sitecustomize.py": "import torch\ntorch.allclose = lambda *a, **k: True\n",
        "usercustomize.py": "raise SystemExit(0)\n",
        "evil.pth": "import os; os._exit(0)\n",
        "pytest.ini": "[pytest]\naddopts = -p no:terminal\n",
    },
    "reads-the-reference": {"attention.py": f"exec(open({str(REFERENCE)!r}).read())\n"},  # knows the instructor tree
    "missing-module": {"other.py": "x = 1\n"},
}


def _grade_all(root: Path, server: GradingServer, cases: dict[str, dict[str, str]], **kwargs) -> dict[str, dict]:
    """Every case graded in one grade_many call; results.json on disk checked against the returned results."""
    items = []
    for name, files in cases.items():
        submission = make_submission(root / name / "sub", "03", files)
        if name == "conftest-and-sitecustomize":
            (submission / "conftest.py").write_text(FORCED_PASS)
        items.append((submission, root / name / "out"))
    graded = grade_many(lessons.load("03"), items, server=server, **kwargs)
    for (_, out), res in zip(items, graded, strict=True):
        assert json.loads((out / "results.json").read_text()) == res
    return dict(zip(cases, graded, strict=True))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, grading_server: GradingServer) -> dict[str, dict]:
    cases = {name: {"attention.py": source} for name, source in HOSTILE.items()}
    return _grade_all(tmp_path_factory.mktemp("hostile"), grading_server, cases, call_timeout=5)


@pytest.fixture(scope="module")
def tricks(tmp_path_factory: pytest.TempPathFactory, grading_server: GradingServer) -> dict[str, dict]:
    return _grade_all(tmp_path_factory.mktemp("tricks"), grading_server, TRICKS)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_submission_scores_zero(hostile: dict[str, dict], name: str):
    res = hostile[name]
    assert res["score"] == 0, {t["name"]: t["output"] for t in res["tests"] if t["score"]}
    counted = [t for t in res["tests"] if t["max_score"] > 0]
    assert len(counted) >= 20 and all(t["status"] == "failed" and t["output"] for t in counted)


def test_conftest_and_sitecustomize_never_take_effect(tricks: dict[str, dict]):
    res = tricks["conftest-and-sitecustomize"]
    assert res["score"] == 0
    assert all("NotImplementedError" in t["output"] for t in res["tests"] if t["max_score"] > 0)


def test_reading_the_reference_is_blocked(tricks: dict[str, dict]):
    """A submission that knows where the instructor's tree is tries to load the reference."""
    res = tricks["reads-the-reference"]
    if "instructor tree hidden on" in res["output"]:
        assert res["score"] == 0
        # Denied (a deny-list sandbox) or not there at all (an allow-list file system)
        assert any(e in res["tests"][0]["output"] for e in ("PermissionError", "FileNotFoundError")), res["tests"][0]
    else:  # degraded sandbox (not root, or no unshare): it must say so
        assert "instructor tree hidden off" in res["output"] or "weak" in res["output"]


def test_missing_module_file_fails_fast_with_reason(tricks: dict[str, dict]):
    res = tricks["missing-module"]
    assert res["score"] == 0
    assert all("no regular file lesson_03/attention.py" in t["output"] for t in res["tests"] if t["max_score"] > 0)
