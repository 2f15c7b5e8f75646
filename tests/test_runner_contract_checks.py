"""What the runner promises a job and a user, checked by hand: named streams are distinct for
every (seed, name) pair, a job reads only the jobs it declares, a directory whose config.json
is not a run's is refused, and a job that ran again rebuilds the report."""

import json
import os
import shutil

import pytest
from test_runner import run

from stopwise.config import ConfigError
from stopwise.contract import Job, JobContext, PlannedJob, RunDir, stream_seed


def test_every_seed_and_stream_name_pair_has_its_own_seed():
    """Brute force over 4 seeds × 4 names: 16 distinct 63-bit seeds; the same pair again
    gives the same seed."""
    pairs = [(s, n) for s in range(4) for n in ("shared", "other", "init", "batches")]
    seeds = [stream_seed(s, n) for s, n in pairs]
    assert len(set(seeds)) == len(pairs)
    assert seeds == [stream_seed(s, n) for s, n in pairs]
    assert all(0 <= x < 2**63 for x in seeds)


def test_a_job_reads_only_the_jobs_it_declares(tmp_path):
    planned = PlannedJob("b-s0", Job("b", after=("a",)), 0, {}, ("a-s0",))
    context = JobContext(RunDir(tmp_path), None, planned, False)
    with pytest.raises(ValueError, match=r"job b-s0 does not declare 'c' in its `after`"):
        context.dependency("c")
    with pytest.raises(ValueError, match=r"job b-s0 does not declare 'c' in its `after`"):
        context.checkpoint("fit", job="c")


def test_a_stage_a_dependency_never_saved_is_named_with_the_ones_it_did(tmp_path):
    """A mistyped stage name was reported as a deleted checkpoint, with advice to retrain the
    dependency (which saves the same stages again)."""
    from stopwise.checkpoints import CheckpointError

    planned = PlannedJob("b-s0", Job("b", after=("a",)), 0, {}, ("a-s0",))
    context = JobContext(RunDir(tmp_path), None, planned, False)
    folder = context.run.checkpoints("a-s0")
    folder.mkdir(parents=True)
    for stage in ("stage1", "stage2"):
        (folder / f"{stage}.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"checkpoints of stages \['stage1', 'stage2'\] only"):
        context.checkpoint("stage_2", job="a")


def test_a_config_json_without_an_experiment_is_not_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"notes": "mine"}))
    with pytest.raises(ConfigError, match="is a non-empty directory that is not a stopwise run"):
        run(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_job_that_ran_again_rebuilds_the_report(tmp_path):
    out = tmp_path / "run"
    run(out)
    (out / "table.md").write_text("stale\n")
    (out / "jobs" / "fit-b-s0.json").unlink()  # redo fit-b: same config, a new run of it
    shutil.rmtree(out / "checkpoints" / "fit-b-s0")
    run(out)
    assert (out / "table.md").read_text() != "stale\n"


@pytest.mark.parametrize("field", ["after", "keys"])
def test_a_job_given_a_string_for_names_says_to_write_a_tuple(field):
    """``keys=("steps")`` is the string "steps": the runner read it letter by letter (unknown
    key 's')."""
    with pytest.raises(TypeError, match=rf"{field} takes a tuple of names, not the string 'fit'"):
        Job("b", **{field: "fit"})


def test_a_run_killed_while_first_writing_its_config_leaves_a_directory_that_runs(tmp_path):
    """A SIGKILL before config.json's temporary was renamed left the lock and that temporary:
    every rerun refused the directory as "not a stopwise run". A dead writer's temporary of
    this machine is removed; a live one's (or another machine's) still makes it not a run."""
    import subprocess
    import sys

    from stopwise.checkpoints import HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text("")
    (out / f".config.json.{HOST}-{dead}.abcdef123456.tmp").write_text("{")
    run(out)
    assert (out / "config.json").is_file() and not list(out.glob(".config.json.*.tmp"))
    other = tmp_path / "other"
    other.mkdir()
    (other / f".config.json.{HOST}-{os.getpid()}.abcdef123456.tmp").write_text("{")
    with pytest.raises(ConfigError, match="is a non-empty directory that is not a stopwise run"):
        run(other)
