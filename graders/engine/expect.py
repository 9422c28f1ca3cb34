"""Checks on what a worker sent back, phrased for the student who reads the failure.

Every check looks at a reply's type and shape before any operation on it, so a wrong
reply is an AssertionError naming the problem, never a grader crash; any student value
a message shows goes through :func:`shorten` (a 100 MB string costs 200 characters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from graders.engine.plaindata import shorten

__all__ = ["close", "pair", "shorten", "tensor"]


def tensor(value: object, what: str, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` is a plain tensor of the given shape and dtype, else a readable AssertionError."""
    assert type(value) is torch.Tensor, f"{what} must be a torch.Tensor, got {type(value).__name__} {shorten(value, 80)}"
    if shape is not None:
        assert tuple(value.shape) == tuple(shape), f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}"
    if dtype is not None:
        assert value.dtype == dtype, f"{what} has dtype {value.dtype}, expected {dtype}"
    return value


def pair(value: object, what: str) -> tuple[object, object]:
    """``value`` is a 2-tuple (a list from the transport counts too)."""
    assert type(value) in (tuple, list) and len(value) == 2, (
        f"{what} must return a tuple of 2 items, got {type(value).__name__} {shorten(value, 80)}"
    )
    return value[0], value[1]


def close(actual: object, expected: torch.Tensor, what: str, atol: float, rtol: float) -> None:
    """``actual`` matches ``expected`` elementwise, NaN/inf included; the message gives the worst error."""
    actual = tensor(actual, what, shape=expected.shape)
    a, e = actual.double(), expected.double()
    finite = torch.isfinite(a)
    assert finite.all(), f"{what}: {int((~finite).sum())} non-finite values (NaN or inf)"
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bad.any():
        worst = int(err.flatten().argmax())
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} values differ (max abs error {err.max().item():.3g}, "
            f"atol={atol:g}, rtol={rtol:g}; at flat index {worst})"
        )
