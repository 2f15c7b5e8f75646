"""`stopwise run parity` on the tiny preset: files, tables, figures, resume, parallel workers and
config errors."""

import json

import pytest

import stopwise.tasks.parity.experiment as experiment
from stopwise.cli import main
from stopwise.tasks.parity import METHODS


def rows_by_key(path):
    results = json.loads((path / "results.json").read_text())
    return {
        (r["id"], r["variant"], r["rule"]): (r["accuracy"], r["mean_steps"], r["spearman"])
        for r in results["rows"]
    }


def test_cli_runs_every_method_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "parity", "--preset", "tiny", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for method in METHODS.values():
        assert method.label in table
    for name in ["config.json", "env.json", "results.json", "table.md"]:
        assert (out / name).exists()
    for figure in ["accuracy_vs_steps", "steps_vs_k", "accuracy_vs_k"]:
        assert (out / "figures" / f"{figure}.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    labels = {line["label"] for line in results["lines"] if line["best"]}
    assert labels == {METHODS[m].variant_label(v) for m in METHODS for v in METHODS[m].variants}
    first = rows_by_key(out)

    # Rerun after losing the job summaries: finished stages are restored from their checkpoints,
    # nothing is retrained, and the numbers are the same.
    for path in (out / "jobs").iterdir():
        path.unlink()
    assert main(["run", "parity", "--preset", "tiny", "--out", str(out)]) == 0
    assert rows_by_key(out) == first
    assert not any(
        r["resumed"] is False for r in json.loads((out / "results.json").read_text())["rows"]
    )


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert main(["run", "parity", "--preset", "tiny", "--out", str(reference)]) == 0

    out = tmp_path / "interrupted"
    original = experiment.evaluate_rule
    calls = {"n": 0}

    def crash_after_some_work(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(experiment, "evaluate_rule", crash_after_some_work)
    with pytest.raises(KeyboardInterrupt):
        main(["run", "parity", "--preset", "tiny", "--out", str(out)])
    monkeypatch.setattr(experiment, "evaluate_rule", original)
    assert main(["run", "parity", "--preset", "tiny", "--out", str(out)]) == 0
    assert rows_by_key(out) == rows_by_key(reference)


def test_two_worker_processes_give_the_same_numbers(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--preset", "tiny", "--set", 'methods=["act","thesis"]']
    assert main(["run", "parity", *args, "--out", str(one)]) == 0
    assert main(["run", "parity", *args, "--set", "workers=2", "--out", str(two)]) == 0
    assert rows_by_key(one) == rows_by_key(two)


@pytest.mark.parametrize(
    "override, message",
    [
        ('methods=["act","nope"]', "unknown methods"),
        ("fixed_depth=[9]", "fixed_depth"),
        ("train_k=[0,4]", "k range"),
        ("thesis_prior_p=1.5", "thesis_prior_p"),
        ("act_tau=[]", "act_tau"),
    ],
)
def test_bad_config_is_rejected_before_training(tmp_path, capsys, override, message):
    out = tmp_path / "r"
    assert main(["run", "parity", "--preset", "tiny", "--set", override, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_reuse_from_copies_only_jobs_with_the_same_settings(tmp_path):
    source = tmp_path / "source"
    assert (
        main(
            ["run", "parity", "--preset", "tiny", "--set", 'methods=["act"]', "--out", str(source)]
        )
        == 0
    )
    same, other = tmp_path / "same", tmp_path / "other"
    args = ["run", "parity", "--preset", "tiny", "--set", f"reuse_from={source}"]
    assert main([*args, "--set", 'methods=["act","thesis"]', "--out", str(same)]) == 0
    reused = json.loads((same / "jobs" / "act-0.0001-s0.json").read_text())
    assert "reused_from" in reused
    assert "reused_from" not in json.loads((same / "jobs" / "thesis-0.1-s0.json").read_text())
    assert {k: v for k, v in rows_by_key(same).items() if k[0].startswith("act")} == rows_by_key(
        source
    )
    assert (
        main([*args, "--set", 'methods=["act"]', "--set", "updates=21", "--out", str(other)]) == 0
    )
    assert "reused_from" not in json.loads((other / "jobs" / "act-0.0001-s0.json").read_text())
