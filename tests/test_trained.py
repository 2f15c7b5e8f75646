"""stopwise.load_stop_model's refusals, each naming what is wrong (the models themselves are
checked for every task by the contract test: their budget curves rerun on the test split)."""

import json
import re
import shutil

import pytest

from stopwise import load_stop_model
from stopwise.cli import main
from stopwise.config import ConfigError, to_plain
from stopwise.experiments import get_experiment, resolve_config
from stopwise.trained import stop_model_names


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    assert (
        main(["run", "toy", "--preset", "tiny", "--out", str(out), "--set", "progress=false"]) == 0
    )
    return out


def test_a_run_lists_its_stop_models_and_loads_the_first_by_default(toy_run):
    assert stop_model_names(toy_run) == ["l2s"]
    trained = load_stop_model(toy_run)
    assert trained.name == "l2s" and trained.cost == "steps"


def test_an_unknown_stop_model_is_refused_naming_the_ones_there_are(toy_run):
    with pytest.raises(ValueError, match=r"no stop model 'lista'.*\['l2s'\]"):
        load_stop_model(toy_run, "lista")


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        load_stop_model(tmp_path)


def test_a_seed_the_run_did_not_run_and_an_unfinished_job_are_refused(toy_run, tmp_path):
    with pytest.raises(ValueError, match="no job 'l2s' for seed 5"):
        load_stop_model(toy_run, "l2s", seed=5)
    run = shutil.copytree(toy_run, tmp_path / "run")
    (run / "jobs" / "l2s-s0.json").unlink()
    with pytest.raises(ValueError, match="no finished job l2s-s0"):
        load_stop_model(run, "l2s")


def test_the_stops_command_prints_each_budget_point_the_run_measured(toy_run, capsys):
    """One line per distinct point, cheapest on validation first; budgets that kept a cheaper
    budget's rule (the same point) share its line, which names them."""
    assert main(["stops", str(toy_run)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("l2s: RunningMean + MLPPolicy")
    curve = json.loads((toy_run / "jobs" / "l2s-s0.json").read_text())["record"]["curve"]
    groups: list[list[dict]] = []
    for point in sorted(curve, key=lambda p: p["val_mean_cost"]):
        if groups and all(point[k] == groups[-1][0][k] for k in ("val_mean_cost", "mse")):
            groups[-1].append(point)
        else:
            groups.append([point])
    assert any(len(group) > 1 for group in groups)  # the tiny run has such budgets
    lines = re.findall(r"^    ([\d.e+-]+) → .*mse ([\d.e+-]+)(.*)$", printed, flags=re.M)
    assert len(lines) == len(groups)
    for (cost, mse, note), group in zip(lines, groups, strict=True):
        assert float(cost) == pytest.approx(group[0]["val_mean_cost"], rel=1e-3)
        assert float(mse) == pytest.approx(group[0]["mse"], rel=1e-3)
        budgets = ", ".join(f"{p['budget']:.4g}" for p in group)
        assert note == (f"  (budgets {budgets}: one rule)" if len(group) > 1 else "")
    assert "floor_steps" not in printed  # a rule's field, not a measurement


def test_a_run_ends_by_saying_how_to_load_its_stop_models(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["run", "toy", "--preset", "tiny", "--out", str(out), "--set", "progress=false"]) == 0
    )
    assert f"its stop models: stopwise stops {out.resolve()}" in capsys.readouterr().out


def test_the_stops_command_exits_2_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["stops", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_the_stops_command_says_so_when_a_run_trains_no_stop_model(tmp_path, capsys):
    """A learned-optimizers run of the MLP family alone trains no stop model: one line saying
    so (it printed nothing). Only the run's config.json is read."""
    config, _ = resolve_config(
        get_experiment("learned-optimizers"), "tiny", ["families=mlp", "stop_families=[]"]
    )
    saved = {"experiment": "learned-optimizers", "preset": "tiny", "config": to_plain(config)}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert stop_model_names(tmp_path) == []
    assert main(["stops", str(tmp_path)]) == 0
    assert (
        capsys.readouterr().out
        == f"{tmp_path}: its settings train no stop model (nothing to load)\n"
    )


def test_the_stops_command_says_which_seed_of_a_run_of_several_it_shows(toy_run, tmp_path, capsys):
    """A run of seeds 0–2 showed seed 0's stop models without saying so."""
    run = shutil.copytree(toy_run, tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["seeds"] = [0, 1, 2]
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["stops", str(run)]) == 0
    assert capsys.readouterr().out.startswith("seed 0 of [0, 1, 2] (--seed picks another)\nl2s: ")
    assert main(["stops", str(toy_run)]) == 0  # one seed: nothing to say
    assert capsys.readouterr().out.startswith("l2s: ")


def test_a_finished_jobs_damaged_or_missing_checkpoint_says_to_delete_its_record(toy_run, tmp_path):
    """The advice was "delete it and rerun", after which the finished job was not rerun and
    the checkpoint stayed missing ("no checkpoint at …", with no advice)."""
    from stopwise.checkpoints import CheckpointError

    run = shutil.copytree(toy_run, tmp_path / "run")
    stage2 = run / "checkpoints" / "l2s-s0" / "stage2.pt"
    stage2.write_bytes(stage2.read_bytes()[:100])
    record = str(run / "jobs" / "l2s-s0.json")
    with pytest.raises(
        CheckpointError, match=f"truncated or corrupted.*Delete it and {re.escape(record)}"
    ):
        load_stop_model(run, "l2s")
    stage2.unlink()
    with pytest.raises(CheckpointError, match=f"is gone; delete {re.escape(record)} to rerun"):
        load_stop_model(run, "l2s")


def test_the_stops_command_refuses_a_seed_the_run_does_not_run(toy_run, capsys):
    """It printed "seed 7 of [0]", then a line per stop model, and exited 0."""
    assert main(["stops", str(toy_run), "--seed", "7"]) == 2
    captured = capsys.readouterr()
    assert "runs seeds [0]; --seed 7 is not one of them" in captured.err and not captured.out
    assert main(["stops", str(toy_run), "--seed", "0"]) == 0


def test_a_run_whose_jobs_changed_since_says_so_not_to_delete_a_record_it_lacks(tmp_path):
    """A parity run made before training and evaluation were split (one job per setting, its
    checkpoints its own) was refused with "the finished job …-train-s0 … is gone; delete
    jobs/…-train-s0.json", a job and a file the run never had."""
    run = tmp_path / "run"
    args = ["--preset", "tiny", "--out", str(run), "--set", "methods=[pondernet]"]
    assert main(["run", "parity", *args, "--set", "progress=false"]) == 0
    (name,) = stop_model_names(run)
    load_stop_model(run, name)  # the run as made: loads
    # The old layout: no training job; the evaluation job trained, without a dependency.
    (run / "jobs" / f"{name}-train-s0.json").unlink()
    (run / "checkpoints" / f"{name}-train-s0").rename(run / "checkpoints" / f"{name}-s0")
    path = run / "jobs" / f"{name}-s0.json"
    data = json.loads(path.read_text())
    data["settings"]["after"] = {}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"job \S+-s0 ran with other settings.*new --out") as e:
        load_stop_model(run, name)
    assert "is gone" not in str(e.value) and "-train-s0.json" not in str(e.value)
