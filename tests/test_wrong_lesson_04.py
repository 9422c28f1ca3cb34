"""Plausible wrong implementations of lesson 04 must lose points in the right tests, not only crash.

Each mutant is the reference with one bug put in by text substitution, so the mutants
follow the reference when it changes (a vanished target fails loudly). To keep this file
fast, each mutant is graded only on the hidden tests its bug concerns plus a few that must
still pass (``-k``), and the failures must be exactly the expected ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO, make_submission, mutate

REFERENCE = (REPO / "solutions_private" / "lesson_04" / "block.py").read_text()

HEADS = r"split_heads: "
MERGE = r"merge_heads: "
LN = r"LayerNorm matches nn\.LayerNorm"
MHA = r"MultiHeadAttention matches nn\.MultiheadAttention"
CAUSAL = r"By default, changing the inputs after position t"
MLP = r"MLP matches"
BLOCK = r"Block matches a Pre-LN block"
FLOW = r"Every parameter of a Block gets a finite, non-zero gradient"
GRADS = r"Block parameter gradients match"
ANY_CAUSAL = r".*\[float\d\d-causal\]$"
NOT_CAUSAL = r".*\[float\d\d-not-causal\]$"

PRE_LN = "        x = x + self.attn(self.ln_1(x), causal=causal)  # (B, T, C)\n        x = x + self.mlp(self.ln_2(x))  # (B, T, C)"
POST_LN = "        x = self.ln_1(x + self.attn(x, causal=causal))  # (B, T, C)\n        x = self.ln_2(x + self.mlp(x))  # (B, T, C)"

# name: (old, new, -k selection, the failures expected in it: each pattern must fail, nothing else may)
MUTANTS = {
    "missing-head-transpose": (
        "x.view(B, T, n_head, C // n_head).transpose(1, 2)", "x.reshape(B, n_head, T, C // n_head)",
        "split_heads or merge_heads or mha_parity or causality", [HEADS, MHA, CAUSAL],
    ),
    "merge-without-transpose": (
        "y.transpose(1, 2).contiguous().view(B, T, nh * hs)", "y.contiguous().view(B, T, nh * hs)",
        "split_heads or merge_heads or mha_parity", [MERGE, MHA],
    ),
    "scale-by-C": (
        "math.sqrt(k.size(-1))", "math.sqrt(self.n_embd)",
        "mha_parity or causality or gradients_match", [MHA, GRADS],
    ),
    "causal-mask-not-applied": (
        "att = att.masked_fill(~keep", "att.masked_fill(~keep",
        "mha_parity or causality", [MHA + ANY_CAUSAL, CAUSAL],
    ),
    "post-ln": (PRE_LN, POST_LN, "block_parity or gradients_match or causality", [BLOCK, GRADS]),
    "no-mlp-residual": (
        "x = x + self.mlp(self.ln_2(x))", "x = self.mlp(self.ln_2(x))", "block_parity or mlp_parity", [BLOCK],
    ),
    "causal-not-passed-to-attention": (
        "self.attn(self.ln_1(x), causal=causal)", "self.attn(self.ln_1(x))",
        "block_parity or causality", [BLOCK + NOT_CAUSAL],
    ),
    "layernorm-unbiased-variance": (
        "var = (xc * xc).mean(dim=-1, keepdim=True)", "var = x.var(dim=-1, keepdim=True)", "layernorm", [LN],
    ),
    "layernorm-eps-added-to-std": (
        "xc * torch.rsqrt(var + self.eps)", "xc / (var.sqrt() + self.eps)", "layernorm", [LN + r".*\[small-variance\]", LN],
    ),
    "layernorm-mean-of-squares-variance": (
        "var = (xc * xc).mean(dim=-1, keepdim=True)", "var = (x * x).mean(dim=-1, keepdim=True) - mean * mean",
        "layernorm", [LN + r".*\[large-offset\]$"],
    ),
    "exact-gelu": ('approximate="tanh")  # (B, T, 4C)', ")  # (B, T, 4C)", "mlp_parity", [MLP]),
    "layernorm-weight-detached": (
        "* self.weight  # (..., C)", "* self.weight.detach()  # (..., C)",
        "gradient_flow or layernorm or block_parity", [FLOW],
    ),
    "layernorm-statistics-detached": (
        "mean = x.mean(dim=-1, keepdim=True)", "mean = x.mean(dim=-1, keepdim=True).detach()",
        "gradient_flow or gradients_match or block_parity", [GRADS],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_loses_points_in_the_right_tests(grade_lesson, tmp_path: Path, name: str):
    old, new, keyword, must_fail = MUTANTS[name]
    assert REFERENCE.count(old) == 1, f"{name}: the mutation target must occur exactly once in the reference"
    submission = make_submission(tmp_path / "sub", "04", {"block.py": mutate(REFERENCE, old, new)})
    res = grade_lesson("04", submission, keyword=keyword)
    ran = [t for t in res["tests"] if not t["output"].startswith("no verdict") and t["max_score"] > 0]  # -k leaves the rest
    failed = {t["name"]: t["output"] for t in ran if t["score"] < t["max_score"]}
    for pattern in must_fail:
        assert any(re.match(pattern, f) for f in failed), f"{name}: expected {pattern!r} to fail; failed: {sorted(failed)}"
    unexpected = sorted(f for f in failed if not any(re.match(p, f) for p in must_fail))
    assert not unexpected, f"{name}: tests that should have passed failed: {unexpected}"
    if name == "exact-gelu":
        assert all("tanh approximation" in out for out in failed.values()), failed
    if name == "layernorm-weight-detached":
        assert all("ln_1.weight, ln_2.weight" in out for out in failed.values()), failed
    lost = sum(t["max_score"] - t["score"] for t in ran)
    print(f"{name}: lost {lost:g}/{sum(t['max_score'] for t in ran):g} points of the selected tests; failed {sorted(failed)}")
