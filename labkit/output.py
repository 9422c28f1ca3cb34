"""Writing a lab's tables and figures the way the rubric reads them (``labs/lesson_NN/lab.toml``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV, the columns in first-seen order (a `table` artifact names its columns)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure drawn by the Agg backend (no display, whatever backend a notebook uses)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: labkit starts without matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig
