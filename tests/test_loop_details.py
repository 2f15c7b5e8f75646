"""train_loop's smaller promises, each by hand: the last step is always logged, a stage of 0
steps still leaves its checkpoint, a checkpoint lacking an object's state is refused by name,
a checkpoint of another job or stage is refused, a non-finite loss stops the stage before it is logged, a second signal stops at once, an
EpochBatches order depends on its seed, and a ValidationSchedule resumes exactly."""

import json
import math
import shutil
import signal

import pytest
import torch

from stopwise import training
from stopwise.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from stopwise.training import (
    Diverged,
    EpochBatches,
    Interrupted,
    LoopSettings,
    ValidationSchedule,
    request_stop,
    train_loop,
)


def test_the_last_step_is_logged_besides_every_log_every_th(tmp_path):
    settings = LoopSettings(metrics_path=tmp_path / "m.jsonl", log_every=3, progress=False)
    train_loop("s", 8, lambda step: {"loss": float(step)}, {}, settings)
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 3, 6, 7]  # 0, 3, 6 and the last, 7


def test_a_stage_of_no_steps_still_leaves_its_checkpoint(tmp_path):
    model = torch.nn.Linear(1, 1)
    settings = LoopSettings(checkpoint_dir=tmp_path, progress=False)
    assert train_loop("empty", 0, lambda step: {}, {"model": model}, settings) == {}
    saved = load_checkpoint(tmp_path / "empty.pt")
    assert (saved["step"], saved["num_steps"]) == (0, 0)
    assert torch.equal(saved["state"]["model"]["weight"], model.weight.detach())


def test_a_checkpoint_without_an_objects_state_is_refused_naming_it(tmp_path):
    settings = LoopSettings(checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    model, policy = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    train_loop("s", 2, lambda step: {}, {"model": model}, settings)
    with pytest.raises(ValueError, match=r"s\.pt lacks state for \['policy'\]"):
        train_loop("s", 4, lambda step: {}, {"model": model, "policy": policy}, settings)


def test_a_checkpoint_of_another_job_or_stage_is_refused_naming_its_owner(tmp_path):
    """A checkpoint copied by hand from another job's folder, or renamed to another stage, is
    not resumed from (it used to be, silently); one saved before checkpoints recorded their
    owner (no tags), or with its tags as a dict rather than JSON text, is still taken."""
    model = torch.nn.Linear(1, 1)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    setting = lambda folder, job: LoopSettings(  # noqa: E731
        checkpoint_dir=folder, progress=False, tags={"job": job}
    )
    train_loop("s", 2, lambda step: {}, {"model": model}, setting(theirs, "b-s0"))
    mine.mkdir()
    shutil.copy(theirs / "s.pt", mine / "s.pt")
    with pytest.raises(
        CheckpointError,
        match=r's\.pt was saved by stage s, tags \{"job": "b-s0"\}, not by stage s, tags \{"job": "a-s0"\}',
    ):
        train_loop("s", 4, lambda step: {}, {"model": model}, setting(mine, "a-s0"))
    shutil.copy(theirs / "s.pt", mine / "t.pt")  # the same job, another stage's file
    with pytest.raises(
        CheckpointError, match=r'saved by stage s, tags \{"job": "b-s0"\}, not by stage t, tags'
    ):
        train_loop("t", 4, lambda step: {}, {"model": model}, setting(mine, "b-s0"))
    old = load_checkpoint(theirs / "s.pt")
    old["tags"] = {"job": "b-s0"}  # tags saved as a dict, as before they were JSON text
    save_checkpoint(mine / "s.pt", old)
    with pytest.raises(CheckpointError, match=r'saved by stage s, tags \{"job": "b-s0"\}, not'):
        train_loop("s", 4, lambda step: {}, {"model": model}, setting(mine, "a-s0"))
    calls = []
    train_loop(
        "s", 3, lambda step: calls.append(step) or {}, {"model": model}, setting(mine, "b-s0")
    )
    assert calls == [2]  # its own dict-tagged file: resumed from its step 2
    del old["tags"], old["stage"]
    save_checkpoint(mine / "s.pt", old)
    calls = []
    train_loop(
        "s", 3, lambda step: calls.append(step) or {}, {"model": model}, setting(mine, "a-s0")
    )
    assert calls == [2]  # resumed from its step 2


def test_a_stage_with_tags_of_numpy_or_enum_values_resumes(tmp_path):
    """Tags are kept in checkpoints as JSON text: any value the metrics log writes (a NumPy
    float, a str Enum) still loads with weights_only=True (kept as the objects themselves, such
    a checkpoint was refused as unsafe, and so was every one after it)."""
    import enum

    import numpy as np

    class Kind(str, enum.Enum):
        FAST = "fast"

    tags = {"lr": np.logspace(-3, -1, 3)[0], "kind": Kind.FAST}
    settings = LoopSettings(checkpoint_dir=tmp_path, progress=False, tags=tags)
    model = torch.nn.Linear(1, 1)
    train_loop("s", 2, lambda step: {}, {"model": model}, settings)
    calls = []
    train_loop("s", 3, lambda step: calls.append(step) or {}, {"model": model}, settings)
    assert calls == [2]


def test_a_non_finite_loss_stops_the_stage_before_it_is_logged(tmp_path):
    settings = LoopSettings(metrics_path=tmp_path / "m.jsonl", log_every=1, progress=False)
    losses = [1.0, 0.5, math.nan, 0.25]
    with pytest.raises(Diverged, match="loss nan at step 2 of stage 's'"):
        train_loop("s", 4, lambda step: {"loss": losses[step]}, {}, settings)
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1]


def test_a_second_signal_inside_a_loop_stops_at_once(monkeypatch):
    monkeypatch.setattr(training, "_stop_signal", None)
    reached = []

    def step_fn(step):
        request_stop(signal.SIGTERM)  # the first: the step finishes, then the stage stops
        reached.append("after the first")
        request_stop(signal.SIGINT)  # the second: at once
        reached.append("after the second")
        return {}

    with pytest.raises(Interrupted, match="SIGINT"):
        train_loop("s", 3, step_fn, {}, LoopSettings(progress=False))
    assert reached == ["after the first"]


def test_epoch_batches_orders_depend_on_the_seed():
    rows = torch.arange(64)
    first = [EpochBatches((rows,), 8, seed)(0)[0].tolist() for seed in (0, 1, 2)]
    assert len({tuple(b) for b in first}) == 3  # three seeds: three first batches
    assert EpochBatches((rows,), 8, 1)(0)[0].tolist() == first[1]  # the same seed: the same


def _schedule(scores):
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    evaluate = lambda: {"score": scores.pop(0)}  # noqa: E731
    return ValidationSchedule(model, optimizer, evaluate, 8, every=1, patience=2, max_drops=2)


def test_a_validation_schedule_resumes_to_the_lr_drops_of_an_unstopped_one():
    """Scores 1, then 0 seven times, patience 2, by hand: the lr drops at step 3 (the second
    evaluation without a gain) and at step 5 (two more). Restored after step 2, with one stale
    evaluation counted, the schedule must drop at 3 and 5 too."""
    scores = [1.0] + [0.0] * 7
    whole = _schedule(list(scores))
    for _ in range(8):
        whole.step()
    assert whole.drops == [3, 5]
    first = _schedule(list(scores))
    for _ in range(2):
        first.step()
    second = _schedule(list(scores[2:]))
    second.load_state_dict(first.state_dict())
    for group in second.optimizer.param_groups:
        group["lr"] = first.optimizer.param_groups[0]["lr"]  # the optimizer is checkpointed too
    for _ in range(6):
        second.step()
    assert second.drops == [3, 5]
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_validation_schedule_leaves_each_submodule_in_the_mode_it_was_in():
    """A submodule kept in eval (a frozen BatchNorm) inside a module in training: after each
    evaluation ``module.train(was_training)`` put it back in training, so its running statistics
    moved on every later training batch; an evaluation that raised left everything in eval."""
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    module.train()
    module[1].eval()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    seen = []

    def evaluate():
        seen.append([m.training for m in module.modules()])
        return {"score": 1.0}

    schedule = ValidationSchedule(module, optimizer, evaluate, 4, every=2, patience=1)
    for _ in range(2):
        schedule.step()
    assert seen == [[False, False, False]]
    assert [m.training for m in module.modules()] == [True, True, False]

    def failing():
        raise RuntimeError("validation data missing")

    schedule = ValidationSchedule(module, optimizer, failing, 1, every=1, patience=1)
    with pytest.raises(RuntimeError, match="validation data missing"):
        schedule.step()
    assert [m.training for m in module.modules()] == [True, True, False]
