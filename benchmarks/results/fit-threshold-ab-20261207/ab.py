"""In one process, interleaved: ``fit_threshold`` as of 2026-12-07 (the cost of every threshold
from one sort of the rows' running maxima) against the binary search it replaced (the rule run
on every row for each probed threshold, written out below as it was), on validation-sized
hazards. Both must return the same threshold on every case (finite scores: the two agree)."""

import json
import math
import platform
import statistics
import sys
import time

import torch

from stopwise.inference import (
    THRESHOLD_KINDS,
    ScoreThreshold,
    _between,
    _step_mask,
    fit_threshold,
    rule_scores,
    stop_indices,
)


def binary_search_fit(hazard_logits, budget, kind="hazard"):
    """The search of 2026-12-06 (costs 1..T, every step valid)."""
    rule_cls = THRESHOLD_KINDS[kind]
    N, T = hazard_logits.shape
    costs = torch.arange(1, T + 1, dtype=torch.float64)
    valid = _step_mask(None, T)
    scores = rule_scores(hazard_logits, rule_cls(0.0), valid).to(torch.float64)
    candidates = torch.cat([scores[:, valid].flatten().unique(), torch.tensor([math.inf])])

    def mean_cost(threshold) -> float:
        return float(costs[stop_indices(scores, ScoreThreshold(threshold), valid)].mean())

    within = budget + 1e-12 * max(1.0, abs(budget))
    lo, hi = 0, candidates.numel() - 1
    if mean_cost(candidates[-1]) <= within:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mean_cost(candidates[mid]) <= within:
            lo = mid
        else:
            hi = mid
    if lo == 0:
        return rule_cls(-math.inf)
    return rule_cls(_between(float(candidates[lo - 1]), float(candidates[lo])))


def main(out: str) -> None:
    torch.set_num_threads(1)
    rows = []
    # (rows, steps): a tiny preset's validation split, the quick sparse-recovery and multi-exit
    # ones (3,000 × 20, 2,000 × 4) and a large one.
    for N, T in ((500, 12), (2000, 4), (3000, 20), (10000, 100)):
        hazards = torch.randn(N, T, generator=torch.Generator().manual_seed(N + T))
        budgets = [1 + (T - 1) * i / 9 for i in range(10)]  # the full depth returns early
        for kind in ("hazard", "cumulative"):
            times = {"binary_search": [], "sorted": []}
            same = True
            for r in range(15):
                order = ("binary_search", "sorted") if r % 2 else ("sorted", "binary_search")
                fitted = {}
                for label in order:
                    fit = binary_search_fit if label == "binary_search" else fit_threshold
                    start = time.perf_counter()
                    fitted[label] = [float(fit(hazards, b, kind=kind).score_threshold)
                                     for b in budgets]  # fmt: skip
                    times[label].append((time.perf_counter() - start) / len(budgets))
                same &= fitted["binary_search"] == fitted["sorted"]
            old, new = (statistics.median(times[k]) for k in ("binary_search", "sorted"))
            rows.append({"rows": N, "steps": T, "kind": kind, "binary_search_ms": 1e3 * old,
                         "sorted_ms": 1e3 * new, "speedup": old / new,
                         "same_thresholds": same})  # fmt: skip
            print(rows[-1], flush=True)
    result = {
        "benchmark": "fit_threshold: one sort against the binary search (per call, median of 15 "
        "interleaved repeats of 10 budgets, one thread)",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ab.json")
