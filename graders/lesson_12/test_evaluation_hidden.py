"""Hidden graders for lesson 12. They run in the grader's process; student code only in the worker.

References, never a copy of the course's reference:
- EM / F1: the official SQuAD v2.0 evaluation script's ``normalize_answer``, ``compute_exact`` and
  ``compute_f1`` (embedded below as published; no installed library ships them), max over the golds;
- pass@k: exact rational arithmetic, ``1 - Fraction(comb(n - c, k), comb(n, k))``;
- bootstrap: ``scipy.stats.bootstrap(..., method="percentile", rng=np.random.default_rng(seed))``,
  also with ``paired=True``;
- the paired test: ``scipy.stats.permutation_test(..., permutation_type="samples", n_resamples=np.inf)``
  (exact), the closed form ``2 / 2**n`` and ``scipy.stats.binomtest`` (the sign test, which the sign-flip
  test equals when every difference is -1, 0 or +1);
- contamination: scikit-learn's ``CountVectorizer(ngram_range=(n, n), token_pattern=r"\\S+")`` analyzer
  and vocabulary.
"""

from __future__ import annotations

import collections
import math
import re
import string
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats
from sklearn.feature_extraction.text import CountVectorizer

from graders.lesson_12.bindings import Lesson12

pytestmark = pytest.mark.lesson_12


# ---------------------------------------------------------------------------- the official SQuAD v2.0 script
# From "Official evaluation script for SQuAD version 2.0" (evaluate-v2.0.py), as published.
def squad_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def get_tokens(s):
    if not s:
        return []
    return squad_normalize_answer(s).split()


def compute_exact(a_gold, a_pred):
    return int(squad_normalize_answer(a_gold) == squad_normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def reference_scores(pred: str, golds: list[str]) -> tuple[float, float]:
    """The script's per-question scores: the max over the golds (every gold kept, as the lesson states)."""
    return float(max(compute_exact(g, pred) for g in golds)), float(max(compute_f1(g, pred) for g in golds))


def check_scores(lesson12: Lesson12, cases: list[tuple[str, list[str]]], what: str) -> None:
    got = lesson12.scores(cases)
    for (pred, golds), (em, f1) in zip(cases, got, strict=True):
        want_em, want_f1 = reference_scores(pred, golds)
        assert em == want_em, f"{what}: exact_match({pred!r}, {golds!r}) = {em}, the SQuAD script gives {want_em}"
        assert abs(f1 - want_f1) <= 1e-12, (
            f"{what}: f1_score({pred!r}, {golds!r}) = {f1:.6f}, the SQuAD script gives {want_f1:.6f}"
        )


# ---------------------------------------------------------------------------- normalisation, EM and F1
NORMALIZE_CASES = [
    "The Eiffel Tower!", "  An  apple, a day ", "U.S.A.", "Theatre of the absurd", "a", "The", "anthem",
    "Paris, France", "rock 'n' roll", "A.B.C. (the band)", "well-known", "THE END.", "e=mc^2", "Año the niño",
    "tab\tand\nnewline", "an-an", "#1 hit!!!", "The the THE", "",
]  # fmt: skip


@pytest.mark.points(2)
def test_normalize_answer_matches_the_official_script(lesson12: Lesson12):
    """Normalize: normalize_answer equals SQuAD's (lowercase, punctuation, articles, whitespace)"""
    for s in NORMALIZE_CASES:
        got, want = lesson12.normalize(s), squad_normalize_answer(s)
        assert got == want, f"normalize_answer({s!r}) = {got!r}, the SQuAD script gives {want!r}"


OFFICIAL_CASES = [  # no side normalises to empty here: the empty rule is graded alone
    ("The Eiffel Tower!", ["eiffel tower"]),
    ("Paris, France", ["Paris"]),
    ("paris", ["Paris, France"]),
    ("the cat sat on the mat", ["a cat sat on a mat"]),
    ("U.S.A.", ["USA"]),
    ("1,000", ["1000"]),
    ("New York City", ["new york", "NYC"]),
    ("the the cat cat", ["cat"]),
    ("cat dog cat", ["cat cat dog", "dog"]),
    ("Denver Broncos", ["Broncos", "Denver Broncos.", "the Denver Broncos"]),
    ("in the late 1990s", ["late 1990s", "1990s"]),
    ("Theatre", ["the atre"]),
    ("an apple a day", ["apple day keeps"]),
    ("Rock 'n' Roll", ["rock n roll"]),
    ("well-known", ["well known"]),
    ("Santa Clara, California", ["Levi's Stadium", "Santa Clara"]),
    ("golden anniversary", ["gold"]),
]


@pytest.mark.points(4)
def test_em_f1_official_cases(lesson12: Lesson12):
    """EM/F1: equal the SQuAD script on punctuation, articles, repeated tokens and several golds"""
    check_scores(lesson12, OFFICIAL_CASES, "SQuAD cases")


@pytest.mark.points(3)
def test_em_f1_empty_answer_rule(lesson12: Lesson12):
    """EM/F1 empty-answer rule: when either side normalises to empty, F1 = EM = (both empty)"""
    cases = [
        ("the", ["the"]), ("", [""]), ("a", ["The"]), ("!!", ["an"]), ("", ["the"]),
        ("the cat", ["the"]), ("the", ["cat"]), ("", ["Paris"]), ("Paris", [""]),
    ]  # fmt: skip
    check_scores(lesson12, cases, "empty answers (SQuAD v2.0 rule, F1 1.0 when both sides are empty)")


@pytest.mark.points(2)
def test_em_f1_max_over_golds(lesson12: Lesson12):
    """EM/F1: the score of a question is the maximum over its golds, wherever the best gold is"""
    cases = [
        ("Denver Broncos", ["Carolina Panthers", "Broncos", "Denver Broncos"]),
        ("late 1990s", ["the 1990s", "in the late 1990s", "1990"]),
        ("blue whale", ["whale", "a blue whale shark", "Blue  Whale"]),
        ("three", ["3", "three times", "thirty three"]),
    ]
    check_scores(lesson12, cases, "several golds")


# ---------------------------------------------------------------------------- pass@k
def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def check_pass_at_k(lesson12: Lesson12, grid: list[tuple[int, int, int]], what: str) -> None:
    got = lesson12.pass_at_k(grid)
    for (n, c, k), value in zip(grid, got, strict=True):
        want = exact_pass_at_k(n, c, k)
        ok = math.isfinite(value) and abs(Fraction(value) - want) <= Fraction(1, 10**12)
        assert ok, f"{what}: pass_at_k(n={n}, c={c}, k={k}) = {value!r}, exactly {float(want)!r}"


@pytest.mark.points(4)
def test_pass_at_k_exact_grid(lesson12: Lesson12):
    """pass@k: equals 1 - C(n-c, k) / C(n, k) in exact fractions over a grid (n <= 200)"""
    grid = [(n, c, k) for n in (1, 2, 3, 5, 10, 20, 50, 100, 200) for c in sorted({0, 1, 2, n // 3, n // 2, n - 1, n})
            for k in sorted({1, 2, 5, 10, 50, n}) if 0 <= c <= n and k <= n]  # fmt: skip
    check_pass_at_k(lesson12, grid, "grid")


@pytest.mark.points(2)
def test_pass_at_k_edge_cases(lesson12: Lesson12):
    """pass@k edge cases: c = 0, c = n, k > n - c, k = n - c, and pass@1 = c / n"""
    grid = [(10, 0, 1), (10, 0, 10), (10, 10, 1), (10, 10, 10), (10, 7, 4), (10, 7, 3), (20, 15, 5), (20, 15, 6),
            (7, 3, 1), (100, 37, 1), (16, 8, 8), (5, 1, 4)]  # fmt: skip
    check_pass_at_k(lesson12, grid, "edge cases")


@pytest.mark.points(3)
def test_pass_at_k_large_n(lesson12: Lesson12):
    """pass@k at large n (up to 2000): finite and exact, where float binomial coefficients overflow"""
    grid = [(n, c, k) for n in (1000, 2000) for c in (0, 1, 10, 100, n // 2, n - 10) for k in (1, 10, 100, 500, 1000)]
    check_pass_at_k(lesson12, grid, "large n")


# ---------------------------------------------------------------------------- bootstrap
def scipy_percentile_ci(samples: tuple, statistic, n_resamples: int, level: float, rng, paired: bool = False):
    res = scipy.stats.bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=level,
                                method="percentile", rng=rng, paired=paired)  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def check_ci(got: tuple[float, float], want: tuple[float, float], what: str, tol: float = 1e-9) -> None:
    ok = all(abs(g - w) <= tol * max(1.0, abs(w)) for g, w in zip(got, want, strict=True))
    assert ok, (
        f"{what}: CI ({got[0]:.6f}, {got[1]:.6f}), scipy.stats.bootstrap(method='percentile') with the same generator gives "
        f"({want[0]:.6f}, {want[1]:.6f}); draw every index in one call rng.integers(0, n, size=(n_resamples, n)) and take percentiles"
    )


BOOT_CASES = [  # data size, seed, n_resamples, confidence level
    (25, 0, 999, 0.95),
    (40, 1, 2000, 0.9),
    (31, 12345, 1500, 0.99),
    (8, 7, 999, 0.95),
]


def data(seed: int, n: int) -> list[float]:
    g = np.random.default_rng(1000 + seed)
    return [float(v) for v in g.gamma(2.0, 1.0, n)]  # skewed: percentile and basic intervals differ


@pytest.mark.points(2)
@pytest.mark.parametrize(
    ("size", "seed", "resamples", "level"), BOOT_CASES, ids=[f"n{c[0]}-seed{c[1]}-cl{c[3]}" for c in BOOT_CASES]
)
def test_bootstrap_mean_equals_scipy(lesson12: Lesson12, size: int, seed: int, resamples: int, level: float):
    """Bootstrap: the percentile CI of the mean equals scipy.stats.bootstrap's with the same generator"""
    x = data(seed, size)
    got = lesson12.bootstrap(x, "mean", resamples, level, seed)
    want = scipy_percentile_ci((np.array(x),), np.mean, resamples, level, np.random.default_rng(seed))
    check_ci(got, want, f"mean of {size} values, seed {seed}, confidence {level}")


@pytest.mark.points(2)
@pytest.mark.parametrize("statistic", ["median", "std"])
def test_bootstrap_other_statistics_equal_scipy(lesson12: Lesson12, statistic: str):
    """Bootstrap: the percentile CI of the median and of the standard deviation equal scipy's"""
    fn = {"median": np.median, "std": np.std}[statistic]
    for size, seed, resamples, level in BOOT_CASES[:3]:
        x = data(seed + 50, size)
        got = lesson12.bootstrap(x, statistic, resamples, level, seed)
        want = scipy_percentile_ci((np.array(x),), fn, resamples, level, np.random.default_rng(seed))
        check_ci(got, want, f"{statistic} of {size} values, seed {seed}, confidence {level}")


@pytest.mark.points(2)
def test_bootstrap_binary_scores_equal_scipy(lesson12: Lesson12):
    """Bootstrap: the CI of an accuracy (0/1 scores per item) equals scipy's"""
    g = np.random.default_rng(3)
    for n, acc, seed in ((50, 0.7, 11), (120, 0.35, 12)):
        x = [float(v) for v in (g.random(n) < acc)]
        got = lesson12.bootstrap(x, "mean", 2000, 0.95, seed)
        want = scipy_percentile_ci((np.array(x),), np.mean, 2000, 0.95, np.random.default_rng(seed))
        check_ci(got, want, f"accuracy of {n} items, seed {seed}")


@pytest.mark.points(2)
def test_bootstrap_shared_generator_advances(lesson12: Lesson12):
    """Bootstrap with a Generator: two calls on one generator equal two scipy calls on one generator"""
    x, y = data(90, 30), data(91, 21)
    gen = lesson12.generator(2024)
    got = [lesson12.bootstrap(x, "mean", 999, 0.95, gen), lesson12.bootstrap(y, "mean", 999, 0.9, gen)]
    ref = np.random.default_rng(2024)
    want = [
        scipy_percentile_ci((np.array(x),), np.mean, 999, 0.95, ref),
        scipy_percentile_ci((np.array(y),), np.mean, 999, 0.9, ref),
    ]
    check_ci(got[0], want[0], "first call on a shared generator")
    check_ci(got[1], want[1], "second call on the same generator (use the Generator given, do not re-seed)")


# ---------------------------------------------------------------------------- paired comparison
def mean_diff(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def scipy_exact_paired_p(a: list[float], b: list[float]) -> float:
    res = scipy.stats.permutation_test((np.array(a), np.array(b)), mean_diff, permutation_type="samples",
                                       n_resamples=np.inf, vectorized=True, alternative="two-sided")  # fmt: skip
    return float(res.pvalue)


def paired_cases() -> list[tuple[str, list[float], list[float]]]:
    g = np.random.default_rng(42)
    cases = []
    for n in (6, 9, 12):
        a = g.integers(0, 2, n).astype(float)
        b = np.where(g.random(n) < 0.3, 1.0 - a, a)  # mostly the same answers: the paired test sees it
        cases.append((f"0/1 scores, n={n}", a.tolist(), b.tolist()))
        q = g.integers(0, 5, n) / 4  # F1-like scores in quarters (exact in binary)
        cases.append((f"scores in quarters, n={n}", q.tolist(), np.clip(q + g.integers(-1, 3, n) / 4, 0, 1).tolist()))
        c = g.normal(0.5, 0.2, n)
        cases.append((f"continuous scores, n={n}", c.tolist(), (c - g.normal(0.08, 0.1, n)).tolist()))
    return cases


@pytest.mark.points(4)
def test_paired_permutation_exact_equals_scipy(lesson12: Lesson12):
    """Paired test: the exact sign-flip p-value equals scipy's permutation_test(permutation_type='samples')"""
    for what, a, b in paired_cases():
        got, want = lesson12.permutation(a, b, 9999, 0), scipy_exact_paired_p(a, b)
        assert abs(got - want) <= 1e-12, (
            f"{what}: p = {got:.6g}, the exact paired permutation test gives {want:.6g} "
            "(flip the sign of each item's difference; enumerate all 2**n sign vectors when 2**n <= n_resamples)"
        )


@pytest.mark.points(2)
def test_paired_permutation_known_answers(lesson12: Lesson12):
    """Paired test known answers: every item better by 1 gives 2/2**n; identical systems give 1"""
    for n in (5, 10, 13):
        got = lesson12.permutation([1.0] * n, [0.0] * n, 9999, 0)
        assert abs(got - 2 / 2**n) <= 1e-12, (
            f"a wins every one of {n} items by 1: p = {got:.6g}, exactly 2/2**{n} = {2 / 2**n:.6g}"
        )
    x = [0.5, 1.0, 0.0, 0.25, 0.75, 1.0, 0.0]
    got = lesson12.permutation(x, x, 9999, 0)
    assert got == 1.0, f"two identical systems: p = {got}, expected 1.0"
    a, b = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    got = lesson12.permutation(a, b, 9999, 0)
    assert abs(got - 1.0) <= 1e-12, (
        f"one item differs out of 8: p = {got}, exactly 1.0 (the flipped sign is as extreme)"
    )


@pytest.mark.points(3)
def test_paired_permutation_monte_carlo_matches_the_sign_test(lesson12: Lesson12):
    """Paired test, Monte Carlo (2**n > n_resamples): within sampling error of the exact sign-test p-value"""
    g = np.random.default_rng(8)
    resamples = 4000
    for n, flip, seed in ((60, 0.25, 1), (80, 0.15, 2), (40, 0.45, 3)):
        a = (g.random(n) < 0.6).astype(float)
        b = np.where(g.random(n) < flip, 1.0 - a, a)
        b[:3] = 0.0  # a few items both get wrong or right: zero differences
        d = a - b
        wins, losses = int((d > 0).sum()), int((d < 0).sum())
        want = scipy.stats.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
        got = lesson12.permutation(a.tolist(), b.tolist(), resamples, seed)
        bound = 5 * math.sqrt(max(want * (1 - want), 1e-4) / resamples) + 2 / (resamples + 1)
        assert abs(got - want) <= bound, (
            f"{n} items ({wins} wins, {losses} losses): Monte Carlo p = {got:.4f}, the exact paired (sign) test gives "
            f"{want:.4f} (allowed +-{bound:.4f} for {resamples} random sign vectors)"
        )


@pytest.mark.points(3)
def test_paired_bootstrap_equals_scipy_paired(lesson12: Lesson12):
    """Paired bootstrap: the CI of mean(a - b) equals scipy.stats.bootstrap(paired=True) with the same generator"""
    g = np.random.default_rng(17)
    for n, seed, level in ((40, 5, 0.95), (25, 6, 0.9), (60, 7, 0.99)):
        a = g.random(n)
        b = np.clip(a + g.normal(-0.05, 0.1, n), 0, 1)
        got = lesson12.paired_bootstrap(a.tolist(), b.tolist(), 1500, level, seed)
        want = scipy_percentile_ci((a, b), mean_diff, 1500, level, np.random.default_rng(seed), paired=True)
        check_ci(
            got,
            want,
            f"paired, {n} items, seed {seed}, confidence {level} (resample items: the same indices for a and b)",
        )


# ---------------------------------------------------------------------------- contamination
def reference_contamination(test_items: list[str], train_docs: list[str], n: int) -> dict:
    """CountVectorizer's vocabulary of the training documents, and its analyzer on each test item."""
    vec = CountVectorizer(ngram_range=(n, n), token_pattern=r"\S+").fit(train_docs)
    vocab, analyze = set(vec.vocabulary_), vec.build_analyzer()
    overlap = []
    for item in test_items:
        grams = set(analyze(item))
        overlap.append(len(grams & vocab) / len(grams) if grams else 0.0)
    flags = [o > 0 for o in overlap]
    return {"overlap": overlap, "contaminated": flags, "contaminated_fraction": sum(flags) / len(flags)}


def check_contamination(lesson12: Lesson12, test_items: list[str], train_docs: list[str], n: int, what: str) -> None:
    got, want = lesson12.contamination(test_items, train_docs, n), reference_contamination(test_items, train_docs, n)
    for i, (o, w) in enumerate(zip(got["overlap"], want["overlap"], strict=True)):
        assert abs(o - w) <= 1e-12, (
            f"{what}: test item {i} ({test_items[i][:60]!r}...): overlap {o:.4f}, expected {w:.4f} "
            f"(share of its distinct word {n}-grams that occur in a training document)"
        )
    assert got["contaminated"] == want["contaminated"], (
        f"{what}: contaminated flags {got['contaminated']}, expected {want['contaminated']}"
    )
    frac, want_frac = got["contaminated_fraction"], want["contaminated_fraction"]
    assert abs(frac - want_frac) <= 1e-12, f"{what}: contaminated_fraction {frac}, expected {want_frac}"


WORDS = ("the model answer question paris river city data test train number seven blue green large small report "
         "year first last north south water light sound energy").split()  # fmt: skip


def corpus(seed: int, docs: int, length: int) -> list[str]:
    g = np.random.default_rng(seed)
    return [" ".join(g.choice(WORDS, length)) for _ in range(docs)]


@pytest.mark.points(2)
@pytest.mark.parametrize("n", [3, 5, 8])
def test_contamination_equals_count_vectorizer(lesson12: Lesson12, n: int):
    """Contamination: per-item overlap, flags and share equal CountVectorizer's word n-grams"""
    g = np.random.default_rng(n)
    train = corpus(100 + n, 12, 40)
    test = []
    for i in range(10):
        item = corpus(200 + 10 * n + i, 1, 14)[0].split()
        if i % 2 == 0:  # half the items copy a span of a training document
            doc = train[int(g.integers(0, len(train)))].split()
            start, span = int(g.integers(0, 20)), n + int(g.integers(0, 5))
            item[2 : 2 + span] = doc[start : start + span]
        test.append(" ".join(item))
    check_contamination(lesson12, test, train, n, f"{n}-grams")


@pytest.mark.points(3)
def test_contamination_no_ngrams_across_boundaries(lesson12: Lesson12):
    """Contamination: n-grams never span two training documents; short items have none"""
    train = ["alpha beta gamma delta", "epsilon zeta eta theta", "iota kappa lambda mu"]
    test = [
        "gamma delta epsilon zeta",  # only across the boundary of documents 0 and 1: clean
        "beta gamma delta",  # inside document 0
        "zeta",  # shorter than n: no n-gram
        "theta iota kappa",  # across documents 1 and 2 again: clean
        "omega psi chi",  # unseen
    ]
    check_contamination(lesson12, test, train, 3, "document boundaries (n=3)")


@pytest.mark.points(1)
def test_contamination_case_and_punctuation(lesson12: Lesson12):
    """Contamination: tokens are lowercased whitespace tokens; punctuation stays attached"""
    train = ["The Quick brown fox jumps over the lazy dog.", "Paris is the capital of France."]
    test = [
        "the quick BROWN fox",
        "over the lazy dog",
        "over the lazy dog.",
        "capital of France",
        "PARIS IS THE capital",
    ]
    check_contamination(lesson12, test, train, 3, "case and punctuation (n=3)")
