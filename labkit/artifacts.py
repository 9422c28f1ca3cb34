"""Validators for a lab's declared artifacts (``labs/lesson_NN/lab.toml`` ``[[artifacts]]``).

A declared artifact counts only if it is what the lesson asked for: a PNG that holds a plotted
figure (not a blank), a table with the named columns, a sweep that covers the asked range, a
tensor file that loads safely, or a line in notes.md. Each check returns None (valid) or ONE
line naming the reason and the fix, printed as is by the instructor's rubric and ``make check``.
Only the standard library at import time; matplotlib and torch are imported when needed.
"""

from __future__ import annotations

import csv
import io
import math
import re

KINDS = ("png", "table", "sweep", "tensor", "notes_line")
MIN_PIXELS = 64  # each side
MIN_COLOURS = 8  # a plotted figure has axes, text and data in several colours; a blank has 1 or 2
_KEYS = {
    "png": {"file", "kind", "what"},
    "table": {"file", "kind", "what", "columns"},
    "sweep": {"file", "kind", "what", "column", "covers", "min_points"},
    "tensor": {"file", "kind", "what"},
    "notes_line": {"kind", "what", "pattern"},
}


def check_spec(spec: object, where: str) -> dict:
    """One ``[[artifacts]]`` entry, checked; raises ValueError (one line naming the fix) when malformed."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: each [[artifacts]] entry must be a table")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: artifact kind {kind!r} is not one of {', '.join(KINDS)}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise ValueError(f"{where}: a {kind} artifact has unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS[kind]))})")
    if not isinstance(spec.get("what", ""), str):
        raise ValueError(f"{where}: artifact `what` must be a string (printed in messages)")
    if kind == "notes_line":
        pattern = spec.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{where}: a notes_line artifact needs `pattern`, a regular expression")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: notes_line pattern {pattern!r} is not a regular expression: {exc}") from None
        return dict(spec)
    name = spec.get("file")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise ValueError(f"{where}: artifact `file` must be a plain file name in the run's artifacts/ (e.g. \"timing.csv\")")
    if kind == "table":
        columns = spec.get("columns")
        if not (isinstance(columns, list) and columns and all(isinstance(c, str) and c for c in columns)):
            raise ValueError(f"{where}: table {name} needs `columns`, a non-empty list of column names")
    if kind == "sweep":
        covers, points = spec.get("covers"), spec.get("min_points", 2)
        if not isinstance(spec.get("column"), str) or not spec["column"]:
            raise ValueError(f"{where}: sweep {name} needs `column`, the swept column's name")
        if not (isinstance(covers, list) and len(covers) == 2 and all(_number(c) for c in covers) and covers[0] < covers[1]):
            raise ValueError(f"{where}: sweep {name} needs `covers = [low, high]` with low < high")
        if type(points) is not int or points < 2:
            raise ValueError(f"{where}: sweep {name}: `min_points` must be an integer >= 2")
    return dict(spec)


def label(spec: dict) -> str:
    """How messages name an artifact: ``timing.csv (sweep)``, ``notes.md line (notes_line)``."""
    return f"{spec.get('file', 'notes.md line')} ({spec['kind']})"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _what(spec: dict) -> str:
    return f" ({spec['what']})" if spec.get("what") else ""


def validate(spec: dict, data: bytes | None, notes: str = "") -> str | None:
    """None when the artifact is valid; else one line ``<label>: <reason>: <fix>``.

    ``data``: the file's bytes, None when the file is absent; ``notes``: notes.md's text (notes_line).
    """
    name = label(spec)
    if spec["kind"] == "notes_line":
        if re.search(spec["pattern"], notes or ""):
            return None
        return f"{name}: no line in notes.md matches /{spec['pattern']}/: add it ({spec.get('what') or 'the line the lesson asks for'})"
    if data is None:
        return f"{name}: not in the run's artifacts/: save it with run.artifact(\"{spec['file']}\"){_what(spec)}"
    check = {"png": _png, "table": _table, "sweep": _sweep, "tensor": _tensor}[spec["kind"]]
    why = check(spec, data)
    return None if why is None else f"{name}: {why}"


def _png(spec: dict, data: bytes) -> str | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "not a PNG file: save the figure with fig.savefig(run.artifact(...)) and a .png name"
    import matplotlib.image
    import numpy as np

    try:
        image = np.asarray(matplotlib.image.imread(io.BytesIO(data), format="png"))
    except Exception as exc:  # any decoder failure is the same finding
        return f"does not decode as a PNG ({type(exc).__name__}): save it again with fig.savefig"
    if image.ndim < 2 or image.shape[0] < MIN_PIXELS or image.shape[1] < MIN_PIXELS:
        return f"is {image.shape[1] if image.ndim > 1 else 0}x{image.shape[0]} px (need >= {MIN_PIXELS}x{MIN_PIXELS}): save a larger figure"
    pixels = image.reshape(image.shape[0] * image.shape[1], -1)
    colours = len(np.unique(pixels[:: max(1, len(pixels) // 200_000)], axis=0))
    if colours < MIN_COLOURS:
        return (f"has {colours} distinct colour(s) (a plotted figure has >= {MIN_COLOURS}): it is blank; "
                "plot the data before fig.savefig")  # fmt: skip
    return None


def _rows(spec: dict, data: bytes) -> tuple[list[str], list[dict]] | str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "is not UTF-8 text: write it with csv.writer or DataFrame.to_csv(index=False)"
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except csv.Error as exc:
        return f"is not a CSV file ({exc}): write it with csv.writer or DataFrame.to_csv(index=False)"
    if not header:
        return "is empty: write a header row and one row per measurement"
    return header, rows


def _numeric(rows: list[dict], column: str) -> list[float] | str:
    values = []
    for i, row in enumerate(rows, start=2):
        cell = row.get(column)
        try:
            value = float(str(cell).strip())
        except ValueError:
            return f"column {column} line {i} is {cell!r}, not a number: log numbers only (no units in cells)"
        if not math.isfinite(value):
            return f"column {column} line {i} is {cell!r}, not a finite number: fix the measurement"
        values.append(value)
    return values


def _table(spec: dict, data: bytes) -> str | None:
    parsed = _rows(spec, data)
    if isinstance(parsed, str):
        return parsed
    header, rows = parsed
    missing = [c for c in spec["columns"] if c not in header]
    if missing:
        return f"header has no column(s) {', '.join(missing)} (has {', '.join(header)[:120]}): write every column the lesson names"
    if not rows:
        return "has a header but no data rows: write one row per measurement"
    for column in spec["columns"]:
        values = _numeric(rows, column)
        if isinstance(values, str):
            return values
    return None


def _sweep(spec: dict, data: bytes) -> str | None:
    parsed = _rows(spec, data)
    if isinstance(parsed, str):
        return parsed
    header, rows = parsed
    column, (low, high), need = spec["column"], spec["covers"], spec.get("min_points", 2)
    if column not in header:
        return f"has no column {column}: write the swept variable as column {column}"
    values = _numeric(rows, column)
    if isinstance(values, str):
        return values
    distinct = sorted(set(values))
    if not distinct or distinct[0] > low or distinct[-1] < high:
        span = f"{distinct[0]:g}..{distinct[-1]:g}" if distinct else "nothing"
        return f"{column} spans {span} (need {low:g}..{high:g}): extend the sweep to cover the lesson's range"
    if len(distinct) < need:
        return f"{column} has {len(distinct)} distinct value(s) (need >= {need}): add points inside {low:g}..{high:g}"
    return None


def _tensor(spec: dict, data: bytes) -> str | None:
    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # pickled code, a truncated file: the same finding
        return (f"torch.load(weights_only=True) fails ({type(exc).__name__}): save tensors or dicts of tensors "
                "with torch.save, not objects")  # fmt: skip
    return None
