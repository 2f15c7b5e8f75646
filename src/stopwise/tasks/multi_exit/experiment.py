"""The multi-exit jobs: per network (one per method, one per β for L2S) a training job and the
job that evaluates what it trained, and L2S's selection of β on validation (the runner runs each
per seed). A training job ``<name>-train`` trains a fresh backbone (same initial weights and
batch order for every method of a seed; L2S: and its exit policy) and keeps it in its
checkpoints. The evaluation job ``<name>`` loads it, fits the gain head (``gain_head``), chooses
its thresholds on validation and measures the test split once: the fixed exits, MSDNet's
budgeted curve of the confidence thresholds, the L2S policy's budget curve (with ``gain_head``,
the gain head's too), every curve point's own rule run for real through
``run_adaptive(mode=config.inference_mode)`` (its accuracy and mean cost checked against the
point's), and the wall-clock of early exit against the full network. Another ``budgets``,
``inference_mode`` or other evaluation key reruns the evaluations only (``reuse_from`` takes
the trained networks). The selection job ``l2s`` reads the L2S evaluations' records (and
uniform training's, β → ∞) and picks, per budget, the β whose curve is best on validation."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Any

import torch

from ...contract import (
    Job,
    JobContext,
    TrainedStopModel,
    files_digest,
    is_training_job,
    training_job,
)
from ...inference import exit_distribution, run_adaptive, stop_indices
from ...policies import ConfidencePolicy
from ...selection import (
    Heldout,
    budget_sweep,
    curve_budgets,
    fixed_depth_curve,
    floored_costs,
    point_rule,
)
from .config import L2S, MultiExitConfig
from .data import fashion_mnist_files, load_splits
from .l2w import allocate_meta
from .methods import (
    L2W_VARIANTS,
    build_model,
    build_weight_net,
    fit_gain,
    head_costs,
    train_method,
)
from .metrics import (
    accuracy_by_group,
    apply_thresholds,
    choose_on_validation,
    exit_hazards,
    exit_logits,
    exit_metric,
    msdnet_rule,
    msdnet_thresholds,
    time_early_exit,
    with_validation_accuracy,
)
from .models import ExitPolicy, MultiExitCNN, exit_losses, fastest_inference_copy

__all__ = [
    "jobs",
    "run_job",
    "stop_models",
    "data_params",
    "SELECT_L2S",
]

# What training a network reads, but the report's keys. The data folder (data_dir, else
# $STOPWISE_DATA, else the default) is not a key: a training job on IDX files carries their
# digest in its params (``data_params``), so a rerun into the same --out with other files is
# refused as changed settings, never served the jobs trained on the first files (nor, through
# their settings, the evaluations of those).
TRAIN_KEYS = (
    "dataset", "val_size", "test_size", "train_size", "split_seed", "mnist1d_noise",
    "mnist1d_per_level", "stem", "channels", "strides", "head_width", "epochs", "batch_size",
    "lr", "momentum", "weight_decay", "device",
)  # fmt: skip
# Not ``l2s.betas`` (a job's own β is in its params): adding a β trains no other network.
L2S_KEYS = tuple(f"l2s.{f.name}" for f in dataclasses.fields(L2S) if f.name != "betas")
METHOD_KEYS = {"sdn": ("sdn_weights",), "l2s": L2S_KEYS, **{m: ("l2w",) for m in L2W_VARIANTS}}
# What evaluating a trained network reads besides its training job's keys (which come with that
# job's settings in its own): the gain head fitted on every trained network, the budgets, how
# the rules run. Not ``timing.methods``: whether a job is timed is in its params ("timed"),
# with the timing keys in its keys, so timing a finished job (or no longer timing it) is a
# changed setting. (The timing keys alone did not say so: keys a job's settings gain at their
# defaults are taken as keys added to the task after the job ran.)
EVAL_KEYS = ("gain_head", "gain_updates", "gain_price", "budgets", "inference_mode", "eval_batch")
TIMING_KEYS = ("timing.batch", "timing.repeats")
COSTS = {"l2w": 4.0, "l2w-last": 4.0, "l2w-all": 4.0, "l2w-fo": 2.5}  # relative, for worker order
SELECT_L2S = "l2s-select"  # the method of the job that picks L2S's β on validation


def data_params(config: MultiExitConfig) -> dict[str, str]:
    """``{"data": "sha256:…"}``, a digest of the four IDX files the data is read from
    (Fashion-MNIST or a user's files, wherever they are: the same files at another path are the
    same setting, other files are not); ``{}`` for the generated data sets, whose jobs'
    settings stay as they were."""
    if config.dataset != "fashion-mnist":
        return {}
    return {"data": files_digest(fashion_mnist_files(config.data_dir))}


def jobs(config: MultiExitConfig) -> list[Job]:
    out = []
    data = data_params(config)
    for method in config.methods:
        if method == "l2s":
            networks = {f"l2s-b{b:g}": {"method": method, "beta": b} for b in config.l2s.betas}
        else:
            networks = {method: {"method": method}}
        timed = {"timed": True} if method in config.timing.methods else {}
        for name, params in networks.items():
            train, cost = training_job(name), COSTS.get(method, 1.0)
            train_keys = TRAIN_KEYS + METHOD_KEYS.get(method, ())
            out.append(Job(train, {**params, **data}, keys=train_keys, cost=cost))
            eval_keys = EVAL_KEYS + (TIMING_KEYS if timed else ())
            out.append(Job(name, {**params, **timed}, after=(train,), keys=eval_keys))
        if method == "l2s":
            after = (*networks, "uniform") if "uniform" in config.methods else tuple(networks)
            out.append(Job("l2s", {"method": SELECT_L2S}, after=after, keys=("budgets",), cost=0.0))
    return out


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    if is_training_job(job.name):
        return train(job, context)
    if job.params["method"] == SELECT_L2S:
        return select_beta(job, context)
    return evaluate(job, context)


def train(job: Job, context: JobContext) -> dict[str, Any]:
    """Train the job's network (its checkpoints keep it, L2S's policy and L2W's weight net) and
    record the updates, the training time and L2W's weight log."""
    config: MultiExitConfig = context.config
    splits = load_splits(config)
    context.manual_seed("init")
    model = build_model(config, splits)
    method = job.params["method"]
    trained = train_method(method, model, splits, config, context, job.params.get("beta"))
    record: dict[str, Any] = {
        "updates": trained.updates,
        "train_seconds": context.timings["train"],
        "train_cpu_seconds": context.cpu_timings["train"],  # the span of train_seconds
    }
    if trained.weight_log is not None:
        record["weight_log"] = trained.weight_log
    return record


def evaluate(job: Job, context: JobContext) -> dict[str, Any]:
    """Evaluate the network the job's training job trained; its record holds the training
    job's too."""
    config: MultiExitConfig = context.config
    (train_job,) = job.after
    splits = load_splits(config)
    model, policy = _trained_network(context, splits)
    costs = model.step_costs()
    test = Heldout((splits.test_x, splits.test_y))

    # The stop models and their cumulative costs per exit: confidence thresholds (the
    # network's MACs alone: a softmax), L2S's policy and the gain head (their own MACs added).
    stops = {"confidence": (ConfidencePolicy(), costs)}
    if policy is not None:
        stops["policy"] = (policy, head_costs(model, policy))
    if config.gain_head:
        with context.timed("gain-head"):
            head = fit_gain(model, splits, config, context)
        stops["gain"] = (head, head_costs(model, head))

    # Every choice on validation: MSDNet's per-exit thresholds for each p (the confidence
    # curve's points; the timed rules are those nearest each budget, a fraction of the full
    # MACs), and the learned stop models' budget curves below.
    val_logits = exit_logits(model, splits.val_x, config.eval_batch)
    val_correct = val_logits.argmax(-1) == splits.val_y.unsqueeze(1)
    val_scores = {name: exit_hazards(policy, val_logits) for name, (policy, _) in stops.items()}
    fitted = msdnet_thresholds(val_scores["confidence"], costs)
    timed_rules = {
        f"{b:g}": msdnet_rule(fitted, "val_mean_cost", b * float(costs[-1])) for b in config.budgets
    }

    # The test split, once: fixed exits, budget curves, the rules run for real.
    test_x, test_y = test.open()
    test_logits = exit_logits(model, test_x, config.eval_batch)
    correct = test_logits.argmax(-1) == test_y.unsqueeze(1)  # (N, K)
    metric, val_metric = exit_metric(correct), exit_metric(val_correct)
    test_scores = {name: exit_hazards(policy, test_logits) for name, (policy, _) in stops.items()}
    curves, adaptive = {}, {}
    for name, (policy, spent) in stops.items():
        if name == "confidence":
            curve = apply_thresholds(fitted, test_scores[name], metric, costs)
            decision_costs = None
        else:  # a stop head's own MACs per exit, skipped before a floor
            head = spent - costs
            decision_costs = torch.diff(head, prepend=head.new_zeros(1))
            # Budgets: the confidence curve's validation costs (a gain head's exit 1 costs more).
            budgets = [max(point["val_mean_cost"], float(spent[0])) for point in fitted]
            curve = budget_sweep(
                val_scores[name], test_scores[name], budgets, metric, costs=spent,
                val_metric=lambda i: val_metric(i)["accuracy"], lower_is_better=False,
                decision_costs=decision_costs,
            )  # fmt: skip
        # Each point's accuracy on validation, where its rule was fitted (for choosing β).
        curves[name] = with_validation_accuracy(curve, val_scores[name], val_correct)
        adaptive[name] = _run_for_real(
            model, policy, spent, decision_costs, curve, test_scores[name], (test_x, test_y), config
        )
    record: dict[str, Any] = {
        "data": {"dataset": splits.name, **splits.sizes(), **splits.info},
        **context.dependency(train_job).record,  # updates, training time, L2W's weight log
        "val_exit_accuracy": val_correct.double().mean(0),
        "step_costs": costs,
        "fixed_depth": fixed_depth_curve(
            len(test_y), metric, torch.ones(len(costs), dtype=torch.bool), costs
        ),
        "curves": curves,
        "adaptive": adaptive,
    }
    if splits.test_group is not None:  # MNIST-1D noise levels, at p = 1 (uniform exits)
        index = stop_indices(test_scores["confidence"], msdnet_rule(fitted, "p", 1.0))
        levels = splits.info["noise_levels"]
        record["test_groups"] = accuracy_by_group(index, correct, splits.test_group, levels)
    if job.params["method"] in L2W_VARIANTS:
        weight_net = build_weight_net(config, model.max_steps)
        weight_net.load_state_dict(context.checkpoint("train", job=train_job)["weight_net"])
        record["weights_final"] = _final_weights(weight_net, model, splits, config)
        record["weights_vs_loss"] = _weights_vs_loss(weight_net, model, splits, config)
    if job.params.get("timed"):
        record["timing"] = time_early_exit(
            model, test_x, timed_rules, config.timing.batch, config.timing.repeats
        )
    return record


@torch.no_grad()
def _run_for_real(
    model, policy, costs, decision_costs, curve, test_hazards, test, config
) -> list[dict[str, Any]]:
    """Per point of a budget ``curve``: its own rule (``selection.point_rule``: thresholds, a
    floor, a mix) run with ``run_adaptive`` on the ``test`` split ``(x, y)`` in the configured
    mode. Its accuracy and mean cost (cumulative ``costs`` per exit, less the
    ``decision_costs`` before the point's floor, which the rule skips, as the curve counts
    them), whether its exits equal those the vectorised evaluation picks from the test hazards,
    and whether its accuracy and mean cost equal the point's (``matches_curve``: the curve's
    numbers are the rule's)."""
    (test_x, test_y), out = test, []
    valid = torch.ones(len(costs), dtype=torch.bool)
    ran: dict[str, tuple] = {}  # larger budgets often keep a cheaper budget's rule: run it once
    for point in curve:
        rule = point_rule(point)
        key = json.dumps([point["score_threshold"], point.get("mix"), point.get("floor_steps")])
        if key not in ran:
            floor = point.get("floor_steps", 1) - 1  # MSDNet's points have no floor
            spent = floored_costs(costs, decision_costs, valid, floor)
            result = run_adaptive(
                model, policy, test_x, rule, config.inference_mode, None, spent, config.eval_batch
            )
            ran[key] = (
                float((result.predictions.argmax(-1) == test_y).double().mean()),
                float(result.cost.double().mean()),
                bool(torch.equal(result.stop_index, stop_indices(test_hazards, rule))),
            )
        accuracy, mean_cost, matches_dense = ran[key]
        out.append(
            {
                "budget": point.get("budget", point["val_mean_cost"]),
                "accuracy": accuracy,
                "mean_cost": mean_cost,
                "matches_dense": matches_dense,
                "matches_curve": abs(accuracy - point["accuracy"]) <= 1e-12
                and abs(mean_cost - point["mean_cost"]) <= 1e-9 * max(1.0, point["mean_cost"]),
            }
        )
    return out


def select_beta(job: Job, context: JobContext) -> dict[str, Any]:
    """L2S with β chosen on validation, per budget and per stop model (confidence thresholds,
    policy): the candidate whose validation curve is most accurate at the budget (interpolated
    along the validation costs), among the L2S jobs and, for confidence thresholds, uniform
    training (β → ∞). Its test accuracy at that budget is read off its test curve."""
    config: MultiExitConfig = context.config
    records = {name: context.dependency(name).record for name in job.after}
    budgets = [b * float(records[job.after[0]]["step_costs"][-1]) for b in config.budgets]
    betas = {name: context.dependency(name).params.get("beta")  # None: uniform, β → ∞
             for name in job.after}  # fmt: skip
    chosen: dict[str, Any] = {}
    for curve in ("confidence", "policy"):
        candidates = {n: r["curves"][curve] for n, r in records.items() if curve in r["curves"]}
        picks = choose_on_validation(candidates, budgets)
        chosen[curve] = [
            {"job": pick["choice"], "beta": betas.get(pick["choice"]), **pick} for pick in picks
        ]
    return {"budgets": config.budgets, "candidates": betas, "chosen": chosen}


def stop_models(config: MultiExitConfig) -> dict:
    """Every trained network with each of its stop rules: ``<job>/confidence`` (MSDNet's
    thresholds), ``<job>/policy`` (an L2S job's policy) and, with ``gain_head``,
    ``<job>/gain``, where ``<job>`` is the network's evaluation. (L2S's β chosen per budget is a
    different network at each budget.)"""
    out = {}
    for job in jobs(config):
        method = job.params["method"]
        if is_training_job(job.name) or method == SELECT_L2S:
            continue
        kinds = ["confidence", *(["policy"] if method == "l2s" else [])]
        for kind in kinds + (["gain"] if config.gain_head else []):
            out[f"{job.name}/{kind}"] = (job.name, partial(_trained, kind))
    return out


def _trained_network(context: JobContext, splits) -> tuple[MultiExitCNN, ExitPolicy | None]:
    """The network the evaluation job ``context.job``'s training job trained, in eval mode, and
    L2S's exit policy (None for another method), from that job's checkpoints."""
    config: MultiExitConfig = context.config
    (train_job,) = context.job.after
    l2s = context.job.params["method"] == "l2s"
    model = build_model(config, splits)
    model.load_state_dict(context.checkpoint("stage1" if l2s else "train", job=train_job)["model"])
    if not l2s:
        return model.eval(), None
    policy = ExitPolicy(model.max_steps, tuple(config.l2s.policy_hidden))
    policy.load_state_dict(context.checkpoint("stage2", job=train_job)["policy"])
    return model.eval(), policy.eval()


def _trained(kind: str, context: JobContext, record: dict[str, Any]) -> TrainedStopModel:
    config: MultiExitConfig = context.config
    splits = load_splits(config)
    model, policy = _trained_network(context, splits)
    if kind == "confidence":
        policy = ConfidencePolicy()
    elif kind == "gain":  # fit_gain's head, fitted by the evaluation job
        policy = ExitPolicy(model.max_steps)
        policy.load_state_dict(context.checkpoint("gain-head")["policy"])
    return TrainedStopModel(
        f"{context.job.name}/{kind}",
        model,
        policy,
        curve_budgets(record["curves"][kind]),
        cost="multiply-adds per row (network, exit heads and the stop head)",
        inputs=f"{splits.name} input, as the run's splits hold it",
        test_inputs=lambda: [splits.test_x],
        # The copy that runs fastest on this CPU, timed on the first 1,000 test rows.
        fast_copy=lambda net: fastest_inference_copy(net, splits.test_x[:1000]),
    )


QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]


@torch.no_grad()
def _final_weights(weight_net, model, splits, config) -> dict[str, Any]:
    """The weights L2W ends with, on every training row (eval mode): their range and
    quantiles, per exit, and the mean weight per exit for the training rows grouped by the exit
    they would take under the meta allocation (q ∝ p^k over the training set)."""
    logits = exit_logits(model, splits.train_x, config.eval_batch)
    weights = weight_net(exit_losses(logits, splits.train_y))
    K = weights.shape[1]
    groups = allocate_meta(torch.softmax(logits, -1).amax(-1), exit_distribution(config.l2w.p, K))
    levels = torch.tensor(QUANTILES, dtype=weights.dtype)
    return {
        "min": float(weights.min()),
        "max": float(weights.max()),
        "quantile_levels": QUANTILES,
        "quantiles": torch.quantile(weights.flatten(), levels),
        "per_exit_quantiles": torch.quantile(weights, levels, dim=0).T,
        "per_exit_mean": weights.mean(0),
        "mean_by_allocated_exit": [
            weights[groups == g].mean(0) if bool((groups == g).any()) else None for g in range(K)
        ],
        "rows_by_allocated_exit": torch.bincount(groups, minlength=K),
    }


@torch.no_grad()
def _weights_vs_loss(weight_net, model, splits, config, rows: int = 1000) -> dict[str, Any]:
    """Learned weights and exit losses of the first ``rows`` training samples (eval mode)."""
    x, y = splits.train_x[:rows], splits.train_y[:rows]
    losses = exit_losses(exit_logits(model, x, config.eval_batch), y)
    return {"losses": losses.T, "weights": weight_net(losses).T}
