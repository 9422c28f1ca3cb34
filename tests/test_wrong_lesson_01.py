"""Plausible wrong lesson 01 tokenizers must lose points in the right tests, not only crash.

Each mutant is the reference with one bug put in by text substitution, so the mutants follow
the reference when it changes (a vanished target fails loudly). The mutants are graded without
the speed test (it only re-times the trainer); the slow submission is graded in full.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, SUBMISSIONS, failed_tests, make_submission, mutate

REFERENCE = (REPO / "solutions_private" / "lesson_01" / "bpe.py").read_text()

MERGE_PAIR = "merge_pair:"
SMALL = "train_bpe: exact merges on a small corpus"
GREEDY = "train_bpe on the fixed corpus: every merge is a most frequent pair"
EXACT = "train_bpe on the fixed corpus: the merge list equals the reference's"
ENCODE = "encode: the same ids as Hugging Face's"
DECODE = "decode: joins the tokens' bytes"
ROUND_TRIP = "Round trip:"
COMPRESSION = "Compression:"
SPEED = "Training speed"

# Counts a run of three equal tokens once, as if only what a merge replaces counted ('aaa' -> 1).
NON_OVERLAPPING_PAIRS = '''

def _pairs(ids):
    pairs, i = [], 0
    while i < len(ids) - 1:
        pairs.append((ids[i], ids[i + 1]))
        i += 2 if i + 2 < len(ids) and ids[i] == ids[i + 1] == ids[i + 2] else 1
    return pairs
'''

# name: (old, new, tests that must fail, tests that must pass)
MUTANTS = {
    "tie-break-reversed": (
        "min(counts, key=lambda p: (-counts[p], p))",
        "max(counts, key=lambda p: (counts[p], p))",
        [SMALL, EXACT],
        [GREEDY, ENCODE, DECODE, ROUND_TRIP, COMPRESSION],
    ),
    "overlaps-counted-once": (
        "for pair in pairwise(ids):",
        "for pair in _pairs(ids):",
        [SMALL, GREEDY, EXACT],
        [ENCODE, DECODE, ROUND_TRIP],
    ),
    "decode-per-token": (
        '    data = b"".join(vocab[i] for i in ids)\n    return data.decode("utf-8", errors="replace")',
        '    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)',
        [DECODE, ROUND_TRIP],
        [SMALL, EXACT, ENCODE, COMPRESSION],
    ),
    "new-id-off-by-one": (
        "for new_id in range(256, vocab_size):",
        "for new_id in range(255, vocab_size - 1):",
        [SMALL, GREEDY, EXACT],
        [ENCODE, DECODE, ROUND_TRIP],
    ),
    "encode-by-frequency-not-rank": (
        "pair = min(pairwise(word_ids), key=lambda p: ranks.get(p, math.inf))",
        "pair = max(pairwise(word_ids), key=lambda p: (p in ranks, Counter(pairwise(word_ids))[p]))",
        [ENCODE],
        [SMALL, EXACT, DECODE, ROUND_TRIP],
    ),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_loses_points(grade_lesson, tmp_path: Path, name: str):
    old, new, must_fail, must_pass = MUTANTS[name]
    source = mutate(REFERENCE, old, new)
    if name == "overlaps-counted-once":
        source += NON_OVERLAPPING_PAIRS
    submission = make_submission(tmp_path / "sub", "01", {"bpe.py": source})
    res = grade_lesson("01", submission, keyword="not training_speed")
    failed = failed_tests(res)
    assert res["score"] < res["max_score"]
    for prefix in must_fail:
        assert any(f.startswith(prefix) for f in failed), f"{name}: expected '{prefix}...' to fail; failed: {sorted(failed)}"
    for prefix in must_pass:
        assert not any(f.startswith(prefix) for f in failed), f"{name}: '{prefix}...' should pass; failed: {sorted(failed)}"
    print(f"{name}: {res['score']:g}/{res['max_score']:g}, failed: {sorted(failed)}")


def test_slow_trainer_loses_only_speed(grade_lesson):
    res = grade_lesson("01", SUBMISSIONS / "lesson_01_slow")
    failed = failed_tests(res)
    assert failed and all(f.startswith(SPEED) for f in failed), sorted(failed)
    speed = next(t for t in res["tests"] if t["name"].startswith(SPEED))
    assert "slower than the reference trainer" in speed["output"]
    print(f"slow: {res['score']:g}/{res['max_score']:g}; {speed['output']}")
