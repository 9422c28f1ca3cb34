"""Plausible wrong implementations must lose points in the right tests, not only crashes.

Each mutant is the reference with one bug put in by text substitution, so the mutants
follow the reference when it changes (a vanished target fails loudly).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, SUBMISSIONS, failed_tests, make_submission, mutate

REFERENCE = (REPO / "solutions_private" / "lesson_03" / "attention.py").read_text()

PARITY = "Output and weights match torch SDPA"
CAUSAL_MASK = "causal_mask: bool, lower-triangular"
STABLE = "No NaN or inf, and the right answer, when scores are around 1e4"
FULLY_MASKED = "A query that may see no key"
GRADIENTS = "Under a causal mask, output t has zero gradient"
SPEED = "CPU speed"

# name: (old, new, tests that must fail)
MUTANTS = {
    "no-scaling": ("(q @ k.transpose(-2, -1)) / math.sqrt(d)", "(q @ k.transpose(-2, -1))", [PARITY, GRADIENTS]),
    "scale-by-d": ("/ math.sqrt(d)", "/ d", [PARITY, GRADIENTS]),
    "mask-off-by-one": (".tril()  # (T, T)", ".tril(-1)  # (T, T)", [CAUSAL_MASK]),
    "mask-upper-triangle": (".tril()  # (T, T)", ".triu()  # (T, T)", [CAUSAL_MASK]),
    "softmax-over-queries": ("torch.softmax(scores, dim=-1)", "torch.softmax(scores, dim=-2)", [PARITY, GRADIENTS]),
    "missing-transpose": ("q @ k.transpose(-2, -1)", "q @ k", [PARITY]),
    "mask-inverted": ("scores.masked_fill(~mask,", "scores.masked_fill(mask,", [PARITY, GRADIENTS]),
    "no-max-subtraction": (
        "torch.softmax(scores, dim=-1)",
        "scores.exp() / scores.exp().sum(dim=-1, keepdim=True)",
        [STABLE],
    ),
    "nan-on-fully-masked-row": (
        "        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)",
        "        pass",
        [FULLY_MASKED],
    ),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_loses_points(grade_lesson, tmp_path: Path, name: str):
    old, new, must_fail = MUTANTS[name]
    submission = make_submission(tmp_path / "sub", "03", {"attention.py": mutate(REFERENCE, old, new)})
    res = grade_lesson("03", submission)
    failed = failed_tests(res)
    assert res["score"] < res["max_score"]
    for prefix in must_fail:
        assert any(f.startswith(prefix) for f in failed), f"{name}: expected '{prefix}...' to fail; failed: {sorted(failed)}"
    print(f"{name}: {res['score']:g}/{res['max_score']:g}")


def test_looping_submission_loses_only_speed(grade_lesson):
    res = grade_lesson("03", SUBMISSIONS / "lesson_03_loop")
    failed = failed_tests(res)
    assert failed and all(f.startswith(SPEED) for f in failed), sorted(failed)
    speed = next(t for t in res["tests"] if t["name"].startswith(SPEED))
    assert "slower than torch SDPA" in speed["output"]
