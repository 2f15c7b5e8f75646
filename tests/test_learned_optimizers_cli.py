"""`stopwise run learned-optimizers`: the tiny preset writes every table and figure (the budget
curve beside fixed depth included), and bad inputs exit 2 with a named error before anything is
written. (Resume, the job cache and workers are the runner's, tested on every experiment by the
contract tests.)"""

import copy
import json

import pytest

from stopwise.cli import main
from stopwise.contract import read_result
from stopwise.datasets import digits
from stopwise.experiments import get_experiment, resolve_config
from stopwise.tasks.learned_optimizers.data import IMAGE_COUNTS, load_images
from stopwise.tasks.learned_optimizers.report import report


def test_tiny_run_writes_tables_figures_and_budget_curves(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "learned-optimizers", "--preset", "tiny", "--out", str(out)]) == 0
    capsys.readouterr()
    table = (out / "table.md").read_text()
    for heading in ("mean log10 suboptimality", "stopping", "Budget curves against the best fixed"):
        assert heading in table
    for family in ("regression", "quadratic"):
        for figure in ("suboptimality", "budget", "tradeoff"):
            assert (out / "figures" / f"{figure}_{family}.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    stopping = results["families"]["regression"]["stopping"]
    assert {"act", "l2s", "lstm"} <= set(stopping["rows"])
    assert "meta-trained for each fixed depth" in table
    for family in ("regression", "quadratic"):
        # Meta-trained for the horizon itself (tiny: 10), the trained-for-depth job rebuilds the
        # LSTM optimizer: its numbers at step 10 are the truncated curve's at depth 10.
        trained = json.loads((out / "jobs" / f"depth-{family}-s0.json").read_text())["record"]
        truncated = json.loads((out / "jobs" / f"l2s-{family}-s0.json").read_text())["record"]
        at_horizon = {p["depth"]: p for p in trained["trained"]}[10]
        reference = {p["depth"]: p for p in truncated["fixed_depth"]}[10]
        for key in ("nll", "log10_gap", "regret"):
            assert at_horizon[key] == pytest.approx(reference[key], rel=1e-9)
        assert [r["depth"] for r in results["families"][family]["stopping"]["trained_depths"]] == [
            5,
            10,
        ]
    # Regression (tiny: two meta-training restarts) keeps the restart with the best validation
    # score, and the stop jobs run that restart's weights: the L2S job's full-depth point is the
    # LSTM job's own test number.
    lstm = json.loads((out / "jobs" / "lstm-regression-s0.json").read_text())["record"]
    scores = lstm["meta"]["restart_scores"]
    assert len(scores) == 2 and scores[lstm["meta"]["restart"]] == max(scores)
    assert lstm["meta"]["selected_score"] == max(scores)
    l2s = json.loads((out / "jobs" / "l2s-regression-s0.json").read_text())["record"]
    full = {p["depth"]: p for p in l2s["fixed_depth"]}[10]
    assert full["log10_gap"] == pytest.approx(lstm["test"]["10"]["mean"], rel=1e-12)
    assert full["nll"] == pytest.approx(lstm["test_nll"], rel=1e-12)
    _a_seed_that_reaches_nothing_counts(out)


def _a_seed_that_reaches_nothing_counts(out):
    """Seed 0's records again as seed 1, where no ACT threshold reached the reference: the
    reach row is a mean over 1 of 2 seeds and says so, and counts reaching seeds out of 2."""
    config, _ = resolve_config(get_experiment("learned-optimizers"), "tiny", ["seeds=0,1"])
    results = [read_result(json.loads(p.read_text())) for p in (out / "jobs").glob("*.json")]
    again = [copy.deepcopy(r) for r in results]
    for r in again:
        r.seed, r.id = 1, r.id.replace("-s0", "-s1")
        if r.name == "act-regression":
            r.record["reach"] = None
    table = report(results + again, config).table
    row = next(line for line in table.splitlines() if line.startswith("| ACT optimizer, cheapest"))
    assert "(1 of 2 seeds)" in row and row.rstrip(" |").endswith("/2")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("horizon=0", "horizon"),
        ("unroll=500", "unroll"),  # longer than the tiny preset's horizon
        ("grad_norm_tolerances=[-1]", "grad_norm_tolerances"),
        ("improvement_tolerances=[-0.1]", "improvement_tolerances"),
        ("improvement_tolerances=[1e-13]", "improvement_tolerances [1e-13]"),  # below the clamp
        ("grad_norm_tolerances=[0,1e-31]", "grad_norm_tolerances [1e-31]"),
        ("report_steps=[1000]", "report_steps"),
        ("trained_depths=[11]", "trained_depths"),  # beyond the tiny preset's horizon
        ("trained_depths=[0]", "trained_depths"),
        ('stop_families=["mlp"]', "stop_families"),
        # the default stop families are not all run: the message says what to set
        (
            'families=["quadratic"]',
            "not in families ['quadratic']: set stop_families with families (here stop_families=[\"quadratic\"])",
        ),
        ("act.prior_p=1.5", "prior_p"),
        ("report_steps=[5,5]", "report_steps"),
        ("beyond=[5]", "beyond"),  # inside the tiny preset's horizon
        ("mlp.train_size=1797", "mlp.train_size=1797 leaves no test image"),
        (("mlp.dataset=mnist1d", "mlp.train_size=5000"), "mnist1d has 5000 images"),
        (("act.train=halting", "act.init=scratch"), "act.init=lstm"),  # a frozen update net
    ],
)
def test_bad_input_exits_2_with_a_named_error(tmp_path, capsys, overrides, message):
    out = tmp_path / "r"
    args = ["run", "learned-optimizers", "--preset", "tiny", "--out", str(out)]
    for override in (overrides,) if isinstance(overrides, str) else overrides:
        args += ["--set", override]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_image_counts_are_the_data_sets_own():
    """Counted independently: scikit-learn's digits (mnist1d's 5,000 are its defaults)."""
    assert IMAGE_COUNTS["digits"] == len(digits()[1])
    assert len(load_images("digits", IMAGE_COUNTS["digits"] - 1)["y_test"]) == 1


def test_the_gain_objective_trains_l2s_stop_on_log_suboptimality(tmp_path, capsys):
    """l2s.objective=gain: the policy's score regresses on the gain rate of log10
    suboptimality; the run reports its stop rule and budget curve like the oracle's."""
    out = tmp_path / "run"
    args = ["run", "learned-optimizers", "--preset", "tiny", "--out", str(out)]
    sets = ["families=regression", "stop_families=regression", "l2s.objective=gain"]
    assert main([*args, *(x for s in sets for x in ("--set", s))]) == 0
    capsys.readouterr()
    job = json.loads((out / "jobs" / "l2s-regression-s0.json").read_text())
    assert job["settings"]["config"]["l2s.objective"] == "gain"
    assert "L2S-stop" in (out / "table.md").read_text()
    verdict = json.loads((out / "results.json").read_text())["dominance"]["regression: L2S-stop"]
    assert verdict["points"] >= 2
