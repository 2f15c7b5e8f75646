"""Writes that fail part-way (a full disk reported when the data is flushed) leave the previous
version of the file intact, raise WriteError naming it, and leave no temporary behind: for a
run directory's JSON files and for checkpoints."""

import errno
import json
import os

import pytest
import torch

from stopwise import checkpoints
from stopwise.checkpoints import WriteError, load_checkpoint, save_checkpoint
from stopwise.contract import RunDir


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
