"""Experiments and the job runner.

An :class:`Experiment` is what a task registers: a typed config class (see :mod:`stopwise.config`)
with named presets, ``jobs(config) -> [Job]``, ``run_job(job, context) -> record`` and
``report(results, config) -> Report``. The runner owns everything else:

* every job runs once per seed of ``config.seeds``, after the jobs it depends on (same seed);
* a finished job is cached in ``jobs/<id>.json`` with the settings that decide its numbers, and
  is never rerun; a rerun whose settings differ for a job that has finished or started is refused
  with a message naming the difference; finished jobs of another run directory with identical
  settings are reused (``reuse_from``);
* an interrupted job resumes from its last checkpoint (``checkpoints/<id>/<stage>.pt``);
* random numbers come from named streams (:meth:`JobContext.generator`): the same name and seed
  give the same draws in every job, so methods compared on one seed see the same data;
* independent jobs run in ``workers`` processes, ``threads`` torch threads each;
* one logger; progress bars only on a terminal.

A run directory::

    <out>/config.json    experiment, preset and the resolved config
    <out>/env.json       versions, machine, threads; the first start and every resume
    <out>/metrics.jsonl  training curves of every job ({"job", "stage", "step", ...} per line)
    <out>/jobs/<id>.json a finished job: its settings, record and timing
    <out>/checkpoints/<id>/<stage>.pt
    <out>/checkpoints/<id>/job.json  a started job: its settings and threads
    <out>/results.json   the numbers the table is made of (written last)
    <out>/table.md       the table, ready to paste
    <out>/figures/*.png
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .checkpoints import (
    CheckpointError,
    WriteError,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temporaries,
)
from .config import (
    RUNNER_KEYS,
    ConfigError,
    build,
    flatten,
    parse_value,
    schema,
    to_plain,
    validate,
)
from .contract import (
    Experiment,
    Job,
    JobContext,
    JobResult,
    PlannedJob,
    Report,
    RunDir,
    _plain,
    is_training_job,
    job_id,
    read_result,
    settings_digest,
    stream_seed,
)
from .training import (
    Interrupted,
    MetricsLog,
    WorkerDied,
    install_stop_handlers,
    is_main_process,
    request_stop,
    seed_everything,
    set_threads,
    stop_on_signals,
    stop_signal,
)

__all__ = [
    "ConfigError",
    "Job",
    "JobContext",
    "JobResult",
    "Report",
    "Experiment",
    "RunDir",
    "register_experiment",
    "get_experiment",
    "list_experiments",
    "load_tasks",
    "load_module",
    "experiment_source",
    "resolve_config",
    "plan_jobs",
    "difference_finder",
    "run_experiment",
    "stream_seed",
]

logger = logging.getLogger("stopwise")

# Built-in task modules (this runner imports them; they never import it). Out-of-tree packages
# register through the entry-point group ENTRY_POINTS or ``stopwise --module``.
TASK_MODULES = (
    "stopwise.tasks.toy",
    "stopwise.tasks.sparse_recovery",
    "stopwise.tasks.parity",
    "stopwise.tasks.multi_exit",
    "stopwise.tasks.learned_optimizers",
    "stopwise.tasks.denoising",
    "stopwise.tasks.few_shot",
)
ENTRY_POINTS = "stopwise.experiments"


# ---------------------------------------------------------------- registry

_EXPERIMENTS: dict[str, Experiment] = {}
_PACKAGE = Path(__file__).resolve().parent  # stopwise's own files, told apart from a user's
_SOURCES: dict[str, str] = {}  # experiment name -> the module or entry point that registered it
_LOAD_ERRORS: dict[str, str] = {}
_LOADED: set[str] = set()  # modules (dotted names or paths) imported and registered
_LOADED_POINTS: set[str] = set()  # entry points loaded (a worker loads them itself)


def register_experiment(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry (once per name)."""
    known = _EXPERIMENTS.get(experiment.name)
    if known is not None and known is not experiment:
        source = _SOURCES.get(experiment.name)
        by = f" by {source}" if source else ""
        raise ValueError(f"experiment {experiment.name!r} is already registered{by}")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def _register_from(obj: Any, source: str) -> None:
    """Register what a module or entry point provides: an Experiment, or a module whose
    ``EXPERIMENTS`` lists them."""
    experiments = [obj] if isinstance(obj, Experiment) else getattr(obj, "EXPERIMENTS", None)
    if experiments is None:
        raise ValueError(f"{source} defines no EXPERIMENTS list and is not an Experiment")
    for experiment in experiments:
        if not isinstance(experiment, Experiment):
            raise ValueError(
                f"{source}: EXPERIMENTS holds {experiment!r}, not a stopwise.contract.Experiment"
            )
        register_experiment(experiment)
        _SOURCES.setdefault(experiment.name, source)


def experiment_source(name: str) -> str:
    """The module (dotted name or .py path) or entry point that registered ``name``."""
    return _SOURCES[name]


def load_module(module: str) -> None:
    """Import ``module`` and register its experiments. ``module`` is a dotted name (importable
    from the current directory too, as with ``python -m``), a path to a ``.py`` file, or a path
    to a package (its folder or its ``__init__.py``).

    The built-in tasks are registered first, so a user's module cannot take a built-in name.
    Anything that goes wrong while importing a user's module is a :class:`ConfigError` that
    names the module, the error and where it was raised (exit 2 on the command line).
    """
    if module in _LOADED:
        return
    builtin = module in TASK_MODULES
    if not builtin:
        load_tasks()
    try:
        loaded = _import(module)
        _register_from(loaded, module)
    except ConfigError:
        raise
    except Exception as error:
        if builtin:
            raise
        raise ConfigError(f"--module {module}: {_describe_error(error)}") from None
    _LOADED.add(module)


def _import(module: str) -> Any:
    path = Path(module)
    package = path.parent if path.name == "__init__.py" else path
    if (package / "__init__.py").is_file():
        root, name = _dotted(package.resolve())
        _on_path(root)
        return importlib.import_module(name)
    if path.name == "__init__.py":
        raise ConfigError(f"--module {module}: no such package")
    if module.endswith(".py"):
        if not path.is_file():
            raise ConfigError(f"--module {module}: no such file")
        if (path.parent / "__init__.py").is_file() and path.stem.isidentifier():
            # a module of a package: imported as one (a stem like task.v2 cannot be)
            root, name = _dotted(path.resolve().with_suffix(""))
            _on_path(root)
            return importlib.import_module(name)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = loaded
        spec.loader.exec_module(loaded)
        return loaded
    _on_path(Path.cwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and module.startswith(error.name):  # the module itself, not an import in it
            raise ConfigError(f"--module {module}: cannot import it ({error})") from None
        raise


def _dotted(path: Path) -> tuple[Path, str]:
    """The folder to import from and the dotted name of the package or module at ``path``
    (without ``.py``), walking up through the packages that hold it: ``a/b/c`` with ``b`` a
    package inside ``a`` imports as ``b.c`` from ``a``, the name its own absolute imports use
    (imported as ``c`` from ``b``, the same files loaded twice under two names)."""
    parts = [path.name]
    while (path.parent / "__init__.py").is_file():
        path = path.parent
        parts.insert(0, path.name)
    return path.parent, ".".join(parts)


def _on_path(folder: Path) -> None:
    """Let ``import`` find packages in ``folder`` (the current directory for a dotted name)."""
    if str(folder) not in sys.path and not (str(folder) == os.getcwd() and "" in sys.path):
        sys.path.insert(0, str(folder))


def _describe_error(error: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame an exception passed through that is
    a file (not the import machinery's frozen frames; a SyntaxError: the file and line it names),
    preferring the user's own files to stopwise's (a bad ``Experiment(...)`` is the user's line,
    not the check inside stopwise that refused it); none where only stopwise's frames remain."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<")
    ]
    users = [f for f in frames if not Path(f.filename).resolve().is_relative_to(_PACKAGE)]
    where = f" ({users[-1].filename}:{users[-1].lineno})" if users else ""
    if isinstance(error, SyntaxError):
        return f"{type(error).__name__}: {error.msg} ({error.filename}:{error.lineno})"
    return f"{type(error).__name__}: {error}{where}"


def load_tasks() -> dict[str, str]:
    """Register the built-in tasks and the entry points; returns {source: error} for failures
    (a broken task must not break the others)."""
    for module in TASK_MODULES:
        if module in _LOADED or module in _LOAD_ERRORS:
            continue
        try:
            load_module(module)
        except Exception as error:  # noqa: BLE001 - reported by `stopwise list`
            _LOAD_ERRORS[module] = f"{type(error).__name__}: {error}"
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINTS):
        source = f"entry point {point.name} ({point.value})"
        if source in _LOADED_POINTS or source in _LOAD_ERRORS:
            continue
        try:
            _register_from(point.load(), source)
            _LOADED_POINTS.add(source)
        except Exception as error:  # noqa: BLE001
            _LOAD_ERRORS[source] = f"{type(error).__name__}: {error}"
    return dict(_LOAD_ERRORS)


def list_experiments() -> list[Experiment]:
    load_tasks()
    return [_EXPERIMENTS[name] for name in sorted(_EXPERIMENTS)]


def get_experiment(name: str) -> Experiment:
    load_tasks()
    if name not in _EXPERIMENTS:
        raise ConfigError(
            f"unknown experiment {name!r}; choose one of {sorted(_EXPERIMENTS)} (a task of your "
            "own: name its module with --module, or install it with a 'stopwise.experiments' "
            "entry point; docs/adding_a_task.md)"
        )
    return _EXPERIMENTS[name]


# ---------------------------------------------------------------- config


def resolve_config(
    experiment: Experiment,
    preset: str | None = None,
    overrides: list[str] | None = None,
    checks: bool = True,
) -> tuple[Any, str]:
    """defaults ← preset ← ``key=value`` overrides, every key typed and range-checked, then
    (``checks``) the config's own ``check()`` between keys and of the data.

    Returns ``(config, preset name)``; raises :class:`ConfigError` naming a bad key or value.
    """
    preset = preset or experiment.default_preset
    if experiment.presets and preset not in experiment.presets:
        raise ConfigError(
            f"unknown preset {preset!r} for {experiment.name}; choose one of "
            f"{sorted(experiment.presets)}"
        )
    values = flatten(dict(experiment.presets.get(preset, {})))
    keys = schema(experiment.config)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value; got {item!r}")
        key, text = (part.strip() for part in item.split("=", 1))
        if key not in keys:
            build(experiment.config, {key: None}, experiment.name)  # raises the unknown-key error
        values[key] = parse_value(key, text, keys[key][0])
    config = build(experiment.config, values, experiment.name)
    validate(config, experiment.name, checks)
    if torch.device(config.device).type not in experiment.devices:
        raise ConfigError(
            f"{experiment.name}: device={config.device!r}: this experiment runs on "
            f"{' or '.join(experiment.devices)} only"
        )
    return config, preset


# ---------------------------------------------------------------- planning


def _job_settings(job: Job, config: Any, seed: int) -> dict[str, Any]:
    flat = flatten(to_plain(config))
    if job.keys is None:
        chosen = {k: v for k, v in flat.items() if k not in RUNNER_KEYS}
    else:
        chosen = {
            k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in job.keys)
        }
    return {"seed": seed, "params": job.params, "config": chosen}


def plan_jobs(experiment: Experiment, config: Any) -> list[PlannedJob]:
    """Every job of every seed, dependencies first. Raises ValueError on a bad job graph."""
    jobs = experiment.jobs(config)
    names = [job.name for job in jobs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{experiment.name}: job names repeat: {duplicated}")
    keys = schema(type(config))
    for job in jobs:
        unknown = [d for d in job.after if d not in names]
        if unknown:
            raise ValueError(f"{experiment.name}: job {job.name!r} depends on unknown {unknown}")
        for key in job.keys or ():
            if not any(k == key or k.startswith(key + ".") for k in keys):
                raise ValueError(f"{experiment.name}: job {job.name!r} reads unknown key {key!r}")
    ordered: list[Job] = []
    placed: set[str] = set()
    while len(ordered) < len(jobs):
        ready = [j for j in jobs if j.name not in placed and set(j.after) <= placed]
        if not ready:
            raise ValueError(f"{experiment.name}: the jobs' dependencies form a cycle")
        ordered.append(ready[0])
        placed.add(ready[0].name)
    reads: dict[str, tuple[str, ...] | None] = {}
    for job in ordered:  # its own keys and, through their digests, its dependencies'
        inherited = [reads[d] for d in job.after]
        if job.keys is None or None in inherited:
            reads[job.name] = None
        else:
            reads[job.name] = tuple(sorted({*job.keys, *(k for r in inherited for k in r)}))
    planned = []
    for seed in config.seeds:
        settings: dict[str, dict[str, Any]] = {}
        for job in ordered:
            # A job's numbers also depend on what its dependencies computed.
            own = _job_settings(job, config, seed)
            own["after"] = {d: settings_digest(settings[d]) for d in job.after}
            settings[job.name] = own
            after = tuple(job_id(d, seed) for d in job.after)
            planned.append(
                PlannedJob(job_id(job.name, seed), job, seed, own, after, reads[job.name])
            )
    return planned


def _settings_diff(
    old: dict[str, Any],
    new: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    same_dependency: Callable[[str, str], bool] = lambda name, digest: False,
    current: dict[str, Any] | None = None,
) -> list[str]:
    """The keys whose values differ, as ``key: old -> new``. A config key the old settings lack
    was added to the task after that job ran: with its default value (``defaults``, flattened
    like the settings) it is no difference, since a key is added with the default that keeps
    the old behaviour. Likewise a config key only the old settings have, at its default or at
    its value in this run's config (``current``, flattened alike): the job no longer reads it
    (e.g. a CPU-only job that stopped listing ``device``, or a training job that stopped
    listing a key only the report's timing reads). A dependency's digest (``after.<name>``)
    that differs is no difference when ``same_dependency(name, old digest)`` says the
    dependency's own settings are the same in that sense."""
    a, b, defaults, current = flatten(old), flatten(new), defaults or {}, current or {}
    at_default = {
        k for k in set(a) ^ set(b) if k in defaults and (a[k] if k in a else b[k]) == defaults[k]
    }
    at_default |= {k for k in set(a) - set(b) if k in current and a[k] == current[k]}
    return [
        _difference(a, b, k)
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
        and k not in at_default
        and not (k.startswith("after.") and k in a and same_dependency(k[6:], a[k]))
    ]


def _difference(old: dict[str, Any], new: dict[str, Any], key: str) -> str:
    """``key: old -> new``; a dependency added or dropped (the config changed which jobs run,
    e.g. a grid value or a method) is said in words, not as a digest and "(absent)"."""
    if key.startswith("after.") and (key not in old or key not in new):
        name = key[len("after.") :]
        if key not in old:
            split = (
                "; a run made before this task's training jobs were split from its evaluation "
                "has none to reuse"
                if is_training_job(name)
                else ""
            )
            return (
                f"{key}: a dependency it did not have (this config adds job {name} before "
                f"it{split})"
            )
        return f"{key}: a dependency it no longer has (this config drops job {name})"
    if key.startswith("after."):
        return f"{key}: job {key[len('after.') :]}, which it runs after, has other settings"
    return f"{key}: {_shown(old, key)} -> {_shown(new, key)}"


def _shown(settings: dict[str, Any], key: str) -> str:
    return repr(settings[key]) if key in settings else "(absent)"


# ---------------------------------------------------------------- the run directory


def difference_finder(
    records: RunDir, experiment: Experiment, planned: list[PlannedJob], config: Any = None
) -> Callable[[PlannedJob, dict[str, Any]], list[str]]:
    """``diff_of(planned job, settings it ran with)``: the differences that matter
    (:func:`_settings_diff`), a dependency whose digest changed judged by its record in
    ``records`` (the run directory, or the one jobs are reused from)."""
    defaults = flatten({"config": to_plain(experiment.config())})
    current = flatten({"config": to_plain(config)}) if config is not None else {}
    by_id = {p.id: p for p in planned}

    def diff_of(p: PlannedJob, old: dict[str, Any]) -> list[str]:
        def same_dependency(name: str, digest: str) -> bool:
            id = job_id(name, p.seed)
            record = records.job_file(id) if id in by_id else None
            if record is None:
                return False
            ran = record["settings"]
            return settings_digest(ran) == digest and not diff_of(by_id[id], ran)

        return _settings_diff(old, p.settings, defaults, same_dependency, current)

    return diff_of


def check_run_dir(
    run: RunDir,
    experiment: Experiment,
    planned: list[PlannedJob],
    threads: int | None = None,
    config: Any = None,
) -> None:
    """Refuse, before anything is written, a directory this run must not write into. A job
    started with another ``threads`` is refused too: resuming it with a different thread count
    would give numbers that neither count gives alone. ``config``: this run's, for the keys a
    job no longer reads (see :func:`_settings_diff`)."""
    out = run.path
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    owner = RunLock.owner(run)
    if owner is not None:
        raise ConfigError(
            f"--out {out} is in use by {owner}; wait for it to finish or choose another --out"
        )
    if not out.exists():
        return
    # A run killed while first writing its config.json leaves only its lock and that file's
    # temporary: a directory where nothing has run yet.
    remove_stale_temporaries(run.config_path)
    if not any(p.name != run.lock_path.name for p in out.iterdir()):
        return
    _check_experiment(
        run, experiment, f"--out {out}",
        "is a non-empty directory that is not a stopwise run; choose another",
        "; choose another --out",
    )  # fmt: skip
    diff_of = difference_finder(run, experiment, planned, config)
    conflicts = []
    for p in planned:
        started = any(run.checkpoints(p.id).glob("*.pt"))  # a stamp alone is not a start
        ran, state = run.job_file(p.id), "finished"
        if ran is None and started:
            ran, state = run.job_stamp(p.id), "started"
        if ran is None:
            continue
        diff = diff_of(p, ran["settings"])
        stamped = ran.get("threads") if state == "started" else None
        if threads is not None and stamped is not None and stamped != threads:
            diff.append(f"threads: {stamped} (started with) != {threads}")
        if diff:
            conflicts.append(f"job {p.id} ({state}): " + "; ".join(diff[:6]))
    if conflicts:
        shown = "\n  ".join(conflicts[:8]) + ("\n  ..." if len(conflicts) > 8 else "")
        raise ConfigError(
            f"--out {out} holds jobs run with other settings:\n  {shown}\nrerun with the same "
            f"settings, choose another --out with --set reuse_from={out} (it takes the jobs "
            "that still match: trained models evaluated again with other evaluation settings), "
            "or delete a job's jobs/<id>.json and checkpoints/<id>/ to redo it"
        )


def _check_experiment(run: RunDir, experiment: Experiment, what: str, not_a_run: str,
                      advice: str = "") -> None:  # fmt: skip
    """Refuse a directory that is not a stopwise run (``what`` + ``not_a_run``), or holds a run
    of another experiment, whose jobs can have the same ids and settings."""
    saved = run.read_json("config.json") if run.config_path.is_file() else None
    if not isinstance(saved, dict) or "experiment" not in saved:
        raise ConfigError(f"{what} {not_a_run}")
    if saved["experiment"] != experiment.name:
        raise ConfigError(
            f"{what} holds a run of another experiment ({saved['experiment']!r}, not "
            f"{experiment.name!r}){advice}"
        )


class RunLock:
    """An exclusive lock on a run directory (``run.lock`` holds the owner's PID). The kernel
    releases it when the owner dies, so a stale lock is taken over safely."""

    def __init__(self, run: RunDir):
        self.path = run.lock_path
        self.handle = None

    @staticmethod
    def owner(run: RunDir) -> str | None:
        """Who holds the lock of ``run`` now (None if nobody does)."""
        if not run.lock_path.is_file():
            return None
        with open(run.lock_path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return handle.read().strip() or "another process"
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+")
        except OSError as error:
            raise ConfigError(
                f"--out {self.path.parent} cannot be written ({error.strerror}); choose another"
            ) from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            raise ConfigError(
                f"--out {self.path.parent} is in use by {owner}; wait for it to finish or "
                "choose another --out"
            ) from None
        try:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(f"pid {os.getpid()} on {platform.node()}\n")
            self.handle.flush()
        except OSError as error:  # a full disk: said like any failed write, not a traceback
            with contextlib.suppress(OSError):
                self.handle.close()
            raise WriteError(
                error.errno, f"could not write {self.path} ({error.strerror or error})"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        # Emptied and unlocked, never deleted: a process that opened the file before this one
        # let go must lock the same file a later process sees, not one removed from the path.
        with contextlib.suppress(OSError):
            self.handle.truncate(0)
        self.handle.close()


def source_version() -> dict[str, Any]:
    """``git_commit`` of the stopwise checkout running (None outside one) and ``git_dirty``:
    whether its tracked files differ from that commit (None when unknown)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=5,
                cwd=Path(__file__).parent,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or None, "git_dirty": None if changes is None else bool(changes)}


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(config: Any) -> dict[str, Any]:
    """Versions, machine and settings that decide the numbers of a run."""
    return {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "stopwise": __version__,
        **source_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": config.threads,
        "workers": config.workers,
        "seeds": list(config.seeds),
        "device": config.device,
        "cuda": torch.cuda.is_available(),
    }


def _say_what_changed(
    run: RunDir, preset: str, plain: dict[str, Any], defaults: dict[str, Any]
) -> None:
    """Log the keys in which this run's config differs from the one the directory held (its
    jobs with other settings stay as files; the report covers this config's jobs only). A key
    the directory's config lacks (added to the task since) at its default is no change."""
    previous = run.read_json("config.json")
    if not isinstance(previous, dict) or not isinstance(previous.get("config"), dict):
        return
    old, new, defaults = flatten(previous["config"]), flatten(plain), flatten(defaults)
    changed = sorted(
        k
        for k in old.keys() | new.keys()
        if k not in RUNNER_KEYS and old.get(k, defaults.get(k)) != new.get(k, defaults.get(k))
    )
    if changed or previous.get("preset") != preset:
        logger.info(
            "%s held a run of preset %s; this one (%s) differs in %s: its finished jobs stay "
            "as files, the report covers this run's jobs",
            run.path,
            previous.get("preset"),
            preset,
            ", ".join(changed[:8]) or "no key",
        )


def _record_environment(run: RunDir, config: Any) -> None:
    """env.json keeps the first start and appends every resume."""
    now = environment(config)
    previous = run.read_json("env.json")
    if isinstance(previous, dict) and "started" in previous:
        previous.setdefault("resumes", []).append(now)
        now = previous
    run.write_json(run.env_path, now)


# ---------------------------------------------------------------- running one job


def _run_one(experiment: Experiment, config: Any, run: RunDir, planned: PlannedJob, progress):
    """Run one job (resuming from its checkpoints) and write its record."""
    checkpoints = run.checkpoints(planned.id)
    resumed = checkpoints.is_dir() and any(checkpoints.glob("*.pt"))
    started = run.job_stamp(planned.id) if resumed else None
    if started is not None and started["settings"] != planned.settings:
        # Settings check_run_dir found no different (a key added since, at its default; one no
        # longer read): resume as the job started, whose digest its checkpoints carry.
        planned = dataclasses.replace(planned, settings=started["settings"])
    stamp = {"id": planned.id, "settings": planned.settings, "threads": config.threads}
    run.write_json(run.stamp_path(planned.id), stamp)
    seed_everything(stream_seed(planned.seed, "global") % 2**32)
    context = JobContext(run, config, planned, progress)
    saved = _saved_clock(checkpoints) if resumed else None
    if saved is not None:
        context.resume_clock(saved)
    record = experiment.run_job(planned.job, context)
    if not isinstance(record, dict):
        raise TypeError(f"{experiment.name}: run_job must return a dict; got {type(record)}")
    data = {
        "id": planned.id,
        "name": planned.job.name,
        "seed": planned.seed,
        "params": planned.job.params,
        "settings": planned.settings,
        "record": record,
        **context.clock(),  # seconds, cpu_seconds, timings, cpu_timings
        "threads": torch.get_num_threads(),
        "checkpoints": sorted(path.name for path in checkpoints.glob("*.pt")),
        "resumed": resumed,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    data = json.loads(json.dumps(data, default=_plain))  # plain types, as the file has them
    run.write_json(run.job_path(planned.id), data)
    if is_main_process() and not any(checkpoints.glob("*.pt")):  # nothing to resume from
        shutil.rmtree(checkpoints, ignore_errors=True)
    return data


def _saved_clock(checkpoints: Path) -> dict[str, Any] | None:
    """The latest job clock (``JobContext.clock``) among a job's checkpoints; None if none
    keeps one (older files). A file that cannot be read is left to the stage that resumes
    from it, which names it."""
    clocks = []
    for path in checkpoints.glob("*.pt"):
        with contextlib.suppress(CheckpointError):
            saved = load_checkpoint(path)
            clock = saved.get("clock") if isinstance(saved, dict) else None
            if isinstance(clock, dict):
                clocks.append(clock)
    return max(clocks, key=lambda clock: clock["seconds"], default=None)


_worker_busy = False  # in a worker process: running a job now
_worker_stopped: int | None = None  # in a worker process: the signal that stopped the run


def _worker_signal(signum: int, frame: Any) -> None:
    """A worker stops its job cleanly on SIGTERM (at a second one, at once); an idle one starts
    no job after it."""
    global _worker_stopped
    _worker_stopped = signum
    if _worker_busy:
        request_stop(signum, frame)


def _worker_init(modules: tuple[str, ...], threads: int, level: int, runner: int) -> None:
    install_stop_handlers()
    # A terminal's Ctrl-C reaches every process of the group; the runner alone decides, and
    # passes a SIGTERM to each worker (see _stop_workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_signal)
    _die_with(runner)
    _configure_logging(level)
    # tqdm's default lock is a multiprocessing semaphore: a worker killed alone would leave it to
    # the resource tracker, which warns of a "leaked semaphore" after the run's own message.
    tqdm.set_lock(threading.RLock())
    for module in modules:
        load_module(module)
    load_tasks()
    set_threads(threads)


def _die_with(runner: int) -> None:
    """Linux: the kernel kills this worker when the runner dies, so a runner killed with SIGKILL
    leaves no worker writing into its run directory after its lock is gone (elsewhere: no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != runner:  # the runner died before the kernel was told
        os._exit(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM to every worker process: a busy one checkpoints its stage and stops."""
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Block SIGINT while worker processes start: they inherit the blocked signal, so a
    terminal's Ctrl-C while they import torch stays pending until ``_worker_init`` ignores it,
    instead of a KeyboardInterrupt traceback from each of them. The runner gets its own Ctrl-C
    when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _worker_death(running: dict[Any, PlannedJob], job: PlannedJob) -> Iterator[None]:
    """A broken pool (a worker process ended with no result or error) as :class:`WorkerDied`
    naming the jobs that were running; :class:`Interrupted` where a stop signal came first."""
    try:
        yield
    except BrokenProcessPool as error:
        if stop_signal() is not None:
            raise Interrupted(stop_signal()) from error
        ids = ", ".join(sorted({job.id, *(q.id for q in running.values())}))
        raise WorkerDied(
            f"a worker process died while running {ids}: it failed as it started if an error "
            "is printed above (fix that first), else it was killed by the operating system "
            "(e.g. out of memory) or by a signal sent to it alone; any other worker "
            "checkpointed its stage. Rerun the same command to resume, with --set workers=1 if "
            "memory is short."
        ) from error


def _worker_run(name: str, config_plain: dict, run_path: str, planned: PlannedJob) -> str:
    global _worker_busy
    if _worker_stopped is not None:  # the job was handed over as the run was being stopped
        raise Interrupted(_worker_stopped)
    experiment = get_experiment(name)
    config = build(experiment.config, config_plain, name)
    _worker_busy = True
    try:
        _run_one(experiment, config, RunDir(run_path), planned, False)
    finally:
        _worker_busy = False
    return planned.id


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of the
    first run: a caller that redirects or captures stderr between runs in one process (a
    notebook, a test) keeps seeing the log instead of a closed stream's logging error."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(level: int = logging.INFO) -> None:
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("stopwise: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


# ---------------------------------------------------------------- running an experiment


def _reuse(run: RunDir, source: Path, pending: list[PlannedJob], same_settings) -> int:
    """Take finished jobs whose settings are the same (record, checkpoints and training curves
    in metrics.jsonl) from ``source``, judged as a rerun into the same directory would judge
    them (``same_settings(p, settings)``: a key the job no longer reads at this run's value is
    no difference); a job whose checkpoints are gone there (deleted) is left to run again,
    since the jobs after it may need them. A taken job replaces whatever an attempt at it left
    here (checkpoints and metrics lines)."""
    donor = RunDir(source)
    taken = []
    for p in pending:
        theirs = donor.job_file(p.id)
        if theirs is None or not same_settings(p, theirs["settings"]):
            continue
        kept = donor.checkpoints(p.id)
        if any(not (kept / name).is_file() for name in theirs.get("checkpoints", [])):
            continue
        taken.append((p.id, theirs))
    if not taken:
        return 0
    ids = {id for id, _ in taken}
    log = MetricsLog(run.metrics_path)
    log.keep_only(lambda record: record.get("job") not in ids)
    curves = MetricsLog(donor.metrics_path).read()
    for id, theirs in taken:
        shutil.rmtree(run.checkpoints(id), ignore_errors=True)
        if donor.checkpoints(id).is_dir():
            _copy_checkpoints(donor.checkpoints(id), run.checkpoints(id))
        theirs["reused_from"] = str(donor.job_path(id).resolve())
        for record in curves:  # its training curves come with it
            if record.get("job") == id:
                log.write(record)
        run.write_json(run.job_path(id), theirs)
    return len(taken)


def _copy_checkpoints(source: Path, target: Path) -> None:
    """Copy a reused job's checkpoint folder; a copy that fails (a full disk) or is stopped (a
    signal) is removed, so no half-copied checkpoint is left to resume from; a failure is a
    :class:`WriteError` naming it."""
    try:
        shutil.copytree(source, target)
    except BaseException as error:
        shutil.rmtree(target, ignore_errors=True)
        if not isinstance(error, OSError):
            raise
        # shutil.Error gathers (source, target, why) per file; another OSError has its strerror.
        failed = error.args[0] if isinstance(error, shutil.Error) else None
        why = failed[0][2] if failed else error.strerror or error
        raise WriteError(f"could not copy {source} to {target} ({why})") from None


def _drop_lost_metrics(run: RunDir, pending: list[PlannedJob]) -> None:
    """Metrics of a pending job's stage that has no checkpoint come from an attempt stopped before
    its first one; the stage is redone from its start, so they go (or they would be logged twice).
    A stage resumed from a checkpoint keeps its lines: the loop does not log those steps again."""
    ids = {p.id for p in pending}

    def kept(record: dict[str, Any]) -> bool:
        job = record.get("job")
        return job not in ids or (run.checkpoints(job) / f"{record.get('stage')}.pt").is_file()

    MetricsLog(run.metrics_path).keep_only(kept)


def _execute(experiment, config, run: RunDir, pending: list[PlannedJob]) -> None:
    if not pending:
        return
    workers = min(config.workers, len(pending))
    logger.info(
        "%s: %d job(s) to run, %d worker(s) × %d thread(s)",
        experiment.name,
        len(pending),
        workers,
        config.threads,
    )
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if workers == 1 or distributed:
        progress = None if config.progress else False
        for p in pending:
            data = _run_one(experiment, config, run, p, progress)
            logger.info("done %s (%.1f s)", p.id, data["seconds"])
            if distributed:
                torch.distributed.barrier()
        return
    done: set[str] = set()
    waiting = list(pending)
    plain = to_plain(config)
    context = multiprocessing.get_context("spawn")
    # Workers import what this process imported: the built-in tasks, entry points and modules.
    user_modules = tuple(m for m in _LOADED if m not in TASK_MODULES)
    init = (user_modules, config.threads, logger.level, os.getpid())
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=init
    ) as pool:
        running: dict[Any, PlannedJob] = {}
        job_args = (experiment.name, plain, str(run.path))
        pending_ids = {p.id for p in pending}
        try:
            while waiting or running:
                ready = [
                    p for p in waiting if all(d in done or d not in pending_ids for d in p.after)
                ]
                ready.sort(key=lambda p: -p.job.cost)
                for p in ready[: workers - len(running)]:
                    waiting.remove(p)
                    with _sigint_held(), _worker_death(running, p):  # (may start a worker)
                        running[pool.submit(_worker_run, *job_args, p)] = p
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    p = running.pop(future)
                    with _worker_death(running, p):
                        future.result()  # a worker's error is raised here
                    done.add(p.id)
                    logger.info("done %s", p.id)
        except BaseException:
            # A signal to the runner, or a job's error: every worker checkpoints its running
            # stage and stops, then the run ends (a rerun resumes). Each further signal to the
            # runner is passed on too: a worker that gets a second one stops at once. A broken
            # pool (a worker died) has already sent each live worker its one SIGTERM.
            for future in running:
                future.cancel()  # (only one no worker has taken yet)
            while True:
                if not getattr(pool, "_broken", False):
                    _stop_workers(pool)
                try:
                    wait(running)
                    break
                except Interrupted:
                    continue
            raise


def _report_code(experiment: Experiment) -> str:
    """Digest of the code a report is built by: the stopwise package and the code that defines
    the experiment's ``report`` (an out-of-tree experiment lives outside the package): every
    module of its top-level package, or its file when it is not in a package, so that a changed
    report or a helper it imports (an upgrade, a fix) is rebuilt from the cached jobs instead
    of served stale."""
    files = set(Path(__file__).resolve().parent.rglob("*.py"))
    with contextlib.suppress(TypeError, OSError):
        source = Path(inspect.getsourcefile(experiment.report) or "").resolve()
        package = source.parent
        while (package.parent / "__init__.py").is_file():
            package = package.parent
        files |= set(package.rglob("*.py")) if (package / "__init__.py").is_file() else {source}
    digest = hashlib.sha256()
    for path in sorted(f for f in files if f.is_file()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(config_plain: dict, results: list[JobResult], code: str) -> str:
    text = json.dumps(
        {
            "config": config_plain,
            "jobs": [(r.id, r.seconds, r.reused_from) for r in results],
            "code": code,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_report(run: RunDir, experiment: Experiment, config: Any, results: list[JobResult]):
    """Build the report from the jobs' results; table and figures first, results.json last.
    Not rebuilt when nothing it reads changed and its files are all there."""
    fingerprint = _fingerprint(to_plain(config), results, _report_code(experiment))
    try:
        previous = run.read_json("results.json")
    except ConfigError:  # damaged: it is written again below
        previous = None
    if (
        isinstance(previous, dict)
        and previous.get("fingerprint") == fingerprint
        and run.table_path.is_file()
        and all(run.figure(name).is_file() for name in previous.get("figure_files", []))
    ):
        return previous.get("summary", "")
    report = experiment.report(results, config)
    if not is_main_process():
        return report.summary
    if isinstance(previous, dict) and "fingerprint" in previous:
        # The old results.json no longer vouches for table.md and the figures: a report stopped
        # between them and results.json (a signal, a full disk) would leave this report's table
        # served as the old one's by a rerun of the old config.
        del previous["fingerprint"]
        run.write_json(run.results_path, previous)
    atomic_write_text(run.table_path, report.table.rstrip() + "\n")
    from .reporting import save_figure

    for name, figure in report.figures.items():
        run.figure(name).parent.mkdir(parents=True, exist_ok=True)
        save_figure(figure, run.figure(name))
    # The figures an earlier report wrote and this one does not (another config, another
    # version): left in figures/, they passed for this run's. Files the runner did not write stay.
    earlier = previous.get("figure_files", []) if isinstance(previous, dict) else []
    for name in set(earlier) - set(report.figures):
        run.figure(name).unlink(missing_ok=True)
    run.write_json(
        run.results_path,
        {
            "experiment": experiment.name,
            "fingerprint": fingerprint,
            "figure_files": sorted(report.figures),
            "summary": report.summary,
            **report.results,
        },
    )
    return report.summary


def _init_distributed(config: Any) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if str(config.device).startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    return True


def run_experiment(
    name: str,
    preset: str | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    modules: tuple[str, ...] | list[str] = (),
) -> RunDir:
    """Resolve and check the config, then run every job not yet finished in ``out`` and write
    the report. Every refusal (:class:`ConfigError`) happens before anything is written."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A worker process (spawned: it imports the caller's script again) is starting up.
        raise RuntimeError(
            "run_experiment was called while a worker process imported the calling script: "
            'with workers > 1, call it under `if __name__ == "__main__":`'
        )
    for module in modules:
        load_module(module)
    experiment = get_experiment(name)
    config, preset = resolve_config(experiment, preset, overrides)
    try:
        planned = plan_jobs(experiment, config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    run = RunDir(out if out is not None else Path("runs") / f"{name}-{preset}")
    check_run_dir(run, experiment, planned, config.threads, config)
    if config.reuse_from:
        what = f"reuse_from={config.reuse_from!r}"
        _check_experiment(
            RunDir(config.reuse_from), experiment, what, "is not a stopwise run directory"
        )
    _configure_logging()
    distributed = _init_distributed(config)
    set_threads(config.threads)
    main = is_main_process()
    if not main:  # under torchrun every rank runs this: one rank speaks
        logger.setLevel(logging.WARNING)
    lock = RunLock(run) if main else contextlib.nullcontext()

    def unfinished() -> list[PlannedJob]:
        return [p for p in planned if not run.job_path(p.id).is_file()]

    with lock, stop_on_signals():
        plain = to_plain(config)
        _say_what_changed(run, preset, plain, to_plain(experiment.config()))
        run.write_json(run.config_path, {"experiment": name, "preset": preset, "config": plain})
        _record_environment(run, config)
        pending = unfinished()
        if config.reuse_from and main and pending:
            donor = RunDir(Path(config.reuse_from))
            diff_of = difference_finder(donor, experiment, planned, config)

            def same(p: PlannedJob, settings: dict[str, Any] | None) -> bool:
                return settings is not None and not diff_of(p, settings)

            taken = _reuse(run, donor.path, pending, same)
            logger.info(
                "%s: reused %d of %d job(s) to run from %s (those finished there with the same "
                "settings and checkpoints)",
                name, taken, len(pending), config.reuse_from,
            )  # fmt: skip
            pending = unfinished()
        if not pending:
            logger.info("%s: all %d job(s) are finished; reporting", name, len(planned))
        if main:
            _drop_lost_metrics(run, pending)
        if distributed:  # every rank sees what rank 0 reused
            torch.distributed.barrier()
            pending = unfinished()
        _execute(experiment, config, run, pending)
        results = [read_result(run.job_file(p.id)) for p in planned]
        run.summary = _write_report(run, experiment, config, results)
    return run
