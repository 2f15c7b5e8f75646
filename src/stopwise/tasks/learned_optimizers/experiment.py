"""The learned-optimizers jobs, per seed and family F:

* ``hand-F``: the hand-designed optimizers' learning rates tuned on validation functions per
  horizon, then their test curves (and, for the MLP, the generalisation variants);
* ``lstm-F``: the LSTM optimizer meta-trained, then its test curve inside and beyond the horizon;
* ``rules-F`` (stop families): the hand-designed stop rules (gradient norm, loss improvement) on
  each tuned optimizer, tolerances chosen on validation;
* ``act-F`` (stop families): the ACT optimizer meta-trained on the random-horizon bound, its
  causal stop rule against the non-causal posterior, run for real;
* ``l2s-F`` (stop families): L2S stage II on the trained LSTM optimizer, run for real;
* ``depth-F`` (stop families, when ``trained_depths`` is set): an LSTM optimizer meta-trained
  for each of those fixed depths, the budget curves' trained-for-that-depth reference.

Every job of a seed draws the same validation and test functions (named streams
``F-validation`` and ``F-test``); the test functions are opened once per job, after every
choice was made on validation.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch

from ...contract import Job, JobContext, TrainedStopModel
from ...inference import ScoreThreshold, run_adaptive, stop_indices, time_adaptive
from ...selection import Heldout, curve_budgets
from ...steps import state_batch_size
from .config import LearnedOptimizersConfig
from .data import MLPFamily, QuadraticFamily, RegressionFamily, load_images, suboptimality
from .methods import (
    fit_l2s_policy,
    loss_curves,
    meta_train,
    meta_train_act,
    meta_train_restarts,
    step_penalised,
    trained_weights,
    tune_learning_rates,
)
from .metrics import (
    StopData,
    StopEvaluation,
    evaluate_stop,
    log10_gap,
    oracle_tradeoff,
    rescored,
    stop_data,
    summary,
)
from .models import (
    CausalHaltingScore,
    FeatureScore,
    HandDesigned,
    L2SPolicy,
    LSTMOptimizerNet,
    OptimizerRun,
    lstm_step_macs,
)

__all__ = [
    "jobs",
    "run_job",
    "stop_models",
    "make_family",
    "build_net",
    "evaluation_steps",
    "variant_steps",
]

_SHARED = ("horizon", "validation_functions", "test_functions", "report_steps", "beyond")
_STOP = ("step_costs", "curve_points", "nll_tolerance", "inference_mode", "device")
_NET = ("unroll", "hidden", "layers")


def jobs(config: LearnedOptimizersConfig) -> list[Job]:
    out = []
    for family in config.families:
        params = {"family": family}
        hand = ("optimizers", "learning_rates")
        out.append(Job(f"hand-{family}", params, keys=(*_SHARED, *hand, family)))
        out.append(Job(f"lstm-{family}", params, keys=(*_SHARED, *_NET, family), cost=5.0))
        if family in config.stop_families:
            after = (f"hand-{family}", f"lstm-{family}")
            tolerances = ("grad_norm_tolerances", "improvement_tolerances")
            out.append(
                Job(f"rules-{family}", params, after, keys=(*_SHARED, *_STOP, *tolerances, family))
            )
            out.append(
                Job(
                    f"act-{family}",
                    params,
                    (f"lstm-{family}",),
                    keys=(*_SHARED, *_STOP, *_NET, family, "act"),
                    cost=6.0,
                )
            )
            out.append(
                Job(
                    f"l2s-{family}",
                    params,
                    (f"lstm-{family}",),
                    keys=(*_SHARED, *_STOP, *_NET, family, "l2s"),
                )
            )
            if config.trained_depths:
                keys = (*_SHARED, *_NET, family, "trained_depths")
                out.append(Job(f"depth-{family}", params, keys=keys, cost=2.0))
    return out


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    config: LearnedOptimizersConfig = context.config
    kind, family = job.name.split("-", 1)
    run = {"hand": _hand, "lstm": _lstm, "rules": _rules, "act": _act, "l2s": _l2s,
           "depth": _depth}[kind]  # fmt: skip
    return run(config, family, context)


# ---------------------------------------------------------------- building blocks


def make_family(config: LearnedOptimizersConfig, name: str, context: JobContext, variant=""):
    """The family ``name`` (for the MLP: the base network or one generalisation variant)."""
    if name == "regression":
        s = config.regression
        return RegressionFamily(
            s.obs_min,
            s.obs_max,
            s.scale_min,
            s.scale_max,
            s.noise_precision_min,
            s.noise_precision_max,
            s.prior_precision,
        )
    if name == "quadratic":
        return QuadraticFamily(config.quadratic.dim)
    s = config.mlp
    images = load_images(s.dataset, s.train_size, seed=context.stream_seed("mlp-images"))
    hidden, activation, steps = (s.hidden,), "sigmoid", config.horizon
    if variant == "steps200":
        steps = 2 * config.horizon
    elif variant == "hidden40":
        hidden = (2 * s.hidden,)
    elif variant == "layers2":
        hidden = (s.hidden, s.hidden)
    elif variant == "relu":
        activation = "relu"
    return MLPFamily(images, hidden, activation, s.batch, steps)


def variant_steps(config: LearnedOptimizersConfig, variant: str) -> int:
    return 2 * config.horizon if variant == "steps200" else config.horizon


def build_net(config: LearnedOptimizersConfig, name: str, halting: bool = False):
    settings = getattr(config, name)
    prior = {"prior_p": config.act.prior_p} if halting else {}  # only the ACT jobs read `act`
    return LSTMOptimizerNet(
        config.hidden,
        config.layers,
        settings.preprocess or None,
        settings.output_scale,
        halting=halting,
        update=settings.update,
        **prior,
    )


def evaluation_steps(config: LearnedOptimizersConfig, name: str) -> list[int]:
    """Step counts whose test losses are recorded: every step to the horizon, then a few
    beyond it (regression and quadratics)."""
    steps = set(range(1, config.horizon + 1))
    if name != "mlp":
        last = max([config.horizon, *config.beyond])
        steps |= {s for s in _log_spaced(config.horizon, last)} | set(config.beyond)
    return sorted(steps)


def _log_spaced(first: int, last: int, points: int = 30) -> list[int]:
    if last <= first:
        return []
    ratio = (last / first) ** (1 / points)
    return sorted({min(last, round(first * ratio**k)) for k in range(1, points + 1)})


def _splits(config, name, family, context):
    """Validation functions and the held-out test functions of a family."""
    size = config.mlp.validation_functions if name == "mlp" else config.validation_functions
    tests = config.mlp.test_functions if name == "mlp" else config.test_functions
    val = family.sample(size, context.generator(f"{name}-validation"))
    test = Heldout(family.sample(tests, context.generator(f"{name}-test")))
    return val, test


def _curve(values: torch.Tensor, steps: list[int]) -> dict[str, Any]:
    """Mean and normal 95% interval over functions of ``values (n, len(steps))``."""
    rows = [summary(values[:, i]) for i in range(values.shape[1])]
    return {
        "steps": steps,
        "mean": [r["mean"] for r in rows],
        "lo": [r["lo"] for r in rows],
        "hi": [r["hi"] for r in rows],
        "n": rows[0]["n"],
    }


def _score_gap(gaps, functions):
    return log10_gap(gaps)


def _horizons(config, name) -> list[int]:
    if name == "mlp":
        return [config.horizon]
    return sorted({*config.report_steps, config.horizon, *config.beyond})


def _mlp_variants(config) -> list[str]:
    return ["", *config.mlp.variants]


# ---------------------------------------------------------------- hand-designed optimizers


def _hand(config, name, context) -> dict[str, Any]:
    if name == "mlp":
        return _hand_mlp(config, context)
    family = make_family(config, name, context)
    val, test = _splits(config, name, family, context)
    horizons = _horizons(config, name)
    with context.timed("tune"):
        tuning = tune_learning_rates(
            family,
            config.optimizers,
            config.learning_rates,
            val,
            horizons,
            _score_gap,
            measure=suboptimality,
        )
    test_functions = test.open()
    steps = evaluation_steps(config, name)
    results: dict[str, Any] = {"tuning": tuning, "test": {}, "curves": {}}
    for kind in config.optimizers:
        rates = tuning[kind]["lr"]
        gaps, _ = loss_curves(
            family,
            HandDesigned(kind, rates[config.horizon]),
            test_functions,
            steps,
            measure=suboptimality,
        )
        results["curves"][kind] = _curve(log10_gap(gaps), steps)
        results["test"][kind] = {}
        for H in horizons:
            stepper = HandDesigned(kind, rates[H])
            gaps, _ = loss_curves(family, stepper, test_functions, [H], measure=suboptimality)
            results["test"][kind][str(H)] = summary(log10_gap(gaps)[:, 0])
    return results


def _hand_mlp(config, context) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for variant in _mlp_variants(config):
        family = make_family(config, "mlp", context, variant)
        H = variant_steps(config, variant)
        val, test = _splits(config, "mlp", family, context)
        with context.timed("tune"):
            tuning = tune_learning_rates(
                family, config.optimizers, config.learning_rates, val, [H], _score_gap
            )
        test_functions = test.open()
        row: dict[str, Any] = {"tuning": tuning, "horizon": H, "test": {}}
        for kind in config.optimizers:
            stepper = HandDesigned(kind, tuning[kind]["lr"][H])
            row["test"][kind] = _mlp_numbers(family, stepper, test_functions, H, curve=not variant)
        results[variant or "base"] = row
    return results


def _mlp_numbers(family, stepper, functions, horizon, curve) -> dict[str, Any]:
    steps = list(range(1, horizon + 1)) if curve else [horizon]
    losses, theta = loss_curves(family, stepper, functions, steps)
    out = {
        "log10_loss": summary(log10_gap(losses[:, -1])),
        "loss": summary(losses[:, -1]),
        "accuracy": summary(family.accuracy(theta)),
    }
    if curve:
        out["curve"] = _curve(log10_gap(losses), steps)
    return out


# ---------------------------------------------------------------- the LSTM optimizer


def _train_lstm(config, name, context, family, val, horizon=None, stage="lstm"):
    """Meta-train the family's LSTM optimizer for ``horizon`` steps (default: the config's),
    in windows of min(unroll, horizon); same initial weights and meta-training functions for
    every horizon. Every ``select_every`` meta-iterations it is scored on the validation
    functions (:func:`validation_score`) and the best weights are kept. With ``restarts`` > 1
    the whole meta-training is repeated from other initial weights and function streams, the
    restarts side by side in one stage (``<stage>-restarts``, :func:`meta_train_restarts`), and
    the restart with the best validation score is returned; its index is ``metrics["restart"]``."""
    horizon = horizon or config.horizon
    settings = getattr(config, name)
    nets, seeds = [], []
    for restart in range(settings.restarts):
        suffix = _restart_suffix(restart)
        context.manual_seed(f"init{suffix}")
        nets.append(build_net(config, name))
        seeds.append(context.stream_seed(f"{name}-meta{suffix}"))
    schedule = dict(
        horizon=horizon,
        unroll=min(config.unroll, horizon),
        functions=settings.functions,
        lr=settings.lr,
        settings=context.loop_settings(log_every=max(1, settings.iterations // 20)),
        validate_every=settings.select_every,
    )
    with context.timed(f"meta_train_{stage}"):
        if settings.restarts == 1:
            net = nets[0]
            metrics = meta_train(net, family, settings.iterations, seed=seeds[0], stage=stage,
                                 validate=lambda: validation_score(family, net, val, horizon),
                                 **schedule)  # fmt: skip
            return net, metrics
        runs = meta_train_restarts(nets, family, settings.iterations, seeds=seeds,
                                   validate=lambda net: validation_score(family, net, val, horizon),
                                   stage=f"{stage}-restarts", **schedule)  # fmt: skip
    scores = [  # without selection during meta-training: the last weights' score
        validation_score(family, net, val, horizon)
        if metrics.get("selected_score") is None
        else metrics["selected_score"]
        for net, metrics in zip(nets, runs, strict=True)
    ]
    restart = max(range(len(nets)), key=lambda r: scores[r])  # ties: the first
    return nets[restart], {**runs[restart], "restart": restart, "restart_scores": scores,
                           "restarts_stage": f"{stage}-restarts"}  # fmt: skip


def _restart_suffix(restart: int) -> str:
    """Stage and stream suffix of a meta-training restart (the first has none, so a run with
    one restart is the run without restarts)."""
    return "" if restart == 0 else f"-r{restart}"


@torch.no_grad()
def validation_score(family, net, functions, horizon: int) -> float:
    """What meta-training keeps the best of: minus the mean over the ``horizon`` steps and the
    validation ``functions`` of log10 suboptimality (the measure the runs report), or of the
    loss where the family has no known optimum (the MLP)."""
    steps = list(range(1, horizon + 1))
    if hasattr(family, "optimum"):
        gaps, _ = loss_curves(family, net, functions, steps, measure=suboptimality)
        return -float(log10_gap(gaps).mean())
    losses, _ = loss_curves(family, net, functions, steps)
    return -float(losses.mean())


def _lstm(config, name, context) -> dict[str, Any]:
    family = make_family(config, name, context)
    val, test = _splits(config, name, family, context)
    net, metrics = _train_lstm(config, name, context, family, val)
    if name == "mlp":
        return {"meta": metrics, **_lstm_mlp(config, net, context)}
    val_losses, _ = loss_curves(family, net, val, [config.horizon])
    test_functions = test.open()
    steps = evaluation_steps(config, name)
    with context.timed("evaluate"):
        gaps, _ = loss_curves(family, net, test_functions, steps, measure=suboptimality)
        losses, _ = loss_curves(family, net, test_functions, [config.horizon])
    log_gap = log10_gap(gaps)
    return {
        "meta": metrics,
        "curve": _curve(log_gap, steps),
        "test": {str(H): summary(log_gap[:, steps.index(H)]) for H in _horizons(config, name)},
        "val_nll": float(val_losses[:, 0].mean()),
        "test_nll": float(losses[:, 0].mean()),
    }


def _lstm_mlp(config, net, context) -> dict[str, Any]:
    results = {}
    for variant in _mlp_variants(config):
        family = make_family(config, "mlp", context, variant)
        _, test = _splits(config, "mlp", family, context)
        H = variant_steps(config, variant)
        numbers = _mlp_numbers(family, net, test.open(), H, curve=not variant)
        results[variant or "base"] = {"horizon": H, "test": numbers}
    return {"variants": results}


def _depth(config, name, context) -> dict[str, Any]:
    """Issue 17's second reference for a budget curve: an LSTM optimizer meta-trained for each
    fixed depth H in ``trained_depths`` (horizon H), measured on the test functions at step H
    with the same numbers as the budget curves' points."""
    family = make_family(config, name, context)
    val, test = _splits(config, name, family, context)
    test_functions = test.open()
    n = state_batch_size(test_functions)
    points = []
    for H in sorted(set(config.trained_depths)):
        net, metrics = _train_lstm(config, name, context, family, val, H, stage=f"lstm-depth{H}")
        data, _ = stop_data(family, OptimizerRun(family, net.eval(), H), test_functions, _no_score)
        at_depth = data.metric(torch.full((n,), H - 1, dtype=torch.long))
        points.append({"depth": H, "mean_steps": float(H), **at_depth, "meta": metrics})
    return {"trained": points}


def _no_score(features: torch.Tensor, t: int) -> torch.Tensor:
    return torch.zeros(features.shape[0])


def _load_lstm(config, name, context) -> LSTMOptimizerNet:
    net = build_net(config, name)
    net.load_state_dict(_lstm_weights(name, context))
    return net.eval()


def _lstm_weights(name, context) -> dict[str, torch.Tensor]:
    """The weights the family's ``lstm`` job kept (of the restart it chose)."""
    meta = context.dependency(f"lstm-{name}").record["meta"]
    restart = meta.get("restart", 0)
    if "restarts_stage" in meta:  # the restarts trained side by side, in one stage
        checkpoint = context.checkpoint(meta["restarts_stage"], job=f"lstm-{name}")
        return trained_weights(checkpoint, restart)
    stage = f"lstm{_restart_suffix(restart)}"  # (runs before 2026-12-06: a stage per restart)
    return trained_weights(context.checkpoint(stage, job=f"lstm-{name}"))


# ---------------------------------------------------------------- stop rules


def _evaluation(config, context, name) -> StopEvaluation:
    lstm = context.dependency(f"lstm-{name}").record
    return StopEvaluation(
        config.step_costs, config.curve_points, lstm["val_nll"], lstm["test_nll"],
        config.nll_tolerance,
    )  # fmt: skip


def _tolerance_threshold(tolerance: float) -> float:
    """The score threshold of 'stop when value ≤ tol' on the score −log10(value), in float64 (in
    float32, 3e-5 gave 4.5228786, not 4.5228787)."""
    return math.inf if tolerance == 0 else -math.log10(tolerance)


def _rules(config, name, context) -> dict[str, Any]:
    family = make_family(config, name, context)
    val, test = _splits(config, name, family, context)
    lrs = context.dependency(f"hand-{name}").record["tuning"]
    setting = _evaluation(config, context, name)
    rules = {
        "grad_norm": (FeatureScore("log10_grad_norm", -1.0), config.grad_norm_tolerances),
        "improvement": (FeatureScore("log10_improvement", -1.0), config.improvement_tolerances),
    }
    runs = {
        kind: OptimizerRun(family, HandDesigned(kind, lrs[kind]["lr"][str(config.horizon)]),
                           config.horizon)
        for kind in config.optimizers
    }  # fmt: skip
    test_functions = test.open()
    out = {}
    for kind, run in runs.items():  # each optimizer runs once per split; every rule scores it
        val_data, val_features = stop_data(family, run, val, _no_score)
        test_data, test_features = stop_data(family, run, test_functions, _no_score)
        for rule, (score, tolerances) in rules.items():
            candidates = {f"tol {tol:g}": _tolerance_threshold(tol) for tol in tolerances}
            out[f"{kind}/{rule}"] = evaluate_stop(
                rescored(val_data, val_features, score),
                rescored(test_data, test_features, score),
                candidates,
                None,
                setting,
            )
    return {"rules": out, **_best_rules(out, config.step_costs)}


def _best_rules(rules: dict[str, Any], step_costs: list[float]) -> dict[str, Any]:
    """Across optimizers and rules, chosen on validation: per λ the one with the lowest
    validation trade-off value, and the cheapest (validation steps) that reaches the LSTM
    optimizer's NLL on validation."""
    tradeoff = []
    for i in range(len(step_costs)):
        name = min(rules, key=lambda n: rules[n]["tradeoff"][i]["val_value"])
        tradeoff.append({"rules": name, **rules[name]["tradeoff"][i]})
    reaching = [n for n in rules if rules[n]["reach"] is not None]
    reach = None
    if reaching:
        name = min(reaching, key=lambda n: rules[n]["reach"]["val_steps"])
        reach = {"rules": name, **rules[name]["reach"]}
    return {"best_tradeoff": tradeoff, "best_reach": reach}


def _real_run(config, run, policy, threshold, test_functions, dense_index) -> dict[str, Any]:
    """The natural rule executed by ``run_adaptive`` (finished functions leave the batch in
    ``shrink`` mode), checked against the dense stop steps, and timed against full depth."""
    rule = ScoreThreshold(threshold)
    with torch.no_grad():
        result = run_adaptive(run, policy, test_functions, rule, mode=config.inference_mode)
    timing = time_adaptive(run, policy, test_functions, {"natural": rule}, repeats=3)
    return {
        "mode": config.inference_mode,
        "mean_steps": float(result.steps_used.double().mean()),
        "matches_dense": bool(torch.equal(result.stop_index, dense_index)),
        "timing": timing,
    }


def _stop_job(config, name, context, run, policy, natural_threshold, label, extra=None):
    """Evaluate a learned stop rule: validation choices, the test numbers, the real run."""
    family = run.family
    val, test = _splits(config, name, family, context)
    val_data, _ = stop_data(family, run, val, policy)
    test_functions = test.open()
    test_data, _ = stop_data(family, run, test_functions, policy)
    setting = _evaluation(config, context, name)
    record = evaluate_stop(val_data, test_data, {label: natural_threshold}, label, setting)
    dense = stop_indices(test_data.scores, ScoreThreshold(natural_threshold))
    record["real"] = _real_run(config, run, policy, natural_threshold, test_functions, dense)
    record["oracle"] = oracle_tradeoff(test_data, config.step_costs)
    if extra is not None:
        record.update(extra(test_data, dense, setting))
    return record


def _act(config, name, context) -> dict[str, Any]:
    family = make_family(config, name, context)
    settings = getattr(config, name)
    context.manual_seed("init")
    net = build_net(config, name, halting=True)
    if config.act.init == "lstm":  # the update network starts as the trained LSTM optimizer
        trained = _lstm_weights(name, context)
        missing = net.load_state_dict(trained, strict=False).missing_keys
        assert sorted(missing) == ["halting.bias", "halting.weight"], missing
    with context.timed("meta_train"):
        metrics = meta_train_act(
            net,
            family,
            config.act.iterations,
            prior_p=config.act.prior_p,
            kl_weight=config.act.kl_weight,
            horizon=config.horizon,
            unroll=config.unroll,
            functions=settings.functions,
            lr=settings.lr,
            seed=context.stream_seed(f"{name}-meta"),
            settings=context.loop_settings(log_every=max(1, config.act.iterations // 20)),
            stage="act",
            halting_only=config.act.train == "halting",
            step_cost=config.act.step_cost,
        )
    run = OptimizerRun(family, net, config.horizon)
    policy = CausalHaltingScore()
    record = _stop_job(
        config, name, context, run, policy, 0.0, "causal: Δq_t ≤ 0", extra=_posterior_rules
    )
    return {"meta": metrics, **record}


def _posterior_rules(
    test: StopData, causal: torch.Tensor, setting: StopEvaluation
) -> dict[str, Any]:
    """The non-causal reading of the ACT optimizer's posterior at the full horizon,
    q(t | x, T) = softmax_t(c_t), c_t = Σ_{u≤t} Δq_u (the scores are −Δq), against the causal
    rule's stop steps ``causal (n,)``. A non-causal rule runs every step before it chooses.
    ``test.scores`` are the causal scores: −Δq_t, −inf at t = 0."""
    increments = (-test.scores).clone()
    increments[:, 0] = 0.0  # Δq_0 shifts every c_t alike: the posterior does not depend on it
    c = torch.cumsum(increments, dim=1)
    q = torch.softmax(c, dim=1)
    rules = {
        "mode": c.argmax(dim=1),
        "median": (torch.cumsum(q, dim=1) >= 0.5).int().argmax(dim=1),
    }
    out = {"posterior_mean_steps": float((q * torch.arange(1, c.shape[1] + 1)).sum(1).mean())}
    causal_at = test.at(causal)
    for rule, index in rules.items():
        at = test.at(index)
        nll = float(at["nll"].mean())
        reference = setting.reference_test_nll
        out[rule] = {
            **{k: float(v.mean()) for k, v in at.items()},
            "reaches_reference": nll <= reference + setting.nll_tolerance * abs(reference),
            "step_saving": 0.0,
            "causal_minus_rule_steps": float((causal - index).double().mean()),
            "mean_abs_step_distance": float((causal - index).abs().double().mean()),
            "same_step": float((causal == index).double().mean()),
            "causal_minus_rule_log10_gap": float((causal_at["log10_gap"] - at["log10_gap"]).mean()),
        }
    return {"posterior": out}


def _l2s(config, name, context) -> dict[str, Any]:
    family = make_family(config, name, context)
    net = _load_lstm(config, name, context)
    run = OptimizerRun(family, net, config.horizon)
    s = config.l2s
    train = family.sample(s.train_functions, context.generator(f"{name}-l2s-train"))
    with context.timed("trajectories"):
        data, features = stop_data(family, run, train, lambda f, t: torch.zeros(f.shape[0]))
    context.manual_seed("policy-init")
    policy = L2SPolicy(config.horizon, tuple(s.hidden))
    with context.timed("policy"):
        gain = s.objective == "gain"
        metrics = fit_l2s_policy(
            policy,
            features,
            log10_gap(data.gap).float()
            if gain
            else step_penalised(data.losses.float(), s.step_cost),
            beta=s.beta,
            hard=s.hard,
            updates=s.updates,
            batch=s.batch,
            lr=s.lr,
            seed=context.stream_seed(f"{name}-l2s-batches"),
            settings=context.loop_settings(log_every=max(1, s.updates // 20)),
            stage="l2s",
            gain_price=s.gain_price if gain else None,
        )
    with torch.no_grad():
        record = _stop_job(config, name, context, run, _Detached(policy), 0.0, "λ_t ≥ 1/2")
    cost = {"policy_macs": policy.macs(), "step_macs": lstm_step_macs(net, family.dim)}
    return {"policy": metrics, "cost": cost, **record}


def stop_models(config: LearnedOptimizersConfig) -> dict:
    """Per family with stop jobs: the ACT optimizer with its causal rule (``act-F``) and the
    LSTM optimizer with the L2S policy (``l2s-F``)."""
    stops = [job.name for job in jobs(config) if job.name.startswith(("act-", "l2s-"))]
    return {name: (name, partial(_trained, *name.split("-", 1))) for name in stops}


def _trained(kind: str, name: str, context: JobContext, record: dict) -> TrainedStopModel:
    config: LearnedOptimizersConfig = context.config
    family = make_family(config, name, context)
    if kind == "act":
        net = build_net(config, name, halting=True)
        net.load_state_dict(context.checkpoint("act")["net"])
        policy = CausalHaltingScore()
    else:
        net = _load_lstm(config, name, context)
        trained = L2SPolicy(config.horizon, tuple(config.l2s.hidden))
        trained.load_state_dict(context.checkpoint("l2s")["policy"])
        policy = _Detached(trained.eval())
    return TrainedStopModel(
        f"{kind}-{name}",
        OptimizerRun(family, net.eval(), config.horizon),
        policy,
        curve_budgets(record["curve"]),
        inputs=f"a {name} function (FunctionFamily.sample's rows)",
        test_inputs=lambda: [_splits(config, name, family, context)[1].open()],
    )


class _Detached(torch.nn.Module):
    """Evaluate a policy without building graphs."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, features, t):
        with torch.no_grad():
            return self.policy(features.float(), t).double()
