"""What one `LearnedOptimizer.step()` costs in a user's training loop, and what running the
coordinatewise LSTM once for every parameter tensor saves against once per tensor.

The LSTM optimizer is coordinatewise, so a step of the whole model is one network call on all
coordinates. Until 2026-12-06 `LearnedOptimizer` called the network once per parameter tensor,
paying its fixed cost (tens of small operations) per tensor. For three models (an MLP, twenty
small linear layers, a small CNN), with and without a halting head, this script times the
current `step()` against that per-tensor loop (written out below as the reference), alternating
the two in one process, one thread, medians of ``--repeats`` steps, and checks that both give
the same parameters.

    .venv/bin/python benchmarks/learned_optimizer_step.py [--repeats 200]

Writes ``benchmarks/results/learned_optimizer_step.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine_info import machine
from torch import nn

from stopwise.tasks.learned_optimizers import LearnedOptimizer, LSTMOptimizerNet

RESULTS = Path(__file__).parent / "results"


class PerTensor(LearnedOptimizer):
    """The step as it was: one network call per parameter tensor."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                grad = p.grad.detach().reshape(1, -1).to(self.net.output_dtype())
                if "lstm" not in state:
                    state["lstm"] = self.net.initial_state(1, grad.shape[1])
                update, halting, state["lstm"] = self.net(grad, state["lstm"])
                p.add_(update.view_as(p).to(p.dtype), alpha=group["lr"])
                if halting is not None:
                    self.last_halting_score[p] = -float(halting)


def models() -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    return {
        "MLP 20-32-32-10 (6 tensors)": (
            nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)),
            torch.randn(64, 20),
            torch.randn(64, 10),
        ),
        "20 tensors: 10 x Linear(8, 8)": (
            nn.Sequential(*[nn.Linear(8, 8) for _ in range(10)]),
            torch.randn(16, 8),
            torch.randn(16, 8),
        ),
        "CNN 1-8-16 conv + linear (6 tensors)": (
            nn.Sequential(
                nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                nn.Linear(16 * 8 * 8, 10),
            ),
            torch.randn(32, 1, 12, 12),
            torch.randn(32, 10),
        ),
    }  # fmt: skip


def measure(repeats: int) -> list[dict]:
    rows = []
    for name, (model, x, y) in models().items():
        for halting in (False, True):
            torch.manual_seed(0)
            net = LSTMOptimizerNet(output_scale=0.1, halting=halting)
            copies = {
                kind: [p.detach().clone() for p in model.parameters()] for kind in ("one", "per")
            }
            optimizers, seconds = {}, {"one": [], "per": []}
            for kind, cls in (("one", LearnedOptimizer), ("per", PerTensor)):
                params = [nn.Parameter(p) for p in copies[kind]]
                optimizers[kind] = (cls(params, net), params)
            loss = ((model(x) - y) ** 2).mean()
            grads = torch.autograd.grad(loss, list(model.parameters()))
            for _, params in optimizers.values():
                for p, g in zip(params, grads, strict=True):
                    p.grad = g.clone()
            for r in range(repeats + 5):
                order = ("one", "per") if r % 2 else ("per", "one")
                for kind in order:
                    optimizer = optimizers[kind][0]
                    start = time.perf_counter()
                    optimizer.step()
                    if r >= 5:
                        seconds[kind].append(time.perf_counter() - start)
            gap = max(
                float((a - b).detach().abs().max())
                for a, b in zip(optimizers["one"][1], optimizers["per"][1], strict=True)
            )
            one, per = statistics.median(seconds["one"]), statistics.median(seconds["per"])
            row = {
                "model": name,
                "coordinates": sum(p.numel() for p in model.parameters()),
                "halting_head": halting,
                "one_call_ms": 1e3 * one,
                "per_tensor_ms": 1e3 * per,
                "speedup": per / one,
                "max_parameter_difference": gap,
            }
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS / "learned_optimizer_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.repeats)
    out = {
        "benchmark": "learned_optimizer_step",
        "machine": machine(),
        "torch": torch.__version__,
        "threads": 1,
        "settings": vars(args),
        "note": "medians of alternating steps in one process; the same gradients at every step "
        "(what is timed is the optimizer, not the model)",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
