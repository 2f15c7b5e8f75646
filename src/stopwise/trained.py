"""The stop models of a finished run, rebuilt from its checkpoints for use on new inputs.

``load_stop_model("runs/demo", "cpss_stop")`` gives a :class:`~stopwise.contract.TrainedStopModel`:
the trained step model and policy with the run's validation-fitted budget curve as rules, ready
for :func:`~stopwise.run_adaptive` or export. Each task says which of its jobs train a stop model
and how to rebuild it (``Experiment.stop_models``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ConfigError, from_plain
from .contract import JobContext, RunDir, TrainedStopModel, read_json_file
from .experiments import difference_finder, get_experiment, plan_jobs

__all__ = ["load_stop_model", "stop_model_names", "run_seeds", "finished_job"]


def _run_config(run_path: str | Path) -> tuple[RunDir, Any, Any]:
    run = RunDir(Path(run_path))
    saved = read_json_file(run.config_path)
    if saved is None:
        raise ConfigError(f"{run.path} is not a run directory (no config.json)")
    experiment = get_experiment(saved["experiment"])
    return run, experiment, from_plain(experiment.config, saved["config"])


def finished_job(run_path: str | Path, job_name: str, seed: int | None = None):
    """``(JobContext, record)`` of the finished job ``job_name`` of a run (seed: the run's
    first by default): the task's own helpers (named random streams, checkpoints, dependencies)
    work on the context as during the run."""
    run, experiment, config = _run_config(run_path)
    seed = config.seeds[0] if seed is None else seed
    plans = plan_jobs(experiment, config)
    planned = next((p for p in plans if p.job.name == job_name and p.seed == seed), None)
    if planned is None:
        raise ValueError(f"{run.path} plans no job {job_name!r} for seed {seed}")
    data = run.job_file(planned.id)
    if data is None:
        raise ValueError(f"{run.path} has no finished job {planned.id}")
    # A job that ran with other settings than this version plans for the run's config (a run
    # made before its task changed its jobs, e.g. split training from evaluation) would be
    # rebuilt from checkpoints it never had: say so, not "delete a record" that is not there.
    diff = difference_finder(run, experiment, plans, config)(planned, data["settings"])
    if diff:
        raise ValueError(
            f"{run.path}: job {planned.id} ran with other settings than this version of "
            f"stopwise plans for the run's config ({'; '.join(diff[:2])}): a run made before "
            "its task changed its jobs? Run the experiment again into a new --out"
        )
    return JobContext(run, config, planned, progress=False), data["record"]


def _stop_models(run_path: str | Path) -> tuple[str, dict]:
    _, experiment, config = _run_config(run_path)
    return experiment.name, experiment.stop_models(config) if experiment.stop_models else {}


def run_seeds(run_path: str | Path) -> list[int]:
    """The seeds a run's config runs (finished or not)."""
    return list(_run_config(run_path)[2].seeds)


def stop_model_names(run_path: str | Path) -> list[str]:
    """The stop models a run's config trains (finished or not)."""
    return list(_stop_models(run_path)[1])


def load_stop_model(
    run_path: str | Path, name: str | None = None, seed: int | None = None
) -> TrainedStopModel:
    """Stop model ``name`` (default: the run's first) of seed ``seed`` (default: the run's
    first) of a finished run directory, in eval mode."""
    experiment, models = _stop_models(run_path)
    if not models:
        raise ValueError(f"experiment {experiment} has no stop models to load")
    name = next(iter(models)) if name is None else name
    if name not in models:
        raise ValueError(f"{experiment} has no stop model {name!r}; choose one of {list(models)}")
    job, load = models[name]
    context, record = finished_job(run_path, job, seed)
    trained = load(context, record)
    trained.model.eval()
    if hasattr(trained.policy, "eval"):
        trained.policy.eval()
    return trained
