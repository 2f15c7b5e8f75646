"""The `stopwise` command: list/show/run, config validation with exit code 2, run directories, resume."""

import json
import subprocess
import sys

import pytest

from stopwise import __version__
from stopwise.cli import main


def test_version_and_list(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert main(["list"]) == 0
    listed = capsys.readouterr()
    assert "toy" in listed.out and "tiny" in listed.out
    assert "could not load" not in listed.err  # every built-in task imports


def test_console_script_runs(tmp_path):
    stopwise = [sys.executable, "-m", "stopwise.cli"]
    done = subprocess.run([*stopwise, "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "toy" in done.stdout
    bad = subprocess.run(
        [*stopwise, "run", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown experiment 'nope'" in bad.stderr


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "toy", "--preset", "tiny", "--out", str(out), "--set", "seeds=3"]) == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed and "learning to stop" in printed
    assert "seed 3 alone (no sd)" in printed and "mean ± sd" not in printed  # one seed: no sd
    for name in ("config.json", "env.json", "metrics.jsonl", "results.json", "table.md"):
        assert (out / name).is_file(), name
    assert (out / "figures" / "budget_curve.png").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["experiment"] == "toy" and saved["preset"] == "tiny"
    assert saved["config"]["seeds"] == [3] and saved["config"]["stage1"]["steps"] == 20
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "python", "threads", "seeds", "started", "git_commit", "cpu"} <= set(env)
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 5
    assert sorted(p.name for p in (out / "checkpoints" / "l2s-s3").iterdir()) == [
        "job.json",
        "stage1.pt",
        "stage2.pt",
    ]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["job"], r["stage"]) for r in records} == {("l2s-s3", "stage1"), ("l2s-s3", "stage2")}

    # Rerunning the same command does nothing: results are the same, nothing is logged again.
    metrics_before = (out / "metrics.jsonl").read_text()
    assert main(["run", "toy", "--preset", "tiny", "--out", str(out), "--set", "seeds=3"]) == 0
    assert (out / "metrics.jsonl").read_text() == metrics_before
    assert json.loads((out / "results.json").read_text()) == results


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "toyy"], "unknown experiment 'toyy'; choose one of"),
        (
            ["run", "toy", "--preset", "huge"],
            "unknown preset 'huge' for toy; choose one of ['quick', 'tiny']",
        ),
        (["run", "toy", "--set", "betta=1"], "unknown key 'betta' for toy; valid keys: ["),
        (["run", "toy", "--set", "beta=high"], "--set beta=high: expected a number, like beta=0.5"),
        (["run", "toy", "--set", "stage1.steps=2.5"], "expected an integer"),
        (["run", "toy", "--set", "progress=maybe"], "expected a boolean"),
        (["run", "toy", "--set", "budgets=x"], "expected a list of numbers"),
        (["run", "toy", "--set", "beta"], "--set takes key=value"),
        (["run", "toy", "--set", "beta=1", "--set", "beta=2"], "--set beta: given more than once"),
        (["run", "toy", "--set", "threads=0"], "threads=0 must be >= 1"),
        (["run", "toy", "--set", "beta=-1"], "toy: beta=-1.0 must be > 0"),
        (["run", "toy", "--set", "stage1.batch=0"], "toy: stage1.batch=0 must be >= 1"),
        (["run", "toy", "--set", "budgets=3,20"], "budgets [3.0, 20.0] must not exceed steps=12"),
        (["run", "toy", "--set", "device=cuda:7"], "device='cuda:7'"),
        (["run", "toy", "--module", "no.such.module"], "--module no.such.module: cannot import"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main([*args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_show_prints_keys_with_types_ranges_and_the_config(capsys):
    assert main(["show", "toy", "--preset", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert "stage1.steps: an integer (>= 1) — Adam updates" in shown
    assert '"steps": 20' in shown and '"threads": 1' in shown


def test_ctrl_c_before_a_run_handles_signals_is_exit_130_without_a_traceback(monkeypatch, capsys):
    import stopwise.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["list"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_an_error_a_library_makes_of_a_stop_signal_still_exits_as_interrupted(monkeypatch, capsys):
    """SIGTERM between training loops raises Interrupted wherever the run is; torch's
    load_state_dict or matplotlib's renderer may turn it into their own error (a RuntimeError
    naming a damaged state dict, an ImportError): exit 143 with the resume message, not 1."""
    import signal

    import stopwise.cli as cli
    import stopwise.training as training

    def wrapped(args):
        monkeypatch.setattr(training, "_stop_signal", signal.SIGTERM)  # as the handler does
        raise RuntimeError("Error(s) in loading state_dict: ('interrupted by SIGTERM',)")

    monkeypatch.setattr(cli, "_run", wrapped)
    assert cli.main(["run", "toy", "--preset", "tiny"]) == 128 + signal.SIGTERM
    assert "Rerun the same command to resume" in capsys.readouterr().err

    def unrelated(args):  # no signal: an error is an error
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cli, "_run", unrelated)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(["run", "toy", "--preset", "tiny"])  # main forgot the earlier run's signal


def test_the_code_a_run_used_is_recorded(tmp_path):
    """env.json and every benchmark JSON name the commit and whether the checkout had changes,
    read here with git itself (None where stopwise does not run from a git checkout)."""
    from pathlib import Path

    import stopwise.experiments
    from stopwise.experiments import source_version

    git = ["git", "-C", str(Path(stopwise.experiments.__file__).parent)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    version = source_version()
    if head.returncode != 0:
        assert version == {"git_commit": None, "git_dirty": None}
        return
    assert version["git_commit"] == head.stdout.strip()
    changes = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout
    assert version["git_dirty"] == bool(changes.strip())


@pytest.mark.parametrize(
    "args, module, named",
    [
        (["run", "multi-exit"], "sklearn", "multi-exit dataset=digits needs scikit-learn"),
        (
            ["run", "multi-exit", "--set", "dataset=mnist1d", "--set", "mnist1d_per_level=100"],
            "mnist1d",
            "multi-exit dataset=mnist1d needs mnist1d",
        ),
        (["run", "learned-optimizers"], "sklearn", "mlp.dataset=digits needs scikit-learn"),
        (["run", "denoising"], "bm3d", "denoising needs bm3d"),
    ],
)
def test_a_missing_data_package_exits_2_naming_it_before_anything_is_written(
    tmp_path, capsys, monkeypatch, args, module, named
):
    """A job found scikit-learn (or mnist1d) missing after the run directory was written."""
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec gives None
    out = tmp_path / "never"
    assert main([*args, "--preset", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and "pip install 'stopwise[data]'" in err, err
    assert not out.exists()
