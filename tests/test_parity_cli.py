"""`stopwise run parity` on the tiny preset: files, tables and figures; the parity config's own
checks; and which config keys each job's numbers depend on. (Resume, the job cache, workers and
reuse_from are the runner's and are tested on every experiment by the contract tests.)"""

import json

import pytest

from stopwise.cli import main
from stopwise.experiments import get_experiment, plan_jobs, resolve_config
from stopwise.tasks.parity import METHODS


def test_cli_runs_every_method_with_tables_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "parity", "--preset", "tiny", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for method in METHODS.values():
        assert method.label in table
    assert "paired over seeds" in table
    assert "± 0.00" not in table  # one seed (tiny) has no sd to show, nor claims intervals
    assert "the one seed's difference:" in table and "[95% interval]" not in table
    assert "seed 0 alone (no sd)" in table
    for figure in ["accuracy_vs_steps", "steps_vs_k", "accuracy_vs_k"]:
        assert (out / "figures" / f"{figure}.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    heads = {"l2s": ["hard", "soft", "gain"]}  # the tiny preset's l2s_heads
    labels = {line["label"] for line in results["lines"] if line["best"]}
    assert labels == {METHODS[m].variant_label(v) for m in METHODS for v in heads.get(m, [""])}
    # every method's best setting, each rule, against fixed depth's best
    assert len(results["paired_vs_fixed_depth"]) == sum(
        len(m.rules) * len(heads.get(m.name, [""])) for m in METHODS.values() if m.name != "fixed"
    )
    job = json.loads((out / "jobs" / "l2s-1-lr0.003-s0.json").read_text())
    assert job["params"] == {"method": "l2s", "value": 1.0, "lr": 0.003}
    assert [(r["variant"], r["rule"]) for r in job["record"]["rows"]] == [
        ("hard", "hazard"), ("hard", "median"), ("soft", "hazard"), ("soft", "median"),
        ("gain", "hazard"), ("gain", "median"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "override, message",
    [
        ('methods=["act","nope"]', "methods"),
        ("fixed_depth=[9]", "fixed_depth"),
        ("train_k=[0,4]", "train_k"),
        ("test_k=[6,9]", "test_k"),
        ("test_k=[1]", "test_k"),
        ("train_k=[1,4]", "must overlap"),  # with test_k=[5,8] below
        ("thesis_prior_p=1.5", "thesis_prior_p"),
        ("act_tau=[]", "act_tau"),
        ("act_lr=[]", "act_lr"),
        ("lr=0.1,0.1", "lr"),
        ("l2s_beta=1,1", "l2s_beta"),
        # equal as job names (six significant digits): act-0.0001-lr… twice
        ("act_tau=0.0001,0.000100000001", "act_tau=[0.0001, 0.000100000001] must not repeat"),
        ("policy_updates=0", "policy_updates"),
        ("test_size=50", "use at least 104"),  # with train_k=[8,8]: 1/8 of test_k's vectors
    ],
)
def test_bad_config_is_rejected_before_training(tmp_path, capsys, override, message):
    out = tmp_path / "r"
    extra = ["--set", "test_k=[5,8]"] if "overlap" in message else []
    extra += ["--set", "train_k=[8,8]"] if override.startswith("test_size") else []
    args = ["run", "parity", "--preset", "tiny", "--set", override, *extra, "--out", str(out)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def settings(*overrides):
    experiment = get_experiment("parity")
    config, _ = resolve_config(experiment, "tiny", list(overrides))
    return {p.id: p.settings for p in plan_jobs(experiment, config)}


def test_a_job_depends_on_its_own_method_keys_only():
    base = settings("seeds=0,1", "act_lr=0.001,0.003")
    act = ["act-0.0001-lr0.001", "act-0.0001-lr0.003"]
    others = ["pondernet-0.1", "pondernet-last-0.1", "l2s-1", "thesis-0.1"]
    evaluations = ["fixed-3-lr0.003", *act, *(f"{name}-lr0.003" for name in others)]

    def with_training(names):  # each evaluation job and the training job before it
        return sorted([*names, *(f"{name}-train" for name in names)])

    assert sorted(base) == sorted(
        f"{job}-s{seed}" for job in with_training(evaluations) for seed in (0, 1)
    )
    for job in ["act-0.0001-lr0.001-s1", "act-0.0001-lr0.001-train-s1"]:
        assert base[job]["params"] == {"method": "act", "value": 0.0001, "lr": 0.001}

    def changed(*overrides):
        new = settings("seeds=0,1", "act_lr=0.001,0.003", *overrides)
        return sorted({id.rsplit("-s", 1)[0] for id in base if base[id] != new[id]})

    every = with_training(evaluations)
    assert changed("updates=21") == every
    # what only the evaluation reads keeps the trained models
    for key in ["inference_mode=dense", "curve_points=3", "val_size=300", "test_size=600"]:
        assert changed(key) == sorted(evaluations)
    assert changed("test_k=[2,8]") == sorted(evaluations)
    pondernet = ["pondernet-0.1-lr0.003", "pondernet-last-0.1-lr0.003"]
    assert changed("pondernet_beta=0.02") == with_training(pondernet)
    assert changed("act_eps=0.02", "act_halting_bias=-1") == with_training(act)
    assert changed("policy_updates=11") == with_training(["l2s-1-lr0.003"])
    assert changed("thesis_prior_p=0.3") == with_training(["thesis-0.1-lr0.003"])
    assert changed("max_steps=5") == [j for j in every if "fixed" not in j]
    # report-only and runner keys never rerun a job
    assert changed("log_every=7", "workers=2", "threads=2", "checkpoint_every=9") == []


def _numbers(run):
    """A run's results.json without what differs between equal runs: timings and the
    fingerprint (of the job records' seconds)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if "seconds" not in k}
        return [plain(v) for v in value] if isinstance(value, list) else value

    results = json.loads((run / "results.json").read_text())
    return plain({k: v for k, v in results.items() if k != "fingerprint"})


def test_another_evaluation_retrains_nothing(tmp_path, capsys):
    """Another inference_mode and curve_points rerun the evaluation jobs only: the same --out
    refuses the evaluation jobs alone, and reuse_from takes every training job (its checkpoints
    included) from the first run; the results are a fresh run's with those settings."""
    tiny = ["run", "parity", "--preset", "tiny", "--set", "act_lr=0.001"]
    first, again, fresh = tmp_path / "first", tmp_path / "again", tmp_path / "fresh"
    assert main([*tiny, "--out", str(first)]) == 0
    other = [*tiny, "--set", "inference_mode=dense", "--set", "curve_points=3"]
    capsys.readouterr()
    assert main([*other, "--out", str(first)]) == 2
    refused = [line for line in capsys.readouterr().err.splitlines() if "(finished)" in line]
    assert refused and not any("-train-s" in line for line in refused)
    assert main([*other, "--set", f"reuse_from={first}", "--out", str(again)]) == 0
    jobs = {path.name: json.loads(path.read_text()) for path in (again / "jobs").glob("*.json")}
    trained = {name for name, job in jobs.items() if job["checkpoints"]}
    assert len(trained) == 6  # a training job per setting, none trained again:
    assert {name for name, job in jobs.items() if "reused_from" in job} == trained
    for name in trained:
        reused = jobs[name].pop("reused_from")
        assert reused == str((first / "jobs" / name).resolve())
        assert jobs[name] == json.loads((first / "jobs" / name).read_text())
    assert main([*other, "--out", str(fresh)]) == 0
    assert _numbers(again) == _numbers(fresh)
    assert _numbers(again)["task"]["inference_mode"] == "dense"
    assert _numbers(again) != _numbers(first)
