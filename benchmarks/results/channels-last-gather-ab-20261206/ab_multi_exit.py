"""In one process, interleaved: early exit (shrink, chunk 1000) on the Fashion-MNIST backbone with
the old index_state (index_select on every tensor) against the new one (channels-last maps keep
their layout), variants 'fast' and 'bn+stem+all-channels-last'."""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
import multi_exit_speed as M

import stopwise.inference as I
import stopwise.steps as St
from stopwise.policies import ConfidencePolicy
from stopwise.steps import _map_state

new_index_state = St.index_state


def old_index_state(state, rows):
    if isinstance(rows, torch.Tensor) and rows.dtype != torch.bool:
        return _map_state(lambda x: x.index_select(0, rows), state)
    return _map_state(lambda x: x[rows], state)


model, budgets = M.backbone("fashion", (28, 28))
rules = M.budget_rules(model, (28, 28), budgets, 2000)
x = torch.randn(2000, 28, 28, generator=torch.Generator().manual_seed(2))
vs = M.variants(model, False)
out = {
    "case": "multi-exit Fashion-MNIST backbone at initialisation, 2000 random rows, chunk 1000, MSDNet confidence thresholds",
    "rows": [],
}
for threads in (1, 2):
    torch.set_num_threads(threads)
    for variant in ("fast", "bn+stem+all-channels-last"):
        net = vs[variant]
        for name, rule in rules.items():
            times = {"old": [], "new": []}
            for r in range(21):
                order = (("old", old_index_state), ("new", new_index_state))
                for label, fn in order if r % 2 else order[::-1]:
                    I.index_state = fn
                    with torch.no_grad():
                        t0 = time.perf_counter()
                        I.run_adaptive(net, ConfidencePolicy(), x, rule, "shrink", chunk=1000)
                        times[label].append(time.perf_counter() - t0)
            row = {
                "threads": threads,
                "variant": variant,
                "budget": name,
                "old_median_s": statistics.median(times["old"]),
                "new_median_s": statistics.median(times["new"]),
            }
            row["old_over_new"] = row["old_median_s"] / row["new_median_s"]
            print(row, flush=True)
            out["rows"].append(row)
I.index_state = new_index_state
Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
