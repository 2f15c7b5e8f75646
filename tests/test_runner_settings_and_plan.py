"""The job runner's settings and plan on the sample experiment: runner keys never decide a
job's settings, params do, a job reads whole groups and only its keys, jobs run after their
dependencies in any listed order, a bad job graph is refused by name, and every job runs with
the threads setting in the runner and in worker processes."""

import json
import os
from dataclasses import dataclass

import pytest
import torch
from test_config import Stage
from test_runner import called, records, run

from stopwise.config import Config, ConfigError, build, group, param
from stopwise.contract import Experiment, Job, Report
from stopwise.experiments import get_experiment, plan_jobs


def test_keys_that_decide_only_how_a_run_executes_rerun_nothing(tmp_path, monkeypatch):
    """threads, workers, checkpoint_every, progress and reuse_from decide how a run is
    executed, not what a job computes: changing any of them on a finished run reruns no job
    and is not refused, for a job that reads every key (keys=None) too."""
    experiment = get_experiment("sample")
    original = experiment.jobs
    every_key = [Job(j.name, j.params, j.after, None) for j in original(None)]
    monkeypatch.setattr(experiment, "jobs", lambda config: every_key)
    out, calls = tmp_path / "run", tmp_path / "calls"
    run(out, calls=calls)
    before = records(out)
    try:
        for change in ("progress=true", "checkpoint_every=7", "threads=2", "workers=3"):
            run(out, change, calls=calls)
        run(out, f"reuse_from={out}", calls=calls)
    finally:
        torch.set_num_threads(1)
    assert len(called(calls)) == 4  # the first run's four jobs, nothing since
    assert records(out) == before


def test_a_job_whose_params_changed_is_refused(tmp_path, monkeypatch):
    """params are part of a job's settings: after an upgrade that gives fit-a another scale,
    its cached record (trained with scale 1) is not served as if it had scale 3."""
    out = tmp_path / "run"
    run(out)
    experiment = get_experiment("sample")
    original = experiment.jobs

    def jobs(config):
        return [
            Job(j.name, {"scale": 3.0}, j.after, j.keys) if j.name == "fit-a" else j
            for j in original(config)
        ]

    monkeypatch.setattr(experiment, "jobs", jobs)
    with pytest.raises(ConfigError) as error:
        run(out)
    assert "job fit-a-s0 (finished): params.scale: 1.0 -> 3.0" in str(error.value)
    assert "fit-b-s0" not in str(error.value)
    assert json.loads((out / "jobs" / "fit-a-s0.json").read_text())["params"] == {"scale": 1.0}


def test_jobs_listed_before_their_dependencies_run_after_them(tmp_path, monkeypatch):
    """A task may list its jobs in any order: each runs after the jobs in its `after`."""
    experiment = get_experiment("sample")
    original = experiment.jobs
    monkeypatch.setattr(experiment, "jobs", lambda config: original(config)[::-1])
    calls = tmp_path / "calls"
    run(tmp_path / "run", calls=calls)
    order = called(calls)
    assert sorted(order) == ["data-s0", "fit-a-s0", "fit-b-s0", "summary-s0"]
    assert order[0] == "data-s0" and order[-1] == "summary-s0"


def test_jobs_run_with_the_threads_setting_in_the_runner_and_in_workers(tmp_path):
    """Every job runs with `threads` torch threads, in the runner's process (workers=1) and
    in each worker process (the job file records torch.get_num_threads() inside the job). The
    count is one a fresh process would not have by default (its number of cores)."""
    n = 3 if os.cpu_count() != 3 else 5
    try:
        for workers in (1, 2):
            run(tmp_path / f"w{workers}", f"workers={workers}", f"threads={n}")
    finally:
        torch.set_num_threads(1)
    for workers in (1, 2):
        jobs = (tmp_path / f"w{workers}" / "jobs").iterdir()
        threads = {p.stem: json.loads(p.read_text())["threads"] for p in jobs}
        assert threads == {f"{j}-s0": n for j in ("data", "fit-a", "fit-b", "summary")}


@dataclass
class Grouped(Config):
    lr: float = param(0.1)
    lr_max: float = param(1.0)
    stage1: Stage = group(Stage)
    stage10: int = param(3)


def test_a_job_reads_its_keys_and_whole_groups_and_nothing_that_only_starts_alike():
    """keys=("lr", "stage1"): the key lr and every key of the group stage1, by hand; not
    lr_max nor stage10, whose names merely begin the same."""
    experiment = Experiment(
        "grouped", "", Grouped, lambda c: [Job("fit", keys=("lr", "stage1"))],
        lambda j, c: {}, lambda r, c: Report({}, ""),
    )  # fmt: skip
    config = build(Grouped, {"stage1.steps": 4})
    (planned,) = plan_jobs(experiment, config)
    assert planned.settings["config"] == {"lr": 0.1, "stage1.steps": 4, "stage1.lr": 0.1}


@pytest.mark.parametrize(
    "jobs, message",
    [
        ([Job("a"), Job("a")], "job names repeat: ['a']"),
        ([Job("a", after=("b",))], "job 'a' depends on unknown ['b']"),
        ([Job("a", keys=("lr", "stage2"))], "job 'a' reads unknown key 'stage2'"),
        ([Job("a", after=("b",)), Job("b", after=("a",))], "the jobs' dependencies form a cycle"),
    ],
)
def test_a_bad_job_graph_is_refused_by_name(jobs, message):
    experiment = Experiment(
        "graph", "", Grouped, lambda c: jobs, lambda j, c: {}, lambda r, c: Report({}, "")
    )
    with pytest.raises(ValueError) as error:
        plan_jobs(experiment, Grouped())
    assert f"graph: {message}" in str(error.value)
