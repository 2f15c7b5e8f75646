"""The training loop against an unstopped run of itself: exact resume after a signal or a kill
mid-step (every generator, Adam's moments, the batch source, the metrics log), and progress
bars that show only where asked and only on a terminal."""

import json
import random
import signal
import sys

import numpy as np
import pytest
import torch
from test_runner import run

from stopwise import training
from stopwise.training import (
    GeneratedBatches,
    Interrupted,
    LoopSettings,
    optimize,
    request_stop,
    train_loop,
)


def _bar_shown(capsys, tty, progress):
    """Run a 3-step stage and say whether a progress bar reached stderr (a terminal if tty)."""
    capsys.readouterr()
    if tty:
        sys.stderr.isatty = lambda: True  # the capture stream, as a terminal
    model = torch.nn.Linear(1, 1)
    settings = LoopSettings(progress=progress)
    train_loop("bar-stage", 3, lambda step: {"loss": 1.0}, {"model": model}, settings)
    return "bar-stage" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tty, progress, shown",
    [  # progress=None: a bar on a terminal only; True / False: always / never
        (False, None, False),
        (True, None, True),
        (False, True, True),
        (True, False, False),
    ],
)
def test_the_progress_bar_follows_the_setting_and_the_terminal(capsys, tty, progress, shown):
    assert _bar_shown(capsys, tty, progress) == shown


@pytest.mark.parametrize(
    "setting, tty, shown", [("true", False, False), ("true", True, True), ("false", True, False)]
)
def test_progress_bars_of_a_run_show_only_on_a_terminal(tmp_path, capsys, setting, tty, shown):
    """progress=true shows bars only where stderr is a terminal; progress=false never."""
    capsys.readouterr()
    if tty:
        sys.stderr.isatty = lambda: True
    run(tmp_path / "run", f"progress={setting}")
    err = capsys.readouterr().err
    assert ("fit:" in err) == shown, err[-500:]


def _stage(out, interrupt_at=None, how="signal", seed=0):
    """A 10-step Adam stage whose every step draws from torch's, NumPy's and Python's global
    generators and from a GeneratedBatches source; checkpoints every 3 steps, logs every step.
    Returns (the draws of each step it ran, the final weight)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    batches = GeneratedBatches(lambda b, g: torch.randn(b, 2, generator=g), 4, seed=1)
    draws = []

    def loss_and_metrics(step):
        x = batches(step)
        noise = (torch.rand(()).item(), float(np.random.rand()), random.random())
        draws.append((step, noise, x.sum().item()))
        if step == interrupt_at and how == "crash":
            raise RuntimeError("killed")  # no checkpoint of this step: as a SIGKILL would
        if step == interrupt_at:
            request_stop(signal.SIGTERM)  # as the handler would: finish the step, save, stop
        target = x.sum(-1, keepdim=True) * (1 + noise[0] + noise[1] + noise[2])
        return ((model(x) - target) ** 2).mean(), {}

    settings = LoopSettings(
        out, checkpoint_every=3, metrics_path=out / "m.jsonl", log_every=1, progress=False
    )
    state = {"model": model, "batches": batches}
    optimize("s", 10, loss_and_metrics, optimizer, state, settings)
    return draws, model.weight.detach().clone()


@pytest.mark.parametrize("how, at", [("signal", 4), ("crash", 4), ("crash", 7)])
def test_a_stopped_stage_resumes_to_the_draws_weights_and_log_of_an_unstopped_one(
    tmp_path, monkeypatch, how, at
):
    """Stopped by a signal (checkpointed after its step) or killed mid-step (back to the
    last periodic checkpoint, step 3 or 6), then rerun with the global generators seeded
    elsewhere: every step from the checkpoint on draws what the unstopped stage drew (torch,
    NumPy, Python, the batch source), the weights end equal (Adam's moments restored), and
    the metrics log has each step once, with the unstopped stage's loss."""
    monkeypatch.setattr(training, "_stop_signal", None)
    full, final = _stage(tmp_path / "full")
    with pytest.raises(Interrupted if how == "signal" else RuntimeError):
        _stage(tmp_path / "run", interrupt_at=at, how=how)
    training.forget_stop_signal()
    resumed, weight = _stage(tmp_path / "run", seed=123)
    restart = at + 1 if how == "signal" else at // 3 * 3  # the step after the checkpoint
    assert resumed == full[restart:]
    assert torch.equal(weight, final)
    log = [json.loads(line) for line in (tmp_path / "run" / "m.jsonl").read_text().splitlines()]
    expected = [
        json.loads(line) for line in (tmp_path / "full" / "m.jsonl").read_text().splitlines()
    ]
    assert sorted(log, key=lambda r: r["step"]) == expected


def test_a_resume_from_step_1_does_not_log_step_1_again(tmp_path, monkeypatch):
    """Step 1 is logged, then the process dies saving its checkpoint: the rerun resumes from
    step 1's checkpoint (start 1) and redoes step 1 without a second record of it."""
    monkeypatch.setattr(training, "_stop_signal", None)
    settings = LoopSettings(tmp_path, checkpoint_every=1, metrics_path=tmp_path / "m.jsonl",
                            log_every=1, progress=False)  # fmt: skip
    save = training.save_checkpoint

    def dies_at_step_2(path, payload):
        if payload["step"] == 2:
            raise RuntimeError("killed")
        save(path, payload)

    monkeypatch.setattr(training, "save_checkpoint", dies_at_step_2)
    with pytest.raises(RuntimeError, match="killed"):
        train_loop("s", 3, lambda step: {"loss": float(step)}, {}, settings)
    monkeypatch.setattr(training, "save_checkpoint", save)
    train_loop("s", 3, lambda step: {"loss": float(step)}, {}, settings)
    log = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2]
