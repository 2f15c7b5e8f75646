"""The registry of runnable experiments, their presets, and the run directory they write.

An experiment is a function ``run(config, run_dir)`` with typed defaults and named presets. A task
module lists its experiments as plain dicts in ``EXPERIMENTS`` (the arguments of
:class:`Experiment`); :func:`load_tasks` imports the modules of ``TASK_MODULES`` and registers them. ``run_experiment`` resolves the config
(validating every key and type before anything touches the disk), prepares the run directory and
resumes an interrupted run in place:

    <out>/config.json    the resolved config (plain types)
    <out>/env.json       versions, threads, seed, machine
    <out>/metrics.jsonl  training curves
    <out>/results.json   the numbers a table is made of
    <out>/table.md       the table, ready to paste
    <out>/figures/*.png
    <out>/checkpoints/   stage checkpoints (resume)
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoints import atomic_write_text
from .training import LoopSettings, is_main_process, seed_everything, set_threads

__all__ = [
    "ConfigError",
    "Experiment",
    "RunDir",
    "register_experiment",
    "get_experiment",
    "list_experiments",
    "load_tasks",
    "resolve_config",
    "run_experiment",
    "COMMON_DEFAULTS",
]

# Modules that register experiments when imported (layer 8 may import tasks; tasks never import it).
TASK_MODULES = (
    "stopwise.tasks.toy",
    "stopwise.tasks.sparse_recovery",
    "stopwise.tasks.parity",
    "stopwise.tasks.multi_exit",
)

COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "threads": 1,
    "device": "cpu",
    "checkpoint_every": 500,
    "progress": True,
}


class ConfigError(ValueError):
    """A bad experiment name, preset, key or value; the message names it and lists the choices."""


@dataclass
class Experiment:
    """A runnable experiment. ``defaults`` lists every key with a typed default value;
    ``presets`` map a name to overrides of some keys; ``check(config)``, if given, raises
    ValueError naming a bad value, and runs before anything is written."""

    name: str
    description: str
    run: Callable[[dict[str, Any], RunDir], Any]
    defaults: dict[str, Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_preset: str = "quick"
    check: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self):
        config = {**COMMON_DEFAULTS, **self.defaults}
        for preset, overrides in self.presets.items():
            unknown = set(overrides) - set(config)
            if unknown:
                raise ValueError(
                    f"{self.name}: preset {preset!r} sets unknown keys {sorted(unknown)}"
                )
        if self.presets and self.default_preset not in self.presets:
            raise ValueError(f"{self.name}: default preset {self.default_preset!r} is not defined")


_EXPERIMENTS: dict[str, Experiment] = {}
_LOAD_ERRORS: dict[str, str] = {}
_TASKS_LOADED = False


def register_experiment(experiment: Experiment) -> Experiment:
    if experiment.name in _EXPERIMENTS:
        raise ValueError(f"experiment {experiment.name!r} is already registered")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def load_tasks() -> dict[str, str]:
    """Import the task modules so they register; returns {module: error} for those that failed."""
    global _TASKS_LOADED
    if _TASKS_LOADED:
        return dict(_LOAD_ERRORS)
    _TASKS_LOADED = True
    for module in TASK_MODULES:
        try:
            for spec in getattr(importlib.import_module(module), "EXPERIMENTS", []):
                register_experiment(Experiment(**spec))
        except ModuleNotFoundError as error:
            if error.name == module:  # task not present in this build
                continue
            _LOAD_ERRORS[module] = f"{type(error).__name__}: {error}"
        except Exception as error:  # a broken task must not break the others
            _LOAD_ERRORS[module] = f"{type(error).__name__}: {error}"
    return dict(_LOAD_ERRORS)


def list_experiments() -> list[Experiment]:
    load_tasks()
    return [_EXPERIMENTS[name] for name in sorted(_EXPERIMENTS)]


def get_experiment(name: str) -> Experiment:
    load_tasks()
    if name not in _EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {sorted(_EXPERIMENTS)}")
    return _EXPERIMENTS[name]


# ---------------------------------------------------------------- config


_KIND_NAMES = {
    bool: ("a boolean", "true"),
    int: ("an integer", "3"),
    float: ("a number", "0.5"),
    str: ("a string", "text"),
    list: ("a JSON list", "[1, 2]"),
}


def _parse_value(key: str, text: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if kind is list:
            value = json.loads(text)
            if not isinstance(value, list):
                raise ValueError
            if not default:
                return value
            item_kind = type(default[0])
            if item_kind is float:  # accept 3 for 3.0
                value = [float(v) if type(v) is int else v for v in value]
            if any(type(v) is not item_kind for v in value):
                raise ValueError
            return value
    except (ValueError, json.JSONDecodeError):
        kind_name, example = _KIND_NAMES.get(kind, (kind.__name__, "..."))
        raise ConfigError(
            f"--set {key}={text}: expected {kind_name} like {key}={example} (default {default!r})"
        ) from None
    raise ConfigError(f"key {key!r} has a default of unsupported type {kind.__name__}")


def resolve_config(
    experiment: Experiment, preset: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """defaults ← preset ← ``key=value`` overrides; every key and value is checked."""
    # A JSON round trip keeps the config in plain types (tuples become lists), as config.json has it.
    config = json.loads(json.dumps({**COMMON_DEFAULTS, **experiment.defaults}))
    preset = preset or experiment.default_preset
    if experiment.presets:
        if preset not in experiment.presets:
            raise ConfigError(
                f"unknown preset {preset!r} for {experiment.name}; choose one of "
                f"{sorted(experiment.presets)}"
            )
        config.update(json.loads(json.dumps(experiment.presets[preset])))
    config["preset"] = preset
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value; got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in config or key == "preset":
            valid = sorted(k for k in config if k != "preset")
            raise ConfigError(f"unknown key {key!r} for {experiment.name}; valid keys: {valid}")
        config[key] = _parse_value(key, text, config[key])
    if config["threads"] < 1:
        raise ConfigError(f"threads must be >= 1; got {config['threads']}")
    if experiment.check is not None:
        try:
            experiment.check(config)
        except ValueError as error:
            raise ConfigError(f"{experiment.name}: {error}") from None
    return config


# ---------------------------------------------------------------- run directory


class RunDir:
    """The files of one run. Everything is written atomically."""

    def __init__(self, path: str | Path, config: dict[str, Any]):
        self.path = Path(path)
        self.config = config

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def loop_settings(self, log_every: int = 50) -> LoopSettings:
        return LoopSettings(
            checkpoint_dir=self.checkpoints,
            checkpoint_every=self.config["checkpoint_every"],
            metrics_path=self.metrics_path,
            log_every=log_every,
            progress=None if self.config["progress"] else False,  # None: bar only on a terminal
        )

    def figure(self, name: str) -> Path:
        (self.path / "figures").mkdir(parents=True, exist_ok=True)
        return self.path / "figures" / f"{name}.png"

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        if is_main_process():  # under torchrun, rank 0 writes
            atomic_write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")
        return path

    def write_results(self, results: dict[str, Any]) -> Path:
        return self.write_json("results.json", results)

    def write_table(self, markdown: str) -> Path:
        path = self.path / "table.md"
        if is_main_process():
            atomic_write_text(path, markdown.rstrip() + "\n")
        return path

    def read_json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def environment(config: dict[str, Any]) -> dict[str, Any]:
    """Versions, machine and settings that decide the numbers of a run."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "stopwise": __version__,
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "seed": config["seed"],
        "device": config["device"],
        "cuda": torch.cuda.is_available(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def prepare_run_dir(out: str | Path, config: dict[str, Any]) -> RunDir:
    """Create ``out`` for ``config``, or reopen it to resume when it holds the same config.

    Refuses (ConfigError) a directory holding a different config or unrelated files, so nothing
    written before is lost.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        previous_path = out / "config.json"
        if not previous_path.exists():
            raise ConfigError(
                f"--out {out} is a non-empty directory that is not a stopwise run; choose another"
            )
        previous = json.loads(previous_path.read_text())
        changed = sorted(
            k
            for k in set(previous) | set(config)
            if k not in ("progress", "threads") and previous.get(k) != config.get(k)
        )
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in changed)
            raise ConfigError(
                f"--out {out} holds a run with a different config ({details}); resume it with the "
                f"same settings or choose another --out"
            )
    run = RunDir(out, config)
    out.mkdir(parents=True, exist_ok=True)
    run.write_json("config.json", config)
    return run


def _init_distributed(config: dict[str, Any]) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if str(config["device"]).startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    return True


def run_experiment(
    name: str,
    preset: str | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunDir:
    """Resolve, prepare the run directory, seed, set threads and run. Resumes in place."""
    experiment = get_experiment(name)
    config = resolve_config(experiment, preset, overrides)
    out = Path(out) if out is not None else Path("runs") / f"{name}-{config['preset']}"
    distributed = _init_distributed(config)
    run = prepare_run_dir(out, config) if is_main_process() else RunDir(out, config)
    if distributed:
        torch.distributed.barrier()
    set_threads(config["threads"])
    seed_everything(config["seed"])
    run.write_json("env.json", environment(config))
    experiment.run(config, run)
    return run
