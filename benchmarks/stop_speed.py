"""Does every stop model's MAC saving become a wall-clock saving? One measurement for all tasks
(issue 17: "one script that measures speedup vs MAC ratio and policy overhead for every stop model").

For each stop model (sparse recovery: LISTA-stop, LISTA-CP-SS-stop; multi-exit: confidence early
exit and the L2S exit policy; denoising: DnCNN-stop; few-shot: MAML-stop; learned optimizers: the
LSTM optimizer with its ACT halting and its L2S stop; parity: L2S on the GRU) a *case* gives the trained step model, its
policy, the timed rows, the per-row MACs of stopping at each step and the rules of a few points
of its budget curve (thresholds fitted on the validation split by the task's own
``selection.budget_sweep``/calibration, read from the run's record: the test split chooses
nothing). One loop then measures every case the same way: ``inference.time_adaptive`` (full
depth with no policy against ``run_adaptive(mode="shrink")``, interleaved, medians of repeats,
wall clock and process CPU time) at each thread count, beside

* mean steps and mean MACs per row (model + policy features + policy at every decision),
* full MACs (every step, no policy), the ideal speedup full / mean MACs,
* measured wall and CPU speedups and measured / ideal (target ≥ 0.8 at every budget),
* the *time ideal* (:func:`depth_seconds`: each row costs what a full batch truncated at its
  depth costs per row) and measured / time ideal, which split a miss between the model's time
  per depth and what ``shrink`` adds,
* the policy's MACs per decision as a fraction of one step's MACs (target ≤ 10%),
* where the rows are timed in chunks (multi-exit, parity), the speedup of running the chunks
  one by one with no pooling of the rows that go on (``chunk by chunk``), in the same loop.

Weights: every task is trained once with its ``quick`` preset architecture through
``stopwise.experiments.run_experiment`` into ``runs/speed/<task>`` (reused on rerun; training
shortened where the preset takes long, see ``TASKS``) and loaded back from the run's checkpoints.

    .venv/bin/python benchmarks/stop_speed.py [--threads 1 2] [--repeats 7] [--points 4]
        [--tasks sparse-recovery multi-exit ...] [--batch 10000 [--chunk 1000]] [--note "..."]

``--batch N`` repeats the timed rows into one batch of at least N (:func:`widened`): how much of a
miss is the per-call cost of a small step; with ``--chunk C`` those rows enter C at a time.
Few-shot's rows are tasks that a step adapts one at a time: there ``--batch N`` times N test
tasks instead of the first 40.

Writes ``benchmarks/results/stop_speed.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine_info, denoising
from machine_info import machine  # noqa: E402

from stopwise.config import ConfigError  # noqa: E402
from stopwise.experiments import run_experiment  # noqa: E402
from stopwise.inference import (  # noqa: E402
    Rule,
    in_chunks,
    run_adaptive,
    time_adaptive,
)
from stopwise.macs import count_macs  # noqa: E402
from stopwise.perf import reuse_freed_memory  # noqa: E402
from stopwise.selection import point_rule  # noqa: E402
from stopwise.steps import cat_state, index_state, state_batch_size  # noqa: E402
from stopwise.trained import finished_job, load_stop_model, stop_model_names  # noqa: E402

ROOT = Path(__file__).resolve().parent
TARGET_SPEEDUP = 0.8  # measured speedup / ideal speedup (MAC ratio), at every budget
TARGET_POLICY = 0.1  # policy MACs per decision / one step's MACs


@dataclass
class SpeedCase:
    """One stop model, ready to time.

    ``row_macs(stop_index (N,)) -> (N,)`` MACs per row of stopping there (model, policy
    features and the policy at every decision taken); ``full_macs`` the mean per row of every
    step without the policy; ``step_macs`` one step of the model and ``policy_macs`` one
    decision (features + policy), per row. ``rules``: budget label → rule fitted on validation.
    """

    task: str
    model_name: str
    model: Any
    policy: Any
    inputs: Any
    rules: dict[str, Rule]
    row_macs: Callable[[torch.Tensor], torch.Tensor]
    full_macs: float
    step_macs: float
    policy_macs: float
    valid: torch.Tensor | None = None
    chunk: int | None = None  # rows per call (None: all timed rows at once)
    row: str = "row"  # what a row is (a signal, an image, a task, a function)
    repeats: int | None = None  # fixed repeats where a repeat is long (else sized to --seconds)
    architecture: str = ""
    notes: list[str] = field(default_factory=list)
    # (T,) what skipping the decision at each step saves (default: policy_macs at every step)
    decision_costs: torch.Tensor | None = None
    # What a row stopped by a −∞ threshold (Rule.stops_all) does not spend at that step: the
    # policy, not the prediction it still makes (default: policy_macs, the prediction free)
    unasked_macs: float | None = None


# ---------------------------------------------------------------- runs and their records


def trained_run(task: str, runs: Path, overrides: list[str], preset: str = "quick") -> Path:
    """The finished run of ``task`` (trained now unless ``runs/<task>`` has it already)."""
    out = runs / task
    try:
        run_experiment(task, preset, out, ["threads=1", *overrides])
    except ConfigError as error:  # its advice, "another --out", is this script's --runs
        raise SystemExit(
            f"stop_speed: the cached run {out} cannot be used ({error})\nIt was trained with "
            f"other settings or by an older stopwise: delete {out} or give another --runs."
        ) from None
    TRAINED[task] = {"run": str(out), "preset": preset, "overrides": overrides}
    return out


TRAINED: dict[str, dict[str, Any]] = {}  # the runs the weights come from, for the JSON


def spread(curve: list[dict[str, Any]], points: int) -> list[dict[str, Any]]:
    """``points`` budget-curve points evenly spaced along the curve (first and last included),
    each distinct rule once."""
    n = len(curve)
    picked = sorted({round(i * (n - 1) / max(points - 1, 1)) for i in range(points)})
    out, seen = [], set()
    for i in picked:
        key = json.dumps([curve[i]["score_threshold"], curve[i].get("mix")])
        if key not in seen:
            seen.add(key)
            out.append(curve[i])
    return out


def curve_rules(curve, points: int, kind: str = "hazard", cost_key: str = "budget") -> dict:
    """Rules of ``points`` points of a validation-fitted budget curve, named by their budget."""
    return {f"{p[cost_key]:.4g}": point_rule(p, kind) for p in spread(curve, points)}


def linear_macs(module: torch.nn.Module, *inputs) -> float:
    """Multiply-adds of the linear and convolution layers of one forward, per input row."""
    rows = inputs[0].shape[0]
    return count_macs(module, *inputs) / rows


# ---------------------------------------------------------------- one adapter per task


def sparse_recovery_cases(runs: Path, points: int, tiny: bool) -> list[SpeedCase]:
    from stopwise.tasks.sparse_recovery.experiment import STOP_MODELS, stop_costs
    from stopwise.tasks.sparse_recovery.experiment import load_stop_model as load_with_problem

    run = trained_run("sparse-recovery", runs, [], "tiny" if tiny else "quick")
    cases = []
    for name, label in (("lista_stop", "LISTA-stop"), ("cpss_stop", "LISTA-CP-SS-stop")):
        model, policy, valid, _, problem = load_with_problem(run, name)
        _, record = finished_job(run, STOP_MODELS[name][1])
        costs = stop_costs(model, policy)
        T, full = model.max_steps, float(model.step_costs()[-1])
        cases.append(
            SpeedCase(
                "sparse-recovery",
                label,
                model,
                policy,
                problem.test.open().y,
                curve_rules(record["curve"], points, record["policy"]["kind"]),
                lambda index, costs=costs: costs[index],
                full,
                full / T,
                float(model.feature_costs()[T // 2]) + policy.macs(),
                valid=valid,
                chunk=None,
                row="measurement y",
                architecture=f"A: {tuple(problem.A.shape)}, T = {T}",
            )
        )
    return cases


def multi_exit_cases(runs: Path, points: int, tiny: bool) -> list[SpeedCase]:
    from stopwise.tasks.multi_exit.data import load_splits
    from stopwise.tasks.multi_exit.models import layout_text

    overrides = ['methods=["uniform","l2s"]', "timing.methods=[]"]
    run = trained_run("multi-exit", runs, overrides, "tiny" if tiny else "quick")
    context, select = finished_job(run, "l2s")
    config = context.config
    splits = load_splits(config)
    # The L2S job (β) validation chose for the policy at the middle budget.
    picks = select["chosen"]["policy"]
    l2s_job, beta = picks[len(picks) // 2]["job"], picks[len(picks) // 2]["beta"]
    cases = []
    for label, job in (("confidence (uniform)", "uniform"), ("L2S exit policy", None)):
        name = job or l2s_job
        _, record = finished_job(run, name)
        trained = load_stop_model(run, f"{name}/{'confidence' if job else 'policy'}")
        model, policy = trained.inference_model(), trained.policy
        costs = model.step_costs().double()
        T = model.max_steps
        if job:
            curve = record["curves"]["confidence"]
            policy_macs = 0.0  # softmax max of the exit's logits: no multiply-adds counted
        else:
            curve = record["curves"]["policy"]
            policy_macs = linear_macs(policy, torch.zeros(1, splits.classes), 0)
        # A policy's decisions ride on the exits' costs (the heads are in the step costs).
        row_costs = costs + policy_macs * torch.arange(1, T + 1, dtype=torch.float64)
        cases.append(
            SpeedCase(
                "multi-exit",
                label,
                model,
                policy,
                splits.test_x,
                curve_rules(curve, points, "hazard", "val_mean_cost"),
                lambda index, c=row_costs: c[index],
                float(costs[-1]),
                float(costs[-1]) / T,
                policy_macs,
                chunk=1000,
                row="MNIST-1D signal",
                architecture=f"{config.dataset}, channels {config.channels}, stem {config.stem}, "
                f"fastest_inference_copy (BN and stem folded, {layout_text(model.channels_last_from)})",
                notes=[f"L2S β = {beta}"] if not job else [],
            )
        )
    return cases


def denoising_cases(runs: Path, points: int, tiny: bool) -> list[SpeedCase]:
    overrides = [] if tiny else QUICK_SHORTENED["denoising"]
    run = trained_run("denoising", runs, overrides, "tiny" if tiny else "quick")
    trained = load_stop_model(run, "dncnn-stop")
    model, policy, valid = trained.inference_model(), trained.policy, trained.valid_steps
    context, record = finished_job(run, "dncnn-stop")
    context_config = context.config
    costs = model.adaptive_macs(valid, policy.macs()).double()
    images = max(trained.test_inputs(), key=lambda t: t.shape[0])  # the largest shape group
    step_macs = float(model.module_macs()[-1] + model.head_macs(0))
    return [
        SpeedCase(
            "denoising",
            "DnCNN-stop",
            model,
            policy,
            images,
            curve_rules(record["curve"], points),
            lambda index: costs[index],
            float(model.fixed_depth_macs()[-1]),
            step_macs,
            float(policy.macs()),
            valid=valid,
            chunk=None,
            row=f"test crop {tuple(images.shape[-2:])} (MACs per pixel)",
            decision_costs=model.exit_macs(valid, policy.macs()),  # the exit head and the policy
            architecture=f"DnCNN depth {context_config.depth}, width {context_config.width}, "
            f"{context_config.precision}, channels-last {context_config.channels_last}, "
            "inference_copy (BN folded, one-channel head convolutions as TapConv2d)",
        )
    ]


def few_shot_cases(
    runs: Path, points: int, tiny: bool, timed_tasks: int | None = None
) -> list[SpeedCase]:
    """MAML-stop on the first FEW_SHOT_TIMED_TASKS test tasks, or ``timed_tasks`` (``--batch``)
    drawn from the test characters with the run's test-task stream."""
    from stopwise.tasks.few_shot.experiment import load_splits
    from stopwise.tasks.few_shot.methods import task_sampler

    run = trained_run("few-shot", runs, ["timing_repeats=1"], "tiny" if tiny else "quick")
    context, record = finished_job(run, "maml-stop")
    config = context.config
    trained = load_stop_model(run, "maml-stop")
    model, policy = trained.model, trained.policy
    learner = model.learner
    _, _, test_split = load_splits(config)
    drawn = max(config.test_tasks, timed_tasks or 0)
    tasks = task_sampler(config, test_split)(drawn, context.generator("test-tasks"))
    # A full adaptation of a task takes ~0.1 s (Conv4, 10 inner steps, one task at a time on
    # CPU): the first FEW_SHOT_TIMED_TASKS test tasks and 3 repeats keep the measurement to
    # about a minute.
    tasks = tasks.select(slice(0, min(timed_tasks or FEW_SHOT_TIMED_TASKS, len(tasks))))
    notes = []
    if timed_tasks:
        notes.append(
            f"timed rows: {len(tasks)} tasks drawn from the test characters with the run's "
            f"test-task stream (--batch {timed_tasks}; the run's own test has {config.test_tasks})"
        )
    # A task is measured at θ_0 (start) and after every update: support forward + backward
    # (3 forwards) + query forward, the gradient skipped after the last update. So stopping
    # after k < T updates costs k + 1 measures; all T cost T measures and one without gradient.
    support, query = (
        torch.tensor([count_macs(learner, _one_task(tasks, i)[j]) for i in range(len(tasks))])
        .double()
        .view(-1, 1)
        for j in (0, 1)
    )
    measure, last = 3 * support + query, support + query
    sinusoid = config.family == "sinusoid"
    learner_text = f"MLP {config.hidden}" if sinusoid else f"Conv4, {config.width} filters"
    features = torch.zeros(1, 2 * learner.feature_dim + 4)
    decision = linear_macs(policy, features, 0)
    T = model.max_steps

    def row_macs(index: torch.Tensor) -> torch.Tensor:
        k = (index + 1).double().view(-1, 1)
        spent = torch.where(k < T, (k + 1) * measure, T * measure + last)
        return (spent + k * decision).view(-1)

    return [
        SpeedCase(
            "few-shot",
            "MAML-stop",
            model,
            policy,
            tasks.inputs(),
            curve_rules(record["stop_curve"], points),
            row_macs,
            float((T * measure + last).mean()),
            float(measure.mean()),
            decision,
            chunk=config.eval_chunk,
            repeats=3,
            row="sinusoid task" if sinusoid else "task (5-way, K shots)",
            architecture=f"{config.family}, {learner_text}, T = {T}, vmap {config.vmap}",
            notes=[
                "MACs per task: the measure at θ_0 and after each update (support forward + "
                "backward, query forward; no gradient after the last update) + the decisions",
                *notes,
            ],
        )
    ]


FEW_SHOT_TIMED_TASKS = 40


def _one_task(tasks, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    support_x, _, query_x, _ = tasks.task(i)
    return support_x, query_x


def learned_optimizer_cases(runs: Path, points: int, tiny: bool) -> list[SpeedCase]:
    from stopwise.tasks.learned_optimizers.models import lstm_step_macs

    overrides = [] if tiny else QUICK_SHORTENED["learned-optimizers"]
    run = trained_run("learned-optimizers", runs, overrides, "tiny" if tiny else "quick")
    cases = []
    for label, kind in (("LSTM optimizer + ACT halting", "act"), ("LSTM optimizer + L2S", "l2s")):
        family_name = "regression"
        context, record = finished_job(run, f"{kind}-{family_name}")
        config = context.config
        trained = load_stop_model(run, f"{kind}-{family_name}")
        model, policy = trained.model, trained.policy
        net, family = model.stepper, model.family
        step = float(lstm_step_macs(net, family.dim))
        if kind == "act":
            # The halting head runs inside every step (full depth too); the rule only reads
            # its output from the features.
            step += float(net.halting.in_features)
            decision = 0.0
        else:
            decision = float(policy.policy.macs())  # the L2S policy (detached for evaluation)
        T = model.max_steps
        cases.append(
            SpeedCase(
                "learned-optimizers",
                label,
                model,
                policy,
                trained.test_inputs()[0],
                curve_rules(record["curve"], points),
                lambda index, s=step, d=decision: (index + 1).double() * (s + d),
                T * step,
                step,
                decision,
                chunk=None,
                row=f"{family_name} function (dim {family.dim})",
                architecture=f"LSTM {config.layers}×{config.hidden}, horizon {T}",
                notes=[
                    "step MACs: LSTM cells and output layer; the optimizee's gradient not "
                    "counted (lstm_step_macs)"
                ],
            )
        )
    return cases


def parity_cases(runs: Path, points: int, tiny: bool) -> list[SpeedCase]:
    """L2S on the parity GRU (the hard-oracle policy). The run's record has rules, not a budget
    curve: the thresholds are fitted here on the validation split for evenly spaced budgets
    (``selection.budget_grid``, ``inference.fit_threshold``)."""
    from stopwise.inference import fit_threshold, hazard_trajectory
    from stopwise.selection import budget_grid
    from stopwise.tasks.parity.data import evaluation_set

    run = trained_run("parity", runs, ['methods=["l2s"]'], "tiny" if tiny else "quick")
    job = next(name for name in stop_model_names(run) if name.endswith("/hard")).split("/")[0]
    context, _ = finished_job(run, job)
    config = context.config
    trained = load_stop_model(run, f"{job}/hard")
    model, head = trained.model, trained.policy
    T, n, h = config.max_steps, config.n, config.hidden
    with torch.no_grad():
        val = evaluation_set(config, "validation", context.generator("validation")).x
        val_hazards = hazard_trajectory(model, head, val)
    every = torch.ones(T, dtype=torch.bool)
    rules = {f"{b:.4g}": fit_threshold(val_hazards, b) for b in budget_grid(every, points)}
    test = trained.test_inputs()[0]
    step = 3.0 * h * (n + 1 + h)  # GRUCell: three gates on [x, flag] and h
    halting = linear_macs(head, torch.zeros(1, h))
    decision = halting + h  # halting head + the step's output
    return [
        SpeedCase(
            "parity",
            "L2S GRU (hard oracle)",
            model,
            head,
            test,
            rules,
            lambda index: (index + 1).double() * (step + decision),
            T * step + h,
            step,
            decision,
            chunk=1000,
            row=f"parity vector (n = {n})",
            architecture=f"GRU {h} units, n = {n}, T = {T}",
            notes=["thresholds fitted here on the validation split (the run records rules)"],
            unasked_macs=halting,  # the output is still made where every row stops
        )
    ]


# Quick presets shortened where training takes long on the shared machine (architecture kept).
QUICK_SHORTENED = {
    # Every exit kept (min_exit_frequency=0): with this short training validation's oracle
    # picks the last exit for almost every tile and pruning would leave nothing to stop at.
    "denoising": [
        "pretrain.steps=150", "finetune.steps=50", "policy.steps=200", "test_sigmas=[45,65]",
        "grid_sigma=65", "nlm_h=[0.8]", "timing_repeats=1", "min_exit_frequency=0",
    ],
    # Only the family whose stop models are timed (regression), without the fixed-depth LSTMs.
    "learned-optimizers": ['families=["regression"]', "trained_depths=[]"],
}  # fmt: skip

ADAPTERS = {
    "sparse-recovery": sparse_recovery_cases,
    "multi-exit": multi_exit_cases,
    "denoising": denoising_cases,
    "few-shot": few_shot_cases,
    "learned-optimizers": learned_optimizer_cases,
    "parity": parity_cases,
}


# ---------------------------------------------------------------- the one measuring loop


# Tasks whose timed rows run as one batch of any size (not few-shot's tasks, which a step adapts
# one at a time). Denoising's rows are crops of one shape: 1,000 of 128² take ~10 s at full depth.
WIDENABLE = ("sparse-recovery", "multi-exit", "denoising", "learned-optimizers", "parity")


def widened(case: SpeedCase, batch: int, chunk: int | None = None) -> SpeedCase:
    """``case`` with its timed rows repeated to at least ``batch`` rows, run as one batch (or
    ``chunk`` rows at a time, pooled): how the speedup depends on the batch. Repeating rows keeps
    a threshold rule's stop steps; a budget mix (``MixedRule``) splits rows by their position in
    the batch, so its stop steps and ideal speedup are measured anew on the repeated rows
    (``measure`` does so for every rule)."""
    rows = state_batch_size(case.inputs)
    copies = -(-batch // rows)
    inputs = cat_state([case.inputs] * copies) if copies > 1 else case.inputs
    repeated = f"repeated {copies}×" if copies > 1 else "not repeated"
    entry = "as one batch" if chunk is None else f"entering {chunk} at a time (--chunk {chunk})"
    note = f"timed rows: the {rows} rows {repeated}, {entry} (--batch {batch})"
    return replace(case, inputs=inputs, chunk=chunk, notes=[*case.notes, note])


@torch.no_grad()
def stop_index(case: SpeedCase, rule: Rule) -> torch.Tensor:
    """``(N,)`` the stop steps of ``rule`` on the timed rows, by real (shrink) execution."""

    model, policy = case.model, case.policy
    return run_adaptive(
        model, policy, case.inputs, rule, "shrink", case.valid, None, case.chunk
    ).stop_index


@torch.no_grad()
def choose_repeats(case: SpeedCase, least: int, seconds: float, most: int = 41) -> int:
    """Interleaved repeats for about ``seconds`` of timing (≥ ``least``): one repeat runs the
    full model and every rule, about (1 + Σ mean steps / T) full passes; judged from one full
    pass, timed after a warm-up one."""
    from stopwise.inference import run_fixed

    def full():
        if case.chunk is None:
            run_fixed(case.model, case.inputs)
        else:
            in_chunks(lambda part: run_fixed(case.model, part), case.inputs, case.chunk)

    full()
    start = time.perf_counter()
    full()
    one = max(time.perf_counter() - start, 1e-6) * (1 + 0.6 * len(case.rules))
    return int(min(most, max(least, round(seconds / one))))


@torch.no_grad()
def step_scaling(case: SpeedCase, repeats: int = 15) -> dict[str, float]:
    """How the time of one step (``advance``, ``observe`` and the policy at step T/2) scales with
    its rows: on one timed batch and on 1/16 of it. A step that costs a + b·rows has the fixed
    share a / (a + b·batch): the part of every step that rows leaving the batch cannot save,
    which bounds shrink's speedup below the MAC ratio when it is large."""
    model, t = case.model, case.model.max_steps // 2
    total = state_batch_size(case.inputs)
    batch = index_state(case.inputs, slice(0, min(case.chunk or total, total)))
    n = state_batch_size(batch)
    few = index_state(batch, slice(0, max(1, n // 16)))

    def step_seconds(inputs) -> float:
        state = model.start(inputs)
        for s in range(t):
            state = model.advance(state, s)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _, features = model.observe(model.advance(state, t), t)
            case.policy(features, t)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    full, small = step_seconds(batch), step_seconds(few)
    m = state_batch_size(few)
    per_row = max(full - small, 0.0) / (n - m) if n > m else 0.0
    return {
        "step_batch": n,
        "step_seconds": full,
        "step_seconds_sixteenth": small,
        "fixed_share": (full - per_row * n) / full,
    }


@torch.no_grad()
def depth_seconds(case: SpeedCase, repeats: int = 5) -> torch.Tensor:
    """``(T,)`` seconds to run every timed row to depth t + 1 at full width, as ``run_fixed``
    does (``start``, the steps, the prediction there), from one step-by-step timed pass per
    repeat (medians, after a warm-up pass). With it a rule's *time ideal*, the time of running
    each row in a full batch truncated at its stop depth, C_T / mean_i C_(k_i), tells how much
    of a miss is the model's time per depth not following its MACs (time ideal below the MAC
    ideal) and how much is what `shrink` adds: decisions, gathers, smaller batches (measured
    below the time ideal)."""
    model, T = case.model, int(case.model.max_steps)
    total = state_batch_size(case.inputs)
    size = case.chunk or total
    chunks = [index_state(case.inputs, slice(i, i + size)) for i in range(0, total, size)]

    def one_pass() -> torch.Tensor:
        seconds = torch.zeros(T, dtype=torch.float64)
        for rows in chunks:
            start = time.perf_counter()
            state = model.start(rows)
            elapsed = time.perf_counter() - start
            for t in range(T):
                start = time.perf_counter()
                state = model.advance(state, t)
                middle = time.perf_counter()
                model.predict(state, t)
                elapsed += middle - start
                seconds[t] += elapsed + time.perf_counter() - middle
        return seconds

    one_pass()
    return torch.stack([one_pass() for _ in range(repeats)]).median(0).values


def _decision_steps(case: SpeedCase) -> list[int]:
    """The steps where a policy may be asked: the valid ones but the last."""
    T = int(case.model.max_steps)
    valid = [True] * T if case.valid is None else case.valid.bool().tolist()
    steps = [t for t in range(T) if valid[t]]
    return steps[:-1]


def measure(case: SpeedCase, threads: int, repeats: int) -> list[dict[str, Any]]:
    """One row per budget: MACs, the ideal and the measured speedups, the policy's overhead,
    and how one step's time scales with its rows (:func:`step_scaling`)."""
    torch.set_num_threads(threads)
    pooled = case.chunk is not None  # also time the chunks run one by one, never pooled
    timing = time_adaptive(
        case.model,
        case.policy,
        case.inputs,
        case.rules,
        case.valid,
        repeats,
        case.chunk,
        unpooled=pooled,
    )
    scaling = step_scaling(case)
    depth = depth_seconds(case, 3 if case.repeats else 5)
    rows = []
    for budget, rule in case.rules.items():
        index = stop_index(case, rule)

        # A floored rule asks no policy before its floor (Rule.needs_policy): not charged. Nor
        # are the features and policy of the rows where it stops every row (Rule.stops_all: a
        # threshold of −∞), whose prediction there is still made (an exit head, say).
        steps = _decision_steps(case)
        skipped = [t for t in steps if not rule.needs_policy(t)]
        saved = sum(
            case.policy_macs if case.decision_costs is None else float(case.decision_costs[t])
            for t in skipped
        )
        certain = next((t for t in steps if rule.stops_all(t)), None)
        if certain is not None:
            unasked = case.policy_macs if case.unasked_macs is None else case.unasked_macs
            saved += unasked * float((index == certain).double().mean())
        mean_macs = float(case.row_macs(index).double().mean()) - saved
        ideal = case.full_macs / mean_macs
        time_ideal = float(depth[-1] / depth[index.cpu()].mean())
        timed = timing["rules"][budget]
        rows.append(
            {
                "task": case.task,
                "model": case.model_name,
                "threads": threads,
                "budget": budget,
                "rows": timing["rows"],
                "batch": min(case.chunk or timing["rows"], timing["rows"]),
                "row": case.row,
                "repeats": repeats,
                "max_steps": int(case.model.max_steps),
                "mean_steps": float((index + 1).double().mean()),
                "mean_macs": mean_macs,
                "skipped_decisions": len(skipped),
                "full_macs": case.full_macs,
                "ideal_speedup": ideal,
                "full_seconds": timing["full_seconds"],
                "adaptive_seconds": timed["seconds"],
                "wall_speedup": timed["speedup"],
                "cpu_speedup": timed["cpu_speedup"],
                "wall_over_ideal": timed["speedup"] / ideal,
                "unpooled_wall_speedup": timed.get("unpooled_speedup"),
                "cpu_over_ideal": (timed["cpu_speedup"] or float("nan")) / ideal,
                "speedup_target_met": timed["speedup"] >= TARGET_SPEEDUP * ideal,
                "time_ideal_speedup": time_ideal,
                "wall_over_time_ideal": timed["speedup"] / time_ideal,
                "step_macs": case.step_macs,
                "policy_macs": case.policy_macs,
                "policy_fraction": case.policy_macs / case.step_macs,
                "policy_target_met": case.policy_macs <= TARGET_POLICY * case.step_macs,
                **scaling,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | model | thr | budget | batch | steps | MACs/full | ideal | wall (CPU) speedup "
        "| wall/ideal | time ideal | wall/time ideal | chunk by chunk | policy/step "
        "| fixed share of a step |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = "" if r["speedup_target_met"] else " ✗"
        unpooled = r.get("unpooled_wall_speedup")
        unpooled = "—" if unpooled is None else f"{unpooled:.2f}"
        lines.append(
            f"| {r['task']} | {r['model']} | {r['threads']} | {r['budget']} | {r['batch']} | "
            f"{r['mean_steps']:.2f}/{r['max_steps']} | {r['mean_macs'] / r['full_macs']:.3f} | "
            f"{r['ideal_speedup']:.2f} | {r['wall_speedup']:.2f} ({r['cpu_speedup']:.2f}) | "
            f"{r['wall_over_ideal']:.2f}{mark} | {r['time_ideal_speedup']:.2f} | "
            f"{r['wall_over_time_ideal']:.2f} | {unpooled} | {100 * r['policy_fraction']:.1f}% | "
            f"{100 * r['fixed_share']:.0f}% |"
        )
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(ADAPTERS), choices=list(ADAPTERS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7, help="least interleaved repeats")
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="more repeats (≤ 41) for about this long"
    )
    parser.add_argument("--points", type=int, default=4, help="budget points per curve (3-5)")
    parser.add_argument("--runs", default="runs/speed", help="cache of the trained runs")
    parser.add_argument("--tiny", action="store_true", help="tiny presets (tests, development)")
    parser.add_argument("--out", default=str(ROOT / "results" / "stop_speed.json"))
    parser.add_argument("--note", default="", help="how the machine was shared, etc.")
    parser.add_argument(
        "--batch",
        type=int,
        help="repeat the timed rows to at least this many, as one batch (tasks in WIDENABLE); "
        "few-shot: time this many test tasks",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        help="with --batch: the repeated rows enter this many at a time (run_adaptive's chunk; "
        "full depth runs chunk by chunk)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds as a fresh process has them (a user's process "
        "that never calls stopwise.perf.reuse_freed_memory)",
    )
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be at least 1; got {args.batch}")
    if args.chunk is not None and (args.batch is None or args.chunk < 1):
        parser.error(f"--chunk needs --batch and must be at least 1; got {args.chunk}")
    if not args.default_malloc:
        reuse_freed_memory()
    torch.set_num_threads(1)
    load_before, uptime_before = os.getloadavg(), uptime()
    wall, cpu = time.perf_counter(), time.process_time()
    adapters = dict(ADAPTERS)
    if args.batch:  # few-shot's rows are tasks, adapted one at a time: time that many of them
        adapters["few-shot"] = functools.partial(few_shot_cases, timed_tasks=args.batch)
    cases = [
        c for task in args.tasks for c in adapters[task](Path(args.runs), args.points, args.tiny)
    ]
    for case in cases:  # the preset whose run trained it
        case.architecture += f" ({TRAINED[case.task]['preset']})"
    if args.batch:
        cases = [widened(c, args.batch, args.chunk) if c.task in WIDENABLE else c for c in cases]
    setup_seconds = time.perf_counter() - wall
    rows = []
    for threads in args.threads:
        for case in cases:
            start = time.perf_counter()
            torch.set_num_threads(threads)
            repeats = case.repeats or (
                choose_repeats(case, args.repeats, args.seconds) if args.seconds else args.repeats
            )
            rows.extend(measure(case, threads, repeats))
            print(
                f"{case.task} / {case.model_name}, {threads} thread(s): "
                f"{time.perf_counter() - start:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    torch.set_num_threads(1)
    report = {
        "benchmark": "stop_speed",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": machine(),
        "load": {
            "note": args.note,
            "uptime_before": uptime_before,
            "uptime_after": uptime(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": vars(args),
        "targets": {
            "wall_speedup_over_ideal": TARGET_SPEEDUP,
            "policy_macs_over_step_macs": TARGET_POLICY,
        },
        "cases": [
            {
                "task": c.task,
                "model": c.model_name,
                "architecture": c.architecture,
                "row": c.row,
                "notes": c.notes,
            }
            for c in cases
        ],
        "trained_runs": TRAINED,
        "setup_seconds": setup_seconds,
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
