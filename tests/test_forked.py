"""tests/forked.py gives what ``subprocess.run`` gives for the same command: exit status
(−N for signal N), stdout, stderr, the environment it was given, and a timeout."""

import os
import subprocess
import sys

import forked
import pytest

SCRIPT = """
import os, signal, sys
print("out", sys.argv[1:], os.environ.get("FORKED_TEST"))
print("err", file=sys.stderr)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("argument", ["0", "3", "kill"])
def test_a_forked_command_gives_what_a_new_interpreter_gives(argument, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    command = [sys.executable, str(script), argument]
    env = {**os.environ, "FORKED_TEST": "yes"}
    fresh = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    fork = forked.run(command, env, timeout=60)
    assert (fork.returncode, fork.stdout, fork.stderr) == (
        fresh.returncode, fresh.stdout, fresh.stderr
    )  # fmt: skip
    assert fork.stdout == f"out ['{argument}'] yes\n"


def test_a_forked_command_past_its_timeout_is_killed(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        forked.run([sys.executable, str(script), "sleep"], dict(os.environ), timeout=1)


def test_a_module_runs_as_python_m_runs_it():
    done = forked.run([sys.executable, "-m", "stopwise.cli", "--version"], dict(os.environ), 60)
    fresh = subprocess.run(
        [sys.executable, "-m", "stopwise.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == fresh.returncode == 0 and done.stdout == fresh.stdout != ""
