"""Small helpers for the tables and figures of a run: markdown tables and headless matplotlib."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoints import atomic_write_bytes

__all__ = [
    "markdown_table",
    "new_figure",
    "save_figure",
    "format_number",
    "in_x_order",
    "points_xy",
    "finish_axes",
]


def format_number(value: Any, fmt: str = ".2f") -> str:
    """Format numbers with ``fmt``; None and NaN print as an em dash, strings as they are,
    minus zero as zero."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "—"
    text = format(value, fmt)
    if re.fullmatch(r"-[0.,]+(e[+-]0+)?%?", text):  # −0.0, or a small negative that rounds to 0
        text = ("+" if "+" in fmt else "") + text[1:]
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a literal bar, not a column break


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A GitHub markdown table; ``columns`` are ``(key, header, format)``, strings left-aligned."""
    header = "| " + " | ".join(_cell(h) for _, h, _ in columns) + " |"
    align = "|" + "|".join(":---" if f == "s" else "---:" for _, _, f in columns) + "|"
    body = [
        "| " + " | ".join(_cell(format_number(row.get(k), f)) for k, _, f in columns) + " |"
        for row in rows
    ]
    return "\n".join([header, align, *body])


def in_x_order(points: Sequence[dict[str, Any]], x: str = "mean_steps") -> list[dict[str, Any]]:
    """A curve's points sorted by their ``x`` value, so a line drawn through them never doubles
    back (a later budget may use fewer mean steps than an earlier one)."""
    return sorted(points, key=lambda p: p[x])


def points_xy(
    points: Sequence[dict[str, Any]], y: str, x: str = "mean_steps"
) -> tuple[list[Any], list[Any]]:
    """A curve's ``x`` values and its ``y`` values, in the points' order, to plot or interpolate."""
    return [p[x] for p in points], [p[y] for p in points]


def new_figure(width: float = 5.0, height: float = 3.5):
    """A (figure, axes) pair, headless and outside pyplot: no display is needed, and pyplot
    does not keep the figure open, so building reports in a loop (or in a notebook) holds no
    figure in memory after its last reference is gone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), constrained_layout=True)
    return figure, figure.add_subplot()


def finish_axes(
    axes,
    xlabel: str | None,
    ylabel: str | None,
    title: str | None = None,
    *,
    title_size: float | None = None,
    legend: float | None = 7,
    outside: bool = False,
    grid: bool = True,
) -> None:
    """Label ``axes`` (a None label is left unset), title it (matplotlib's title size unless
    ``title_size``), grid it faintly and draw its legend in font size ``legend`` (None: no
    legend). ``outside`` puts the legend to the right of the axes, centred: beside a figure
    with many curves it would cover them."""
    if xlabel is not None:
        axes.set_xlabel(xlabel)
    if ylabel is not None:
        axes.set_ylabel(ylabel)
    if title is not None:
        size = {} if title_size is None else {"fontsize": title_size}
        axes.set_title(title, **size)
    if grid:
        axes.grid(True, alpha=0.3)
    if legend is not None:
        where = {"loc": "center left", "bbox_to_anchor": (1.0, 0.5)} if outside else {}
        axes.legend(fontsize=legend, **where)


def save_figure(figure, path: str | Path) -> Path:
    """Save as PNG atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
