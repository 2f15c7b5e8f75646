"""Writes that fail part-way (a full disk reported when the data is flushed) leave the previous
version of the file intact, raise WriteError naming it, and leave no temporary behind: for a
run directory's JSON files and for checkpoints; a metrics line or the lock's owner that cannot
be written raises WriteError too (exit 3 from the command), not an OSError traceback."""

import errno
import json
import os

import pytest
import torch

from stopwise import checkpoints
from stopwise.checkpoints import WriteError, load_checkpoint, save_checkpoint
from stopwise.cli import main
from stopwise.contract import RunDir
from stopwise.experiments import RunLock
from stopwise.training import MetricsLog


def _disk_full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_run_file_that_cannot_be_flushed_keeps_its_previous_version(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.write_json(run.config_path, {"version": 1})
    monkeypatch.setattr(checkpoints.os, "fsync", _disk_full)
    with pytest.raises(WriteError, match="could not write .*config.json"):
        run.write_json(run.config_path, {"version": 2})
    assert json.loads(run.config_path.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary


def test_a_checkpoint_that_cannot_be_flushed_keeps_its_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "stage.pt"
    save_checkpoint(path, {"step": 1, "w": torch.zeros(3)})
    monkeypatch.setattr(checkpoints.os, "fsync", _disk_full)
    with pytest.raises(WriteError, match="its previous version, if any, is intact"):
        save_checkpoint(path, {"step": 2, "w": torch.ones(3)})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage.pt"]


needs_dev_full = pytest.mark.skipif(
    not os.path.exists("/dev/full"), reason="needs /dev/full (every write: no space left)"
)


@needs_dev_full
def test_a_metrics_record_that_cannot_be_appended_raises_write_error():
    # A full disk at a training curve's line ended the run in an OSError traceback (exit 1).
    with pytest.raises(WriteError, match="could not append to /dev/full"):
        MetricsLog("/dev/full").write({"stage": "fit", "step": 0, "loss": 1.0})


@needs_dev_full
def test_a_run_lock_that_cannot_be_written_raises_write_error(tmp_path, capsys):
    # A full disk when the lock's owner is written ended the run in an OSError traceback.
    (tmp_path / "run.lock").symlink_to("/dev/full")
    with pytest.raises(WriteError, match="could not write .*run.lock"):
        with RunLock(RunDir(tmp_path)):
            pass
    code = main(["run", "toy", "--preset", "tiny", "--out", str(tmp_path)])
    assert code == 3 and "could not write" in capsys.readouterr().err
