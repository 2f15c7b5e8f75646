"""benchmarks/learned_optimizers_restarts.py: the best-of-k summary, checked on four runs by
hand (every 3-subset written out), and a two-seed, two-iteration run end to end."""

import importlib
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("learned_optimizers_restarts")


def test_best_of_k_keeps_the_best_validation_score_of_every_subset(script):
    runs = [  # validation score, development log gaps at 20 and 100
        {"validation_score": 3.0, "log10_gap_20": -10.0, "log10_gap_100": -20.0},
        {"validation_score": 1.0, "log10_gap_20": -4.0, "log10_gap_100": -8.0},
        {"validation_score": 2.0, "log10_gap_20": -6.0, "log10_gap_100": -12.0},
        {"validation_score": 0.0, "log10_gap_20": -2.0, "log10_gap_100": -4.0},
    ]
    out = script.summarise(runs, 3)
    # Subsets {0,1,2}, {0,1,3}, {0,2,3} keep run 0; {1,2,3} keeps run 2.
    kept = out["kept"]["best_of_3"]["log10_gap_20"]
    assert out["subsets"] == 4
    assert kept["mean"] == pytest.approx((3 * -10.0 - 6.0) / 4)
    assert kept["worst"] == -6.0
    single = out["kept"]["single_run"]["log10_gap_100"]
    assert single == {"mean": pytest.approx(-11.0), "worst": -4.0}
    # a higher score always goes with a lower gap here: rank correlation 1
    assert out["spearman_validation_score_vs_minus_log10_gap"]["log10_gap_20"] == pytest.approx(1)


def test_tiny_pilot_writes_its_runs_and_summary(script, tmp_path):
    out = tmp_path / "pilot.json"
    assert script.main(["--seeds", "1", "2", "--iterations", "2", "--restarts", "2",
                        "--family", "quadratic", "--hand", "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert [r["seed"] for r in result["runs"]] == [1, 2]
    assert result["subsets"] == 1
    assert "best_of_2" in result["kept"]
    momentum = result["hand_designed"]["momentum"]
    assert momentum["log10_gap_100"] < momentum["log10_gap_20"] < 0  # tuned: it makes progress


def test_summarise_rewrites_the_file_it_reads(script, tmp_path):
    earlier = tmp_path / "earlier.json"
    runs = [{"validation_score": float(s), "log10_gap_20": -s, "log10_gap_100": -2.0 * s}
            for s in (1, 2, 3)]  # fmt: skip
    earlier.write_text(json.dumps({"family": "quadratic", "runs": runs}))
    assert script.main(["--summarise", str(earlier), "--restarts", "2"]) == 0
    result = json.loads(earlier.read_text())
    assert result["runs"] == runs and result["subsets"] == 3
    assert result["kept"]["best_of_2"]["log10_gap_20"]["worst"] == -2.0
