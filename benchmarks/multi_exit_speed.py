"""Does early exit in the multi-exit CNN pay in CPU time? Measured speedup of ``shrink`` mode over
the full network against the ideal one (the MAC ratio), per execution variant.

For each backbone (the Fashion-MNIST one, 28×28 images, and the MNIST-1D ``benchmark`` one,
length-40 signals) the network is built at its initialisation (its batch-norm statistics set by a
few training-mode passes): time does not depend on the weights. MSDNet's per-exit confidence
thresholds are fitted on a "validation" set of random inputs for each of the 39 exit
distributions q ∝ p^k, and at each budget of the preset the thresholds whose validation cost is
nearest are applied to ``--rows`` fresh random rows in batches of ``--batch``: the realised exit
fractions follow q, which is all the timing depends on. Each variant is then timed with
``stopwise.inference.time_adaptive`` (the full network and early exit at every budget,
interleaved, medians of ``--repeats``; wall clock and process CPU time), with 1 and 2 threads.

Variants: ``as-trained`` (the training-time module: BatchNorm after every convolution, the
space-to-depth stem, NCHW), ``bn-folded`` (BatchNorm folded into the convolutions),
``bn+stem-folded`` (and the stem folded into the first convolution),
``bn+stem+all-channels-last`` (and every step in channels-last memory; a 1-D network as the
2-D network of height one), ``fast`` (channels-last from step 2 on: ``models.inference_copy``),
``fastest`` (the switch that ran the network fastest on the first batch of rows with the thread
count timed: ``models.fastest_inference_copy``, what the experiment times) and, with
``--compile``, ``fast+compile`` (``torch.compile`` of every block and head, dynamic batch,
inductor freezing). A per-step profile (CPU time of the stem, each block and head at the full
batch, and of the exit decision and row gather) shows where the time goes against the MACs.

Target (issue 17): speedup ≥ 0.8 × MAC ratio at every budget, batch ≥ 1,000, one thread and two.

    .venv/bin/python benchmarks/multi_exit_speed.py [--threads 1 2] [--repeats 31] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from machine_info import machine

from stopwise.inference import (
    ScoreThreshold,
    time_adaptive,
)
from stopwise.policies import ConfidencePolicy
from stopwise.steps import index_state
from stopwise.tasks.multi_exit.config import PRESETS, MultiExitConfig
from stopwise.tasks.multi_exit.metrics import (
    exit_hazards,
    exit_logits,
    msdnet_rule,
    msdnet_thresholds,
)
from stopwise.tasks.multi_exit.models import (
    MultiExitCNN,
    count_step_macs,
    fastest_inference_copy,
    inference_copy,
)

ROOT = Path(__file__).resolve().parent
TARGET = 0.8  # speedup / MAC ratio
# (name, preset, input shape of one row)
BACKBONES = [("fashion-mnist", "fashion", (28, 28)), ("mnist1d", "benchmark", (40,))]


def backbone(preset: str, shape: tuple[int, ...], seed: int = 0) -> tuple[MultiExitCNN, list]:
    """The preset's network at initialisation (BN statistics from 3 training-mode passes on random
    rows) with its step costs, and the preset's budgets (fractions of the full MACs)."""
    defaults = MultiExitConfig()  # the preset's backbone keys (no data needed to time it)
    keys = ("channels", "strides", "head_width", "stem", "budgets")
    config = {**{k: getattr(defaults, k) for k in keys}, **PRESETS[preset]}
    torch.manual_seed(seed)
    model = MultiExitCNN(
        len(shape), config["channels"], config["strides"], config["head_width"], 10,
        stem=config["stem"],
    )  # fmt: skip
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(256, *shape))
    model.eval()
    model.set_step_costs(count_step_macs(model, torch.zeros(1, *shape)))
    return model, config["budgets"]


def variants(model: MultiExitCNN, compile_: bool) -> dict[str, MultiExitCNN]:
    out = {
        "as-trained": model,
        "bn-folded": inference_copy(model, stem=False, channels_last_from=None),
        "bn+stem-folded": inference_copy(model, channels_last_from=None),
    }
    out["bn+stem+all-channels-last"] = inference_copy(model, channels_last_from=0)
    out["fast"] = inference_copy(model)
    if compile_:
        import torch._dynamo.config as dynamo
        import torch._inductor.config as inductor

        inductor.freezing = True  # constant weights: prepacked, conv + bias + ReLU fused
        # Both backbones' blocks share their forward code, so their graphs count against one
        # recompile limit; raise it so that neither falls back to eager.
        dynamo.recompile_limit = 64
        compiled = inference_copy(model)
        for modules in (compiled.blocks, compiled.heads):
            for i, module in enumerate(modules):
                modules[i] = torch.compile(module, dynamic=True)
        out["fast+compile"] = compiled
    return out


def budget_rules(model, shape, budgets, rows: int, seed: int = 1) -> dict[str, ScoreThreshold]:
    """For each budget, MSDNet's thresholds (fitted on random validation rows) whose validation
    mean cost is nearest to it."""
    val = torch.randn(rows, *shape, generator=torch.Generator().manual_seed(seed))
    costs = model.step_costs()
    fitted = msdnet_thresholds(exit_hazards(ConfidencePolicy(), exit_logits(model, val)), costs)
    return {f"{b:g}": msdnet_rule(fitted, "val_mean_cost", b * float(costs[-1])) for b in budgets}


def cpu_median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


@torch.no_grad()
def step_profile(model: MultiExitCNN, x: torch.Tensor, repeats: int) -> dict:
    """CPU time (median) of the stem, of each block and head on the whole batch, and of the exit
    decision plus the gather of 10% of the rows after exit 1, beside each step's share of MACs."""
    policy = ConfidencePolicy()
    state = model.start(x)
    out = {"stem_seconds": cpu_median(lambda: model.start(x), repeats), "steps": []}
    costs = model.step_costs()
    for t in range(model.max_steps):
        h = model.block_input(state["h"], t)  # what advance gives the block
        block = cpu_median(lambda t=t, h=h: model.blocks[t](h), repeats)
        after = model.blocks[t](h)
        head = cpu_median(lambda t=t, a=after: model.heads[t](a), repeats)
        previous = float(costs[t - 1]) if t else 0.0
        out["steps"].append(
            {
                "block_seconds": block,
                "head_seconds": head,
                "mac_share": (float(costs[t]) - previous) / float(costs[-1]),
            }
        )
        state = model.advance(state, t)
        if t == 0:
            keep = torch.arange(x.shape[0]) % 10 == 0  # 10% of the rows go on

            def decide_and_gather(s=state, keep=keep):
                stop = policy(s["logits"], 0) >= 0.0  # the decision, as in run_adaptive
                return stop, index_state(s, keep)

            out["decide_gather_seconds"] = cpu_median(decide_and_gather, repeats)
    total = out["stem_seconds"] + sum(s["block_seconds"] + s["head_seconds"] for s in out["steps"])
    for s in out["steps"]:
        s["time_share"] = (s["block_seconds"] + s["head_seconds"]) / total
    out["stem_time_share"] = out["stem_seconds"] / total
    return out


def measure(args) -> dict:
    """Every backbone and variant, one thread count after the other (all of 1 thread first)."""
    prepared, results = {}, {}
    for name, preset, shape in BACKBONES:
        model, budgets = backbone(preset, shape)
        start = time.perf_counter()
        x = torch.randn(args.rows, *shape, generator=torch.Generator().manual_seed(2))
        prepared[name] = (
            budget_rules(model, shape, budgets, args.rows),
            x,
            variants(model, args.compile),
        )
        results[name] = {
            "preset": preset,
            "input_shape": list(shape),
            "step_costs_macs": model.step_costs().tolist(),
            "budgets": budgets,
            "variants_setup_seconds": time.perf_counter() - start,
            "threads": {},
        }
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (rules, x, models) in prepared.items():
            # The switch that runs fastest with this many threads (measured per thread count).
            models = {
                **models,
                "fastest": fastest_inference_copy(models["as-trained"], x[: args.batch]),
            }
            rows = {}
            for variant, net in models.items():
                start = time.perf_counter()
                timing = time_adaptive(
                    net, ConfidencePolicy(), x, rules, repeats=args.repeats, chunk=args.batch
                )
                timing["timing_seconds"] = time.perf_counter() - start
                timing["channels_last_from"] = getattr(net, "channels_last_from", None)
                timing["layout_seconds"] = getattr(net, "layout_seconds", None)  # fastest's
                full = float(net.step_costs()[-1])
                for row in timing["rules"].values():
                    row["mac_ratio"] = full / row["mean_cost"]
                    row["speedup_over_mac_ratio"] = row["speedup"] / row["mac_ratio"]
                    row["cpu_speedup_over_mac_ratio"] = row["cpu_speedup"] / row["mac_ratio"]
                    row["target_met_cpu"] = row["cpu_speedup_over_mac_ratio"] >= TARGET
                    row["target_met_wall"] = row["speedup_over_mac_ratio"] >= TARGET
                timing["profile"] = step_profile(net, x[: args.batch], args.repeats)
                rows[variant] = timing
                print(_line(name, threads, variant, timing), file=sys.stderr, flush=True)
            # Against the fastest full network of any variant: what early exit buys in absolute
            # time (a variant that speeds up the deep blocks more than exit 1 lowers its own
            # ratio to the MAC ratio while being faster).
            fastest = min(timing["full_cpu_seconds"] for timing in rows.values())
            for timing in rows.values():
                for row in timing["rules"].values():
                    row["cpu_speedup_vs_fastest_full"] = fastest / row["cpu_seconds"]
                    row["vs_fastest_full_over_mac_ratio"] = (
                        row["cpu_speedup_vs_fastest_full"] / row["mac_ratio"]
                    )
            results[name]["threads"][str(threads)] = rows
    return results


def _line(name, threads, variant, timing) -> str:
    ratios = " ".join(
        f"{b}:{r['cpu_speedup']:.2f}/{r['mac_ratio']:.2f}={r['cpu_speedup_over_mac_ratio']:.2f}"
        for b, r in timing["rules"].items()
    )
    return (
        f"{name} {threads}t {variant:15s} full {1e3 * timing['full_cpu_seconds']:.1f} ms CPU; "
        f"CPU speedup/ideal per budget {ratios}"
    )


def table(results: dict) -> str:
    """Per backbone, threads and variant: the full network's CPU time and, per budget, the ideal
    speedup (MAC ratio) → the measured CPU (wall) speedup over the same variant's full network,
    measured / ideal, and [the speedup over the fastest full network / ideal]."""
    lines = [
        "| backbone | threads | variant | full ms (CPU) | "
        + "budget: ideal → measured CPU (wall) speedup, measured/ideal [vs fastest full] |",
        "|:---|---:|:---|---:|:---|",
    ]
    for name, backbone_results in results.items():
        for threads, rows in backbone_results["threads"].items():
            for variant, timing in rows.items():
                cells = "; ".join(
                    f"{100 * float(b):g}%: {r['mac_ratio']:.2f} → {r['cpu_speedup']:.2f} "
                    f"({r['speedup']:.2f}), {r['cpu_speedup_over_mac_ratio']:.2f} "
                    f"[{r['vs_fastest_full_over_mac_ratio']:.2f}]"
                    for b, r in timing["rules"].items()
                )
                lines.append(
                    f"| {name} | {threads} | {variant} | "
                    f"{1e3 * timing['full_cpu_seconds']:.1f} | {cells} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--rows", type=int, default=2000, help="timed rows (in batches)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per call")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--out", default=str(ROOT / "results" / "multi_exit_speed.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    results = measure(args)
    report = {
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "speedups are medians of interleaved repeats (time_adaptive); CPU = process "
        "time of all threads, steadier than the wall clock on a loaded machine, but with 2 "
        "threads it includes OpenMP's spin-waiting: compare the wall speedups there",
        "settings": vars(args),
        "target_speedup_over_mac_ratio": TARGET,
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "results": results,
        "table": table(results),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
