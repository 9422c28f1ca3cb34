"""Lesson 12: evaluation and error analysis: exact match / F1, pass@k, bootstrap CIs, paired tests, contamination.

A benchmark number is an estimate from a finite sample of items, computed by a metric with rules
of its own. This file holds the metrics the course uses from here on, each with its rule stated:

- SQuAD's answer normalisation, exact match and token F1 (Rajpurkar et al., 2016), with the
  empty-answer rule of the SQuAD v2.0 script (Rajpurkar et al., 2018);
- the unbiased pass@k estimator in its numerically stable form (Chen et al., 2021);
- a percentile bootstrap confidence interval that equals ``scipy.stats.bootstrap(...,
  method="percentile")`` draw for draw with the same generator (Efron and Tibshirani, 1993);
- two tools for comparing two systems on the *same* items: the paired bootstrap of the per-item
  differences and the paired permutation (sign-flip) test;
- word n-gram contamination between a test set and a training corpus (GPT-3, Brown et al., 2020).

Everything returns Python numbers (``float``, ``bool``, lists and tuples of them), never numpy
scalars: wrap results in ``float(...)``.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

# The statistics ``bootstrap_ci`` accepts by name; each takes ``axis=`` like numpy's (given).
STATISTICS: dict[str, Callable] = {"mean": np.mean, "median": np.median, "std": np.std}


# ---------------------------------------------------------------------------- exact match and F1
def normalize_answer(s: str) -> str:
    """SQuAD v1.1's official answer normalisation, in this order: lowercase, remove punctuation,
    remove the articles ``a``, ``an``, ``the`` (whole words), collapse whitespace.

    "The Eiffel Tower!" -> "eiffel tower"; "  An  apple, a day " -> "apple day"; "the" -> "".

    Punctuation is ``string.punctuation`` (ASCII), each character deleted (not replaced by a
    space): "U.S.A." -> "usa". Articles: the regex ``\\b(a|an|the)\\b``, replaced by a space;
    whitespace: ``" ".join(text.split())``.
    """

    # BEGIN SOLUTION
    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))
    # END SOLUTION


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if ``normalize_answer(prediction)`` equals ``normalize_answer(g)`` for some gold ``g``, else 0.0.

    ``golds``: one or more reference answers (an unanswerable question has ``[""]``).
    Two answers that both normalise to the empty string match (EM 1.0).
    """
    # BEGIN SOLUTION
    pred = normalize_answer(prediction)
    return float(max(pred == normalize_answer(g) for g in golds))
    # END SOLUTION


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 of the normalised answers, the maximum over the golds (each gold as given, none dropped).

    Tokens are ``normalize_answer(x).split()``; the overlap counts repeated tokens as often as both
    sides have them (``Counter`` intersection); precision = overlap / len(prediction tokens),
    recall = overlap / len(gold tokens), F1 = 2 P R / (P + R), and 0.0 when the overlap is 0.

    **Empty-answer rule (SQuAD v2.0's):** if the prediction or the gold normalises to no token at
    all, F1 is 1.0 when both do and 0.0 otherwise (the v1.1 script gives 0.0 for "the" vs "the").
    """
    # BEGIN SOLUTION
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        gold_tokens = normalize_answer(gold).split()
        if not pred_tokens or not gold_tokens:
            score = float(pred_tokens == gold_tokens)
        else:
            same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
            if same == 0:
                score = 0.0
            else:
                precision, recall = same / len(pred_tokens), same / len(gold_tokens)
                score = 2 * precision * recall / (precision + recall)
        best = max(best, score)
    return float(best)
    # END SOLUTION


# ---------------------------------------------------------------------------- pass@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al., 2021): ``1 - C(n-c, k) / C(n, k)``.

    ``n`` samples were drawn for a problem and ``c`` of them pass; pass@k estimates the chance that
    at least one of ``k`` samples passes. Raise ``ValueError`` unless ``0 <= c <= n`` and ``1 <= k <= n``.

    Numerically stable form: 1.0 when ``n - c < k`` (every k-subset holds a passing sample), else
    ``1 - prod(1 - k / i for i in n-c+1 .. n)``, which never forms the binomial coefficients (as
    floats they overflow beyond n of about 1000). pass@1 is ``c / n``.
    """
    # BEGIN SOLUTION
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
    # END SOLUTION


# ---------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    values: Sequence[float],
    statistic: str | Callable = "mean",
    n_resamples: int = 9999,
    confidence_level: float = 0.95,
    rng: np.random.Generator | int | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of ``statistic(values)``.

    Must equal ``scipy.stats.bootstrap((values,), statistic, n_resamples=..., confidence_level=...,
    method="percentile", rng=np.random.default_rng(seed))`` for the same seed, because it draws the
    same resamples: **all indices in one call**, ``rng.integers(0, n, size=(n_resamples, n))``
    (row ``b`` is resample ``b``), then the statistic of every row, then the
    ``100 * alpha`` and ``100 * (1 - alpha)`` percentiles (``np.percentile``, linear interpolation) of
    those ``n_resamples`` statistics, with ``alpha = (1 - confidence_level) / 2``.

    ``statistic``: a name in ``STATISTICS`` or a function taking ``(array, axis=-1)``.
    ``rng``: a ``np.random.Generator`` (used as is, its state advances), a seed, or None:
    ``np.random.default_rng(rng)`` handles all three.
    """
    # BEGIN SOLUTION
    stat = STATISTICS[statistic] if isinstance(statistic, str) else statistic
    rng = np.random.default_rng(rng)  # a Generator passes through unchanged, a seed makes one
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    idx = rng.integers(0, n, size=(n_resamples, n))  # (B, n): one call, row b is resample b (scipy's order)
    theta = stat(x[idx], axis=-1)  # (B,)
    alpha = (1.0 - confidence_level) / 2.0
    low, high = np.percentile(theta, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)
    # END SOLUTION


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 9999,
    confidence_level: float = 0.95,
    rng: np.random.Generator | int | None = None,
) -> tuple[float, float]:
    """Paired percentile bootstrap CI of ``mean(a) - mean(b)``, two systems scored on the same items.

    ``a[i]`` and ``b[i]`` are the scores of the two systems on item ``i``: resample *items* (the
    same indices for both systems), that is, bootstrap the per-item differences ``a - b``. Equals
    ``scipy.stats.bootstrap((a, b), lambda a, b, axis: np.mean(a - b, axis=axis), paired=True,
    method="percentile", ...)`` with the same generator.
    """
    # BEGIN SOLUTION
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (n,) per-item differences
    return bootstrap_ci(d, "mean", n_resamples, confidence_level, rng)
    # END SOLUTION


def paired_permutation_test(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 9999, rng: np.random.Generator | int | None = None
) -> float:
    """Two-sided p-value of the paired permutation (sign-flip) test of ``mean(a - b) = 0``.

    Under the null hypothesis the two systems are exchangeable *within each item*: swapping
    ``a[i]`` and ``b[i]`` flips the sign of ``d[i] = a[i] - b[i]``. The statistic is
    ``t = mean(d)``; the null distribution is ``mean(s * d)`` over sign vectors ``s`` in {-1, +1}^n.
    The p-value is the share of sign vectors with ``|mean(s * d)| >= |t|`` (count ties with a
    relative tolerance: ``>= |t| * (1 - 1e-9)``):

    - **exact** when ``2**n <= n_resamples``: enumerate all ``2**n`` sign vectors (the observed one
      included), the same p-value as ``scipy.stats.permutation_test((a, b), ...,
      permutation_type="samples", n_resamples=np.inf)``;
    - otherwise **Monte Carlo**: ``n_resamples`` random sign vectors from ``rng`` and
      ``(count + 1) / (n_resamples + 1)`` (the observed assignment counts once).

    Identical systems (every ``d[i] = 0``) give 1.0.
    """
    # BEGIN SOLUTION
    rng = np.random.default_rng(rng)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (n,)
    n = d.shape[0]
    observed = abs(d.mean())
    if 2**n <= n_resamples:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n): every sign vector
        null = np.abs((signs * d).mean(axis=1))  # (2^n,)
        return float(np.mean(null >= observed * (1 - 1e-9)))
    signs = rng.choice((-1.0, 1.0), size=(n_resamples, n))  # (B, n)
    null = np.abs((signs * d).mean(axis=1))  # (B,)
    return float((np.sum(null >= observed * (1 - 1e-9)) + 1) / (n_resamples + 1))
    # END SOLUTION


# ---------------------------------------------------------------------------- contamination
def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of ``text``: tokens are ``text.lower().split()`` (lowercase, split on
    whitespace, punctuation stays attached), n-grams are tuples of ``n`` consecutive tokens.

    A text of fewer than ``n`` tokens has none. This is the tokenisation of scikit-learn's
    ``CountVectorizer(ngram_range=(n, n), token_pattern=r"\\S+")`` (lowercase by default).
    """
    # BEGIN SOLUTION
    tokens = text.lower().split()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
    # END SOLUTION


def contamination(test_items: Sequence[str], train_docs: Sequence[str], n: int = 8) -> dict:
    """Word n-gram overlap between each test item and a training corpus.

    An n-gram is in the corpus if some *single* training document contains it (n-grams never run
    across the boundary of two documents, nor across two test items). For each test item ``x``:
    ``overlap = |G(x) & G(corpus)| / |G(x)|`` over its *distinct* n-grams ``G(x)`` (``word_ngrams``),
    0.0 when ``x`` has no n-gram; ``contaminated = overlap > 0`` (at least one shared n-gram).

    Returns:
        {"overlap": [float per item], "contaminated": [bool per item],
         "contaminated_fraction": the share of contaminated items, a float (0.0 for no items)}
    """
    # BEGIN SOLUTION
    corpus: set[tuple[str, ...]] = set()
    for doc in train_docs:
        corpus |= word_ngrams(doc, n)
    overlap = []
    for item in test_items:
        grams = word_ngrams(item, n)
        overlap.append(len(grams & corpus) / len(grams) if grams else 0.0)
    flags = [o > 0 for o in overlap]
    return {
        "overlap": [float(o) for o in overlap],
        "contaminated": flags,
        "contaminated_fraction": float(sum(flags) / len(flags)) if flags else 0.0,
    }
    # END SOLUTION
