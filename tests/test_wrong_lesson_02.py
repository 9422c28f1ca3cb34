"""Plausible wrong implementations of lesson 02 must lose points in the right tests.

Each mutant is the reference with one bug put in by text substitution, so the mutants follow
the reference when it changes (a vanished target fails loudly). Each is graded on the hidden
tests; mutants of independent functions share a grading run to keep this file fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, failed_tests, make_submission, mutate

REFERENCE = (REPO / "solutions_private" / "lesson_02" / "language_model.py").read_text()

CE_PARITY = "cross_entropy matches F.cross_entropy"
IGNORE = "ignore_index: ignored positions count neither"
ALL_IGNORED = "Every target ignored: NaN"
STABLE = "Stable for logits around 1e4"
CE_GRAD = "Gradient w.r.t. the logits matches autograd"
PPL = "perplexity = exp(mean cross-entropy)"
EMB_FORWARD = "Embeddings(idx) = wte[idx] + wpe[0..T-1]"
EMB_GRAD = "Gradients reach wte at the used ids"
TOO_LONG = "T == block_size works"
BIGRAM = "BigramLM: logits = table[idx]"
TEMP = "sample draws from softmax(logits / T)"
BATCHED = "Batched logits (B, V)"
GREEDY = "Temperature 0 is greedy"
SEED = "Same seed, same samples"

# Hidden tests by the functions they exercise (name prefixes); the GPU test is left out (skipped without CUDA).
GROUPS = {
    "cross_entropy": (CE_PARITY, IGNORE, ALL_IGNORED, STABLE, CE_GRAD, PPL, "BigramLM"),
    "Embeddings": ("Embeddings", EMB_GRAD, TOO_LONG),
    "sample": (TEMP, BATCHED, GREEDY),
    "seed": (SEED,),  # at temperature 1 on 1-D logits, so the other sample mutants pass it
}
GPU = "GPU:"

# name: (group, old, new, tests that must fail, tests that must pass). "PREFIX [param]" names one case.
MUTANTS = {
    "mean-over-all-positions": (
        "cross_entropy", "return nll.sum() / keep.sum()", "return nll.sum() / keep.numel()",
        [IGNORE, ALL_IGNORED, CE_GRAD, PPL, BIGRAM], [CE_PARITY, STABLE],
    ),
    "no-max-subtraction": (
        "cross_entropy",
        "logz = m.squeeze(-1) + (logits - m).exp().sum(dim=-1).log()", "logz = logits.exp().sum(dim=-1).log()",
        [STABLE], [CE_PARITY, IGNORE, CE_GRAD, PPL, BIGRAM],
    ),
    "log-of-softmax": (
        "cross_entropy",
        "nll = torch.where(keep, logz - picked, 0.0)",
        "nll = torch.where(keep, -torch.softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1).log(), 0.0)",
        [STABLE], [CE_PARITY, IGNORE, PPL],
    ),
    "no-ignore-index": (
        "cross_entropy", "keep = targets != ignore_index", "keep = torch.ones_like(targets, dtype=torch.bool)",
        [IGNORE, ALL_IGNORED, CE_GRAD, PPL, BIGRAM], [CE_PARITY, STABLE],
    ),
    "perplexity-exp-of-sum": (
        "cross_entropy",
        "return cross_entropy(logits, targets, ignore_index).exp()",
        "return (cross_entropy(logits, targets, ignore_index) * (targets != ignore_index).sum()).exp()",
        [PPL], [CE_PARITY, IGNORE, ALL_IGNORED, STABLE, CE_GRAD, BIGRAM],
    ),
    "position-by-token-id": (
        "Embeddings", "pos_emb = self.wpe(pos)", "pos_emb = self.wpe(idx)",
        [f"{EMB_FORWARD} [vocab-smaller-than-block]", EMB_GRAD], ["Embeddings has exactly"],
    ),
    "positions-off-by-one": (
        "Embeddings", "torch.arange(T, device=idx.device)", "torch.arange(1, T + 1, device=idx.device)",
        [f"{EMB_FORWARD} [T-equals-block]", f"{EMB_FORWARD} [T-shorter-than-block]", EMB_GRAD, TOO_LONG],
        ["Embeddings has exactly"],
    ),
    "block-size-check-off-by-one": (
        "Embeddings", "if T > self.block_size:", "if T >= self.block_size:",
        [f"{EMB_FORWARD} [T-equals-block]", TOO_LONG], [f"{EMB_FORWARD} [T-shorter-than-block]", EMB_GRAD],
    ),
    "temperature-multiplied": (
        "sample", "logits.float() / temperature", "logits.float() * temperature",
        [f"{TEMP} [0.5]", f"{TEMP} [2.0]"], [f"{TEMP} [1.0]", BATCHED, GREEDY],
    ),
    "no-temperature": (
        "sample", "logits.float() / temperature", "logits.float()",
        [f"{TEMP} [0.5]", f"{TEMP} [2.0]"], [f"{TEMP} [1.0]", BATCHED, GREEDY],
    ),
    "always-argmax": ("sample", "if temperature == 0:", "if True:", [TEMP, BATCHED, SEED], [GREEDY]),
    "softmax-over-batch-axis": (
        "sample",
        "torch.softmax(logits.float() / temperature, dim=-1)", "torch.softmax(logits.float() / temperature, dim=0)",
        [BATCHED], [TEMP, GREEDY],
    ),
    "multinomial-on-logits": (
        "sample", "torch.multinomial(probs,", "torch.multinomial(logits.float().clamp(min=0) / temperature,",
        [TEMP, BATCHED], [GREEDY],
    ),
    "seed-ignored": (
        "seed", "generator = torch.Generator(device=logits.device).manual_seed(seed)", "pass",
        [SEED], [TEMP, BATCHED, GREEDY],
    ),
}  # fmt: skip

# A grading run costs several seconds, so mutants of different groups share a submission. Each
# group's tests exercise only what that group's mutant breaks: every mutant's must-pass list and
# the full pass of the groups without a mutant (but for the failures a mutant declares there, such
# as always-argmax on the seed test) check that the verdicts do not mix.
BUNDLES = [
    ("mean-over-all-positions", "position-by-token-id", "temperature-multiplied"),
    ("no-max-subtraction", "positions-off-by-one", "no-temperature"),
    ("no-ignore-index", "block-size-check-off-by-one", "always-argmax"),
    ("perplexity-exp-of-sum", "softmax-over-batch-axis", "seed-ignored"),
    ("log-of-softmax", "multinomial-on-logits"),
]


def matches(name: str, spec: str) -> bool:
    """``spec`` is a test-name prefix, optionally followed by `` [param]`` naming one parametrised case."""
    prefix, _, param = spec.partition(" [")
    return name.startswith(prefix) and (not param or name.endswith(f"[{param}"))


def group_of(name: str) -> str | None:
    if name.startswith(GPU):
        return None
    owners = [g for g, prefixes in GROUPS.items() if any(name.startswith(p) for p in prefixes)]
    assert len(owners) == 1, f"hidden test {name!r} belongs to groups {owners}: update GROUPS"
    return owners[0]


def test_bundles_cover_every_mutant_once():
    listed = [m for bundle in BUNDLES for m in bundle]
    assert sorted(listed) == sorted(MUTANTS), "every mutant in exactly one bundle"
    for bundle in BUNDLES:
        groups = [MUTANTS[m][0] for m in bundle]
        assert len(set(groups)) == len(groups), f"{bundle}: at most one mutant per group"
    for name, (_, old, *_rest) in MUTANTS.items():
        assert REFERENCE.count(old) == 1, f"{name}: the mutation target must occur exactly once"


@pytest.mark.parametrize("bundle", BUNDLES, ids=["+".join(b) for b in BUNDLES])
def test_mutants_lose_points(grade_lesson, tmp_path: Path, bundle: tuple[str, ...]):
    source = REFERENCE
    for name in bundle:
        source = mutate(source, *MUTANTS[name][1:3])
    res = grade_lesson("02", make_submission(tmp_path / "sub", "02", {"language_model.py": source}))
    tests = [t for t in res["tests"] if group_of(t["name"]) is not None]
    failed = failed_tests(res)
    mutated = {MUTANTS[name][0]: name for name in bundle}
    expected = [spec for name in bundle for spec in MUTANTS[name][3]]
    for name in bundle:
        _, _, _, must_fail, must_pass = MUTANTS[name]
        for spec in must_fail:
            assert any(matches(f, spec) for f in failed), f"{name}: expected '{spec}' to fail; failed: {sorted(failed)}"
        for spec in must_pass:
            assert any(matches(t["name"], spec) for t in tests), f"{name}: no hidden test matches '{spec}'"
            wrong = [f for f in failed if matches(f, spec) and not any(matches(f, e) for e in expected)]
            assert not wrong, f"{name}: expected '{spec}' to pass; failed: {wrong}"
    for t in tests:
        group = group_of(t["name"])
        if group in mutated or any(matches(t["name"], spec) for spec in expected):
            continue
        assert t["name"] not in failed, f"{t['name']!r} failed, but no mutant in {bundle} touches {group}: {t['output']}"
    for group, name in mutated.items():
        mine = [t for t in tests if group_of(t["name"]) == group or any(matches(t["name"], s) for s in MUTANTS[name][3])]
        lost = sum(t["max_score"] - t["score"] for t in mine)
        print(f"{name}: lost {lost:g}/{res['max_score']:g}")
