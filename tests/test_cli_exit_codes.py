"""The documented exit codes of `stopwise run` for each kind of failure (cli.py's docstring):
2 a refused config or a damaged or missing checkpoint, 3 a failed run (diverged, a file that
could not be written, a worker that died, out of memory), 141 the reader of the output went
away."""

import errno
import signal

import pytest

import stopwise.cli as cli
from stopwise.checkpoints import CheckpointError, WriteError
from stopwise.config import ConfigError
from stopwise.training import Diverged, WorkerDied


@pytest.mark.parametrize(
    "error, code, said",
    [
        (ConfigError("bad key"), 2, "stopwise: error: bad key"),
        (CheckpointError("stage1.pt is truncated"), 2, "stopwise: error: stage1.pt is truncated"),
        (Diverged("training diverged"), 3, "stopwise: run failed: training diverged"),
        (WriteError(errno.ENOSPC, "could not write x"), 3, "free some space"),
        (WorkerDied("a worker process died"), 3, "stopwise: run failed: a worker process died"),
        (MemoryError(), 3, "stopwise: run failed: out of memory"),
        (RuntimeError("CPUAllocator: can't allocate memory: 9 bytes"), 3, "into a new --out"),
    ],
)
def test_each_failure_has_its_exit_code(monkeypatch, capsys, error, code, said):
    def failing(args):
        raise error

    monkeypatch.setattr(cli, "_run", failing)
    assert cli.main(["run", "toy", "--preset", "tiny"]) == code
    assert said in capsys.readouterr().err


def test_a_reader_that_went_away_is_exit_141(monkeypatch):
    def closed_pipe(args):
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_run", closed_pipe)
    monkeypatch.setattr(cli.os, "dup2", lambda fd, fd2: None)  # keep pytest's stdout
    assert cli.main(["run", "toy", "--preset", "tiny"]) == 128 + signal.SIGPIPE == 141


def test_another_runtime_error_is_not_called_out_of_memory(monkeypatch):
    def failing(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(cli, "_run", failing)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["run", "toy", "--preset", "tiny"])


def test_a_size_too_large_for_memory_is_exit_3_saying_so(tmp_path, capsys):
    """A GRU of 10^8 units (parity) asks for 10^17 bytes: a named failure, not a traceback."""
    args = ["run", "parity", "--preset", "tiny", "--out", str(tmp_path / "r")]
    assert cli.main([*args, "--set", "hidden=100000000", "--set", "progress=false"]) == 3
    assert "stopwise: run failed: out of memory: " in capsys.readouterr().err
