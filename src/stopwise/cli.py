"""The ``stopwise`` command: ``stopwise list``, ``stopwise show NAME``,
``stopwise run NAME --preset P --out DIR --set key=value``, ``stopwise stops DIR`` (a finished
run's stop models and their budget curves), ``stopwise --version``.

``--module PKG.MOD`` (found from the current folder too, or a path to a ``.py`` file or a
package folder), repeatable, registers the experiments of a user's own module; installed
packages can register through the ``stopwise.experiments`` entry-point group instead. Exit
codes: 0 done; 2 a refused config or directory (nothing written) or a checkpoint that is
damaged or gone (the message says what to delete to redo it); 3 the run failed (training
diverged, a file could not be written, out of memory); 128 + N interrupted by signal N (130
SIGINT, 143 SIGTERM) after checkpointing: rerun to resume; 141 the reader of the output went
away.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from itertools import groupby
from pathlib import Path

from . import __version__
from .checkpoints import CheckpointError, WriteError
from .config import ConfigError, DataError, describe, to_plain
from .training import Diverged, Interrupted, WorkerDied, forget_stop_signal, stop_signal


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stopwise", description="Models that learn when to stop computing, per input."
    )
    parser.add_argument("--version", action="version", version=f"stopwise {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--module",
        dest="modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (dotted name, .py file or package folder) that registers "
        "experiments; repeatable",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="list the experiments and their presets")
    show = commands.add_parser(
        "show", parents=[common], help="an experiment's keys (type, range, help) and config"
    )
    show.add_argument("name", help="experiment name (see `stopwise list`)")
    show.add_argument(
        "--preset", default=None, help="resolve this preset (default: the experiment's)"
    )
    stops = commands.add_parser(
        "stops",
        parents=[common],
        help="a finished run's stop models (stopwise.load_stop_model) and their budget curves",
    )
    stops.add_argument("run_dir", help="a run directory")
    stops.add_argument("--seed", type=int, default=None, help="default: the run's first")
    run = commands.add_parser("run", parents=[common], help="run an experiment into a directory")
    run.add_argument("name", help="experiment name (see `stopwise list`)")
    run.add_argument("--preset", default=None, help="named preset (default: the experiment's)")
    run.add_argument("--out", default=None, help="run directory (default: runs/NAME-PRESET)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for groups: stage1.steps=100); repeatable, each key once",
    )
    return parser


def _list() -> None:
    from .experiments import list_experiments, load_tasks

    for experiment in list_experiments():
        presets = ", ".join(
            p + (" (default)" if p == experiment.default_preset else "") for p in experiment.presets
        )
        print(f"{experiment.name:<20} {experiment.description}")
        print(f"{'':<20} presets: {presets}")
    for source, error in load_tasks().items():
        print(f"(could not load {source}: {error})", file=sys.stderr)


def _show(name: str, preset: str | None) -> None:
    from .experiments import get_experiment, resolve_config

    experiment = get_experiment(name)
    try:
        config, preset = resolve_config(experiment, preset)
        missing = None
    except DataError as error:  # what the preset needs to run is not here; it still shows
        config, preset = resolve_config(experiment, preset, checks=False)
        missing = error
    print(f"{experiment.name}: {experiment.description}")
    print(f"devices: {', '.join(experiment.devices)}\n")
    for entry in describe(experiment.config):
        allowed = f" ({entry['allowed']})" if entry["allowed"] else ""
        help_text = f" — {entry['help']}" if entry["help"] else ""
        print(f"  {entry['key']}: {entry['type']}{allowed}{help_text}")
    print(f"\nresolved config of preset {preset!r}:")
    print(json.dumps(to_plain(config), indent=2))
    if missing is not None:
        print(f"\n(to run it: {missing})")
    print("presets:", json.dumps(experiment.presets, indent=2))


def _stops(run_dir: str, seed: int | None) -> None:
    from .trained import load_stop_model, run_seeds, stop_model_names

    names = stop_model_names(run_dir)
    if not names:
        print(f"{run_dir}: its settings train no stop model (nothing to load)")
    seeds = run_seeds(run_dir)
    if seed is not None and seed not in seeds:
        raise ConfigError(f"{run_dir} runs seeds {seeds}; --seed {seed} is not one of them")
    if names and len(seeds) > 1:
        print(f"seed {seeds[0] if seed is None else seed} of {seeds} (--seed picks another)")
    for name in names:
        try:
            trained = load_stop_model(run_dir, name, seed)
        except ValueError as error:  # its job has not finished
            print(f"{name}: {error}")
            continue
        print(f"{name}: {type(trained.model).__name__} + {type(trained.policy).__name__}; "
              f"input: {trained.inputs}")  # fmt: skip
        if trained.rules:
            print(f"  its own rules: {', '.join(trained.rules)}")
        print(f"  budget curve ({trained.cost}; validation cost → what the run measured on test):")
        # Costlier budgets that kept a cheaper one's rule (no better on validation) print once.
        for (cost, measured), same in groupby(trained.budgets, key=_measured):
            budgets = [f"{p.budget:.4g}" for p in same if p.budget is not None]
            kept = f"  (budgets {', '.join(budgets)}: one rule)" if len(budgets) > 1 else ""
            print(f"    {cost:.4g} → {measured}{kept}")


def _measured(point) -> tuple[float, str]:
    """A budget point's validation cost and what the run measured with it on test, as text."""
    numbers = (
        f"{key} {value:.4g}"
        for key, value in point.test.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    )
    return point.val_cost, ", ".join(numbers)


def _run(args) -> None:
    from .experiments import get_experiment, run_experiment

    keys = [item.split("=", 1)[0].strip() for item in args.overrides]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:  # the API keeps the last (a script's defaults, then its user's); here, a slip
        raise ConfigError(f"--set {', '.join(twice)}: given more than once; give each key once")
    run = run_experiment(args.name, args.preset, args.out, args.overrides, args.modules)
    if run.table_path.exists():
        print(run.table_path.read_text())
    if run.summary:
        print(run.summary)
    path = Path(run.path).resolve()
    print(f"run directory: {path}")
    if get_experiment(args.name).stop_models:
        modules = "".join(f" --module {shlex.quote(m)}" for m in args.modules)
        loads = "".join(f"stopwise.experiments.load_module({m!r}), then " for m in args.modules)
        print(
            f"its stop models: stopwise stops {shlex.quote(str(path))}{modules}; in Python, "
            f"{loads}stopwise.load_stop_model"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    forget_stop_signal()
    try:
        return _main(args)
    except KeyboardInterrupt:  # Ctrl-C before a run has set up its signal handlers
        print("stopwise: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 128 + signal.SIGINT


def _main(args) -> int:
    try:
        if args.command != "run":
            from .experiments import load_module

            for module in args.modules:
                load_module(module)
        if args.command == "list":
            _list()
        elif args.command == "show":
            _show(args.name, args.preset)
        elif args.command == "stops":
            _stops(args.run_dir, args.seed)
        elif args.command == "run":
            _run(args)
    except (ConfigError, CheckpointError) as error:
        print(f"stopwise: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as interrupt:
        return _interrupted(interrupt)
    except (Diverged, WriteError, WorkerDied) as error:
        print(f"stopwise: run failed: {error}", file=sys.stderr)
        if isinstance(error, WriteError):
            print(
                "stopwise: free some space (or fix the file system) and rerun the same command: "
                "it resumes from the last checkpoint.",
                file=sys.stderr,
            )
        return 3
    except BrokenPipeError:  # `stopwise show NAME | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as error:
        # A signal between training loops raises Interrupted wherever the program is, and a
        # library may turn it into its own error (torch's load_state_dict, matplotlib's
        # renderer): any error once a stop signal has arrived is that interruption.
        signum = stop_signal()
        if signum is not None:
            return _interrupted(Interrupted(signum))
        if not _out_of_memory(error):
            raise
        said = (str(error).strip() or type(error).__name__).splitlines()[0]
        print(
            f"stopwise: run failed: out of memory: {said}\n"
            "stopwise: lower the settings that size the work (batch sizes, widths, data "
            "sizes); the started jobs keep the settings that did not fit, so run into a new "
            "--out.",
            file=sys.stderr,
        )
        return 3
    return 0


def _out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, torch's (CUDA) OutOfMemoryError, or the CPU allocator's
    RuntimeError."""
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in str(error)
    )


def _interrupted(interrupt: Interrupted) -> int:
    print(
        f"stopwise: {interrupt}; each running stage saved a checkpoint. Rerun the same "
        "command to resume.",
        file=sys.stderr,
    )
    return 128 + interrupt.signum


if __name__ == "__main__":
    sys.exit(main())
