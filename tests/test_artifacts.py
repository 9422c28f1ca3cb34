"""Declared lab artifacts: each kind's validity rule accepts the real thing and names the fix otherwise."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from labkit import artifacts

PNG = {"file": "plot.png", "kind": "png", "what": "the plot"}
TABLE = {"file": "t.csv", "kind": "table", "columns": ["seq_len", "mine_ms"]}
SWEEP = {"file": "t.csv", "kind": "sweep", "column": "seq_len", "covers": [64, 1024], "min_points": 5}
TENSOR = {"file": "w.pt", "kind": "tensor"}
NOTES = {"kind": "notes_line", "pattern": r"(?i)rerun.*\d", "what": "the rerun line"}


def figure_png(size: tuple[float, float] = (3, 2), dpi: int = 60) -> bytes:
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [3, 1, 2], "o-", label="mine")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def image_png(pixels: np.ndarray) -> bytes:
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, pixels, format="png")
    return buf.getvalue()


def test_a_plotted_figure_is_a_valid_png():
    assert artifacts.validate(PNG, figure_png()) is None


def test_a_png_of_one_colour_is_invalid():
    why = artifacts.validate(PNG, image_png(np.ones((100, 100, 3))))
    assert why is not None and why.startswith("plot.png (png): has 1 distinct colour") and "plot the data" in why


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, 'not in the run\'s artifacts/: save it with run.artifact("plot.png") (the plot)'),
        (b"GIF89a not a png", "not a PNG file"),
        (b"\x89PNG\r\n\x1a\ntruncated", "does not decode as a PNG"),
    ],
)
def test_a_missing_or_broken_png_names_the_fix(data: bytes | None, reason: str):
    why = artifacts.validate(PNG, data)
    assert why is not None and reason in why and "\n" not in why, why


def test_a_tiny_png_is_invalid():
    why = artifacts.validate(PNG, figure_png(size=(0.5, 0.5), dpi=60))
    assert why is not None and "px (need >= 64x64)" in why, why


CSV_GOOD = "seq_len,mine_ms,other\n64,1.5,a\n128,2.5,b\n256,3,c\n512,4,d\n1024,9,e\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("seq_len,other\n64,1\n", "header has no column(s) mine_ms"),
        ("seq_len,mine_ms\n", "no data rows"),
        ("seq_len,mine_ms\n64,1.5 ms\n", "column mine_ms line 2 is '1.5 ms', not a number"),
        ("", "is empty"),
    ],
)
def test_a_table_needs_its_columns_rows_and_numbers(text: str, reason: str):
    assert artifacts.validate(TABLE, CSV_GOOD.encode()) is None
    why = artifacts.validate(TABLE, text.encode())
    assert why is not None and why.startswith("t.csv (table): ") and reason in why, why


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([32, 64, 128], "seq_len spans 32..128 (need 64..1024): extend the sweep"),
        ([64, 128, 1024], "has 3 distinct value(s) (need >= 5)"),
        ([64, 64, 64, 64, 1024], "has 2 distinct value(s)"),
    ],
)
def test_a_sweep_must_cover_its_range_with_enough_points(values: list[int], reason: str):
    assert artifacts.validate(SWEEP, CSV_GOOD.encode()) is None
    text = "seq_len,mine_ms\n" + "".join(f"{v},1\n" for v in values)
    why = artifacts.validate(SWEEP, text.encode())
    assert why is not None and reason in why, why


def test_a_tensor_file_must_load_without_pickled_code():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    assert artifacts.validate(TENSOR, buf.getvalue()) is None
    buf = io.BytesIO()
    torch.save({"f": artifacts.label}, buf)  # a pickled function: refused by weights_only
    why = artifacts.validate(TENSOR, buf.getvalue())
    assert why is not None and "weights_only=True" in why and "torch.save" in why, why


def test_the_notes_line_is_searched_in_the_notes():
    assert artifacts.validate(NOTES, None, "## Rerun\nRerun of x: 0.5 vs 0.5\n") is None
    why = artifacts.validate(NOTES, None, "## Rerun\nI did not rerun it.\n")
    assert why is not None and "add it (the rerun line)" in why, why


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "gif", "file": "a.gif"}, "kind 'gif' is not one of png, table"),
        ({"kind": "png"}, "`file` must be a plain file name"),
        ({"kind": "png", "file": "../x.png"}, "`file` must be a plain file name"),
        ({"kind": "png", "file": "a.png", "colums": []}, "unknown key(s) colums"),
        ({"kind": "table", "file": "a.csv"}, "needs `columns`"),
        ({"kind": "sweep", "file": "a.csv", "column": "T", "covers": [9, 1]}, "covers = [low, high]"),
        ({"kind": "sweep", "file": "a.csv", "column": "T", "covers": [1, 9], "min_points": 1}, "min_points"),
        ({"kind": "notes_line", "pattern": "("}, "is not a regular expression"),
    ],
)
def test_a_malformed_spec_is_one_line(spec: dict, message: str):
    with pytest.raises(ValueError) as info:
        artifacts.check_spec(spec, "lab.toml artifact 1")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
