"""The few-shot jobs, per seed. Each method meta-trains in one job and is measured in another
that loads its checkpoints, so that changing only what evaluation reads (:data:`EVALUATION`:
validation and test tasks, budget points, timing, ``inference_mode``) measures again without
meta-training again:

* ``maml-T{T}-train`` for each T of ``maml_steps``: MAML meta-trained at T inner steps.
* ``maml-T{T}``: on validation tasks it chooses its best depth (the same learner adapted for
  t ≤ T steps) and the tolerance of the hand-made stop (support loss ≤ τ); then the test tasks
  are measured once: every depth, the hand-made stop run for real, the oracle stop.
* ``maml-stop-train``: MAML-stop meta-trained jointly with its policy; with ``gain_head``, a gain
  head then fitted on its frozen learner.
* ``maml-stop``: a hazard threshold calibrated on validation tasks, then on the test tasks the
  stop run for real (``run_adaptive``, so a task that stops at step 3 costs 3 updates), the
  official 0.5 rule, the budget curve beside the same learner at each fixed depth, the oracle
  stop, and wall-clock against full depth.
* ``compare``: picks the best fixed-T MAML on validation (over the MAML jobs and their depths)
  and measures MAML-stop against it, paired over the same test tasks.

Every method of a seed meta-trains on the same task stream from the same initial learner, and is
measured on the same validation and test tasks (named streams: the same in every job).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ...contract import Job, JobContext, TrainedStopModel, is_training_job, training_job
from ...inference import HazardThreshold, run_adaptive, stop_indices, time_adaptive
from ...macs import count_macs
from ...selection import (
    Heldout,
    budget_grid,
    budget_sweep,
    calibrate_by_metric,
    curve_budgets,
    fixed_depth_curve,
)
from ...training import EpochBatches, fit_gain_head
from .config import FewShotConfig
from .data import TaskSet, glyph_splits, omniglot_digest, omniglot_splits
from .methods import build_models, meta_train, task_sampler, training_stage
from .metrics import (
    at_steps,
    by_shots,
    inf_if_not_finite,
    interval,
    paired_over_tasks,
    quality,
    step_macs,
    stop_step_correlation,
    trajectory,
)
from .models import AdaptedLearner, SetPolicy, SupportLossStop, summary_dim

__all__ = ["jobs", "run_job", "stop_models", "metric_name", "load_splits"]

# What meta-training reads. Validation tasks are not among them: nothing is chosen on them
# during meta-training (no early stopping), only afterwards.
TRAINING = (
    "family", "ways", "shots", "query", "inner_lr", "width", "hidden", "train", "glyphs", "vmap",
    "device",
)  # fmt: skip
# Keys that only MAML-stop's training reads; MAML jobs ignore them (changing them does not retrain
# MAML).
STOP_ONLY = (
    "steps", "beta", "policy_width", "policy_hidden",
    "gain_head", "gain_tasks", "gain_updates", "gain_price",
)  # fmt: skip
# What only the evaluation jobs read (they read the training keys too, through their training
# job's settings): changing these measures every method again without meta-training it again.
EVALUATION = (
    "val_tasks", "test_tasks", "eval_chunk", "curve_points", "timing_tasks", "timing_repeats",
    "inference_mode",
)  # fmt: skip


def jobs(config: FewShotConfig) -> list[Job]:
    # data_dir says where a user's Omniglot images are, not what they are (a LOCATION_KEY): the
    # method jobs carry their digest, so other or changed images are refused as changed
    # settings while the same images at another path are the same.
    data = {"data": omniglot_digest(config.data_dir)} if config.data_dir else {}
    methods = {
        training_stage("maml", T): ({"method": "maml", "steps": T}, TRAINING)
        for T in config.maml_steps
    }
    gain = ("eval_chunk",) if config.gain_head else ()  # fit_gain's trajectories run in chunks
    methods["maml-stop"] = (
        {"method": "maml-stop", "steps": config.steps},
        TRAINING + STOP_ONLY + gain,
    )
    out = []
    for name, (params, keys) in methods.items():
        params = {**params, **data}
        out += [
            Job(training_job(name), params=params, keys=keys, cost=params["steps"]),
            Job(name, params=params, after=(training_job(name),), keys=EVALUATION),
        ]
    return [*out, Job("compare", after=tuple(methods), keys=("family",))]


def metric_name(config: FewShotConfig) -> str:
    return "mse" if config.family == "sinusoid" else "accuracy"


def load_splits(config: FewShotConfig, log=None) -> list[Any]:
    """Train, validation and test class splits (None for sinusoids)."""
    if config.family == "sinusoid":
        return [None, None, None]
    g = config.glyphs
    if config.data_dir:
        return omniglot_splits(
            config.data_dir,
            tuple(g.characters),
            g.split_seed,
            g.size,
            g.rotations,
            g.cache_dir,
            log,
        )
    return glyph_splits(g.renderer_settings(), g.cache_dir, log)


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    if job.name == "compare":
        return compare(context)
    if is_training_job(job.name):
        return train(job, context)
    return evaluate(job, context)


def train(job: Job, context: JobContext) -> dict[str, Any]:
    """Meta-train the job's method and, for MAML-stop with ``gain_head``, fit its gain head. Its
    result is its checkpoints (stages :func:`training_stage` and ``gain-head``), which its
    evaluation job loads: the record is empty."""
    config: FewShotConfig = context.config
    method, steps = job.params["method"], job.params["steps"]
    split = load_splits(config, context.log)[0]
    learner, policy = meta_train(config, context, split, method, steps)
    if policy is not None and config.gain_head:
        fit_gain(
            config, context, AdaptedLearner(learner, config.inner_lr, steps, config.vmap), split
        )
    return {}


def evaluate(job: Job, context: JobContext) -> dict[str, Any]:
    """The job's method as its training job left it, chosen on validation and measured on test
    (:func:`measure`)."""
    config: FewShotConfig = context.config
    _, val_split, test_split = load_splits(config, context.log)
    model, policy, gain = trained_models(context, job.name, job.params)
    val_tasks = task_sampler(config, val_split)(config.val_tasks, context.generator("val-tasks"))
    test_tasks = Heldout(
        task_sampler(config, test_split)(config.test_tasks, context.generator("test-tasks"))
    )
    return measure(config, context, model, policy, val_tasks, test_tasks, gain)


def trained_models(
    context: JobContext, name: str, params: dict[str, Any]
) -> tuple[AdaptedLearner, SetPolicy | None, SetPolicy | None]:
    """Method ``name``'s learner (adapting for its steps), policy and gain head (None where it
    has none) from the checkpoints of its training job, in eval mode."""
    config: FewShotConfig = context.config
    method, steps = params["method"], params["steps"]
    learner, policy = build_models(config, with_policy=method == "maml-stop")
    saved = context.checkpoint(training_stage(method, steps), job=training_job(name))
    learner.load_state_dict(saved["learner"])
    gain = None
    if policy is not None:
        policy.load_state_dict(saved["policy"])
        policy.eval()
        if config.gain_head:
            gain = gain_head(config, learner)
            gain.load_state_dict(context.checkpoint("gain-head", job=training_job(name))["policy"])
            gain.eval()
    learner.eval()
    return AdaptedLearner(learner, config.inner_lr, steps, config.vmap), policy, gain


def gain_head(config: FewShotConfig, learner) -> SetPolicy:
    """A fresh gain head for MAML-stop's ``learner``: the policy's architecture."""
    return SetPolicy(learner.feature_dim, config.steps, config.policy_width, config.policy_hidden)


def fit_gain(config: FewShotConfig, context: JobContext, model: AdaptedLearner, split) -> SetPolicy:
    """A stop head for budgets on the frozen learner (:func:`stopwise.fit_gain_head`), fitted on
    the trajectories of ``gain_tasks`` fresh training tasks (their query losses, as the oracle
    uses them; a diverged task's infinite loss counts as 10⁶)."""
    sample = task_sampler(config, split)
    pool_tasks = sample(config.gain_tasks, context.generator("gain-pool-tasks"))
    with context.timed("gain-trajectories"):
        pool = trajectory(model, None, pool_tasks, config.eval_chunk, with_features=True)
    losses = torch.nan_to_num(pool["query_loss"], posinf=1e6).float()
    context.manual_seed("gain-head-init")
    head = gain_head(config, model.learner)
    rows = torch.arange(len(pool_tasks))
    batches = EpochBatches((rows,), min(32, len(rows)), context.stream_seed("gain-head-batches"))
    with context.timed("gain-head"):
        fit_gain_head(
            head,
            pool["features"],
            losses,
            lambda step: batches(step)[0],
            torch.optim.Adam(head.parameters(), lr=1e-3),
            config.gain_updates,
            price=config.gain_price,
            settings=context.loop_settings(max(1, config.gain_updates // 10)),
            stage="gain-head",
        )
    return head.eval()


def measure(
    config: FewShotConfig,
    context: JobContext,
    model: AdaptedLearner,
    policy,
    val_tasks: TaskSet,
    heldout: Heldout,
    gain: SetPolicy | None = None,
) -> dict[str, Any]:
    """Choose on validation (best depth, hand-made tolerance, policy threshold), then measure
    the test tasks once (with ``gain``, also the gain head's budget curve)."""
    name = metric_name(config)
    lower = name == "mse"
    scale = 1.0 if lower else 100.0  # accuracy in points
    T = model.max_steps
    valid = torch.ones(T, dtype=torch.bool)
    budgets = budget_grid(valid, config.curve_points)
    hand = SupportLossStop(model.learner.feature_dim)

    with context.timed("validation"):
        val = trajectory(model, policy, val_tasks, config.eval_chunk, gain)
    val_by_depth = val["quality"].mean(0)
    best_depth = int((val_by_depth if lower else -val_by_depth).argmin())  # ties: fewest steps

    def val_metric(values):
        return lambda index: float(at_steps(values, index).mean())

    hand_choice = calibrate_by_metric(
        val["hand_score"], val_metric(val["quality"]), budgets, lower_is_better=lower
    )
    stop_choice = (
        calibrate_by_metric(
            val["hazard"], val_metric(val["quality"]), budgets, lower_is_better=lower
        )
        if policy is not None
        else None
    )

    test_tasks = heldout.open()
    with context.timed("test"):
        test = trajectory(model, policy, test_tasks, config.eval_chunk, gain)

    def test_metric(index: torch.Tensor) -> dict[str, float]:
        return {name: scale * float(at_steps(test["quality"], index).mean())}

    shots = test_tasks.shots
    N = len(test_tasks)

    def fixed(depth: int) -> dict[str, Any]:
        values = test["quality"][:, depth]
        return {"depth": depth + 1, **_summary(values, scale), "per_task": values.tolist()}

    oracle_index = test["query_loss"].argmin(1)
    record: dict[str, Any] = {
        "metric": name,
        "steps": T,
        "val": {
            "by_depth": (scale * val_by_depth).tolist(),
            "best_depth": best_depth + 1,
            "best_value": scale * float(val_by_depth[best_depth]),
            "hand": hand_choice.plain(),
        },
        "test": {
            "shots": shots.tolist(),
            "by_depth": (scale * test["quality"].mean(0)).tolist(),
            "fixed_best": fixed(best_depth),
            "fixed_full": fixed(T - 1),
            "oracle": {
                **_stopped(test["quality"], oracle_index, scale),
                "spearman_steps_shots": stop_step_correlation(oracle_index + 1, shots),
            },
            "query_loss_by_shots": [
                {
                    "shots": int(k),
                    "query_loss": test["query_loss"][shots == k].mean(0).tolist(),
                }
                for k in shots.unique().tolist()
            ],
        },
        "fixed_depth": fixed_depth_curve(N, test_metric, valid),
    }

    # The learner's own stop runs for real; the other rules are applied to the dense trajectory
    # (the same stops and predictions: every real run checks that equality).
    def curve(score: str) -> list[dict[str, Any]]:
        """A budget curve of floored thresholds on ``score``, chosen on validation quality."""
        return budget_sweep(
            val[score], test[score], budgets, test_metric,
            val_metric=val_metric(val["quality"]), lower_is_better=lower,
        )  # fmt: skip

    record["hand_curve"] = curve("hand_score")
    if policy is None:
        stopper, rule, scores, key = hand, hand_choice.rule, test["hand_score"], "hand_stop"
    else:
        stopper, rule, scores, key = policy, stop_choice.rule, test["hazard"], "stop"
        record["val"]["stop"] = stop_choice.plain()
        record["test"]["hand_stop"] = _stopped(
            test["quality"], stop_indices(test["hand_score"], hand_choice.rule), scale
        )
        record["test"]["stop_official"] = _stopped(
            test["quality"], stop_indices(test["hazard"], HazardThreshold(0.5)), scale
        )
        record["stop_curve"] = curve("hazard")
    if gain is not None:
        record["gain_curve"] = curve("gain")
    with context.timed("adaptive"):
        record["test"][key] = run_stop(
            config, model, stopper, test_tasks, rule, scores, test, scale
        )
    record["test"]["by_shots"] = _by_shots(record["test"], shots)
    record["macs"] = task_step_macs(model.learner, policy, test_tasks)
    with context.timed("timing"):
        timed = test_tasks.select(slice(0, min(config.timing_tasks, N)))
        record["timing"] = time_adaptive(
            model,
            stopper,
            timed.inputs(),
            {key: rule},
            repeats=config.timing_repeats,
            chunk=config.eval_chunk,
        )
    return record


def stop_models(config: FewShotConfig) -> dict:
    """MAML-stop's learner with its policy and, with ``gain_head``, with its gain head."""
    names = ["maml-stop", *(["maml-stop/gain"] if config.gain_head else [])]
    return {name: ("maml-stop", partial(_trained, name)) for name in names}


def _trained(name: str, context: JobContext, record: dict[str, Any]) -> TrainedStopModel:
    config: FewShotConfig = context.config
    model, policy, gain = trained_models(context, "maml-stop", context.params)
    if name != "maml-stop":  # fit_gain's head
        policy = gain

    def test_inputs():
        test_split = load_splits(config)[2]
        sample = task_sampler(config, test_split)
        return [sample(config.test_tasks, context.generator("test-tasks")).inputs()]

    return TrainedStopModel(
        name,
        model,
        policy,
        curve_budgets(record["stop_curve" if name == "maml-stop" else "gain_curve"]),
        cost="inner updates",
        inputs="a task (support and query sets), TaskSet.inputs()",
        test_inputs=test_inputs,
    )


def task_step_macs(learner, policy, tasks: TaskSet) -> dict[str, Any]:
    """Multiply-adds of one inner step per task (:func:`step_macs`: it grows with the task's
    support size, so with its K), averaged over ``tasks``, and of the policy per task-step.

    ``policy_over_step`` is the policy's share of the mean inner step (of the inner-step compute
    of these tasks); ``policy_over_step_worst`` its share of the cheapest task's step, at the
    smallest support (``worst_shots``): the most a decision adds to one step."""
    costs: dict[int, float] = {}  # by support size: the query size is one for every task
    per_task, shots = [], []
    for i in range(len(tasks)):
        n = int(tasks.support_n[i])
        if n not in costs:
            support_x, _, query_x, _ = tasks.task(i)
            costs[n] = step_macs(learner, support_x, query_x)
        per_task.append(costs[n])
        shots.append(int(tasks.shots[i]))
    step = sum(per_task) / len(per_task)
    cheapest = min(range(len(per_task)), key=per_task.__getitem__)
    features = torch.zeros(1, summary_dim(learner.feature_dim))
    policy_macs = count_macs(policy, features, 0) if policy is not None else 0
    return {
        "step_per_task": step,
        "step_per_task_min": per_task[cheapest],
        "step_per_task_max": max(per_task),
        "worst_shots": shots[cheapest],
        "policy_per_task_step": policy_macs,
        "policy_over_step": policy_macs / step,
        "policy_over_step_worst": policy_macs / per_task[cheapest],
    }


def _summary(values: torch.Tensor, scale: float) -> dict[str, Any]:
    out = interval(values, scale)
    return {"mean": out["mean"], "lo": out["lo"], "hi": out["hi"]}


def _stopped(values: torch.Tensor, index: torch.Tensor, scale: float) -> dict[str, Any]:
    chosen = at_steps(values, index)
    steps = index + 1
    return {
        **_summary(chosen, scale),
        "mean_steps": float(steps.double().mean()),
        "per_task": chosen.tolist(),
        "steps_per_task": steps.tolist(),
    }


def run_stop(config, model, policy, tasks: TaskSet, rule, scores, test, scale) -> dict[str, Any]:
    """Adapt the test tasks for real with ``policy`` and ``rule`` (``config.inference_mode``,
    in chunks): each task runs only the updates up to its stop. Checks the stops against the
    same rule applied to the dense trajectory's scores."""
    values, steps = [], []
    for start in range(0, len(tasks), config.eval_chunk):
        part = tasks.select(slice(start, start + config.eval_chunk))
        with torch.no_grad():
            result = run_adaptive(model, policy, part.inputs(), rule, mode=config.inference_mode)
        values.append(inf_if_not_finite(quality(result.predictions, part.query_y)))
        steps.append(result.stop_index)
    value, index = torch.cat(values), torch.cat(steps)
    dense = stop_indices(scores, rule)
    out = {
        **_summary(value, scale),
        "mean_steps": float((index + 1).double().mean()),
        "per_task": value.tolist(),
        "steps_per_task": (index + 1).tolist(),
    }
    out["matches_dense"] = bool(torch.equal(index, dense)) and bool(
        torch.allclose(value, at_steps(test["quality"], dense))
    )
    out["spearman_steps_shots"] = stop_step_correlation(index + 1, tasks.shots)
    return out


def _by_shots(test: dict[str, Any], shots: torch.Tensor) -> list[dict[str, Any]]:
    columns = {}
    for key in ("fixed_best", "fixed_full", "hand_stop", "stop", "stop_official", "oracle"):
        if key in test:
            columns[key] = torch.tensor(test[key]["per_task"])
            if "steps_per_task" in test[key]:
                columns[f"{key}_steps"] = torch.tensor(test[key]["steps_per_task"]).double()
    return by_shots(shots, **columns)


def compare(context: JobContext) -> dict[str, Any]:
    """The best fixed-T MAML chosen on validation (over the MAML jobs and their depths), and
    MAML-stop (calibrated threshold) against it on the same test tasks."""
    config: FewShotConfig = context.config
    lower = metric_name(config) == "mse"
    mamls = [name for name in context.job.after if name.startswith("maml-T")]  # see jobs()
    candidates = {name: context.dependency(name).record for name in mamls}
    key = min if lower else max
    best_job = key(candidates, key=lambda j: candidates[j]["val"]["best_value"])
    best = candidates[best_job]["test"]["fixed_best"]
    stop = context.dependency("maml-stop").record["test"]["stop"]
    a, b = torch.tensor(stop["per_task"]), torch.tensor(best["per_task"])
    out = {
        "best_maml": {
            "job": best_job,
            "depth": best["depth"],
            "val_value": candidates[best_job]["val"]["best_value"],
            "test_value": best["mean"],
        },
        "stop_value": stop["mean"],
        "stop_mean_steps": stop["mean_steps"],
        "stop_minus_best": paired_over_tasks(a, b, 1.0 if lower else 100.0),
    }
    if lower:
        out["mse_ratio"] = stop["mean"] / best["mean"]
    return out
