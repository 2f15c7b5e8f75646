"""The machine and code a benchmark ran on, recorded in every benchmark's JSON, and where the
benchmarks write their results."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path

import torch

from stopwise.experiments import cpu_model, source_version

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **source_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def add_results_option(parser: argparse.ArgumentParser) -> None:
    """``--results DIR``: the folder a script writes its JSON (and copies its figures) into;
    ``benchmarks/results/`` by default, where the committed results are."""
    where = "folder for the JSON and figures (default: benchmarks/results)"
    parser.add_argument("--results", type=Path, default=RESULTS, help=where)


def verdict(met: bool | None) -> str:
    """A target's verdict as printed: met, missed, or — where the run sets no target."""
    return "—" if met is None else "met" if met else "missed"


def json_path(parser: argparse.ArgumentParser, path: str | Path) -> Path:
    """A script's JSON path, which must end in ``.json``: the figures go to the folder of the
    same name without it (a path without the suffix would be that folder, and the run would
    fail after its jobs when the JSON is written)."""
    if Path(path).suffix != ".json":
        parser.error(f"{path}: the results path must end in .json (its figures go beside it)")
    return Path(path)


def stamp(**extra) -> dict:
    """When and where a section of a results file was computed (and ``extra``, e.g. a note)."""
    now = machine()
    return {"date": now["date"], "machine": now, **extra}


def restamp(report: dict, earlier: Iterable[str], written: Iterable[str], now: dict) -> None:
    """Stamp the sections of a results file that this call wrote, keeping the others' stamps.

    ``report["stamps"]`` maps each section to the stamp of the call that computed it. The
    sections ``written`` get ``now``; a section in ``earlier`` (there before this call) without a
    stamp of its own gets the file's earlier top-level ``date``/``machine``/``note``, the stamp
    it was written under. The top-level stamp then becomes ``now``: the call that last wrote
    the file."""
    stamps = report.setdefault("stamps", {})
    before = {k: report[k] for k in ("date", "machine", "note") if k in report}
    for section in earlier:
        if section not in stamps and before:
            stamps[section] = before
    for section in written:
        stamps[section] = now
    report.update(now)


if __name__ == "__main__":
    print(json.dumps(machine(), indent=1))
