"""In one process, interleaved: shrink with the old index_state (index_select on every tensor)
against the new one (channels-last maps keep their layout), DnCNN-stop's speed case."""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
import stop_speed as S

import stopwise.inference as I
import stopwise.steps as St
from stopwise.steps import _map_state

new_index_state = St.index_state


def old_index_state(state, rows):
    if isinstance(rows, torch.Tensor) and rows.dtype != torch.bool:
        return _map_state(lambda x: x.index_select(0, rows), state)
    return _map_state(lambda x: x[rows], state)


case = S.denoising_cases(Path("runs/speed"), 4, False)[0]
out = {"case": "denoising DnCNN-stop (quick, shortened training), 24 crops 128x128", "rows": []}
for threads in (1, 2):
    torch.set_num_threads(threads)
    for name, rule in case.rules.items():
        times = {"old": [], "new": []}
        for r in range(15):
            for label, fn in (
                (("old", old_index_state), ("new", new_index_state))
                if r % 2
                else (("new", new_index_state), ("old", old_index_state))
            ):
                I.index_state = fn
                with torch.no_grad():
                    t0 = time.perf_counter()
                    I.run_adaptive(case.model, case.policy, case.inputs, rule, "shrink", case.valid)
                    times[label].append(time.perf_counter() - t0)
        row = {
            "threads": threads,
            "budget": name,
            "old_median_s": statistics.median(times["old"]),
            "new_median_s": statistics.median(times["new"]),
        }
        row["old_over_new"] = row["old_median_s"] / row["new_median_s"]
        print(row, flush=True)
        out["rows"].append(row)
I.index_state = new_index_state
Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
