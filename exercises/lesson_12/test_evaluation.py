"""Visible tests for lesson 12. Run: .venv/bin/pytest exercises/lesson_12 (or make check LESSON=12)

Hand-computed cases for every function, and the bootstrap against scipy.stats.bootstrap itself. The
hidden graders use more cases: the official SQuAD script, exact fractions for pass@k up to n = 2000,
scipy's bootstrap and permutation_test, and scikit-learn's CountVectorizer (see the lesson).
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats

from exercises.lesson_12.evaluation import (
    bootstrap_ci,
    contamination,
    exact_match,
    f1_score,
    normalize_answer,
    paired_bootstrap_ci,
    paired_permutation_test,
    pass_at_k,
    word_ngrams,
)  # fmt: skip

pytestmark = pytest.mark.lesson_12


def test_normalize_answer_squad_cases():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("  An  apple, a day ") == "apple day"
    assert normalize_answer("U.S.A.") == "usa", "punctuation is deleted, not replaced by a space"
    assert normalize_answer("Theatre") == "theatre", "articles are whole words only"
    assert normalize_answer("the") == ""


def test_em_f1_small_cases_and_empty_rule():
    em = exact_match("The Eiffel Tower!", ["eiffel tower"])
    assert type(em) is float and em == 1.0, f"EM is the Python float 1.0 here, got {em!r}"
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    f1 = f1_score("Paris, France", ["Paris"])
    assert type(f1) is float and abs(f1 - 2 / 3) < 1e-12, f"P = 1/2, R = 1: F1 = 2/3, got {f1}"
    assert f1_score("cat", ["dog", "the cat"]) == 1.0, "the maximum over the golds"
    assert f1_score("cat cat", ["cat"]) == pytest.approx(2 / 3), (
        "repeated tokens count as often as both sides have them"
    )
    # the empty-answer rule (SQuAD v2.0's): both empty -> 1.0, one empty -> 0.0
    assert f1_score("the", ["the"]) == 1.0 and exact_match("the", ["the"]) == 1.0
    assert f1_score("", ["Paris"]) == 0.0 and f1_score("the cat", ["an"]) == 0.0


def exact(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_small_cases():
    value = pass_at_k(10, 3, 1)
    assert type(value) is float and abs(value - 0.3) < 1e-12, "pass@1 = c / n"
    for n, c, k in ((10, 3, 2), (10, 3, 5), (20, 1, 10), (5, 2, 3)):
        assert abs(pass_at_k(n, c, k) - exact(n, c, k)) < 1e-12, f"pass_at_k({n}, {c}, {k})"
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 7, 4) == 1.0, "n - c < k: every 4 of 10 samples hold a passing one"
    assert abs(pass_at_k(10, 6, 4) - (1 - 1 / math.comb(10, 4))) < 1e-12, "n - c = k: one failing subset"


def test_pass_at_k_large_n_is_finite():
    value = pass_at_k(2000, 5, 1000)
    assert math.isfinite(value) and abs(value - exact(2000, 5, 1000)) < 1e-12, (
        f"pass_at_k(2000, 5, 1000) = {value}: C(2000, 1000) overflows a float, use the product form"
    )


def test_bootstrap_ci_equals_scipy():
    x = np.random.default_rng(0).gamma(2.0, 1.0, 30)
    low, high = bootstrap_ci(x.tolist(), "mean", n_resamples=999, confidence_level=0.9, rng=3)
    assert type(low) is float and type(high) is float and low < x.mean() < high
    ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=999, confidence_level=0.9, method="percentile",
                                rng=np.random.default_rng(3)).confidence_interval  # fmt: skip
    assert abs(low - ref.low) < 1e-9 and abs(high - ref.high) < 1e-9, (
        f"({low:.6f}, {high:.6f}) vs scipy ({ref.low:.6f}, {ref.high:.6f}): draw rng.integers(0, n, size=(n_resamples, n)) in one call"
    )


def test_paired_bootstrap_and_permutation_small_cases():
    a, b = [1.0] * 6, [0.0] * 6
    p = paired_permutation_test(a, b, n_resamples=9999, rng=0)
    assert type(p) is float and abs(p - 2 / 2**6) < 1e-12, f"6 wins of 6: exact p = 2/64, got {p}"
    assert paired_permutation_test([0.5, 1.0, 0.0], [0.5, 1.0, 0.0], rng=0) == 1.0
    low, high = paired_bootstrap_ci([1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], n_resamples=999, rng=1)
    assert 0.0 <= low <= 0.5 <= high <= 1.0, f"the mean difference is 0.5; CI ({low}, {high})"


def test_contamination_small_case():
    assert word_ngrams("The cat sat", 2) == {("the", "cat"), ("cat", "sat")}
    train = ["the quick brown fox", "jumps over the lazy dog"]
    test = ["a quick brown fox", "fox jumps over", "lazy dog", "the quick red fox"]
    out = contamination(test, train, n=3)
    assert out["overlap"] == [0.5, 0.0, 0.0, 0.0], (
        "per item: the share of its distinct 3-grams in one training document"
    )
    assert out["contaminated"] == [True, False, False, False] and out["contaminated_fraction"] == 0.25
