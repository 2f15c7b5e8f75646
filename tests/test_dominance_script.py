"""benchmarks/dominance.py rebuilds a finished run's report (nothing retrains) and collects each
stop model's verdict against fixed depth, equal to the run's own results.json."""

import importlib
import json
import sys
from pathlib import Path

from stopwise.experiments import run_experiment

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_collects_the_verdicts_of_a_finished_run(tmp_path, monkeypatch):
    run = tmp_path / "toy"
    run_experiment("toy", "tiny", run, ["progress=false"])
    finished = {p.name: p.stat().st_mtime_ns for p in (run / "jobs").glob("*.json")}
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    dominance = importlib.import_module("dominance")
    assert dominance.main([str(run), "--results", str(tmp_path / "out"), "--name", "d"]) == 0
    collected = json.loads((tmp_path / "out" / "d.json").read_text())
    (entry,) = collected["runs"]
    assert (entry["experiment"], entry["preset"], entry["seeds"]) == ("toy", "tiny", [0])
    own = json.loads((run / "results.json").read_text())["dominance"]
    assert entry["verdicts"].keys() == own.keys()
    for label, verdict in entry["verdicts"].items():
        assert {k: own[label][k] for k in verdict} == verdict
    assert "L2S policy" in collected["table"]
    # the jobs were reused, not rerun
    assert {p.name: p.stat().st_mtime_ns for p in (run / "jobs").glob("*.json")} == finished
    sys.modules.pop("dominance", None)
