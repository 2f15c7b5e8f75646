"""In one process, interleaved: `shrink` where a rule of −∞ stops every row without the policy
(Rule.stops_all, since 2026-12-06) against asking the policy there as before (stops_all patched
to False), at every budget point of the stop models whose cheapest point is such a rule."""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
import stop_speed

from stopwise.inference import MixedRule, ThresholdRule, run_adaptive

new = {ThresholdRule: ThresholdRule.stops_all, MixedRule: MixedRule.stops_all}


def old_stops_all(self, t):
    return False


cases = (
    stop_speed.sparse_recovery_cases(Path("runs/speed"), 4, False)
    + stop_speed.denoising_cases(Path("runs/speed"), 4, False)
    + stop_speed.learned_optimizer_cases(Path("runs/speed"), 4, False)
)
rows = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    for case in cases:
        for name, rule in case.rules.items():
            T = case.model.max_steps
            if not any(rule.stops_all(t) for t in range(T - 1)):
                continue
            times = {"old": [], "new": []}
            for r in range(61):
                order = ("old", "new") if r % 2 else ("new", "old")
                for label in order:
                    for cls, fn in new.items():
                        cls.stops_all = old_stops_all if label == "old" else fn
                    with torch.no_grad():
                        start = time.perf_counter()
                        run_adaptive(
                            case.model,
                            case.policy,
                            case.inputs,
                            rule,
                            "shrink",
                            case.valid,
                            chunk=case.chunk,
                        )
                        times[label].append(time.perf_counter() - start)
            for cls, fn in new.items():
                cls.stops_all = fn
            old, now = statistics.median(times["old"]), statistics.median(times["new"])
            row = {
                "threads": threads,
                "model": case.model_name,
                "budget": name,
                "old_ms": 1e3 * old,
                "new_ms": 1e3 * now,
                "old_over_new": old / now,
            }
            print(row, flush=True)
            rows.append(row)
(Path(__file__).parent / "ab.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
