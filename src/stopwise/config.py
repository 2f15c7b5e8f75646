"""Typed experiment configs: one schema per task, validated in one place.

A task's config is a dataclass deriving from :class:`Config` (the keys every experiment shares).
Each field is declared with :func:`param`, which gives its default, its allowed range or choices
and a line of help; a field whose type is another dataclass is a *group*, addressed with dotted
keys (``stage1.steps``)::

    @dataclass
    class Stage:
        steps: int = param(200, ge=1, help="updates")
        lr: float = param(1e-3, gt=0)

    @dataclass
    class MyConfig(Config):
        beta: float = param(0.3, gt=0, help="oracle temperature")
        stage1: Stage = group(Stage)

        def check(self):            # optional: constraints between keys
            if self.stage1.steps < 10 and self.beta > 1:
                raise ValueError("stage1.steps must be >= 10 when beta > 1")

Supported types: ``bool``, ``int``, ``float``, ``str``, ``list[int]``, ``list[float]``,
``list[str]`` and nested groups. :func:`build` turns ``{dotted key: value}`` overrides into a
config and :func:`validate` checks every key (type, range, choices, length, then each group's
``check``), raising :class:`ConfigError` with the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .inference import MODES

__all__ = [
    "ConfigError",
    "DataError",
    "Config",
    "param",
    "group",
    "distinct",
    "build",
    "validate",
    "parse_value",
    "to_plain",
    "from_plain",
    "flatten",
    "describe",
    "RUNNER_KEYS",
    "INFERENCE_MODES",
]

INFERENCE_MODES = MODES  # how run_adaptive runs a stop model (stopwise.inference)


class ConfigError(ValueError):
    """A bad experiment name, preset, key or value; the message names it and what is allowed."""


class DataError(ConfigError):
    """A user's data missing, malformed or unreadable: the message names the file or folder,
    what is wrong and where the data should be. Found when the config is checked or only when a
    job reads the files; either way the command exits 2, and a rerun after the fix resumes."""


@dataclass(frozen=True)
class Spec:
    """What a field allows. Bounds and choices apply to each element of a list."""

    help: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    min_len: int | None = None
    max_len: int | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None

    def allowed(self) -> str:
        parts = []
        if self.choices is not None:
            parts.append(f"one of {list(self.choices)}")
        bounds = [
            f"{op} {value:g}"
            for op, value in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if value is not None
        ]
        if bounds:
            parts.append(" and ".join(bounds))
        if self.min_len is not None:
            parts.append(f"at least {self.min_len} item(s)")
        if self.max_len is not None:
            parts.append(f"at most {self.max_len} item(s)")
        return ", ".join(parts)

    def problem(self, value: Any) -> str | None:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            if self.min_len is not None and len(value) < self.min_len:
                return f"needs at least {self.min_len} item(s)"
            if self.max_len is not None and len(value) > self.max_len:
                return f"needs at most {self.max_len} item(s)"
        for item in items:
            if self.choices is not None and item not in self.choices:
                return f"must be {self.allowed()}"
            if isinstance(item, int | float) and not isinstance(item, bool):
                if not math.isfinite(item):
                    return "must be a finite number"
                ok = (
                    (self.ge is None or item >= self.ge)
                    and (self.gt is None or item > self.gt)
                    and (self.le is None or item <= self.le)
                    and (self.lt is None or item < self.lt)
                )
                if not ok:
                    return f"must be {self.allowed()}"
        if self.check is None:
            return None
        problem = self.check(value)
        if problem is not None and not isinstance(problem, str):  # e.g. a bool: "is it valid?"
            raise TypeError(
                f"a param's check returns the problem as text, or None; {self.check} returned "
                f"{problem!r}"
            )
        return problem


def param(
    default: Any,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | list[Any] | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A config field with a default and what it allows (see :class:`Spec`)."""
    spec = Spec(
        help,
        ge,
        gt,
        le,
        lt,
        None if choices is None else tuple(choices),
        min_len,
        max_len,
        check,
    )
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


def distinct(values: list) -> str | None:
    """A ``check`` for a list whose values must not repeat: floats as they are written in job
    names and table rows (six significant digits, ``:g``), integers and strings exactly."""
    names = [format(v, "g") if isinstance(v, float) else v for v in values]
    return None if len(set(names)) == len(names) else "must not repeat a value (to 6 digits)"


def group(cls: type, help: str = "") -> Any:
    """A nested group of keys (a dataclass), addressed as ``name.key``."""
    return field(default_factory=cls, metadata={"group": True, "help": help})


def _check_device(value: str) -> str | None:
    try:
        device = torch.device(value)
    except RuntimeError:
        return "is not a device name (cpu, cuda, cuda:N, mps)"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "needs CUDA, which this machine does not have; use cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"names GPU {device.index}, but this machine has {torch.cuda.device_count()}"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "needs MPS, which is not available"
    return f"is a {device.type} device, which stopwise does not support; use cpu or cuda"


@dataclass
class Config:
    """The keys every experiment shares; a task's config derives from it.

    ``seeds`` is an axis: every job runs once per seed. ``threads`` is per process (each worker
    of ``workers`` gets that many). ``reuse_from`` names another run directory whose finished
    jobs with the same settings (as a rerun into one directory judges them) are taken instead of rerun.
    """

    seeds: list[int] = param(
        [0], ge=0, min_len=1, check=distinct, help="random seeds; every job runs per seed"
    )
    threads: int = param(1, ge=1, le=256, help="torch threads per process")
    workers: int = param(1, ge=1, le=64, help="worker processes for independent jobs")
    device: str = param("cpu", check=_check_device, help="cpu, cuda, cuda:N or mps")
    inference_mode: str = param(
        "shrink", choices=INFERENCE_MODES, help="how stop models run at evaluation"
    )
    checkpoint_every: int = param(500, ge=1, help="training steps between checkpoints")
    progress: bool = param(True, help="progress bars (only ever on a terminal)")
    reuse_from: str = param("", help="a run directory whose finished jobs may be reused")

    # Keys that say where a job's data is, never what it is (a folder): a job may read them
    # without listing them in its keys when its params carry what the data is (e.g.
    # contract.files_digest), so that the same files at another path are the same setting.
    LOCATION_KEYS: ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        """Constraints between keys; raise ValueError naming the keys. Groups may define it too."""


# Keys that decide how a run is executed, not what it computes.
RUNNER_KEYS = ("seeds", "threads", "workers", "checkpoint_every", "progress", "reuse_from")
# A task key of this name (in any group) sets how often a stage writes metrics, not what it computes.
LOGGING_KEY = "log_every"


# ---------------------------------------------------------------- introspection


def _fields(cls_or_obj) -> Iterator[tuple[dataclasses.Field, Any]]:
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, hints[f.name]


def _is_group(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def schema(cls: type, prefix: str = "") -> dict[str, tuple[Any, Spec]]:
    """``{dotted key: (type, spec)}`` of every leaf key of ``cls``."""
    out: dict[str, tuple[Any, Spec]] = {}
    for f, kind in _fields(cls):
        key = prefix + f.name
        if _is_group(kind):
            out.update(schema(kind, key + "."))
        else:
            out[key] = (kind, f.metadata.get("spec", Spec()))
    return out


_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _kind_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return f"a list of {_NAMES.get(typing.get_args(kind)[0], '?')}s"
    name = _NAMES.get(kind, getattr(kind, "__name__", str(kind)))
    return ("an " if name[0] in "aeiou" else "a ") + name


def _example(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        inner = typing.get_args(kind)[0]
        return {bool: "true,false", int: "1,2", float: "0.5,1.5", str: "a,b"}.get(inner, "...,...")
    return {bool: "true", int: "3", float: "0.5", str: "text"}.get(kind, "...")


# ---------------------------------------------------------------- values


def _coerce(kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (ints are accepted for floats); raise TypeError if it is not one."""
    origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise TypeError
        (inner,) = typing.get_args(kind)
        return [_coerce(inner, v) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError(f"unsupported config type {kind}")


def _parse_scalar(kind: Any, text: str) -> Any:
    text = text.strip()
    if kind is bool:
        lowered = text.lower()
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
    raise ValueError


def parse_value(key: str, text: str, kind: Any) -> Any:
    """Parse the text of ``--set key=text`` as ``kind``. Lists take JSON (``[1, 2]``) or
    comma-separated items (``1,2``); lists of strings also take bare words in brackets
    (``[a, b]``, as ``seeds=[1, 2]`` is written)."""
    try:
        if typing.get_origin(kind) is list:
            (inner,) = typing.get_args(kind)
            stripped = text.strip()
            bare_words = inner is str and stripped[:1] == "[" and stripped[-1:] == "]"
            if bare_words and '"' not in stripped:
                stripped = stripped[1:-1].strip()
            elif stripped.startswith("["):
                return _coerce(kind, json.loads(stripped))
            if not stripped:
                return []
            return [_parse_scalar(inner, part) for part in stripped.split(",")]
        return _parse_scalar(kind, text)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(
            f"--set {key}={text}: expected {_kind_name(kind)}, like {key}={_example(kind)}"
        ) from None


# ---------------------------------------------------------------- build / validate


def flatten(plain: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists are values, not groups)."""
    out: dict[str, Any] = {}
    for key, value in plain.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _unknown_key(cls: type, key: str, name: str) -> ConfigError:
    keys = sorted(schema(cls))
    close = [k for k in keys if k.split(".")[-1] == key.split(".")[-1] and k != key]
    members = [k for k in keys if k.startswith(key + ".")]
    if members:  # a group: its keys are set one by one
        hint = f" ({key!r} is a group: set its keys, e.g. {members[0]!r})"
    else:
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return ConfigError(f"unknown key {key!r} for {name}{hint}; valid keys: {keys}")


def build(cls: type, values: dict[str, Any], name: str = "the experiment") -> Any:
    """A config of class ``cls`` with its defaults replaced by ``values`` (dotted or nested keys).

    Types are checked here; ranges by :func:`validate`.
    """
    config = cls()
    keys = schema(cls)
    for key, value in flatten(values).items():
        if key not in keys:
            raise _unknown_key(cls, key, name)
        kind, _ = keys[key]
        try:
            value = _coerce(kind, value)
        except TypeError:
            raise ConfigError(
                f"{key}={value!r}: expected {_kind_name(kind)}, like {key}={_example(kind)}"
            ) from None
        _set(config, key, value)
    return config


def _set(config: Any, key: str, value: Any) -> None:
    *path, last = key.split(".")
    target = config
    for part in path:
        target = getattr(target, part)
    setattr(target, last, value)


def get(config: Any, key: str) -> Any:
    """The value of a dotted key."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(config: Any, name: str = "the experiment", checks: bool = True) -> None:
    """Check every key's range and choices, then (``checks``) each group's ``check()``,
    innermost first."""
    for key, (_, spec) in schema(type(config)).items():
        value = get(config, key)
        problem = spec.problem(value)
        if problem:
            raise ConfigError(f"{name}: {key}={_show(value)} {problem}")
    if checks:
        _run_checks(config, name)


def _run_checks(config: Any, name: str) -> None:
    for f, kind in _fields(config):
        if _is_group(kind):
            _run_checks(getattr(config, f.name), name)
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as error:
            kind = DataError if isinstance(error, DataError) else ConfigError
            raise kind(f"{name}: {error}") from None


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def to_plain(config: Any) -> dict[str, Any]:
    """Nested plain dict (JSON types) of a config."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_plain(cls: type, plain: dict[str, Any]) -> Any:
    """The config of class ``cls`` that :func:`to_plain` gave (keys it lacks keep defaults)."""
    return build(cls, plain)


def describe(cls: type) -> list[dict[str, Any]]:
    """One entry per key: name, type, default, allowed values, help (for ``stopwise show``)."""
    defaults = flatten(to_plain(cls()))
    return [
        {
            "key": key,
            "type": _kind_name(kind),
            "default": defaults[key],
            "allowed": spec.allowed(),
            "help": spec.help,
        }
        for key, (kind, spec) in schema(cls).items()
    ]
