"""The task contract: what a task gives the job runner, and what the runner gives a job.

A task registers an :class:`Experiment`: a typed config class (:mod:`stopwise.config`) with named
presets, ``jobs(config) -> [Job]``, ``run_job(job, context) -> record`` (a JSON-able dict) and
``report(results, config) -> Report``. The runner (:mod:`stopwise.experiments`) runs every job
once per seed and hands it a :class:`JobContext`; the report sees every finished job as a
:class:`JobResult`. Tasks import this module and the library's building blocks (stop-time
math, objectives, step models, policies, inference, training, selection), never the runner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import CheckpointError, atomic_write_text, load_checkpoint
from .config import LOGGING_KEY, RUNNER_KEYS, Config, ConfigError, DataError, build
from .training import LoopSettings, check_owner, is_main_process

__all__ = [
    "Job",
    "JobResult",
    "Report",
    "Experiment",
    "PlannedJob",
    "RunDir",
    "JobContext",
    "stream_seed",
    "job_id",
    "training_job",
    "is_training_job",
    "files_digest",
    "settings_digest",
    "checkpoint_owner",
    "TrainedStopModel",
]

logger = logging.getLogger("stopwise")


@dataclass(frozen=True)
class Job:
    """One unit of work of an experiment, run once per seed.

    name: unique within a seed (the job id is ``<name>-s<seed>``).
    params: what distinguishes this job from its siblings (a method, a value); part of its
        settings, passed to ``run_job`` as ``job.params``.
    after: names of the jobs (same seed) whose records and checkpoints it reads.
    keys: the config keys (or groups) it reads, which with ``params`` and the seed decide its
        numbers; None means every key but the runner's own (:data:`~stopwise.config.RUNNER_KEYS`).
    cost: a rough relative cost; with several workers the costliest ready jobs start first.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    keys: tuple[str, ...] | None = None
    cost: float = 1.0

    def __post_init__(self):
        # ("a") is the string "a", not a tuple: its letters would be taken for names.
        for name in ("after", "keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(
                    f"Job {self.name!r}: {name} takes a tuple of names, not the string "
                    f"{value!r} (write ({value!r},))"
                )


@dataclass
class JobResult:
    """A finished job as the report sees it."""

    id: str
    name: str
    seed: int
    params: dict[str, Any]
    record: dict[str, Any]
    seconds: float
    cpu_seconds: float
    resumed: bool = False
    reused_from: str | None = None


@dataclass
class Report:
    """What ``report(results, config)`` returns: the numbers, a markdown table, figures
    (name → matplotlib Figure) and a few lines for the terminal (what the run showed)."""

    results: dict[str, Any]
    table: str
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass
class TrainedStopModel:
    """A stop model a finished run trained, rebuilt from its checkpoints
    (:func:`stopwise.load_stop_model`): give ``model``, ``policy``, ``valid_steps`` and one of
    the rules to :func:`~stopwise.run_adaptive` (or to :class:`~stopwise.export.AdaptiveModule`).

    budgets: the run's budget curve, cheapest on validation first
        (:class:`~stopwise.selection.BudgetPoint`: the mean cost on validation in ``cost``'s
        unit, the rule fitted on validation, what the run measured with it on test, and the
        budget it was fitted for; a costlier budget that kept a cheaper one's rule, being no
        better on validation, repeats that point).
    rules: the run's own named operating points, where it has any (e.g. sparse recovery's
        threshold row).
    inputs: what one row of the model's inputs is.
    test_inputs: the run's test split as a list of input batches (regenerated or reloaded as
        the job did; a task whose test inputs differ in shape has several), to check the model
        against the numbers the run recorded.
    fast_copy: the task's ``model -> inference copy`` where it has one (see
        :meth:`inference_model`).
    """

    name: str
    model: Any
    policy: Any
    budgets: list[Any]
    cost: str = "steps"
    valid_steps: torch.Tensor | None = None
    rules: dict[str, Any] = field(default_factory=dict)
    inputs: str = ""
    test_inputs: Callable[[], Any] | None = None
    fast_copy: Callable[[Any], Any] | None = None

    def inference_model(self) -> Any:
        """The model to deploy or time on a CPU: the task's inference copy of ``model`` where it
        has one (the same function and multiply-adds, e.g. BatchNorm folded into the
        convolutions; predictions equal up to float rounding), else ``model`` itself."""
        return self.model if self.fast_copy is None else self.fast_copy(self.model)

    def rule_for(self, budget: float) -> Any:
        """The rule of the costliest budget point whose validation cost is at most ``budget``
        (the cheapest point if none is)."""
        within = [point.rule for point in self.budgets if point.val_cost <= budget]
        return within[-1] if within else self.budgets[0].rule


# Rebuilds one stop model from the job that trained it: load(context, record), the job's own
# context (its checkpoints, dependencies and named random streams, as during the run) and the
# record the job returned.
StopModelLoader = Callable[["JobContext", dict[str, Any]], TrainedStopModel]


@dataclass
class Experiment:
    """A runnable experiment: the task contract (see the module docstring)."""

    name: str
    description: str
    config: type[Config]
    jobs: Callable[[Any], list[Job]]
    run_job: Callable[[Job, JobContext], dict[str, Any]]
    report: Callable[[list[JobResult], Any], Report]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_preset: str = "quick"
    # Device types its jobs put their models and data on; another `device` is refused, not
    # silently ignored.
    devices: tuple[str, ...] = ("cpu", "cuda")
    # What :func:`stopwise.load_stop_model` can rebuild from a finished run of a config:
    # stop_models(config) -> {name: (the job that trains it, its StopModelLoader)}.
    stop_models: Callable[[Any], dict[str, tuple[str, StopModelLoader]]] | None = None

    def __post_init__(self):
        if not issubclass(self.config, Config):
            raise TypeError(f"{self.name}: config must derive from stopwise.config.Config")
        for preset, values in self.presets.items():
            try:
                build(self.config, values, f"{self.name} preset {preset!r}")
            except ConfigError as error:
                raise ValueError(f"{self.name}: preset {preset!r}: {error}") from None
        if self.presets and self.default_preset not in self.presets:
            raise ValueError(f"{self.name}: default preset {self.default_preset!r} is not defined")


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A run directory's JSON file, always an object (None where it does not exist); a damaged
    one is a :class:`ConfigError` naming it, not a traceback."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is damaged ({error}); restore or delete it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is damaged (not a JSON object); restore or delete it")
    return data


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream of ``seed``; no arithmetic on seeds."""
    digest = hashlib.sha256(f"stopwise/{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def job_id(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def training_job(name: str) -> str:
    """The job that trains what job ``name`` evaluates, ``<name>-train``: the names of a task's
    training/evaluation pairs (docs/adding_a_task.md §2; multi-exit, parity, few-shot)."""
    return f"{name}-train"


def is_training_job(name: str) -> bool:
    """Whether job ``name`` is the training job of such a pair (:func:`training_job`)."""
    return name.endswith("-train")


def files_digest(files: dict[str, Path]) -> str:
    """``"sha256:…"`` (16 hex digits) of the contents of ``files`` under their names (a name
    each, e.g. the path within the data folder). A job that reads a user's files carries it in
    its params, so that a rerun with other files (or changed ones) is refused as changed
    settings instead of served the jobs that read the first ones, while the same files at
    another path are the same setting."""
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        try:
            data = Path(path).read_bytes()
        except OSError as error:  # a broken link, no permission, a folder named like a file
            raise DataError(f"cannot read {path}: {error}") from None
        digest.update(f"{name}:{hashlib.sha256(data).hexdigest()}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


@dataclass
class PlannedJob:
    """A job of one seed, with its id, settings and the ids of the jobs it depends on.
    ``reads``: the config keys that decide its numbers, its own and (through their settings'
    digests in its own) those of every job it depends on, directly or not; None: every key."""

    id: str
    job: Job
    seed: int
    settings: dict[str, Any]
    after: tuple[str, ...]
    reads: tuple[str, ...] | None = None


def job_tags(id: str) -> dict[str, str]:
    """The tags of a job's metric records."""
    return {"job": id}


def settings_digest(settings: dict[str, Any]) -> str:
    """A short digest of a job's settings (its planned ``settings``, JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_owner(id: str, settings: dict[str, Any] | None) -> dict[str, str]:
    """Whose a job's checkpoints are: the job and its settings' digest (``settings`` None: the
    job alone). A file copied from another job, or from a run with other settings, is refused."""
    owner = job_tags(id)
    return owner if settings is None else {**owner, "settings": settings_digest(settings)}


class RunDir:
    """The files of one run directory (README.md, "A run directory", lists them)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.summary = ""  # the report's lines for the terminal, once the run has reported

    config_path = property(lambda self: self.path / "config.json")
    env_path = property(lambda self: self.path / "env.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    results_path = property(lambda self: self.path / "results.json")
    table_path = property(lambda self: self.path / "table.md")
    lock_path = property(lambda self: self.path / "run.lock")

    def job_path(self, id: str) -> Path:
        return self.path / "jobs" / f"{id}.json"

    def checkpoints(self, id: str) -> Path:
        return self.path / "checkpoints" / id

    def stamp_path(self, id: str) -> Path:
        return self.checkpoints(id) / "job.json"

    def checkpoint_state(self, id: str, stage: str, recover: str | None = None) -> dict[str, Any]:
        """The saved state of job ``id``'s training ``stage``, refused (:class:`CheckpointError`)
        if the file is damaged or another job or stage saved it; ``recover``: what to do then."""
        path = self.checkpoints(id) / f"{stage}.pt"
        saved = load_checkpoint(path, recover=recover)
        check_owner(saved, path, stage, checkpoint_owner(id, self.job_settings(id)), recover)
        return saved["state"]

    def job_settings(self, id: str) -> dict[str, Any] | None:
        """The settings job ``id`` ran with: its record's if it finished, else those it was
        started with (its stamp); None if neither file is there."""
        ran = self.job_file(id) or self.job_stamp(id)
        return None if ran is None else ran["settings"]

    def figure(self, name: str) -> Path:
        return self.path / "figures" / f"{name}.png"

    def read_json(self, name: str) -> Any:
        return read_json_file(self.path / name)

    def write_json(self, path: Path, data: Any) -> None:
        if is_main_process():
            atomic_write_text(path, json.dumps(data, indent=1, default=_plain) + "\n")

    def job_file(self, id: str) -> dict[str, Any] | None:
        """Job ``id``'s record file (None if it has not finished); one whose fields are missing
        or of the wrong type is a :class:`ConfigError`."""
        path = self.job_path(id)
        data = read_json_file(path)
        return _checked(data, path, _JOB_FIELDS, f"job {id}")

    def job_stamp(self, id: str) -> dict[str, Any] | None:
        """What job ``id`` was started with (``checkpoints/<id>/job.json``: its settings and
        threads), checked like :meth:`job_file`."""
        path = self.stamp_path(id)
        return _checked(read_json_file(path), path, {"settings": dict}, f"job {id}")


# The fields of a job's record file that the runner reads, and their types.
_JOB_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "name": str, "seed": int, "params": dict, "settings": dict, "record": dict,
    "seconds": (int, float), "cpu_seconds": (int, float),
}  # fmt: skip


def _checked(data: dict[str, Any] | None, path: Path, fields: dict, job: str) -> dict | None:
    """``data`` (a job's file) if each of ``fields`` has its type; else a :class:`ConfigError`."""
    wrong = [] if data is None else [k for k, t in fields.items() if not isinstance(data.get(k), t)]
    if wrong:
        raise ConfigError(
            f"{path} is damaged ({', '.join(wrong)}: missing or of the wrong type); restore it, "
            f"or delete it to run {job} again"
        )
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class KeyGuard:
    """A job's view of the config that refuses a key outside the job's declared ``keys`` (and
    the runner's own): such a key decides the job's numbers without being part of its
    settings, so a rerun with another value would reuse the old record. The runner puts it in
    front of the config when the environment sets ``STOPWISE_CHECK_KEYS=1`` (the tests do); a
    method or property of the config reads through it too."""

    def __init__(self, config: Any, allowed: tuple[str, ...], job: str, prefix: str = ""):
        keys = frozenset(f.name for f in dataclasses.fields(config))
        object.__setattr__(self, "_parts", (config, frozenset(allowed), job, prefix, keys))

    def __getattr__(self, name: str) -> Any:
        config, allowed, job, prefix, keys = object.__getattribute__(self, "_parts")
        if name not in keys:  # not a key
            declared = inspect.getattr_static(type(config), name, None)
            if isinstance(declared, property):
                return declared.fget(self)
            if isinstance(declared, types.FunctionType):  # a method: it reads through the guard
                return types.MethodType(declared, self)
            return getattr(config, name)  # a constant, a dunder; AttributeError if none
        key = prefix + name
        free = RUNNER_KEYS + getattr(config, "LOCATION_KEYS", ()) if not prefix else ()
        if key in allowed or name in free or name == LOGGING_KEY:
            return getattr(config, name)
        if any(k.startswith(key + ".") for k in allowed):  # a group, some of whose keys it reads
            return KeyGuard(getattr(config, name), tuple(allowed), job, key + ".")
        raise ConfigError(
            f"job {job} reads config key {key!r}, which is not among its keys "
            f"{sorted(allowed)}: declare it in the job's `keys`"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a job's config is read-only")


class JobContext:
    """What ``run_job`` gets from the runner: the config, its seed, named random streams,
    loop settings (checkpoints, metrics, progress), its dependencies' results, a logger and a
    timer. A task never opens a run directory, seeds by arithmetic, writes a checkpoint path,
    starts a worker or prints: it asks the context."""

    def __init__(self, run: RunDir, config: Any, planned: PlannedJob, progress: bool | None):
        self.run, self.config, self._planned = run, config, planned
        self.job, self.seed, self.id = planned.job, planned.seed, planned.id
        if os.environ.get("STOPWISE_CHECK_KEYS") == "1" and planned.reads is not None:
            self.config = KeyGuard(config, planned.reads, self.id)
        self._progress = progress
        self._stages: set[str] = set()  # the training stages this job has run so far
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}
        self._open: dict[str, tuple[float, float]] = {}  # part -> (wall, CPU) at its start
        self._start = (time.perf_counter(), time.process_time())
        self._before = (0.0, 0.0)  # wall and CPU seconds spent before a resume

    def clock(self) -> dict[str, Any]:
        """The job's seconds so far (wall, process CPU and each ``timed`` part, an open part up to
        now), counting the time spent before an interruption (:meth:`resume_clock`). Every
        checkpoint keeps it, so a resumed job's times count all the work its result took except
        what was redone: the steps after the last checkpoint."""
        now = (time.perf_counter(), time.process_time())
        timings, cpu_timings = dict(self.timings), dict(self.cpu_timings)
        for part, (wall, cpu) in self._open.items():
            timings[part] = timings.get(part, 0.0) + now[0] - wall
            cpu_timings[part] = cpu_timings.get(part, 0.0) + now[1] - cpu
        return {
            "seconds": self._before[0] + now[0] - self._start[0],
            "cpu_seconds": self._before[1] + now[1] - self._start[1],
            "timings": timings,
            "cpu_timings": cpu_timings,
        }

    def resume_clock(self, clock: dict[str, Any]) -> None:
        """Start from a :meth:`clock` saved before an interruption."""
        self._before = (clock["seconds"], clock["cpu_seconds"])
        self.timings, self.cpu_timings = dict(clock["timings"]), dict(clock["cpu_timings"])

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def stream_seed(self, stream: str) -> int:
        """The seed of a named random stream (same name and run seed: same seed in every job)."""
        return stream_seed(self.seed, stream)

    def generator(self, stream: str) -> torch.Generator:
        """A CPU generator for the named stream, e.g. ``context.generator("train-batches")``."""
        return torch.Generator().manual_seed(self.stream_seed(stream))

    def manual_seed(self, stream: str) -> None:
        """Seed torch's global generator from a named stream (e.g. before building a model, so
        every method of a seed starts from the same weights)."""
        torch.manual_seed(self.stream_seed(stream))

    def loop_settings(self, log_every: int = 50) -> LoopSettings:
        return LoopSettings(
            checkpoint_dir=self.run.checkpoints(self.id),
            checkpoint_every=self.config.checkpoint_every,
            metrics_path=self.run.metrics_path,
            log_every=log_every,
            progress=self._progress,
            tags=job_tags(self.id),
            owner=checkpoint_owner(self.id, self._planned.settings),
            clock=self.clock,
            stages_run=self._stages,
        )

    def dependency(self, name: str) -> JobResult:
        """The finished result of the job ``name`` (same seed) this job depends on."""
        id = job_id(name, self.seed)
        if id not in self._planned.after:
            raise ValueError(f"job {self.id} does not declare {name!r} in its `after`")
        return read_result(self.run.job_file(id))

    def checkpoint(self, stage: str, job: str | None = None) -> dict[str, Any]:
        """The saved state of a finished training stage of this job or of a dependency."""
        id = self.id if job is None else job_id(job, self.seed)
        if job is not None and id not in self._planned.after:
            raise ValueError(f"job {self.id} does not declare {job!r} in its `after`")
        path = self.run.checkpoints(id) / f"{stage}.pt"
        # A dependency, or this job's own stage loaded after it finished (a stop model).
        finished = job is not None or self.run.job_path(id).is_file()
        if finished and not path.is_file():
            saved = sorted(p.stem for p in path.parent.glob("*.pt"))
            if job is not None and saved:  # a name it never saved, most likely
                raise CheckpointError(
                    f"job {self.id} needs stage {stage!r} of the finished job {id}, which has "
                    f"checkpoints of stages {saved} only: a stage name it never saved? (If "
                    f"{path.name} was deleted, delete {self.run.job_path(id)} to rerun job {id}.)"
                )
            raise CheckpointError(
                f"job {self.id} needs stage {stage!r} of the finished job {id}, whose checkpoint "
                f"{path} is gone; delete {self.run.job_path(id)} to rerun job {id} (was "
                "checkpoints/ deleted?)"
            )
        redo = None
        if finished:
            redo = (
                f"Delete it and {self.run.job_path(id)}, then rerun the same command: job {id} "
                "is trained again."
            )
        return self.run.checkpoint_state(id, stage, redo)

    def log(self, message: str) -> None:
        logger.info("[%s] %s", self.id, message)

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the wall-clock seconds of the block to ``timings[part]`` and its process CPU
        seconds to ``cpu_timings[part]`` (both kept in the job's result file)."""
        if part in self._open:
            raise ValueError(f"timed({part!r}) is already open")
        start, cpu_start = self._open[part] = (time.perf_counter(), time.process_time())
        try:
            yield
        finally:
            del self._open[part]
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            self.cpu_timings[part] = self.cpu_timings.get(part, 0.0) + cpu


def read_result(data: dict[str, Any]) -> JobResult:
    return JobResult(
        data["id"],
        data["name"],
        data["seed"],
        data["params"],
        data["record"],
        data["seconds"],
        data["cpu_seconds"],
        data.get("resumed", False),
        data.get("reused_from"),
    )
