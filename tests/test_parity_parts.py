"""The parity task's parts: data, step model, ACT's mean-field inference, the thesis posterior and
its stopping rules, and the metrics."""

import math

import numpy as np
import pytest
import torch

from stopwise.inference import MODES, run_adaptive
from stopwise.objectives import act_halting, act_output
from stopwise.steps import unroll
from stopwise.tasks.parity import (
    ACTRule,
    MeanFieldACT,
    ParityGRU,
    infer,
    posterior_logits,
    report,
    sample_parity,
)
from stopwise.tasks.parity.metrics import average_ranks, evaluate_rule, spearman

CONFIG = {"inference_mode": "shrink", "act_eps": 0.01}


def test_parity_vectors_have_k_signed_entries_and_the_right_target():
    batch = sample_parity(2000, 9, (2, 5), torch.Generator().manual_seed(0))
    nonzero = (batch.x != 0).sum(-1)
    assert torch.equal(nonzero, batch.k)
    assert int(batch.k.min()) == 2 and int(batch.k.max()) == 5
    assert set(batch.x.unique().tolist()) == {-1.0, 0.0, 1.0}
    for row in range(50):
        plus = sum(1 for v in batch.x[row].tolist() if v == 1.0)
        assert batch.y[row].item() == plus % 2
    # Positions and signs are spread: every position is used and both targets occur evenly.
    assert bool((batch.x != 0).any(0).all())
    assert abs(batch.y.mean().item() - 0.5) < 0.05
    again = sample_parity(2000, 9, (2, 5), torch.Generator().manual_seed(0))
    assert torch.equal(batch.x, again.x)


@pytest.mark.parametrize("k_range", [(0, 3), (3, 2), (1, 10), (1,)])
def test_bad_k_ranges_are_rejected(k_range):
    with pytest.raises(ValueError, match="k range"):
        sample_parity(4, 9, k_range, torch.Generator())


def test_step_model_reads_the_first_step_flag_and_rejects_bad_shapes():
    torch.manual_seed(0)
    model = ParityGRU(6, 8, 5)
    x = sample_parity(3, 6, (1, 6), torch.Generator().manual_seed(1)).x
    trajectory = unroll(model, x, with_features=True)
    assert trajectory.predictions.shape == (3, 5) and trajectory.features.shape == (3, 5, 8)
    # The same hidden state fed with and without the flag gives different next states.
    state = model.start(x)
    assert not torch.allclose(model.advance(state, 0)["h"], model.advance(state, 1)["h"])
    with pytest.raises(ValueError, match="shape"):
        model.start(torch.zeros(3, 7))


@pytest.mark.parametrize("mode", MODES)
def test_mean_field_act_inference_equals_act_on_the_full_trajectory(mode):
    torch.manual_seed(0)
    model = ParityGRU(8, 16, 7, halting_bias=-1.0).eval()
    x = sample_parity(300, 8, (1, 8), torch.Generator().manual_seed(2)).x
    with torch.no_grad():
        trajectory = unroll(model, x, with_features=True)
        halting = act_halting(model.halting(trajectory.features), eps=0.05)
        expected = act_output(halting.weights, trajectory.predictions)
        result = run_adaptive(MeanFieldACT(model), model.halting, x, ACTRule(0.05), mode)
    assert 1 < halting.steps.float().mean() < 7  # some rows halt early, not all at one step
    assert torch.equal(result.steps_used, halting.steps)
    assert torch.allclose(result.predictions, expected, atol=1e-6)


def test_posterior_logits_are_minus_the_exclusive_cumulative_sum():
    z = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    assert posterior_logits(z).tolist() == [[0.0, -0.5, 0.5, -1.5]]


def first_local_max(a: list[float]) -> int:
    for t in range(len(a) - 1):
        if a[t + 1] <= a[t]:
            return t
    return len(a) - 1


class RuggedHead(torch.nn.Module):
    """A stop logit that changes sign often along the steps, so posteriors have many local maxima."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(hidden) * 30)

    def forward(self, features, t=0):
        return torch.sin(features @ self.w)


@pytest.mark.parametrize("mode", MODES)
def test_thesis_rules_greedy_is_the_first_local_max_and_mode_the_argmax(mode):
    torch.manual_seed(3)
    model = ParityGRU(8, 16, 9).eval()
    head = RuggedHead(16)
    x = sample_parity(400, 8, (1, 8), torch.Generator().manual_seed(4)).x
    config = {**CONFIG, "inference_mode": mode}
    with torch.no_grad():
        trajectory = unroll(model, x, with_features=True)
        a = posterior_logits(head(trajectory.features))
    greedy_logits, greedy = infer("greedy", model, head, x, config)
    mode_logits, mode_index = infer("mode", model, head, x, config)
    expected_greedy = [first_local_max(row) for row in a.tolist()]
    assert greedy.tolist() == expected_greedy
    assert mode_index.tolist() == a.argmax(-1).tolist()
    rows = torch.arange(400)
    assert torch.allclose(greedy_logits, trajectory.predictions[rows, greedy], atol=1e-6)
    assert torch.allclose(mode_logits, trajectory.predictions[rows, mode_index], atol=1e-6)
    assert (greedy <= mode_index).all()  # the first local max comes no later than the global one
    assert (greedy != mode_index).any()  # the rugged posteriors make the two rules differ


def test_every_rule_gives_the_same_stops_in_every_mode():
    torch.manual_seed(5)
    model = ParityGRU(8, 16, 6).eval()
    x = sample_parity(200, 8, (1, 8), torch.Generator().manual_seed(6)).x
    for rule in ["act", "sample", "median", "hazard", "greedy"]:
        outputs = [
            infer(rule, model, model.halting, x, {**CONFIG, "inference_mode": m}) for m in MODES
        ]
        for logits, stop in outputs[1:]:
            assert torch.equal(stop, outputs[0][1]), rule
            assert torch.allclose(logits, outputs[0][0], atol=1e-6), rule
    with pytest.raises(ValueError, match="unknown inference rule"):
        infer("nope", model, model.halting, x, CONFIG)


def test_average_ranks_and_spearman_by_hand():
    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
    # Ranks (1, 2, 3, 4) and (1, 3, 2, 4): ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/60 = 0.8.
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 12, 300) + rng.integers(0, 5, 300)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_evaluate_rule_splits_interpolation_and_extrapolation():
    logits = torch.tensor([1.0, -1.0, 1.0, 1.0, -2.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    k = torch.tensor([1, 2, 2, 5, 6])
    stop = torch.tensor([0, 1, 1, 3, 4])
    result = evaluate_rule(logits, stop, y, k, train_k=(1, 4))
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["interpolation"] == pytest.approx(2 / 3)
    assert result["extrapolation"] == pytest.approx(1 / 2)
    assert result["mean_steps"] == pytest.approx((1 + 2 + 2 + 4 + 5) / 5)
    assert result["spearman"] == pytest.approx(1.0)
    assert [e["k"] for e in result["per_k"]] == [1, 2, 5, 6]
    assert result["per_k"][1] == {"k": 2, "count": 2, "accuracy": 0.5, "mean_steps": 2.0}
    constant = evaluate_rule(logits, torch.zeros(5, dtype=torch.long), y, k, train_k=(1, 6))
    assert constant["spearman"] is None and constant["extrapolation"] is None


def _line(label: str, value: float, rule: str = "r", main_rule: bool = True, **extra) -> dict:
    return {
        "label": label,
        "value": value,
        "rule": rule,
        "main_rule": main_rule,
        "symbol": "x",
        "causal": True,
        "seeds": [0, 1],
        "interpolation_mean": 0.9,
        "interpolation_std": 0.01,
        "interpolation_min": 0.89,
        "extrapolation_mean": None,
        "successes": 0,
        "mean_steps": 3.0,
        "mean_steps_std": 0.5,
        "steps_run": 3.0,
        "spearman_mean": 0.1,
        "train_seconds": 10.0,
        **extra,
    }


def test_sensitivity_lines_keep_main_rules_of_swept_methods_by_value():
    lines = [
        _line("B", 3.0),
        _line("A", 0.1),
        _line("B", 1.0),
        _line("B", 1.0, rule="other", main_rule=False),
        _line("C", 5.0),  # one value: not swept
    ]
    kept = report.sensitivity_lines(lines)
    assert [(line["label"], line["value"]) for line in kept] == [("B", 1.0), ("B", 3.0)]


def test_lines_table_adds_a_run_column_only_for_lines_with_a_source():
    plain = report.lines_table([_line("A", 0.1)])
    assert "| run |" not in plain and "x=0.1" in plain and "90.00 ± 1.00" in plain
    sourced = report.lines_table([_line("A", 0.1, source="sweep"), _line("A", 1.0)])
    assert sourced.splitlines()[0].endswith("| run |")
    assert sourced.splitlines()[2].endswith("| sweep |")


def test_benchmark_merge_completes_a_sweep_with_the_benchmarks_other_values():
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("parity_benchmark", folder / "parity.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(folder))
    task = {"n": 16, "updates": 10, "workers": 2, "threads": 1}
    sweep = {"task": task, "lines": [_line("A", 0.3), _line("A", 3.0)]}
    benchmark = {
        "task": {**task, "workers": 1},
        "lines": [_line("A", 1.0), _line("A", 3.0, successes=5), _line("F", 2), _line("F", 4)],
    }
    rows = bench.with_benchmark_lines(sweep, benchmark).splitlines()[2:]
    assert [row.split("|")[2].strip() for row in rows] == ["x=0.3", "x=1", "x=3", "x=2", "x=4"]
    assert [row.split("|")[-2].strip() for row in rows] == ["sweep", "benchmark", "sweep"] + [
        "benchmark"
    ] * 2
    assert "0/2" in rows[2]  # the sweep's own line wins over the benchmark's at the same value
    assert bench.with_benchmark_lines({**sweep, "task": {**task, "n": 8}}, benchmark) is None
