"""``stopwise`` commands in new processes that start in milliseconds instead of seconds.

A new interpreter spends about 4 CPU-s before a run starts: 2.5 importing torch and stopwise and
1.4 importing ``torch._dynamo`` the first time a ``torch.optim`` optimizer is built. The contract
and fault tests start dozens of them. Here each test worker keeps one multiprocessing forkserver
that has made those imports once (before any torch computation, so no thread pool is forked),
and every command is a process forked from it: its own pid, signals, exit status and files, as a
new ``stopwise`` process has. The reference runs they are compared against are made by new
interpreters (``conftest.uninterrupted``), so a difference a fork made would show there.
"""

import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["stopwise.cli", "stopwise.experiments", "torch._dynamo"]
_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        # torch's OpenMP reads its thread count when the forkserver loads it, not in each fork.
        before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if before is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = before
    return _context


def _main(argv: list[str], environ: dict, stdout: str, stderr: str) -> None:
    os.environ.clear()
    os.environ.update(environ)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    # Its sys.exit is the process's exit status.
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


def run(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)`` for
    a ``command`` of ``[sys.executable, SCRIPT, ARGS...]`` or ``[sys.executable, "-m", MODULE,
    ARGS...]``, in a process forked from the forkserver: the same CompletedProcess (the exit
    status is −N for signal N)."""
    assert command[0] == sys.executable, command
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        out.touch()
        err.touch()
        process = _forkserver().Process(
            target=_main, args=(command[1:], dict(env), str(out), str(err))
        )
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(
            command, process.exitcode, out.read_text(), err.read_text()
        )
