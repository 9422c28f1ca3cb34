"""The typed binding between lesson 12's hidden tests and the student's ``evaluation.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for its exact type before a test sees it. Numbers cross as
Python floats (the student's functions return ``float``, never numpy scalars). The docstrings are
the contract.
"""

from __future__ import annotations

from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "evaluation"


def _float(out: object, what: str) -> float:
    assert type(out) in (float, int, bool), (
        f"{what} must return a Python float, got {type(out).__name__} (wrap numpy results in float(...))"
    )
    return float(out)


def _interval(out: object, what: str) -> tuple[float, float]:
    assert type(out) in (tuple, list) and len(out) == 2, (
        f"{what} must return a pair (low, high), got {type(out).__name__}"
    )
    return _float(out[0], f"{what}: low"), _float(out[1], f"{what}: high")


class Lesson12(Binding):
    MODULE = MODULE

    def normalize(self, s: str) -> str:
        """``normalize_answer(s)`` -> str."""
        out = self.call("normalize_answer", (s,))
        assert type(out) is str, f"normalize_answer must return a str, got {type(out).__name__}"
        return out

    def _batch(self, function: str, calls: list[tuple]) -> list[object]:
        """``function(*args)`` for every args tuple of ``calls``, in one worker request."""
        outs, _ = self.worker.timed_batch(MODULE, function, [(tuple(a), {}) for a in calls])
        assert type(outs) is list and len(outs) == len(calls), f"{function} batch reply malformed"
        return outs

    def scores(self, cases: list[tuple[str, list[str]]]) -> list[tuple[float, float]]:
        """``(exact_match(p, golds), f1_score(p, golds))`` for each (prediction, golds)."""
        calls = [(pred, list(golds)) for pred, golds in cases]
        ems, f1s = self._batch("exact_match", calls), self._batch("f1_score", calls)
        return [
            (_float(em, f"exact_match({p!r}, {g!r})"), _float(f1, f"f1_score({p!r}, {g!r})"))
            for em, f1, (p, g) in zip(ems, f1s, calls, strict=True)
        ]

    def pass_at_k(self, grid: list[tuple[int, int, int]]) -> list[float]:
        """``pass_at_k(n, c, k)`` for every (n, c, k) of ``grid``, in one worker request."""
        outs = self._batch("pass_at_k", grid)
        return [_float(o, f"pass_at_k(n={n}, c={c}, k={k})") for o, (n, c, k) in zip(outs, grid, strict=True)]

    def generator(self, seed: int) -> Remote:
        """``np.random.default_rng(seed)`` built in the worker: one generator shared by several calls."""
        return self.new("default_rng", seed, module="numpy.random")

    def bootstrap(
        self, values: list[float], statistic: str, n_resamples: int, confidence_level: float, rng: int | Remote
    ) -> tuple[float, float]:
        """``bootstrap_ci(values, statistic, n_resamples, confidence_level, rng)`` -> (low, high) floats."""
        seed = rng.ref() if isinstance(rng, Remote) else rng
        out = self.call("bootstrap_ci", (list(values), statistic, n_resamples, confidence_level, seed))
        return _interval(out, f"bootstrap_ci(statistic={statistic!r}, confidence_level={confidence_level})")

    def paired_bootstrap(
        self, a: list[float], b: list[float], n_resamples: int, confidence_level: float, rng: int
    ) -> tuple[float, float]:
        """``paired_bootstrap_ci(a, b, n_resamples, confidence_level, rng)`` -> (low, high) floats."""
        out = self.call("paired_bootstrap_ci", (list(a), list(b), n_resamples, confidence_level, rng))
        return _interval(out, "paired_bootstrap_ci")

    def permutation(self, a: list[float], b: list[float], n_resamples: int, rng: int) -> float:
        """``paired_permutation_test(a, b, n_resamples, rng)`` -> a p-value, a float in [0, 1]."""
        p = _float(
            self.call("paired_permutation_test", (list(a), list(b), n_resamples, rng)), "paired_permutation_test"
        )
        assert 0.0 <= p <= 1.0, f"paired_permutation_test returned {p}, not a p-value in [0, 1]"
        return p

    def contamination(self, test_items: list[str], train_docs: list[str], n: int) -> dict:
        """``contamination(test_items, train_docs, n)`` -> {"overlap": [float], "contaminated": [bool], "contaminated_fraction": float}."""
        out = self.call("contamination", (list(test_items), list(train_docs), n))
        assert type(out) is dict, f"contamination must return a dict, got {type(out).__name__}"
        missing = [k for k in ("overlap", "contaminated", "contaminated_fraction") if k not in out]
        assert not missing, f"contamination's dict lacks {missing}"
        overlap, flags = out["overlap"], out["contaminated"]
        assert type(overlap) is list and len(overlap) == len(test_items), (
            f"'overlap' must be a list of {len(test_items)} floats"
        )
        assert type(flags) is list and len(flags) == len(test_items), (
            f"'contaminated' must be a list of {len(test_items)} bools"
        )
        assert all(type(f) is bool for f in flags), "'contaminated' must hold Python bools"
        return {
            "overlap": [_float(o, "contamination()['overlap'][i]") for o in overlap],
            "contaminated": flags,
            "contaminated_fraction": _float(out["contaminated_fraction"], "contamination()['contaminated_fraction']"),
        }
