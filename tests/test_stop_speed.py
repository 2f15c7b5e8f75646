"""benchmarks/stop_speed.py on tiny runs of two tasks: the JSON's schema, and every row's ideal
speedup against full MACs / mean MACs recomputed independently (dense hazards, the rule applied
after the fact, the MAC formula written out)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# One test worker for the module and session-scoped fixtures: its tiny runs and measurement are
# made once (a module fixture is set up again when the worker runs another module in between).
pytestmark = pytest.mark.xdist_group("stop-speed")

ROW_KEYS = {
    "task", "model", "threads", "budget", "rows", "batch", "row", "repeats", "max_steps",
    "mean_steps", "mean_macs", "skipped_decisions", "full_macs", "ideal_speedup", "full_seconds",
    "adaptive_seconds",
    "wall_speedup", "cpu_speedup", "wall_over_ideal", "cpu_over_ideal", "speedup_target_met",
    "time_ideal_speedup", "wall_over_time_ideal", "unpooled_wall_speedup",
    "step_macs", "policy_macs", "policy_fraction", "policy_target_met",
    "step_batch", "step_seconds", "step_seconds_sixteenth", "fixed_share",
}  # fmt: skip


@pytest.fixture(scope="session")
def stop_speed():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("stop_speed")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="session")
def measured(stop_speed, tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    out = root / "stop_speed.json"
    argv = ["--tiny", "--tasks", "sparse-recovery", "parity", "--threads", "1", "--seconds", "0"]
    argv += ["--repeats", "1", "--points", "3", "--runs", str(root / "runs"), "--out", str(out)]
    assert stop_speed.main(argv) == 0
    return root, json.loads(out.read_text())


def test_schema(measured):
    _, report = measured
    for key in ("date", "torch", "machine", "load", "targets", "cases", "rows", "wall_seconds"):
        assert key in report
    # each model is labelled with the preset that trained it (every one said "quick")
    assert all(case["architecture"].endswith(" (tiny)") for case in report["cases"])
    assert {"uptime_before", "uptime_after"} <= set(report["load"])
    rows = report["rows"]
    models = {(r["task"], r["model"]) for r in rows}
    assert models == {
        ("sparse-recovery", "LISTA-stop"),
        ("sparse-recovery", "LISTA-CP-SS-stop"),
        ("parity", "L2S GRU (hard oracle)"),
    }
    for r in rows:
        assert set(r) == ROW_KEYS
        assert 1 <= r["mean_steps"] <= r["max_steps"]
        assert r["wall_over_ideal"] == pytest.approx(r["wall_speedup"] / r["ideal_speedup"])
        assert r["policy_fraction"] == pytest.approx(r["policy_macs"] / r["step_macs"])
        assert r["speedup_target_met"] == (r["wall_speedup"] >= 0.8 * r["ideal_speedup"])
        assert r["time_ideal_speedup"] > 0
        ratio = r["wall_speedup"] / r["time_ideal_speedup"]
        assert r["wall_over_time_ideal"] == pytest.approx(ratio)
        # a + b·rows through the two timed batch sizes: a / (a + b·batch) is the fixed share
        full, few, n = r["step_seconds"], r["step_seconds_sixteenth"], r["step_batch"]
        b = max(full - few, 0.0) / (n - max(1, n // 16))
        assert r["fixed_share"] == pytest.approx((full - b * n) / full)
        assert r["fixed_share"] <= 1.0 and full > 0
        # Parity's rows are timed in chunks: also chunk by chunk, never pooled.
        assert (r["unpooled_wall_speedup"] is None) == (r["task"] == "sparse-recovery")
    for task, model in models:  # 2-3 distinct budgets per curve, the cheapest first
        steps = [r["mean_steps"] for r in rows if r["model"] == model and r["task"] == task]
        assert len(steps) >= 2 and steps == sorted(steps)


def test_ideal_speedup_recomputed_independently(stop_speed, measured):
    """Sparse recovery: cost of stopping after step t = the model's cumulative step MACs at t
    plus the features and policy MACs of the t + 1 decisions so far (a plain loop); stops from
    the dense hazards."""
    from stopwise.contract import RunDir, job_id
    from stopwise.inference import THRESHOLD_KINDS, hazard_trajectory, stop_indices
    from stopwise.tasks.sparse_recovery.experiment import STOP_MODELS, load_stop_model

    root, report = measured
    run = root / "runs" / "sparse-recovery"
    labels = {"lista_stop": "LISTA-stop", "cpss_stop": "LISTA-CP-SS-stop"}
    checked = 0
    for name, label in labels.items():
        model, policy, valid, _, problem = load_stop_model(run, name)
        record = RunDir(run).job_file(job_id(STOP_MODELS[name][1], 0))["record"]
        y = problem.test.open().y
        hazards = hazard_trajectory(model, policy, y)
        features = model.feature_costs().tolist()
        T = model.max_steps
        cost, decisions = [], 0.0
        for t in range(T):
            decisions += features[t] + policy.macs()
            cost.append(float(model.step_costs()[t]) + decisions)
        full = float(model.step_costs()[-1])
        by_budget = {f"{p['budget']:.4g}": p for p in record["curve"]}
        for row in (r for r in report["rows"] if r["model"] == label):
            point = by_budget[row["budget"]]
            rule = THRESHOLD_KINDS[record["policy"]["kind"]](point["score_threshold"])
            index = stop_indices(hazards, rule, valid).tolist()
            # A floored hazard threshold (+inf before its floor) asks no policy there: not
            # charged. A cumulative rule asks it at every step (it carries P(stopped by t)).
            threshold = torch.as_tensor(point["score_threshold"], dtype=torch.float64).expand(T)
            asked = [t for t in range(T) if valid[t]][:-1]
            skipped = sum(float(threshold[t]) == math.inf for t in asked)
            skipped *= record["policy"]["kind"] == "hazard"
            decision = features[T // 2] + policy.macs()  # y's energy is read at any first step
            # Where the threshold is −∞ every row stops, and the rows there were asked nothing.
            certain = next((t for t in asked if float(threshold[t]) == -math.inf), None)
            unasked = 0 if certain is None else sum(t == certain for t in index) / len(index)
            mean = sum(cost[t] for t in index) / len(index) - (skipped + unasked) * decision
            assert row["skipped_decisions"] == skipped
            assert row["full_macs"] == pytest.approx(full)
            assert row["mean_macs"] == pytest.approx(mean, rel=1e-9)
            assert row["ideal_speedup"] == pytest.approx(full / mean, rel=1e-9)
            assert row["mean_steps"] == pytest.approx(sum(t + 1 for t in index) / len(index))
            checked += 1
    assert checked >= 4


def test_parity_macs_recomputed(measured):
    """The parity GRU: a GRUCell step costs 3h(n + 1) + 3h² MACs, a decision reads the output
    (h) and the halting head (h); full depth is T steps and one output."""
    root, report = measured
    config = json.loads((root / "runs" / "parity" / "config.json").read_text())["config"]
    n, h, T = config["n"], config["hidden"], config["max_steps"]
    step = 3 * h * (n + 1) + 3 * h * h
    rows = [r for r in report["rows"] if r["task"] == "parity"]
    assert len(rows) >= 2
    for row in rows:
        # decisions skipped: none, or every one for a rule that never stops early (full depth)
        assert row["skipped_decisions"] in (0, T - 1)
        mean = row["mean_steps"] * (step + 2 * h) - row["skipped_decisions"] * 2 * h
        if row["budget"] == "1":  # fit_threshold: −∞, every row stops at step 1, no head asked
            assert row["mean_steps"] == 1
            mean = step + h  # the step and its output
        assert row["full_macs"] == pytest.approx(T * step + h)
        assert math.isclose(row["ideal_speedup"], (T * step + h) / mean, rel_tol=1e-9)
        assert row["policy_fraction"] == pytest.approx(2 * h / step)


def test_depth_seconds_runs_every_chunk_through_every_step(stop_speed):
    """The time ideal's per-depth seconds: T non-negative entries from one warm-up and
    ``repeats`` passes over every chunk of the timed rows, each through every step."""
    from test_inference import make

    model, policy, x = make(seed=1, batch=50)
    case = stop_speed.SpeedCase(
        "toy", "toy", model, policy, x, {}, lambda i: i.double(), 1.0, 1.0, 0.0, chunk=20
    )
    model.rows_advanced = 0
    seconds = stop_speed.depth_seconds(case, repeats=2)
    assert seconds.shape == (model.max_steps,) and bool((seconds >= 0).all())
    assert model.rows_advanced == 3 * 50 * model.max_steps  # chunks of 20, 20 and 10 rows


def test_a_widened_case_repeats_its_rows_as_one_batch(stop_speed):
    """``--batch``: the timed rows repeated to at least the batch, run unchunked; every row's
    stop step is that of the row it copies (checked one row at a time, plain Python)."""
    from test_inference import make, reference_stop

    from stopwise.inference import HazardThreshold

    model, policy, x = make(seed=3, batch=50)
    rule = HazardThreshold(0.5)
    case = stop_speed.SpeedCase(
        "toy", "toy", model, policy, x, {"b": rule}, lambda i: i.double(), 1.0, 1.0, 0.0, chunk=20
    )
    wide = stop_speed.widened(case, 120)
    assert wide.inputs.shape == (150, 6) and wide.chunk is None and case.chunk == 20
    assert case.notes == [] and "repeated 3×" in wide.notes[0]
    own = [t for t, _ in reference_stop(model, policy, x, 0.5, [True] * model.max_steps)]
    assert stop_speed.stop_index(wide, rule).tolist() == own * 3
    chunked = stop_speed.widened(case, 120, chunk=25)  # --chunk: the same rows, 25 at a time
    assert chunked.chunk == 25 and torch.equal(chunked.inputs, wide.inputs)
    assert "entering 25 at a time" in chunked.notes[0]
    assert stop_speed.stop_index(chunked, rule).tolist() == own * 3


@pytest.mark.parametrize("argv", [["--chunk", "24"], ["--batch", "100", "--chunk", "0"]])
def test_chunk_needs_a_batch_and_a_positive_count(stop_speed, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        stop_speed.main(argv)
    assert exit_info.value.code == 2 and "--chunk needs --batch" in capsys.readouterr().err


def test_the_learned_optimizers_run_with_their_chosen_restart(stop_speed, tmp_path):
    """The tiny preset meta-trains two restarts in one stage: the script read a per-restart
    checkpoint that does not exist there (CheckpointError) instead of the restart the job kept."""
    out = tmp_path / "stop_speed.json"
    argv = ["--tiny", "--tasks", "learned-optimizers", "--threads", "1", "--seconds", "0"]
    argv += ["--repeats", "1", "--points", "2", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    assert stop_speed.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} == {"LSTM optimizer + ACT halting", "LSTM optimizer + L2S"}


def test_a_cached_run_of_other_settings_is_refused_naming_runs(stop_speed, tmp_path):
    """A cache trained by an older stopwise (a parity run made before training and evaluation
    were split) or with other settings ended in a traceback whose advice, "choose another
    --out", names this script's JSON output, not its --runs cache."""
    from stopwise.experiments import run_experiment

    runs = tmp_path / "runs"
    run_experiment("parity", "tiny", runs / "parity", ["methods=[l2s]", "updates=21"])
    argv = ["--tiny", "--tasks", "parity", "--threads", "1", "--seconds", "0", "--repeats", "1"]
    argv += ["--runs", str(runs), "--out", str(tmp_path / "stop_speed.json")]
    with pytest.raises(SystemExit, match=r"(?s)holds jobs run with other settings.*another --runs"):
        stop_speed.main(argv)


def test_few_shot_with_a_batch_times_that_many_test_tasks(stop_speed, tmp_path):
    """Issue 17 asks for ≥ 1,000 rows; few-shot's rows are tasks, 40 by default: ``--batch N``
    times N tasks drawn from the test characters, beyond the run's own test tasks (30 in tiny)."""
    out = tmp_path / "stop_speed.json"
    argv = ["--tiny", "--tasks", "few-shot", "--threads", "1", "--seconds", "0", "--batch", "45"]
    argv += ["--repeats", "1", "--points", "2", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    assert stop_speed.main(argv) == 0
    report = json.loads(out.read_text())
    assert {r["rows"] for r in report["rows"]} == {45}
    (case,) = report["cases"]
    assert any("45 tasks drawn from the test characters" in note for note in case["notes"])
