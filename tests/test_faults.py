"""Faults survived, on every registered experiment's ``tiny`` preset (tests/faulty_run.py
injects them; SIGKILL, SIGTERM, a full disk and a corrupt checkpoint in one run per experiment:
test_experiment_contract.py): signals to runs with worker processes; an unsafe checkpoint is
named and refused; a second process on the same --out is refused; SIGKILL at random moments
(slow: ≥ 20 trials per experiment) always resumes to the uninterrupted results."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import forked
import pytest
import torch
from test_experiment_contract import NAMES, SHARING_A_RUN, job_records, stable, stopwise, tiny

from stopwise import experiments
from stopwise.config import ConfigError
from stopwise.contract import RunDir
from stopwise.experiments import RunLock, run_experiment
from stopwise.training import Interrupted


def checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("*/*.pt"))


def same_results(out: Path, full: Path) -> bool:
    results = lambda p: stable(json.loads((p / "results.json").read_text()))  # noqa: E731
    return job_records(out) == job_records(full) and results(out) == results(full)


@pytest.mark.parametrize("name", NAMES)
def test_a_second_process_on_the_same_out_is_refused(name, tmp_path):
    out = tmp_path / "run"
    with RunLock(RunDir(out)):
        with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()}"):
            run_experiment(name, "tiny", out, ["progress=false"])


def start_with_two_workers(
    out: Path, every: int = 50, seeds: str = "0,1"
) -> tuple[subprocess.Popen, list[str]]:
    """A toy run with two worker processes, returned once both are training (one job per seed:
    with more seeds than workers, jobs wait in the pool's queue)."""
    args = [
        sys.executable,
        "-m",
        "stopwise.cli",
        *tiny("toy", out, "--set", f"seeds={seeds}", every=every),
    ]
    args += [
        "--set",
        "workers=2",
        "--set",
        "stage2.steps=400",  # seconds of training: the signal finds both jobs mid-stage
    ]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if len({json.loads(x)["job"] for x in lines if x.endswith("}")}) >= 2:
            break
        time.sleep(0.05)
    return process, args


def checkpointed_jobs(out: Path) -> set[str]:
    """The jobs whose last logged stage left a checkpoint (``metrics.jsonl`` names the stage; a
    line torn by a SIGKILL is skipped)."""
    last = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        if line.endswith("}"):
            record = json.loads(line)
            last[record["job"]] = record["stage"]
    return {
        job for job, stage in last.items() if (out / "checkpoints" / job / f"{stage}.pt").is_file()
    }


def workers_of(pid: int) -> list[int]:
    """The worker processes of a runner (not multiprocessing's resource tracker); ``ww``: whole
    command lines, however long the interpreter's path."""
    listed = subprocess.run(["ps", "ww", "-o", "pid=,args=", "--ppid", str(pid)],
                            capture_output=True, text=True).stdout.splitlines()  # fmt: skip
    return [int(line.split()[0]) for line in listed if "spawn_main" in line]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("how", ["sigterm", "sigint", "ctrl-c"])
def test_a_signal_to_a_run_with_worker_processes(how, tmp_path):
    """SIGTERM or SIGINT to the runner alone, or Ctrl-C on a terminal (SIGINT to the whole process
    group): each worker checkpoints its stage and stops, the run exits 128 + the signal, and a
    rerun resumes. (A SIGINT to the runner alone used to leave the workers training.) The rerun
    is timed once: after each signal it starts from the same checkpoints."""
    out = tmp_path / "run"
    process, args = start_with_two_workers(out, seeds="0,1,2")  # a third job waits in the queue
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    signum = signal.SIGTERM if how == "sigterm" else signal.SIGINT
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "Rerun the same command to resume" in stderr and "Traceback" not in stderr
    lines = (out / "metrics.jsonl").read_text().splitlines()
    started = {json.loads(line)["job"] for line in lines if line.endswith("}")}
    assert len(started) == 2, started  # the queued job never started
    assert checkpointed_jobs(out) == started
    if how != "sigterm":
        return
    resumed = forked.run(args, dict(os.environ), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in sorted((out / "jobs").glob("*.json"))]
    assert any(r["resumed"] for r in records), (stderr[-2000:], [r["id"] for r in records])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_workers_die_with_a_killed_runner(tmp_path):
    """SIGKILL to the runner (its lock goes with it): no worker goes on writing into the run."""
    out = tmp_path / "run"
    process, args = start_with_two_workers(out)
    try:
        workers = workers_of(process.pid)
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert len(workers) == 2, workers
    deadline = time.time() + 30
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)
    resumed = forked.run(args, dict(os.environ), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_a_worker_signalled_between_jobs_starts_no_job(tmp_path, monkeypatch):
    """A job handed to a worker just after the run's SIGTERM reached it is not run to the end
    (it was, once: the signal found the worker idle and was dropped)."""
    monkeypatch.setattr(experiments, "_worker_stopped", None)
    experiments._worker_signal(signal.SIGTERM, None)  # idle: nothing to stop yet
    with pytest.raises(Interrupted):
        experiments._worker_run("toy", {}, str(tmp_path), None)
    assert not any(tmp_path.iterdir())


def test_unsafe_checkpoint_in_a_run_is_refused_and_never_runs(tmp_path):
    out = tmp_path / "run"
    assert stopwise(tiny("toy", out), fault="checkpoint:2").returncode == -9
    victim = checkpoints(out)[0]
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (target,))

    torch.save({"state": Payload()}, victim)
    refused = stopwise(tiny("toy", out))
    assert refused.returncode == 2 and "could run code" in refused.stderr
    assert not target.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARING_A_RUN)
def test_sigkill_at_random_moments(name, uninterrupted, tmp_path):
    """20 trials: a SIGKILL at a random event (metrics record, torn record, checkpoint write,
    job record write, report write) of a random count; every rerun completes with the results
    of the uninterrupted run."""
    full = uninterrupted[name]
    counts = {
        "metrics": len((full / "metrics.jsonl").read_text().splitlines()),
        "torn": len((full / "metrics.jsonl").read_text().splitlines()),
        "checkpoint": max(1, len(checkpoints(full))),
        "record": len(list((full / "jobs").glob("*.json"))),
        "report": 1,
    }
    rng = random.Random(name)
    for trial in range(20):
        event = ["metrics", "torn", "checkpoint", "record", "report"][trial % 5]
        fault = f"{event}:{rng.randint(1, counts[event])}"
        out = tmp_path / f"trial{trial}"
        killed = stopwise(tiny(name, out), fault=fault)
        assert killed.returncode in (-9, 0), (fault, killed.stderr[-2000:])
        resumed = stopwise(tiny(name, out))
        assert resumed.returncode == 0, (fault, resumed.stderr[-2000:])
        assert same_results(out, full), fault


def test_a_worker_killed_by_the_system_is_a_clear_error_and_the_run_resumes(tmp_path):
    """A worker SIGKILLed alone (the kernel's out-of-memory killer): exit 3 with a message that
    says what happened and how to go on, not concurrent.futures' BrokenProcessPool traceback."""
    out = tmp_path / "run"
    process, args = start_with_two_workers(out, every=10**6)  # no periodic checkpoint
    try:
        workers = workers_of(process.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 3, stderr[-2000:]
    assert "a worker process died" in stderr and "Rerun the same command" in stderr
    assert "Traceback" not in stderr
    assert "leaked semaphore" not in stderr  # (tqdm's lock, left by the killed worker)
    # The survivor checkpointed the stage it was in (it got one SIGTERM, from the broken pool;
    # a second one from the runner made it stop at once, without a checkpoint).
    assert checkpointed_jobs(out), checkpoints(out)
    resumed = forked.run(args, dict(os.environ), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def blocked_signals(pid: int) -> int:
    """The signal mask of a process's main thread (Linux: /proc/PID/status, SigBlk)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/status")
def test_ctrl_c_while_workers_start_prints_no_traceback(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the process group) while the worker processes still import
    torch printed a KeyboardInterrupt traceback from each. Workers now start with SIGINT blocked
    (until they ignore it), the runner keeps it: read from their signal masks (a Ctrl-C sent at
    the right moment is a race a test cannot win every time); then the Ctrl-C ends the run as
    interrupted, with no traceback."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "stopwise.cli", *tiny("toy", out, "--set", "seeds=0,1")]
    process = subprocess.Popen(
        [*args, "--set", "workers=2"], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while len(workers_of(process.pid)) < 2 and time.time() < deadline:
            time.sleep(0.01)
        workers = workers_of(process.pid)
        assert len(workers) == 2, workers
        sigint = 1 << (signal.SIGINT - 1)
        assert all(blocked_signals(pid) & sigint for pid in workers)
        assert not blocked_signals(process.pid) & sigint  # the runner still hears Ctrl-C
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
