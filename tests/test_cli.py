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
    listed = capsys.readouterr().out
    assert "toy" in listed and "tiny" in listed


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
    assert main(["run", "toy", "--preset", "tiny", "--out", str(out), "--set", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed
    for name in ("config.json", "env.json", "metrics.jsonl", "results.json", "table.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["preset"] == "tiny" and config["stage1_steps"] == 20
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "python", "threads", "seed"} <= set(env)
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["stage1.pt", "stage2.pt"]
    stages = {
        json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()
    }
    assert stages == {"stage1", "stage2"}

    # Rerunning the same command resumes: finished stages are skipped, results are the same.
    metrics_before = (out / "metrics.jsonl").read_text()
    assert main(["run", "toy", "--preset", "tiny", "--out", str(out), "--set", "seed=3"]) == 0
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
        (["run", "toy", "--set", "beta=high"], "--set beta=high: expected a number like beta=0.5"),
        (["run", "toy", "--set", "stage1_steps=2.5"], "expected an integer"),
        (["run", "toy", "--set", "progress=maybe"], "expected a boolean"),
        (["run", "toy", "--set", "budgets=3"], "expected a JSON list"),
        (["run", "toy", "--set", "beta"], "--set takes key=value"),
        (["run", "toy", "--set", "threads=0"], "threads must be >= 1"),
        # a task's own check of its values runs before anything is written, too
        (["run", "parity", "--set", "train_k=[1, 99]"], "parity: k range [1, 99] must satisfy"),
        (
            ["run", "multi-exit", "--set", "dataset=fashion-mnist", "--set", "data_dir=/nowhere"],
            "multi-exit: Fashion-MNIST file train-images-idx3-ubyte not found in /nowhere",
        ),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main([*args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_conflicting_or_foreign_directories_are_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "toy", "--preset", "tiny", "--out", str(out)]) == 0
    config_before = (out / "config.json").read_text()
    assert main(["run", "toy", "--preset", "tiny", "--out", str(out), "--set", "beta=0.5"]) == 2
    assert "different config (beta: 0.3 -> 0.5)" in capsys.readouterr().err
    assert (out / "config.json").read_text() == config_before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["run", "toy", "--preset", "tiny", "--out", str(foreign)]) == 2
    assert "not a stopwise run" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_show_prints_the_resolved_config(capsys):
    assert main(["show", "toy", "--preset", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert '"stage1_steps": 20' in shown and '"threads": 1' in shown
