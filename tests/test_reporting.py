"""The figure helpers of stopwise.reporting against the matplotlib calls they stand for."""

import io
import math

import numpy as np
import pytest
import torch

from stopwise.reporting import finish_axes, format_number, markdown_table, new_figure, points_xy


def _pixels(figure) -> np.ndarray:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=60)
    plt.close(figure)
    buffer.seek(0)
    return plt.imread(buffer)


def _drawn(finish) -> np.ndarray:
    figure, axes = new_figure(4.0, 3.0)
    axes.plot([1, 2, 3], [3.0, 1.0, 2.0], "-o", label="a curve")
    axes.plot([1, 3], [2.0, 2.5], "s--", label="another")
    finish(axes)
    return _pixels(figure)


@pytest.mark.parametrize(
    "kwargs, by_hand",
    [
        (
            {"title": "T", "title_size": 8, "legend": 6, "outside": True},
            lambda ax: (
                ax.set_xlabel("x"),
                ax.set_ylabel("y"),
                ax.set_title("T", fontsize=8),
                ax.grid(True, alpha=0.3),
                ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5)),
            ),
        ),
        (
            {"title": "T"},
            lambda ax: (
                ax.set_xlabel("x"),
                ax.set_ylabel("y"),
                ax.set_title("T"),
                ax.grid(True, alpha=0.3),
                ax.legend(fontsize=7),
            ),
        ),
        (
            {"grid": False, "legend": None},
            lambda ax: (ax.set_xlabel("x"), ax.set_ylabel("y")),
        ),
    ],
)
def test_finish_axes_draws_what_the_calls_by_hand_draw(kwargs, by_hand):
    helper = _drawn(lambda ax: finish_axes(ax, "x", "y", **kwargs))
    assert np.array_equal(helper, _drawn(by_hand))
    assert not np.array_equal(helper, _drawn(lambda ax: None))  # it draws something


def test_finish_axes_settings():
    figure, axes = new_figure()
    axes.plot([0, 1], [0, 1], label="line")
    finish_axes(axes, None, "y", "title", title_size=9, legend=6, outside=True)
    assert axes.get_xlabel() == "" and axes.get_ylabel() == "y"
    assert axes.title.get_text() == "title" and axes.title.get_fontsize() == 9
    assert all(line.get_visible() for line in axes.get_xgridlines())
    legend = axes.get_legend()
    assert legend.get_texts()[0].get_fontsize() == 6
    assert legend._loc == 6  # "center left"
    bbox = legend.get_bbox_to_anchor().transformed(axes.transAxes.inverted())
    assert (bbox.x0, bbox.y0) == pytest.approx((1.0, 0.5))
    import matplotlib.pyplot as plt

    plt.close(figure)

    figure, axes = new_figure()
    finish_axes(axes, "x", "y", "title", legend=None, grid=False)
    assert axes.get_legend() is None
    assert axes.title.get_fontsize() == pytest.approx(12.0)  # matplotlib's "large"
    assert not any(line.get_visible() for line in axes.get_xgridlines())
    plt.close(figure)


def test_points_xy():
    points = [
        {"mean_steps": 2.5, "mse": 0.1, "cost": 7},
        {"mean_steps": 1.0, "mse": 0.3, "cost": 3},
    ]
    assert points_xy(points, "mse") == ([2.5, 1.0], [0.1, 0.3])
    assert points_xy(points, "mse", "cost") == ([7, 3], [0.1, 0.3])
    assert points_xy([], "mse") == ([], [])


def test_numbers_that_round_to_zero_print_without_a_sign_and_bars_stay_in_their_cell():
    cases = [
        ((-0.0, ".2f"), "0.00"),
        ((np.float32(-0.0), ".2f"), "0.00"),
        ((torch.tensor(-0.0).item(), ".2f"), "0.00"),
        ((-0.001, ".2f"), "0.00"),
        ((-0.001, "+.2f"), "+0.00"),
        ((-0.01, ".2f"), "-0.01"),
        ((-math.inf, ".2f"), "-inf"),
        ((-0.0004, ".1%"), "0.0%"),
    ]
    for (value, fmt), text in cases:
        assert format_number(value, fmt) == text, (value, fmt)
    table = markdown_table([{"a": "L2S | β=1", "b": 1.0}], [("a", "x", "s"), ("b", "y", ".1f")])
    assert table.splitlines()[-1] == r"| L2S \| β=1 | 1.0 |"


def test_report_figures_are_not_held_open_by_pyplot():
    """Reports build many figures (a test calling several reports in one process built more
    than pyplot's 20 and failed on its warning); new_figure keeps them out of pyplot."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    figures = [new_figure()[0] for _ in range(25)]
    assert set(plt.get_fignums()) == before
    buffer = io.BytesIO()
    figures[-1].savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"
