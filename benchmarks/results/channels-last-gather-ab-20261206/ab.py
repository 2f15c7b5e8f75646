"""In one process, interleaved: `shrink` with the old row selection (index_select on every
tensor) against the new one (channels-last maps keep their layout), on DnCNN-stop's speed case
(`denoising.json`) and the Fashion-MNIST backbone of benchmarks/multi_exit_speed.py
(`multi_exit_fashion.json`). Run from the repository root after
`benchmarks/stop_speed.py --tasks denoising` has trained its run."""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
import multi_exit_speed
import stop_speed

import stopwise.inference as inference
from stopwise.policies import ConfidencePolicy
from stopwise.steps import _map_state, index_state

HERE = Path(__file__).parent


def old_index_state(state, rows):
    if isinstance(rows, torch.Tensor) and rows.dtype != torch.bool:
        return _map_state(lambda x: x.index_select(0, rows), state)
    return _map_state(lambda x: x[rows], state)


def old_over_new(run, repeats: int) -> dict:
    """Medians of ``run()`` with each selection, alternating which goes first."""
    times = {"old": [], "new": []}
    order = (("old", old_index_state), ("new", index_state))
    for r in range(repeats):
        for label, select in order if r % 2 else order[::-1]:
            inference.index_state = select
            with torch.no_grad():
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
    inference.index_state = index_state
    old, new = statistics.median(times["old"]), statistics.median(times["new"])
    return {"old_median_s": old, "new_median_s": new, "old_over_new": old / new}


def denoising() -> dict:
    case = stop_speed.denoising_cases(Path("runs/speed"), 4, False)[0]
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, rule in case.rules.items():
            run = lambda rule=rule: inference.run_adaptive(  # noqa: E731
                case.model, case.policy, case.inputs, rule, "shrink", case.valid
            )
            rows.append({"threads": threads, "budget": name, **old_over_new(run, 15)})
            print(rows[-1], flush=True)
    return {
        "case": "denoising DnCNN-stop (quick, shortened training), 24 crops 128x128",
        "rows": rows,
    }


def fashion() -> dict:
    model, budgets = multi_exit_speed.backbone("fashion", (28, 28))
    rules = multi_exit_speed.budget_rules(model, (28, 28), budgets, 2000)
    x = torch.randn(2000, 28, 28, generator=torch.Generator().manual_seed(2))
    variants = multi_exit_speed.variants(model, False)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for variant in ("fast", "bn+stem+all-channels-last"):
            for name, rule in rules.items():
                run = lambda net=variants[variant], rule=rule: inference.run_adaptive(  # noqa: E731
                    net, ConfidencePolicy(), x, rule, "shrink", chunk=1000
                )
                rows.append(
                    {
                        "threads": threads,
                        "variant": variant,
                        "budget": name,
                        **old_over_new(run, 21),
                    }
                )
                print(rows[-1], flush=True)
    return {
        "case": "multi-exit Fashion-MNIST backbone at initialisation, 2000 random rows, chunk 1000, "
        "MSDNet confidence thresholds",
        "rows": rows,
    }


if __name__ == "__main__":
    for name, measure in (("denoising.json", denoising), ("multi_exit_fashion.json", fashion)):
        (HERE / name).write_text(json.dumps(measure(), indent=1) + "\n")
