"""Markdown tables and mean ± sd strings written out by hand."""

import math

from stopwise.reporting import markdown_table
from stopwise.stats import format_mean_and_sd, format_mean_sd, over_seeds


def test_markdown_table_by_hand_alignment_formats_and_missing_values():
    rows = [
        {"method": "LISTA", "nmse": -41.234, "steps": 7.5, "share": 0.25},
        {"method": "ISTA", "nmse": math.nan, "steps": None, "share": 1.0},
    ]
    columns = [("method", "method", "s"), ("nmse", "NMSE (dB)", ".1f"),
               ("steps", "steps", ".2f"), ("share", "share", ".0%")]  # fmt: skip
    assert markdown_table(rows, columns) == (
        "| method | NMSE (dB) | steps | share |\n"
        "|:---|---:|---:|---:|\n"  # text left, numbers right
        "| LISTA | -41.2 | 7.50 | 25% |\n"
        "| ISTA | — | — | 100% |"  # NaN and None: an em dash
    )


def test_a_negative_scale_flips_the_mean_but_never_the_sd():
    # values 1 and 3: mean 2, sample sd sqrt(2) = 1.414...; times -100
    assert format_mean_sd([1.0, 3.0], ".1f", scale=-100) == "-200.0 ± 141.4"
    assert format_mean_and_sd(0.5, 0.25, 2, "+.2f", scale=-1) == "-0.50 ± 0.25"


def test_a_table_over_one_seed_says_so_rather_than_mean_and_sd():
    # format_mean_sd shows one value bare, so the footnote must not promise an sd
    assert format_mean_sd([2.0]) == "2.00"
    assert over_seeds([4]) == "seed 4 alone (no sd)"
    assert over_seeds([0, 1, 2]) == "mean ± sd over 3 seeds [0, 1, 2]"
