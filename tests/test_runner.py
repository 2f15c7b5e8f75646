"""The job runner on an out-of-tree experiment (tests/sample_experiment.py): seeds as an axis,
named streams, the job cache, refusal of changed settings, reuse from another run, worker
processes, exact resume after SIGKILL, the run lock, and registration by --module / entry point."""

import dataclasses
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import forked
import pytest

from stopwise import experiments, reporting
from stopwise.checkpoints import WriteError
from stopwise.config import ConfigError
from stopwise.contract import RunDir, settings_digest, stream_seed
from stopwise.experiments import RunLock, load_module, run_experiment
from stopwise.training import Interrupted

MODULE = str(Path(__file__).with_name("sample_experiment.py"))
load_module(MODULE)


def run(out, *overrides, calls=None, **kw):
    if calls is not None:
        os.environ["SAMPLE_CALLS"] = str(calls)
    try:
        return run_experiment("sample", "tiny", out, ["progress=false", *overrides], **kw)
    finally:
        os.environ.pop("SAMPLE_CALLS", None)


def records(out) -> dict:
    return {
        p.stem: json.loads(p.read_text())["record"] for p in (Path(out) / "jobs").glob("*.json")
    }


def called(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_seeds_streams_and_the_job_cache(tmp_path):
    calls = tmp_path / "calls"
    run(tmp_path / "run", "seeds=0,1", calls=calls)
    assert sorted(called(calls)) == sorted(
        f"{j}-s{s}" for s in (0, 1) for j in ("data", "fit-a", "fit-b", "summary")
    )
    got = records(tmp_path / "run")
    # A named stream gives the same draws in every job of a seed, other draws in another seed.
    assert (
        got["data-s0"]["shared"]
        == got["fit-a-s0"]["shared"]
        == got["fit-b-s1"]["shared"][:0] + got["fit-b-s0"]["shared"]
    )
    assert got["data-s0"]["shared"] != got["data-s1"]["shared"]
    assert got["summary-s1"]["losses"] == [got["fit-a-s1"]["loss"], got["fit-b-s1"]["loss"]]
    assert stream_seed(0, "shared") != stream_seed(1, "shared") != stream_seed(0, "other")
    # Rerun: nothing runs again; a new seed runs only its own jobs.
    run(tmp_path / "run", "seeds=0,1", calls=calls)
    assert len(called(calls)) == 8
    run(tmp_path / "run", "seeds=0,1,2", calls=calls)
    assert sorted(called(calls)[8:]) == sorted(
        f"{j}-s2" for j in ("data", "fit-a", "fit-b", "summary")
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["experiment"] == "sample" and len(results["jobs"]) == 12
    layout = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert layout == [
        "checkpoints", "config.json", "env.json", "figures", "jobs", "metrics.jsonl",
        "results.json", "run.lock", "table.md",
    ]  # fmt: skip
    assert (tmp_path / "run" / "run.lock").read_text() == ""  # released: emptied, kept
    # Only jobs that train keep a checkpoint folder.
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == sorted(
        f"fit-{m}-s{s}" for m in "ab" for s in (0, 1, 2)
    )
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert len(env["resumes"]) == 2 and env["started"] <= env["resumes"][0]["started"]


def test_changed_settings_are_refused_and_report_keys_are_not(tmp_path, capsys):
    out = tmp_path / "run"
    calls = tmp_path / "calls"
    run(out, calls=calls)
    config_before = (out / "config.json").read_text()
    with pytest.raises(ConfigError) as error:
        run(out, "lr=0.2")
    message = str(error.value)
    assert "job fit-a-s0 (finished): config.lr: 0.1 -> 0.2" in message
    assert "data-s0" not in message  # `data` does not read lr
    assert f"another --out with --set reuse_from={out}" in message  # the command, not a hint
    assert (out / "config.json").read_text() == config_before
    # A key only the report reads: nothing reruns, the report is rebuilt.
    run(out, "title=renamed", calls=calls)
    assert len(called(calls)) == 4
    assert json.loads((out / "results.json").read_text())["title"] == "renamed"


def test_a_dependency_added_dropped_or_changed_is_said_in_words():
    """A job whose dependencies changed (multi-exit's `l2s` when a β is added to l2s.betas or
    `uniform` leaves methods) was refused with "after.l2s-b3: (absent) -> 'af510916888b'"."""
    old = {"seed": 0, "after": {"uniform": "6d2adb1a3272", "l2s-b1": "0123456789ab"}}
    new = {"seed": 0, "after": {"l2s-b1": "0123456789ab", "l2s-b3": "af510916888b"}}
    assert experiments._settings_diff(old, new) == [
        "after.l2s-b3: a dependency it did not have (this config adds job l2s-b3 before it)",
        "after.uniform: a dependency it no longer has (this config drops job uniform)",
    ]
    changed = {"seed": 0, "after": {"uniform": "ffffffffffff", "l2s-b1": "0123456789ab"}}
    # A run from before a task split training from evaluation: the training job is new.
    split = {"seed": 0, "after": {"uniform-train": "0123456789ab"}}
    assert experiments._settings_diff({"seed": 0}, split) == [
        "after.uniform-train: a dependency it did not have (this config adds job uniform-train "
        "before it; a run made before this task's training jobs were split from its evaluation "
        "has none to reuse)"
    ]
    # A dependency whose settings changed is named, not shown as two digests.
    assert experiments._settings_diff(old, changed) == [
        "after.uniform: job uniform, which it runs after, has other settings"
    ]


def test_a_run_with_another_config_into_a_run_directory_says_what_differs(tmp_path, capsys):
    out = tmp_path / "run"
    run(out)
    run(out, "seeds=0,1")  # more seeds: the same run, extended
    assert "held a run of preset" not in capsys.readouterr().err
    run(out, "title=renamed")
    said = capsys.readouterr().err
    assert f"{out} held a run of preset tiny; this one (tiny) differs in title" in said
    # a key the directory's config lacks (the task gained it since) at its default: no change
    held = json.loads((out / "config.json").read_text())
    assert held["config"].pop("lr") == 0.1
    (out / "config.json").write_text(json.dumps(held))
    run(out, "title=renamed")
    assert "held a run of preset" not in capsys.readouterr().err


def test_the_report_is_rebuilt_when_its_code_changes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(out)
    first = json.loads((out / "results.json").read_text())["fingerprint"]
    (out / "table.md").write_text("stale\n")
    run(out)  # same code: the cached report stays
    assert (out / "table.md").read_text() == "stale\n"
    monkeypatch.setattr(experiments, "_report_code", lambda experiment: "upgraded")
    run(out)
    assert json.loads((out / "results.json").read_text())["fingerprint"] != first
    assert (out / "table.md").read_text() != "stale\n"


def test_a_deleted_table_or_figure_is_written_again(tmp_path):
    out = tmp_path / "run"
    run(out)
    table, figures = (out / "table.md").read_text(), sorted((out / "figures").iterdir())
    assert figures and json.loads((out / "results.json").read_text())["figure_files"]
    (out / "table.md").unlink()
    run(out)
    assert (out / "table.md").read_text() == table
    figures[0].unlink()
    run(out)
    assert sorted((out / "figures").iterdir()) == figures
    results = (out / "results.json").read_text()
    (out / "results.json").write_text(results[:20])  # torn: derived, so written again
    run(out)
    assert (out / "results.json").read_text() == results


def test_a_report_stopped_before_results_json_leaves_no_table_for_the_old_config(
    tmp_path, monkeypatch
):
    """table.md is written before the figures and results.json: a report of another config
    stopped in between (here a full disk at the figure) must not leave its table served, from
    cache, to a rerun of the config the old results.json was made for."""
    out = tmp_path / "run"
    run(out, "seeds=0,1")
    table = (out / "table.md").read_text()

    def disk_full(figure, path):
        raise WriteError(errno.ENOSPC, f"could not write {path} (No space left on device)")

    with monkeypatch.context() as patched:
        patched.setattr(reporting, "save_figure", disk_full)
        with pytest.raises(WriteError):
            run(out, "seeds=0")
    assert (out / "table.md").read_text() != table  # the seed-0 table, written before
    run(out, "seeds=0,1")
    assert (out / "table.md").read_text() == table


def test_a_report_without_a_figure_an_earlier_one_wrote_removes_it(tmp_path, monkeypatch):
    """A rebuilt report that no longer draws a figure left the old PNG in figures/, where it
    passed for this run's; a file the runner did not write stays."""
    out = tmp_path / "run"
    run(out)
    assert (out / "figures" / "line.png").is_file()
    (out / "figures" / "mine.png").write_bytes(b"a user's own file")
    experiment = experiments.get_experiment("sample")
    drawn = experiment.report

    def other_figure(results, config):
        report = drawn(results, config)
        return dataclasses.replace(report, figures={"bars": report.figures["line"]})

    monkeypatch.setattr(experiment, "report", other_figure)
    run(out, "title=other")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["bars.png", "mine.png"]
    assert json.loads((out / "results.json").read_text())["figure_files"] == ["bars"]


def test_a_signal_while_a_log_line_is_written_stops_the_run(tmp_path, monkeypatch):
    """A SIGTERM that lands while the runner writes its "done" line (the last job's) was
    swallowed by logging as a "Logging error": the run reported and exited 0."""

    class Signalling(io.StringIO):
        def write(self, text):
            if "done summary-s0" in text:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().write(text)

    monkeypatch.setattr(sys, "stderr", Signalling())
    with pytest.raises(Interrupted):
        run(tmp_path / "run")
    assert "Logging error" not in sys.stderr.getvalue()
    assert not (tmp_path / "run" / "results.json").exists()


def test_report_code_digest_follows_the_file_that_defines_report(tmp_path, monkeypatch):
    module = tmp_path / "my_report.py"
    module.write_text("def report(results, config):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_report

    experiment = SimpleNamespace(report=my_report.report)
    before = experiments._report_code(experiment)
    assert experiments._report_code(experiment) == before
    module.write_text("def report(results, config):\n    return 2\n")
    assert experiments._report_code(experiment) != before


def test_reuse_from_takes_jobs_with_identical_settings(tmp_path, capsys):
    run(tmp_path / "first")
    calls = tmp_path / "calls"
    run(tmp_path / "second", f"reuse_from={tmp_path / 'first'}", calls=calls)
    assert called(calls) == []  # everything reused, checkpoints included (summary reads one)
    said = capsys.readouterr().err  # how many were taken is said, not left to be inferred
    assert f"reused 4 of 4 job(s) to run from {tmp_path / 'first'}" in said
    assert "all 4 job(s) are finished; reporting" in said
    assert records(tmp_path / "second") == records(tmp_path / "first")
    reused = json.loads((tmp_path / "second" / "jobs" / "fit-a-s0.json").read_text())
    assert reused["reused_from"].endswith("first/jobs/fit-a-s0.json")
    # the training curves come with the jobs (metrics.jsonl held none of them: an audit)
    curves = [
        (tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("first", "second")
    ]
    assert curves[0] and sorted(curves[1]) == sorted(curves[0])
    run(tmp_path / "third", "steps=13", f"reuse_from={tmp_path / 'first'}", calls=calls)
    assert sorted(called(calls)) == ["fit-a-s0", "fit-b-s0", "summary-s0"]  # data still matches
    assert "reused 1 of 4 job(s)" in capsys.readouterr().err  # the data job
    with pytest.raises(ConfigError, match="not a stopwise run directory"):
        run(tmp_path / "fourth", f"reuse_from={tmp_path / 'nowhere'}")
    assert not (tmp_path / "fourth").exists()


def test_reuse_that_cannot_copy_a_checkpoint_is_a_write_error(tmp_path, monkeypatch):
    """A full disk while a reused job's checkpoints are copied: WriteError naming the folder
    (exit 3; it was a shutil.Error traceback), no half-copied folder to resume from, and a rerun
    with space takes the jobs."""
    run(tmp_path / "first")
    copy = shutil.copyfile

    def disk_full(source, target, **kw):
        if os.fspath(source).endswith(".pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return copy(source, target, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(shutil, "copyfile", disk_full)
        with pytest.raises(WriteError, match="could not copy .*checkpoints/fit-a-s0"):
            run(tmp_path / "second", f"reuse_from={tmp_path / 'first'}")
    assert not (tmp_path / "second" / "checkpoints" / "fit-a-s0").exists()
    calls = tmp_path / "calls"
    run(tmp_path / "second", f"reuse_from={tmp_path / 'first'}", calls=calls)
    assert called(calls) == [] and records(tmp_path / "second") == records(tmp_path / "first")


def test_reuse_stopped_while_copying_a_checkpoint_leaves_no_half_copy(tmp_path, monkeypatch):
    """A signal while a reused job's checkpoint is copied: the half-copied folder is removed (a
    rerun without reuse_from resumed from the truncated file and was refused, exit 2)."""
    run(tmp_path / "first")
    copy = shutil.copyfile

    def stopped(source, target, **kw):
        if os.fspath(source).endswith(".pt"):
            Path(target).write_bytes(Path(source).read_bytes()[:100])
            raise Interrupted(signal.SIGINT)
        return copy(source, target, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(shutil, "copyfile", stopped)
        with pytest.raises(Interrupted):
            run(tmp_path / "second", f"reuse_from={tmp_path / 'first'}")
    assert not (tmp_path / "second" / "checkpoints" / "fit-a-s0").exists()
    run(tmp_path / "second")
    assert records(tmp_path / "second") == records(tmp_path / "first")


def test_reuse_into_a_started_job_replaces_its_attempt(tmp_path):
    """A job killed here and then taken from another run: its lines in metrics.jsonl and its
    checkpoints are the donor's alone (the attempt's were kept beside them)."""
    assert _cli(tmp_path / "full").returncode == 0
    killed = _cli(tmp_path / "run", {"SAMPLE_KILL_AT": "fit-b-s0:9"})
    assert killed.returncode == -signal.SIGKILL
    (tmp_path / "run" / "checkpoints" / "fit-b-s0" / "leftover.pt").write_bytes(b"")
    assert _cli(tmp_path / "run", None, "--set", f"reuse_from={tmp_path / 'full'}").returncode == 0
    assert sorted(_metric_keys(tmp_path / "run")) == sorted(_metric_keys(tmp_path / "full"))
    folders = [tmp_path / d / "checkpoints" / "fit-b-s0" for d in ("full", "run")]
    assert sorted(p.name for p in folders[1].iterdir()) == sorted(
        p.name for p in folders[0].iterdir()
    )


def test_reuse_from_a_run_of_another_experiment_is_refused(tmp_path):
    run(tmp_path / "first")
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    (tmp_path / "first" / "config.json").write_text(json.dumps({**config, "experiment": "toy"}))
    with pytest.raises(ConfigError, match=r"holds a run of another experiment \('toy', not"):
        run(tmp_path / "second", f"reuse_from={tmp_path / 'first'}")
    assert not (tmp_path / "second").exists()


def test_worker_processes_give_the_same_records(tmp_path):
    run(tmp_path / "one", "seeds=0,1")
    run(tmp_path / "two", "seeds=0,1", "workers=2")
    assert records(tmp_path / "two") == records(tmp_path / "one")


def _cli(out, env=None, *extra):
    args = [sys.executable, "-m", "stopwise.cli", "run", "sample", "--module", MODULE]
    args += ["--preset", "tiny", "--out", str(out), "--set", "checkpoint_every=4", *extra]
    return forked.run(args, {**os.environ, **(env or {})}, timeout=120)


def test_sigkill_mid_job_resumes_to_the_same_results(tmp_path):
    assert _cli(tmp_path / "full").returncode == 0
    killed = _cli(tmp_path / "killed", {"SAMPLE_KILL_AT": "fit-b-s0:9"})
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "jobs" / "fit-a-s0.json").exists()
    assert not (tmp_path / "killed" / "jobs" / "fit-b-s0.json").exists()
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:
        f.write('{"job": "fit-b-s0", "stage": "fit", "st')  # a torn last line
    assert _cli(tmp_path / "killed").returncode == 0
    assert records(tmp_path / "killed") == records(tmp_path / "full")
    assert json.loads((tmp_path / "killed" / "jobs" / "fit-b-s0.json").read_text())["resumed"]
    lines = [
        json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    keys = [(r["job"], r["stage"], r["step"]) for r in lines]
    assert len(keys) == len(set(keys))  # nothing logged twice, the torn line is gone
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted((r["job"], r["stage"], r["step"]) for r in full)
    again = _cli(tmp_path / "killed")
    assert again.returncode == 0 and "job(s) to run" not in again.stderr  # nothing to do


def test_a_resumed_job_counts_the_time_spent_before_the_kill(tmp_path):
    """12 steps of 0.05 CPU-s each, a checkpoint every 4; killed as step 9 asks for its batch,
    the resumed job redoes step 8 only: its times must count all 12 steps' work, as an
    uninterrupted run's do, not only the 4 steps after the resume."""
    slow = {"SAMPLE_STEP_SECONDS": "0.05"}
    assert _cli(tmp_path / "killed", {**slow, "SAMPLE_KILL_AT": "fit-b-s0:9"}).returncode < 0
    assert _cli(tmp_path / "killed", slow).returncode == 0
    job = json.loads((tmp_path / "killed" / "jobs" / "fit-b-s0.json").read_text())
    assert job["resumed"]
    work = 12 * 0.05
    assert work <= job["cpu_timings"]["fit"] <= job["cpu_seconds"]
    assert job["timings"]["fit"] >= work
    assert job["cpu_timings"]["fit"] < work + 2 * 0.05 + 0.5  # steps 8 and 9 run twice at most


def _metric_keys(out) -> list[tuple]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [(r["job"], r["stage"], r["step"]) for r in map(json.loads, lines)]


def test_a_job_stopped_before_its_first_checkpoint_logs_its_steps_once(tmp_path):
    run(tmp_path / "full")
    run(tmp_path / "run")
    # What a kill before fit-b-s0's first checkpoint leaves: its lines, no checkpoint, no record.
    (tmp_path / "run" / "jobs" / "fit-b-s0.json").unlink()
    for path in (tmp_path / "run" / "checkpoints" / "fit-b-s0").iterdir():
        path.unlink()
    assert ("fit-b-s0", "fit", 0) in _metric_keys(tmp_path / "run")
    run(tmp_path / "run")
    keys = _metric_keys(tmp_path / "run")
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(_metric_keys(tmp_path / "full"))
    assert records(tmp_path / "run") == records(tmp_path / "full")


def test_a_run_that_failed_before_its_first_checkpoint_leaves_out_reusable(tmp_path):
    with pytest.raises(RuntimeError, match="asked to fail"):
        run(tmp_path / "run", "fail=true")
    run(tmp_path / "run")  # corrected config, same --out
    assert len(records(tmp_path / "run")) == 4


def test_the_run_lock_refuses_a_second_process(tmp_path):
    out = tmp_path / "run"
    run(out)
    with RunLock(RunDir(out)):
        with pytest.raises(ConfigError, match=r"is in use by pid \d+"):
            run(out)
    run(out)  # released


def test_a_process_that_opened_the_lock_before_its_release_still_excludes_the_next(tmp_path):
    """B opens run.lock while A holds it, A finishes, B takes the lock: C must be refused. When
    A deleted the file on release, B held a lock on a file no longer at the path and C locked a
    new one beside it: two runs writing into one --out."""
    import fcntl

    out = tmp_path / "run"
    run(out)
    with RunLock(RunDir(out)):
        b = open(RunDir(out).lock_path, "a+")  # noqa: SIM115 (held across the release)
    try:
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)  # B now holds the lock
        with pytest.raises(ConfigError, match="is in use"):
            with RunLock(RunDir(out)):
                pass
    finally:
        b.close()


def test_directories_of_other_runs_are_left_alone(tmp_path):
    out = tmp_path / "toy"
    run_experiment("toy", "tiny", out, ["progress=false"])
    with pytest.raises(ConfigError, match="holds a run of another experiment \\('toy'"):
        run(out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a stopwise run"):
        run(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_module_and_entry_point_registration(tmp_path):
    shown = subprocess.run(
        [sys.executable, "-m", "stopwise.cli", "list", "--module", MODULE],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0 and "sample" in shown.stdout
    bad = _cli(tmp_path / "bad", None, "--set", "steps=0")
    assert bad.returncode == 2 and "steps=0 must be >= 1" in bad.stderr
    assert not (tmp_path / "bad").exists()
    # An installed package registers through the entry-point group, with no flag.
    site = tmp_path / "site"
    (site / "mytask").mkdir(parents=True)
    (site / "mytask" / "__init__.py").write_text(Path(MODULE).read_text())
    info = site / "mytask-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mytask\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[stopwise.experiments]\nsample = mytask\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    listed = subprocess.run(
        [sys.executable, "-m", "stopwise.cli", "list"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0 and "sample" in listed.stdout, listed.stderr
    ran = subprocess.run(
        [sys.executable, "-m", "stopwise.cli", "run", "sample", "--preset", "tiny", "--out",
         str(tmp_path / "ep")], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "ep" / "results.json").exists()


def test_the_log_follows_sys_stderr_between_runs_in_one_process():
    """A stream captured by an earlier run (and closed since) is not written to again: the
    handler writes to the stderr of the moment."""
    import contextlib
    import io

    from stopwise.experiments import _configure_logging, logger

    _configure_logging()
    first = io.StringIO()
    with contextlib.redirect_stderr(first):
        logger.info("first run")
    first.close()
    second = io.StringIO()
    with contextlib.redirect_stderr(second):
        logger.info("second run")
    assert second.getvalue() == "stopwise: second run\n"


def record_data_with_lr(out, lr):
    """Rewrite run ``out``'s ``data`` job as if it had read ``lr`` when it ran (it does not read
    it: `lr` is not among its keys), and the jobs after it to hold that job's new digest."""
    path = out / "jobs" / "data-s0.json"
    job = json.loads(path.read_text())
    job["settings"]["config"]["lr"] = lr
    path.write_text(json.dumps(job))
    for name in ("fit-a", "fit-b"):
        dependent = out / "jobs" / f"{name}-s0.json"
        record = json.loads(dependent.read_text())
        record["settings"]["after"]["data"] = settings_digest(job["settings"])
        dependent.write_text(json.dumps(record))


def test_a_key_a_job_no_longer_reads_counts_at_its_default(tmp_path):
    """A finished job whose settings name a key the job no longer reads (say a CPU-only job
    that stopped listing ``device``) is reused when the recorded value is the key's default;
    another recorded value is refused, naming the key."""
    out, calls = tmp_path / "run", tmp_path / "calls"
    run(out, calls=calls)
    assert "lr" not in json.loads((out / "jobs" / "data-s0.json").read_text())["settings"]["config"]
    record_data_with_lr(out, 0.1)  # the default
    run(out, calls=calls)
    assert len(called(calls)) == 4
    record_data_with_lr(out, 0.3)
    with pytest.raises(
        ConfigError, match=r"job data-s0 \(finished\): config\.lr: 0\.3 -> \(absent\)"
    ):
        run(out, calls=calls)


def test_a_key_a_job_no_longer_reads_counts_at_this_runs_value_on_resume_and_reuse(tmp_path):
    """The same, recorded at a value other than the default: no difference when this run has
    the key at that value, for a rerun into the directory and for reuse_from alike (the jobs
    after it, whose settings hold its old digest, are taken too); refused or rerun otherwise."""
    out, calls = tmp_path / "run", tmp_path / "calls"
    run(out, "lr=0.3", calls=calls)
    record_data_with_lr(out, 0.3)
    run(out, "lr=0.3", calls=calls)  # resumed as it was: nothing reruns
    assert len(called(calls)) == 4
    run(tmp_path / "copy", "lr=0.3", f"reuse_from={out}", calls=calls)
    assert len(called(calls)) == 4  # every job reused
    run(tmp_path / "other", "lr=0.2", f"reuse_from={out}", calls=calls)
    assert sorted(called(calls)[4:]) == ["data-s0", "fit-a-s0", "fit-b-s0", "summary-s0"]
    with pytest.raises(
        ConfigError, match=r"job data-s0 \(finished\): config\.lr: 0\.3 -> \(absent\)"
    ):
        run(out, "lr=0.2", calls=calls)


def test_a_key_added_after_a_job_ran_counts_at_its_default(tmp_path):
    """A finished job whose settings lack a key (the task gained it later) is reused when the
    key has its default value, and so are the jobs that ran after it; a value other than the
    default is refused, naming the key."""
    out, calls = tmp_path / "run", tmp_path / "calls"
    run(out, calls=calls)
    path, after = out / "jobs" / "fit-a-s0.json", out / "jobs" / "summary-s0.json"
    job, summary = json.loads(path.read_text()), json.loads(after.read_text())
    assert job["settings"]["config"].pop("lr") == 0.1  # as if lr had not existed then
    summary["settings"]["after"]["fit-a"] = settings_digest(job["settings"])
    path.write_text(json.dumps(job))
    after.write_text(json.dumps(summary))
    run(out, calls=calls)  # lr at its default (0.1): nothing reruns
    assert len(called(calls)) == 4
    with pytest.raises(ConfigError, match=r"config\.lr: \(absent\) -> 0\.2"):
        run(out, "lr=0.2", calls=calls)
    # a dependency whose record is not the one the job ran after is still a difference
    summary["settings"]["after"]["fit-a"] = "000000000000"
    after.write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match=r"job summary-s0 \(finished\): after\.fit-a"):
        run(out, calls=calls)


def test_a_job_started_before_a_key_was_added_resumes(tmp_path):
    """fit-b-s0 killed mid-training, as if before the task gained ``lr`` (its stamp and its
    checkpoints' owner lack it): the runner finds no difference at lr's default, and the job
    resumes to the numbers of an uninterrupted run. It failed: the resumed stage compared its
    checkpoint with the new settings' digest and refused it as "copied from another job"."""
    import torch

    run(tmp_path / "full", "checkpoint_every=4")  # in this process: only the kill needs another
    out = tmp_path / "killed"
    assert _cli(out, {"SAMPLE_KILL_AT": "fit-b-s0:9"}).returncode == -signal.SIGKILL
    folder = out / "checkpoints" / "fit-b-s0"
    stamp = json.loads((folder / "job.json").read_text())
    assert stamp["settings"]["config"].pop("lr") == 0.1  # the default
    (folder / "job.json").write_text(json.dumps(stamp))
    saved = torch.load(folder / "fit.pt", weights_only=True)
    tags = json.loads(saved["tags"])
    tags["settings"] = settings_digest(stamp["settings"])
    saved["tags"] = json.dumps(tags, sort_keys=True)
    torch.save(saved, folder / "fit.pt")
    run(out, "checkpoint_every=4")
    assert records(out) == records(tmp_path / "full")
    assert json.loads((out / "jobs" / "fit-b-s0.json").read_text())["resumed"]


def test_a_job_started_with_other_threads_is_refused(tmp_path):
    """fit-b-s0 killed mid-training at threads=1: resuming it with threads=2 would mix float
    results of two thread counts, so it is refused naming threads; threads=1 resumes it."""
    out = tmp_path / "killed"
    assert _cli(out, {"SAMPLE_KILL_AT": "fit-b-s0:9"}).returncode == -signal.SIGKILL
    refused = _cli(out, None, "--set", "threads=2")
    assert refused.returncode == 2 and "fit-b-s0 (started)" in refused.stderr
    assert "threads: 1 (started with) != 2" in refused.stderr
    assert _cli(out).returncode == 0


def test_unwritable_out_and_damaged_files_are_errors_that_name_them(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ConfigError, match="afile.* cannot be written"):
        run(tmp_path / "afile" / "run")
    out = tmp_path / "run"
    run(out)
    (out / "config.json").write_text('{"experiment": "sam')
    with pytest.raises(ConfigError, match="config.json is damaged"):
        run(out)
    out = tmp_path / "again"
    run(out)
    job = next((out / "jobs").glob("*.json"))
    job.write_text("null")  # valid JSON, not a job record (an AttributeError before)
    with pytest.raises(ConfigError, match=rf"{job.name} is damaged \(not a JSON object\)"):
        run(out)
    # valid JSON objects without a job's fields (a KeyError, an AttributeError before)
    fit = out / "jobs" / "fit-a-s0.json"
    intact = json.loads(fit.read_text())
    for field, value in (("record", None), ("settings", "x")):
        fit.write_text(json.dumps({**intact, field: value}))
        with pytest.raises(ConfigError, match=rf"fit-a-s0.json is damaged \({field}: missing"):
            run(out)
    fit.unlink()  # started, not finished: its stamp is read
    (out / "checkpoints" / "fit-a-s0" / "job.json").write_text(json.dumps({"settings": "x"}))
    with pytest.raises(ConfigError, match=r"job.json is damaged \(settings: missing"):
        run(out)


def test_a_dependency_whose_checkpoint_is_gone_says_how_to_recover(tmp_path):
    """summary reads fit-a's checkpoint. In place: with checkpoints/ deleted and summary to
    redo, the error names the missing file and the record to delete, and deleting it
    recovers. With reuse_from: a donor job whose checkpoints are gone is not reused but rerun."""
    from stopwise.checkpoints import CheckpointError

    out = tmp_path / "run"
    run(out)
    expected = records(out)
    for folder in (out / "checkpoints").iterdir():
        for file in folder.iterdir():
            file.unlink()
    (out / "jobs" / "summary-s0.json").unlink()
    with pytest.raises(CheckpointError, match="fit-a-s0.*is gone.*delete .*fit-a-s0.json"):
        run(out)
    (out / "jobs" / "fit-a-s0.json").unlink()
    run(out)
    assert records(out) == expected

    (out / "jobs" / "summary-s0.json").unlink()  # the donor: fit-b's checkpoint is gone too
    for file in (out / "checkpoints" / "fit-b-s0").iterdir():
        file.unlink()
    calls = tmp_path / "calls"
    run(tmp_path / "reused", f"reuse_from={out}", calls=calls)
    assert sorted(called(calls)) == ["fit-b-s0", "summary-s0"]
    assert records(tmp_path / "reused") == expected


def test_timed_blocks_keep_wall_and_cpu_seconds_of_the_same_span(tmp_path, monkeypatch):
    """A task's 'train CPU' must cover what its 'train seconds' cover, not the whole job (one-
    time setup costs CPU seconds outside the block)."""
    import types

    import stopwise.contract as contract
    from stopwise.contract import Job, JobContext, PlannedJob, RunDir

    # The context's start, then each block's start and end.
    wall, cpu = iter([0.0, 10.0, 12.5, 20.0, 21.0]), iter([0.0, 100.0, 104.0, 200.0, 201.5])
    clocks = types.SimpleNamespace(perf_counter=lambda: next(wall), process_time=lambda: next(cpu))
    monkeypatch.setattr(contract, "time", clocks)  # scripted clocks, for this module only
    context = JobContext(RunDir(tmp_path), None, PlannedJob("a-s0", Job("a"), 0, {}, ()), False)
    for _ in range(2):
        with context.timed("train"):
            pass
    assert context.timings == {"train": 3.5} and context.cpu_timings == {"train": 5.5}


def test_a_dependency_whose_checkpoint_is_damaged_says_how_to_recover(tmp_path):
    """A corrupt checkpoint of a finished job that another job reads: the error names the
    record to delete with it (deleting the file alone left a second error: the job was finished,
    so nothing retrained it), and following the message recovers the same records."""
    from stopwise.checkpoints import CheckpointError

    out = tmp_path / "run"
    run(out)
    expected = records(out)
    victim = next((out / "checkpoints" / "fit-a-s0").glob("*.pt"))
    victim.write_bytes(victim.read_bytes()[:50])
    (out / "jobs" / "summary-s0.json").unlink()
    record = out / "jobs" / "fit-a-s0.json"
    with pytest.raises(CheckpointError, match="truncated or corrupted") as refused:
        run(out)
    assert f"Delete it and {record}, then rerun" in str(refused.value)
    victim.unlink()
    record.unlink()
    run(out)
    assert records(out) == expected


def test_a_dependency_checkpoint_copied_from_another_job_is_refused(tmp_path):
    """fit-b's checkpoint copied over fit-a's (same stage name, same shapes): summary used to
    read it as fit-a's, silently."""
    from stopwise.checkpoints import CheckpointError

    out = tmp_path / "run"
    run(out)
    mine = next((out / "checkpoints" / "fit-a-s0").glob("*.pt"))
    shutil.copy(out / "checkpoints" / "fit-b-s0" / mine.name, mine)
    (out / "jobs" / "summary-s0.json").unlink()
    with pytest.raises(
        CheckpointError, match=r'tags \{"job": "fit-b-s0", "settings": .*not by stage .*"fit-a-s0"'
    ):
        run(out)


def test_a_checkpoint_copied_from_a_run_with_other_settings_is_refused(tmp_path):
    """Same job, same stage, another learning rate: its checkpoint was taken as this run's when
    resumed (the job's own stage) or read (by a job after it)."""
    from stopwise.checkpoints import CheckpointError

    other, out = tmp_path / "other", tmp_path / "run"
    run(other, "lr=0.05")
    run(out)
    expected = records(out)
    stage = next((out / "checkpoints" / "fit-a-s0").glob("*.pt")).name
    for unfinished in ("summary-s0", "fit-a-s0"):  # read by the summary; resumed by fit-a
        (out / "jobs" / f"{unfinished}.json").unlink()
        shutil.copy(other / "checkpoints" / "fit-a-s0" / stage, out / "checkpoints" / "fit-a-s0")
        with pytest.raises(CheckpointError, match="or from a run with other settings"):
            run(out)
    (out / "checkpoints" / "fit-a-s0" / stage).unlink()
    run(out)
    assert records(out) == expected


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    """Worker processes are spawned: each imports the calling script again. A script that calls
    run_experiment at its top level would start the run again in every worker (it ran into the
    run's lock, and the runner blamed the operating system); it is told what to change."""
    script = tmp_path / "sweep.py"
    out = tmp_path / "run"
    script.write_text(
        "from stopwise.experiments import run_experiment\n"
        f"run_experiment('toy', 'tiny', {str(out)!r}, ['workers=2', 'seeds=0,1', 'progress=false'])\n"
    )
    ran = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert ran.returncode != 0
    assert 'call it under `if __name__ == "__main__":`' in ran.stderr, ran.stderr[-3000:]
    assert "failed as it started" in ran.stderr
