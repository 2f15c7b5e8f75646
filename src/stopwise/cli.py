"""The ``stopwise`` command: ``stopwise list``, ``stopwise show NAME``,
``stopwise run NAME --preset P --out DIR --set key=value``, ``stopwise --version``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .checkpoints import CheckpointError
from .experiments import ConfigError, get_experiment, list_experiments, load_tasks, resolve_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stopwise", description="Models that learn when to stop computing, per input."
    )
    parser.add_argument("--version", action="version", version=f"stopwise {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the experiments and their presets")
    show = commands.add_parser("show", help="show an experiment's config keys and presets")
    show.add_argument("name")
    show.add_argument("--preset", default=None)
    run = commands.add_parser("run", help="run an experiment into a run directory")
    run.add_argument("name", help="experiment name (see `stopwise list`)")
    run.add_argument("--preset", default=None, help="named preset (default: the experiment's)")
    run.add_argument("--out", default=None, help="run directory (default: runs/NAME-PRESET)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key; repeatable",
    )
    return parser


def _list() -> None:
    for experiment in list_experiments():
        presets = ", ".join(
            p + (" (default)" if p == experiment.default_preset else "") for p in experiment.presets
        )
        print(f"{experiment.name:<18} {experiment.description}")
        print(f"{'':<18} presets: {presets}")
    for module, error in load_tasks().items():
        print(f"(could not load {module}: {error})", file=sys.stderr)


def _show(name: str, preset: str | None) -> None:
    experiment = get_experiment(name)
    print(json.dumps(resolve_config(experiment, preset), indent=2))
    print("presets:", json.dumps(experiment.presets, indent=2))


def _run(name: str, preset: str | None, out: str | None, overrides: list[str]) -> None:
    from .experiments import run_experiment

    run = run_experiment(name, preset, out, overrides)
    table = run.path / "table.md"
    if table.exists():
        print(table.read_text())
    print(f"run directory: {Path(run.path).resolve()}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            _list()
        elif args.command == "show":
            _show(args.name, args.preset)
        elif args.command == "run":
            _run(args.name, args.preset, args.out, args.overrides)
    except (ConfigError, CheckpointError) as error:
        print(f"stopwise: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
