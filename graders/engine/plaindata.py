"""What may cross the trust boundary: plain data, checked by exact type.

Replies from the worker are decoded by ``wire.py`` (JSON and raw tensor bytes, which can
only ever produce plain data) and then walked here anyway, as a second line: exact types
only, so a Tensor subclass, a Parameter, an object with a clever ``__eq__`` or a
sparse/meta tensor is refused and the grader's assertions always run on torch's own
tensors and Python's own numbers. ``shorten`` keeps any student value that is shown in a
message (an error text, a wrong item) to a few hundred characters.
"""

from __future__ import annotations

import torch

_SCALARS = (bool, int, float, str, bytes, type(None), torch.dtype)
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


def shorten(value: object, limit: int = 200) -> str:
    """``value`` for a message: a str as is, anything else like its repr, in about ``limit`` characters.

    Rendered piece by piece within the budget (never ``repr`` of the whole value first), so
    a 100 MB string, a million-item list or a huge int costs ``limit``, not its size.
    """
    if type(value) is str and len(value) <= limit:
        return value
    text = _render(value, limit, 0)
    if type(value) in (str, bytes, list, tuple, dict) and (len(value) > limit or text.endswith((" ...", "...]", "...)", "...}"))):
        unit = "characters" if type(value) is str else "bytes" if type(value) is bytes else "items"
        text += f" ({len(value)} {unit} in all)"
    return text


def _render(x: object, budget: int, depth: int) -> str:
    t = type(x)
    if t is str or t is bytes:
        if len(x) <= budget:
            return x if t is str and depth == 0 else repr(x)
        head = x[: max(budget - 20, 8)]
        return (head if t is str and depth == 0 else repr(head)) + " ..."
    if t is int:
        return repr(x) if x.bit_length() <= 256 else f"<int of {x.bit_length()} bits>"
    if t in (bool, float, type(None), torch.dtype):
        return repr(x)
    if t is torch.Tensor:
        return repr(x) if x.numel() <= 8 else f"tensor(shape={tuple(x.shape)}, dtype={x.dtype})"
    if t in (list, tuple, dict) and depth < 4:
        items = x.items() if t is dict else x
        opening, closing = {list: "[]", tuple: "()", dict: "{}"}[t]
        parts, used = [], 2
        for item in items:
            if used >= budget:
                parts.append("...")
                break
            if t is dict:
                k, v = item
                piece = _render(k, budget - used, depth + 1) + ": " + _render(v, budget - used, depth + 1)
            else:
                piece = _render(item, budget - used, depth + 1)
            parts.append(piece)
            used += len(piece) + 2
        return opening + ", ".join(parts) + ("," if t is tuple and len(x) == 1 else "") + closing
    return f"<{t.__name__}>"
