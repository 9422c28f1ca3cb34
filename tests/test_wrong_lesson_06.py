"""Plausible wrong RoPE implementations must lose points in the right tests, not only crashes.

Each mutant is the reference with one bug put in by text substitution (one or more
replacements), so the mutants follow the reference when it changes (a vanished target
fails loudly).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, failed_tests, make_submission, mutate

REFERENCE = (REPO / "solutions_private" / "lesson_06" / "rope.py").read_text()

ROTATE_HALF = "rotate_half: equals transformers'"
COS_SIN = "cos/sin: match transformers' LlamaRotaryEmbedding"
BUFFERS = "cos/sin cache: registered buffers"
RANGE = "cos/sin cache: every position in [0, max_seq_len) works"
APPLY = "apply_rotary: matches transformers' apply_rotary_pos_emb"
GRADIENTS = "apply_rotary: gradients"
RELATIVE = "Relative position"
NORMS = "Norm preservation"

# name: ([(old, new), ...], tests that must fail, tests that must pass)
MUTANTS = {
    # GPT-J / RoFormer layout, consistent in rotate_half and the table: still a rotation, so the
    # properties hold, but it is not transformers' Llama convention.
    "interleaved-gptj": (
        [
            ("x1, x2 = x.chunk(2, dim=-1)", "x1, x2 = x[..., 0::2], x[..., 1::2]"),
            ("return torch.cat((-x2, x1), dim=-1)", "return torch.stack((-x2, x1), dim=-1).flatten(-2)"),
            ("emb = torch.cat((freqs, freqs), dim=-1)", "emb = freqs.repeat_interleave(2, dim=-1)"),
        ],
        [ROTATE_HALF, COS_SIN, APPLY],
        [RELATIVE, NORMS],
    ),
    "rotate-half-sign": (
        [("torch.cat((-x2, x1), dim=-1)", "torch.cat((x2, -x1), dim=-1)")],
        [ROTATE_HALF, APPLY, GRADIENTS],
        [RELATIVE, NORMS],
    ),
    "rotate-half-no-minus": (
        [("torch.cat((-x2, x1), dim=-1)", "torch.cat((x2, x1), dim=-1)")],
        [ROTATE_HALF, APPLY, RELATIVE, NORMS],
        [],
    ),
    "exponent-i-over-d": (
        [("torch.arange(0, head_dim, 2, dtype=torch.float64)", "torch.arange(0, head_dim // 2, dtype=torch.float64)")],
        [COS_SIN, BUFFERS],
        [APPLY, RELATIVE, NORMS],
    ),
    "positive-exponent": (
        [("inv_freq = 1.0 / base ** (", "inv_freq = base ** (")],
        [COS_SIN, BUFFERS],
        [APPLY],
    ),
    "positions-ignored": (
        [
            (
                "return self.cos_cached[positions], self.sin_cached[positions]",
                "return self.cos_cached[: positions.shape[-1]], self.sin_cached[: positions.shape[-1]]",
            )
        ],
        [COS_SIN, BUFFERS],
        [APPLY],
    ),
    "cos-sin-swapped": (
        [
            ("q_rot = q * cos + rotate_half(q) * sin", "q_rot = q * sin + rotate_half(q) * cos"),
            ("k_rot = k * cos + rotate_half(k) * sin", "k_rot = k * sin + rotate_half(k) * cos"),
        ],
        [APPLY, GRADIENTS],
        [COS_SIN, RELATIVE, NORMS],
    ),
    # Keys turned the other way: scores depend on m + n, yet every vector keeps its norm.
    "key-rotated-backwards": (
        [("k_rot = k * cos + rotate_half(k) * sin", "k_rot = k * cos - rotate_half(k) * sin")],
        [APPLY, GRADIENTS, RELATIVE],
        [COS_SIN, NORMS],
    ),
    "cache-not-a-buffer": (
        [
            ('self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)', "self.cos_cached = emb.cos().to(dtype)"),
            ('self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)', "self.sin_cached = emb.sin().to(dtype)"),
        ],
        [BUFFERS],
        [COS_SIN, APPLY, RELATIVE, NORMS],
    ),
    "no-range-check": (
        [("if positions.numel() and (", "if False and (")],
        [RANGE],
        [COS_SIN, BUFFERS, APPLY, RELATIVE, NORMS],
    ),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_loses_points(grade_lesson, tmp_path: Path, name: str):
    edits, must_fail, must_pass = MUTANTS[name]
    source = REFERENCE
    for old, new in edits:
        source = mutate(source, old, new)
    res = grade_lesson("06", make_submission(tmp_path / "sub", "06", {"rope.py": source}))
    failed = failed_tests(res)
    assert res["score"] < res["max_score"]
    for prefix in must_fail:
        assert any(f.startswith(prefix) for f in failed), f"{name}: expected '{prefix}...' to fail; failed: {sorted(failed)}"
    for prefix in must_pass:
        assert not any(f.startswith(prefix) for f in failed), f"{name}: '{prefix}...' should pass; failed: {sorted(failed)}"
    print(f"{name}: {res['score']:g}/{res['max_score']:g}, failed: {sorted(failed)}")
