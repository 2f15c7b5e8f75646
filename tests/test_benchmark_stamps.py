"""benchmarks/machine_info.py's stamps: a rerun that rewrites some sections of a results file
stamps those with its own date and machine and keeps every other section's stamp."""

import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_restamp_keeps_the_stamps_of_the_sections_it_did_not_write(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    machine_info = importlib.import_module("machine_info")
    old = {"date": "2026-01-01T00:00:00", "machine": {"cpu": "old"}, "note": "old run"}
    report = {**old, "results": {"psnr": 30.0}, "quick": {"seconds": 5.0}}
    first = {"date": "2026-02-01T00:00:00", "machine": {"cpu": "first"}, "note": "first"}
    machine_info.restamp(report, ["results", "quick"], ["quick"], first)
    assert report["stamps"] == {"results": old, "quick": first}
    assert {k: report[k] for k in old} == first  # the top level: the last call
    second = {"date": "2026-03-01T00:00:00", "machine": {"cpu": "second"}, "note": ""}
    machine_info.restamp(report, ["results", "quick"], ["speedups"], second)
    assert report["stamps"] == {"results": old, "quick": first, "speedups": second}
    assert report["results"] == {"psnr": 30.0} and report["quick"] == {"seconds": 5.0}
    stamp = machine_info.stamp(note="x")
    assert stamp["date"] == stamp["machine"]["date"] and stamp["note"] == "x"
    sys.modules.pop("machine_info", None)


def test_a_results_path_without_the_json_suffix_is_refused_before_any_run(monkeypatch):
    """Its figures go to the folder of its name: without .json that folder was the JSON path,
    and the script failed after its whole run (an audit)."""
    import argparse

    import pytest

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    machine_info = importlib.import_module("machine_info")
    parser = argparse.ArgumentParser()
    assert machine_info.json_path(parser, "out/run.json") == Path("out/run.json")
    with pytest.raises(SystemExit) as refused:
        machine_info.json_path(parser, "out/run")
    assert refused.value.code == 2
