"""What may cross the trust boundary: plain data, checked by exact type.

Replies from the worker are loaded with ``torch.load(weights_only=True)`` and then
walked here. Exact types only: a Tensor subclass, a Parameter, an object with a
clever ``__eq__`` or a sparse/meta tensor is refused, so the grader's assertions
always run on torch's own tensors and Python's own numbers.
"""

from __future__ import annotations

import torch

_SCALARS = (bool, int, float, str, bytes, type(None))
MAX_DEPTH = 16
MAX_ITEMS = 100_000


class NotPlainData(TypeError):
    """The worker sent something that is not plain data."""


def check_plain(obj: object) -> object:
    """Return ``obj`` unchanged if it is plain data; raise :class:`NotPlainData` otherwise."""
    count = 0

    def walk(x: object, depth: int) -> None:
        nonlocal count
        count += 1
        if depth > MAX_DEPTH or count > MAX_ITEMS:
            raise NotPlainData("reply is nested too deeply or has too many items")
        t = type(x)
        if t in _SCALARS:
            return
        if t is torch.Tensor:
            if x.layout is not torch.strided or x.device.type != "cpu" or x.is_meta or x.requires_grad:
                raise NotPlainData(f"tensor must be a plain dense CPU tensor, got layout={x.layout} device={x.device}")
            return
        if t in (list, tuple):
            for item in x:
                walk(item, depth + 1)
            return
        if t is dict:
            for key, value in x.items():
                if type(key) is not str:
                    raise NotPlainData(f"dict keys must be str, got {type(key).__name__}")
                walk(value, depth + 1)
            return
        raise NotPlainData(f"{t.__module__}.{t.__qualname__} is not plain data")

    walk(obj, 0)
    return obj
