"""An alternative correct lesson 12 submission: other code for every function (must keep full marks)."""

import math
import string

import numpy as np

STATISTICS = {"mean": np.mean, "median": np.median, "std": np.std}
_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = {"a", "an", "the"}


def normalize_answer(s):
    # translate instead of a set; drop article tokens after splitting (same as \b(a|an|the)\b on punctuation-free text)
    return " ".join(t for t in s.lower().translate(_PUNCT).split() if t not in _ARTICLES)


def exact_match(prediction, golds):
    p = normalize_answer(prediction)
    return 1.0 if any(p == normalize_answer(g) for g in golds) else 0.0


def _f1(p, g):
    if len(p) == 0 or len(g) == 0:
        return 1.0 if p == g else 0.0
    remaining = list(g)
    same = 0
    for t in p:
        if t in remaining:
            remaining.remove(t)
            same += 1
    return 0.0 if same == 0 else 2.0 * same / (len(p) + len(g))


def f1_score(prediction, golds):
    p = normalize_answer(prediction).split()
    return max(_f1(p, normalize_answer(g).split()) for g in golds)


def pass_at_k(n, c, k):
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError("bad n, c, k")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact big ints, correctly rounded division


def bootstrap_ci(values, statistic="mean", n_resamples=9999, confidence_level=0.95, rng=None):
    stat = STATISTICS[statistic] if isinstance(statistic, str) else statistic
    rng = np.random.default_rng(rng)
    x = np.array(values, dtype=float)
    theta = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(n_resamples)])  # one row per call
    tail = 50.0 * (1.0 - confidence_level)
    return float(np.percentile(theta, tail)), float(np.percentile(theta, 100.0 - tail))


def paired_bootstrap_ci(a, b, n_resamples=9999, confidence_level=0.95, rng=None):
    rng = np.random.default_rng(rng)
    a, b = np.array(a, dtype=float), np.array(b, dtype=float)
    res = rng.choice(np.arange(len(a)), size=(n_resamples, len(a)))  # choice draws the same indices
    theta = a[res].mean(axis=1) - b[res].mean(axis=1)
    tail = 50.0 * (1.0 - confidence_level)
    low, high = np.percentile(theta, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_permutation_test(a, b, n_resamples=9999, rng=None):
    d = np.array(a, dtype=float) - np.array(b, dtype=float)
    n = len(d)
    t = abs(d.sum())  # the sum orders sign vectors like the mean
    if 2**n <= n_resamples:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        null = np.abs(((1 - 2 * bits) * d).sum(axis=1))
        return float((null >= t - 1e-9 * t).sum() / 2**n)
    rng = np.random.default_rng(rng)
    signs = rng.integers(0, 2, size=(n_resamples, n)) * 2 - 1
    null = np.abs((signs * d).sum(axis=1))
    return float(((null >= t - 1e-9 * t).sum() + 1) / (n_resamples + 1))


def word_ngrams(text, n):
    w = text.lower().split()
    return set(zip(*(w[i:] for i in range(n)), strict=False)) if n > 0 else set()


def contamination(test_items, train_docs, n=8):
    seen = set().union(*(word_ngrams(d, n) for d in train_docs)) if train_docs else set()
    overlap = []
    for item in test_items:
        g = word_ngrams(item, n)
        overlap.append(sum(x in seen for x in g) / len(g) if g else 0.0)
    flags = [o > 0.0 for o in overlap]
    return {
        "overlap": overlap,
        "contaminated": flags,
        "contaminated_fraction": (sum(flags) / len(flags)) if flags else 0.0,
    }
