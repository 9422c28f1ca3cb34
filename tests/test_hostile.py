"""Hostile submissions score zero, and the run still completes with every result written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, make_submission

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


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_submission_scores_zero(grade_lesson, tmp_path: Path, name: str):
    submission = make_submission(tmp_path / "sub", "03", {"attention.py": HOSTILE[name]})
    res = grade_lesson("03", submission, call_timeout=5)
    assert res["score"] == 0, {t["name"]: t["output"] for t in res["tests"] if t["score"]}
    counted = [t for t in res["tests"] if t["max_score"] > 0]
    assert len(counted) >= 20 and all(t["status"] == "failed" and t["output"] for t in counted)


def test_conftest_and_sitecustomize_never_take_effect(grade_lesson, tmp_path: Path):
    forced_pass = (
        "import pytest\n"
        "@pytest.hookimpl(wrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    report = yield\n"
        "    report.outcome = 'passed'\n"
        "    return report\n"
    )
    files = {
        "attention.py": STUB,
        "conftest.py": forced_pass,
        "sitecustomize.py": "import torch\ntorch.allclose = lambda *a, **k: True\n",
        "usercustomize.py": "raise SystemExit(0)\n",
        "evil.pth": "import os; os._exit(0)\n",
        "pytest.ini": "[pytest]\naddopts = -p no:terminal\n",
    }
    submission = make_submission(tmp_path / "sub", "03", files)
    (submission / "conftest.py").write_text(forced_pass)
    res = grade_lesson("03", submission)
    assert res["score"] == 0
    assert all("NotImplementedError" in t["output"] for t in res["tests"] if t["max_score"] > 0)


def test_reading_the_reference_is_blocked(grade_lesson, tmp_path: Path):
    """A submission that knows where the instructor's tree is tries to load the reference."""
    reference = REPO / "solutions_private" / "lesson_03" / "attention.py"
    thief = f"exec(open({str(reference)!r}).read())\n"
    res = grade_lesson("03", make_submission(tmp_path / "sub", "03", {"attention.py": thief}))
    if "instructor tree hidden on" in res["output"]:
        assert res["score"] == 0
        assert "PermissionError" in res["tests"][0]["output"]
    else:  # degraded sandbox (not root, or no unshare): it must say so
        assert "instructor tree hidden off" in res["output"] or "weak" in res["output"]


def test_missing_module_file_fails_fast_with_reason(grade_lesson, tmp_path: Path):
    res = grade_lesson("03", make_submission(tmp_path / "sub", "03", {"other.py": "x = 1\n"}))
    assert res["score"] == 0
    assert all("no regular file lesson_03/attention.py" in t["output"] for t in res["tests"] if t["max_score"] > 0)
