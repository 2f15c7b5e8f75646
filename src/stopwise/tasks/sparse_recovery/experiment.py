"""The ``sparse-recovery`` jobs: every method of the L2S paper's Table 2 and a stronger stop model.

Per seed, two chains (each job reads its dependencies' records and checkpoints):

* ``classical``: ISTA and FISTA, (L, λ) tuned per budget on validation, measured on test;
* ``lista`` (deep supervision from the tuned ISTA) → ``lista-stop-stage1`` (stage I, from the
  trained LISTA or from ISTA) → ``lista-stop`` (exit pruning and stage II, the threshold rule
  calibrated on validation, then the one test evaluation);
* ``alista`` (ALISTA with support selection) → ``cpss-stop-stage1`` (LISTA-CP-SS from it, stage I)
  → ``cpss-stop``, as ``lista-stop``.

Each job declares the config keys it reads, so changing a stage-II key reruns only the stop jobs.
Stop rows are real adaptive execution: ``run_adaptive(mode=config.inference_mode)``, checked
against the selection from the dense trajectory.
"""

from __future__ import annotations

from functools import cache, partial
from pathlib import Path
from typing import Any

import torch

from ...contract import Job, JobContext, TrainedStopModel
from ...inference import (
    THRESHOLD_KINDS,
    SampleRule,
    fit_threshold,
    run_adaptive,
    stop_indices,
    time_adaptive,
)
from ...perf import reuse_freed_memory
from ...selection import (
    budget_grid,
    budget_sweep,
    calibrate_by_metric,
    curve_budgets,
    fixed_depth_curve,
)
from ...stats import ratio_db_upper_bound
from ...training import policy_hazards
from .config import SparseRecoveryConfig
from .data import SparseBatch, SparseProblem, make_problem
from .methods import CLASSICAL, PAPER_SETTINGS, fit_layers, fit_stop_policy, trajectories, tune
from .metrics import (
    cost_aware_oracle_stop,
    error_columns,
    errors_at,
    nmse_columns,
    nmse_db,
    oracle_stop,
    per_step_squared_errors,
    support_oracle_errors,
)
from .models import ALISTA, LISTA, LISTACPSS, StopPolicy, support_sizes

__all__ = ["jobs", "run_job", "load_stop_model", "stop_models", "STOP_MODELS"]

# The two stop models: result key -> (stage-I job, stop job).
STOP_MODELS = {
    "lista_stop": ("lista-stop-stage1", "lista-stop"),
    "cpss_stop": ("cpss-stop-stage1", "cpss-stop"),
}


def jobs(config: SparseRecoveryConfig) -> list[Job]:
    data = ("problem", "device", "eval_chunk")  # what every job reads
    classical = Job("classical", keys=(*data, "classical"))
    if config.classical_only:
        return [classical]
    trained = (*data, "lr_final")
    stage1 = (*trained, "beta", "stage1_uniform")
    stop = (*trained, "beta", "prune_mass", "stage2", "threshold_rule", "threshold_row")
    stop += ("match_tolerance", "match_confidence", "budget_points", "inference_mode")
    stop += ("timing_repeats",)
    cpss1 = [f"cpss.{k}" for k in ("stage1_steps", "batch", "lr", "weight_decay")]
    lista_start = ("lista",) if config.stage1.init == "lista" else ()
    return [
        classical,
        Job("lista", after=("classical",), keys=(*trained, "lista")),
        Job("lista-stop-stage1", after=("classical", *lista_start), keys=(*stage1, "stage1")),
        Job("lista-stop", after=("classical", "lista-stop-stage1"), keys=stop),
        Job("alista", keys=(*trained, "alista")),
        Job("cpss-stop-stage1", after=("alista",), keys=(*stage1, *cpss1)),
        Job("cpss-stop", after=("alista", "cpss-stop-stage1"), keys=stop),
    ]


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    if context.device.type == "cpu":
        reuse_freed_memory()
    problem = make_problem(context.config.problem, context.generator, context.device)
    return JOBS[job.name](context, problem)


def fixed_job(key: str, context: JobContext, problem: SparseProblem) -> dict[str, Any]:
    """LISTA or ALISTA (``key``) by deep supervision, then measured on test (opened here, once):
    its row and per-layer curve."""
    config, schedule = context.config, getattr(context.config, key)
    model = lista_model(context, problem) if key == "lista" else alista_model(config, problem.A)
    fit_layers(model, problem, context, key, schedule.steps, schedule.batch, schedule.lr)
    test = problem.test.open()
    errors = per_step_squared_errors(model, test.y, test.x, config.eval_chunk)
    row, curve = fixed_depth(model, errors, test, problem.snrs)
    return {"rows": {key: row}, "fixed_depth": {key: curve}}


def stage1_job(name: str, context: JobContext, problem: SparseProblem) -> dict[str, Any]:
    """Stage I of stop model ``name``: its mixed validation NMSE after every layer (no test
    data)."""
    config = context.config
    if name == "lista_stop":
        model, s = lista_model(context, problem), config.stage1
        if s.init == "lista":
            model.load_state_dict(context.checkpoint("lista", job="lista")["model"])
        schedule = (s.steps, s.batch, s.lr, s.weight_decay)
    else:
        model, c = cpss_model(context, problem), config.cpss
        schedule = (c.stage1_steps, c.batch, c.lr, c.weight_decay)
    fit_layers(model, problem, context, "stage1", *schedule)
    val = problem.val
    errors = per_step_squared_errors(model, val.y, val.x, config.eval_chunk)
    energies = (val.x**2).sum(-1)
    return {"validation_nmse": [nmse_db(depth, energies) for depth in errors.T]}


# ---------------------------------------------------------------- models of a job


def lista_model(context: JobContext, problem: SparseProblem) -> LISTA:
    """LISTA initialised from the ISTA tuned (on validation) for T iterations."""
    T = context.config.problem.steps
    ista = context.dependency("classical").record["tuned"][f"ista-{T}"]
    return LISTA(problem.A, T, ista["L"], ista["lam"]).to(problem.A.device)


def alista_model(config: SparseRecoveryConfig, A: torch.Tensor) -> ALISTA:
    a = config.alista
    keep = support_sizes(A.shape[1], config.problem.steps, a.ss_increment, a.ss_max)
    return ALISTA(A, config.problem.steps, a.gamma, a.theta, keep).to(A.device)


def cpss_model(context: JobContext, problem: SparseProblem) -> LISTACPSS:
    """LISTA-CP-SS started at the trained ALISTA (its ``alista`` checkpoint)."""
    alista = alista_model(context.config, problem.A)
    alista.load_state_dict(context.checkpoint("alista", job="alista")["model"])
    return LISTACPSS.from_alista(alista)


def stop_step_model(name: str, context: JobContext, A: torch.Tensor):
    """Stop model ``name``'s step model as its stage I left it, in eval mode: built with any
    start (every weight comes from the ``stage1`` checkpoint)."""
    config, T = context.config, context.config.problem.steps
    if name == "lista_stop":
        model = LISTA(A, T, 1.0, 0.0).to(A.device)
    else:
        model = LISTACPSS.from_alista(alista_model(config, A))
    model.load_state_dict(context.checkpoint("stage1", job=STOP_MODELS[name][0])["model"])
    return model.eval()


# ---------------------------------------------------------------- measurement


def columns_at(errors: torch.Tensor, split: SparseBatch, snrs, index=None) -> dict[str, float]:
    """NMSE columns of the estimates at 0-based ``index (N,)`` (default: the last step) from
    per-step errors ``(N, T)``."""
    if index is None:
        index = torch.full((errors.shape[0],), errors.shape[1] - 1)
    return error_columns(errors_at(errors, index), (split.x**2).sum(-1), split.snr, snrs)


def fixed_depth(model, errors: torch.Tensor, split: SparseBatch, snrs) -> tuple[dict, list]:
    """``model``'s full-depth row and NMSE columns per depth (truncated at every depth) from its
    per-step errors ``(N, T)`` on ``split``."""
    costs, valid = model.step_costs(), torch.ones(model.max_steps, dtype=torch.bool)
    row = {
        **columns_at(errors, split, snrs),
        "mean_steps": float(model.max_steps),
        "mean_cost": float(costs[-1]),
    }
    metric = partial(columns_at, errors, split, snrs)
    return row, fixed_depth_curve(errors.shape[0], metric, valid, costs)


def classical(context: JobContext, problem: SparseProblem) -> dict[str, Any]:
    """ISTA and FISTA per budget: (L, λ) tuned on validation, then measured on test; and the
    support-oracle bound on test (least squares on each sample's true support)."""
    config, val, c = context.config, problem.val, context.config.classical
    tuned = {}
    for algorithm in CLASSICAL:
        for budget in c.budgets:
            start = PAPER_SETTINGS.get((algorithm, budget), PAPER_SETTINGS[(algorithm, 20)])
            tuned[f"{algorithm}-{budget}"] = tune(
                algorithm, problem.A, budget, val.y, val.x, start, c.lambda_factors, c.L_factors
            )
    test = problem.test.open()
    rows, curves = {}, {}
    for key, setting in tuned.items():
        L, lam = setting["L"], setting["lam"]
        model = CLASSICAL[setting["algorithm"]](problem.A, setting["budget"], L, lam)
        errors = per_step_squared_errors(model, test.y, test.x, config.eval_chunk)
        rows[key], curves[key] = fixed_depth(model, errors, test, problem.snrs)
        rows[key].update(L=L, lam=lam)
    bound = support_oracle_errors(problem.A, test.y, test.x)
    columns = error_columns(bound, (test.x.double() ** 2).sum(-1), test.snr, problem.snrs)
    # LAPACK's least squares may differ in the last bit from run to run (memory alignment):
    # the bound is kept to 1e-6 dB so that a resumed run records the same numbers
    support_oracle = {k: round(v, 6) for k, v in columns.items()}
    # Least squares on a support larger than m is underdetermined: no bound there.
    largest_support = int((test.x != 0).sum(-1).max())
    return {"tuned": tuned, "rows": rows, "fixed_depth": curves, "support_oracle": support_oracle,
            "largest_support": largest_support}  # fmt: skip


# Prices λ per step of the cost-aware oracle curve (the best any policy could do; needs x*).
ORACLE_PENALTIES = [0.0, 1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2, 3e-2, 0.1, 0.3, 1.0]


def stop_model(name: str, context: JobContext, problem: SparseProblem):
    """Stage II and every choice on validation (pruned exits, the policy setting, threshold kind
    and the threshold row's budget), then the one test evaluation: the sampled (published
    policy) and threshold rows through ``run_adaptive``, the oracle stop, full depth, the budget
    curves of both policies beside fixed depth and the cost-aware oracle, stop histograms and
    wall-clock."""
    config, snrs, chunk = context.config, problem.snrs, context.config.eval_chunk
    model = stop_step_model(name, context, problem.A)
    fitted = fit_stop_policy(model, problem, context)
    chosen, val_errors = fitted.chosen, fitted.val.losses
    val_energies = (problem.val.x**2).sum(-1)

    def val_nmse(index):
        return nmse_db(errors_at(val_errors, index), val_energies)

    budgets = budget_grid(chosen.valid, config.budget_points)
    calibration = calibrate_by_metric(
        chosen.scores, val_nmse, budgets, (chosen.kind,), chosen.valid, lower_is_better=True
    )
    full_val = val_nmse(torch.full((val_errors.shape[0],), model.max_steps - 1))
    row_rule = threshold_row_rule(calibration, chosen.scores, val_errors, chosen, config)
    rules = {  # row -> (its policy as chosen on validation, its rule)
        "sampled": (fitted.published, SampleRule(context.stream_seed("sampled-stops"))),
        "threshold": (chosen, row_rule),
    }
    costs = {rule: stop_costs(model, fit.policy) for rule, (fit, _) in rules.items()}

    test = problem.test.open()  # every choice is made: the test set, once
    test_traj = trajectories(model, test.y, test.x, chunk)  # its features give dense scores
    test_errors = test_traj.losses

    def metric(rule, index):
        macs = float(costs[rule][index.cpu()].mean())
        return {**columns_at(test_errors, test, snrs, index), "mean_macs": macs}

    rows, stops, curves = {}, {}, {}
    with torch.no_grad():
        for rule_name, (fit, rule) in rules.items():
            scores = policy_hazards(fit.policy, test_traj.features)
            result = run_adaptive(
                model, fit.policy, test.y, rule, config.inference_mode, fit.valid, costs[rule_name]
            )
            dense = stop_indices(scores, rule, fit.valid)
            stops[rule_name] = result.stop_index
            rows[f"{name}-{rule_name}"] = {
                **nmse_columns(result.predictions, test.x, test.snr, snrs),
                **steps_per_snr(result.stop_index, test, snrs),
                "mean_cost": float(result.cost.double().mean()),
                "matches_dense_selection": bool(torch.equal(result.stop_index, dense)),
            }
            curves[rule_name] = budget_sweep(
                fit.scores, scores, budget_grid(fit.valid, config.budget_points),
                partial(metric, rule_name), fit.kind, fit.valid, val_metric=val_nmse,
                lower_is_better=True,
            )  # fmt: skip
    stops["oracle"] = oracle_stop(test_errors, torch.ones(model.max_steps, dtype=torch.bool))
    rows[f"{name}-oracle"] = {
        **columns_at(test_errors, test, snrs, stops["oracle"]),
        **steps_per_snr(stops["oracle"], test, snrs),
    }
    rows[f"{name}-full"], per_depth = fixed_depth(model, test_errors, test, snrs)
    gap, upper = validation_gap(chosen.scores, row_rule, val_errors, chosen.valid, config)
    row = {
        "target": config.threshold_row,
        "score_threshold": row_rule.score_threshold.tolist(),
        "validation_gap_db": gap,
        "validation_gap_upper_db": upper,
    }
    published = fitted.published
    record = {
        "rows": rows,
        "fixed_depth": {name: per_depth},
        "curve": curves["threshold"],
        "curve_published": curves["sampled"],
        "oracle_curve": [
            {
                "penalty": penalty,
                **steps_per_snr(index, test, snrs),
                **columns_at(test_errors, test, snrs, index),
            }
            for penalty in ORACLE_PENALTIES
            for index in [cost_aware_oracle_stop(test_errors, penalty)]
        ],
        "calibration": {**calibration.plain(), "row": row},
        "policy": {**chosen.candidate.plain(), "kind": chosen.kind},
        "published_policy": {"kind": published.kind, **published.candidate.plain()},
        "selection": fitted.selection,
        "validation_full_depth": full_val,
        "valid_steps": chosen.valid.tolist(),
        "published_valid_steps": published.valid.tolist(),
        "oracle_mass": fitted.mass.tolist(),
        "stop_histogram": {
            rule: {
                f"{s:g}dB": torch.bincount(index[test.snr == s].cpu(), minlength=model.max_steps)
                for s in snrs
            }
            for rule, index in stops.items()
        },
        "policy_cost": {
            "policy_macs_per_step": chosen.policy.macs(),
            "feature_macs_per_step": float(model.feature_costs()[0]),
            "step_macs": float(model.step_costs()[-1]) / model.max_steps,
        },
        "step_costs": costs["threshold"],
    }
    if config.timing_repeats:
        record["timing"] = {
            rule_name: time_adaptive(model, fit.policy, test.y, {rule_name: rule}, fit.valid,
                                     repeats=config.timing_repeats)
            for rule_name, (fit, rule) in rules.items()
        }  # fmt: skip
    return record


def stop_costs(model, policy) -> torch.Tensor:
    """``(T,)`` cumulative MACs per sample of stopping after step t: the model, its features
    and the policy at every step run."""
    return model.step_costs() + torch.cumsum(model.feature_costs() + policy.macs(), 0)


def threshold_row_rule(calibration, val_scores, val_errors, chosen, config):
    """The threshold row's rule, chosen on validation: ``threshold_row="match-full"`` takes the
    cheapest calibrated budget whose validation NMSE is within ``match_tolerance`` dB of full
    depth with one-sided confidence ``match_confidence`` over the validation rows
    (:func:`stopwise.stats.ratio_db_upper_bound`; 0.5: the point estimate), or the least NMSE
    if none is; ``"best"`` the least validation NMSE. ``val_errors (N, T)``."""
    if config.threshold_row == "best":
        return calibration.rule
    for c in sorted(calibration.candidates, key=lambda c: (c["cost"], c["value"])):
        rule = fit_threshold(val_scores, c["budget"], None, c["kind"], chosen.valid)
        _, upper = validation_gap(val_scores, rule, val_errors, chosen.valid, config)
        if upper <= config.match_tolerance:
            return rule
    return calibration.rule


def validation_gap(val_scores, rule, val_errors, valid, config) -> tuple[float, float]:
    """``(gap, upper)``: the rule's validation NMSE minus full depth's, in dB, and its one-sided
    ``match_confidence`` bound over the validation rows."""
    at_stop = errors_at(val_errors, stop_indices(val_scores, rule, valid)).double().cpu()
    full = val_errors[:, -1].double().cpu()
    return ratio_db_upper_bound(at_stop, full, config.match_confidence)


def steps_per_snr(index: torch.Tensor, split: SparseBatch, snrs) -> dict[str, Any]:
    steps = (index + 1).double().cpu()
    snr = split.snr.cpu()
    return {
        "mean_steps": float(steps.mean()),
        "mean_steps_per_snr": {f"{s:g}dB": float(steps[snr == s].mean()) for s in snrs},
    }


# ---------------------------------------------------------------- a finished run


def load_stop_model(run_path: str | Path, name: str, seed: int | None = None):
    """Rebuild a trained stop model of a finished run directory from its checkpoints.

    Returns ``(model, policy, valid_steps (T,) bool, threshold rule, problem)`` for ``seed``
    (default: the run's first): the policy validation chose and the threshold row's rule, as in
    the ``cpss-stop`` / ``lista-stop`` job record; ``name`` is a key of :data:`STOP_MODELS`.
    (:func:`stopwise.load_stop_model` gives the same model with the whole budget curve.)
    """
    from ...trained import finished_job  # the runner's: scripts call this, jobs never do

    if name not in STOP_MODELS:
        raise ValueError(f"unknown stop model {name!r}; choose one of {sorted(STOP_MODELS)}")
    return _rebuild(name, *finished_job(run_path, STOP_MODELS[name][1], seed))


def _rebuild(name: str, context: JobContext, record: dict[str, Any]):
    config: SparseRecoveryConfig = context.config
    problem = make_problem(config.problem, context.generator)
    model = stop_step_model(name, context, problem.A)
    chosen = record["policy"]
    policy = StopPolicy(model.feature_dim, model.max_steps, (chosen["hidden"],))
    policy.load_state_dict(context.checkpoint(f"stage2-{chosen['name']}")["policy"])
    calibration = record["calibration"]
    rule = THRESHOLD_KINDS[calibration["kind"]](calibration["row"]["score_threshold"])
    valid = torch.tensor(record["valid_steps"])
    return model, policy.eval(), valid, rule, problem


def _trained(name: str, context: JobContext, record: dict[str, Any]) -> TrainedStopModel:
    model, policy, valid, rule, problem = _rebuild(name, context, record)
    test_y = cache(lambda: problem.test.open().y)  # the problem's test split opens once
    return TrainedStopModel(
        name,
        model,
        policy,
        curve_budgets(record["curve"], record["policy"]["kind"]),
        valid_steps=valid,
        rules={"threshold": rule},
        inputs=f"measurement y ({problem.A.shape[0]} entries) of the run's sensing matrix",
        test_inputs=lambda: [test_y()],
    )


def stop_models(config: SparseRecoveryConfig) -> dict:
    return {name: (jobs[1], partial(_trained, name)) for name, jobs in STOP_MODELS.items()}


JOBS = {
    "classical": classical,
    "lista": partial(fixed_job, "lista"),
    "lista-stop-stage1": partial(stage1_job, "lista_stop"),
    "lista-stop": partial(stop_model, "lista_stop"),
    "alista": partial(fixed_job, "alista"),
    "cpss-stop-stage1": partial(stage1_job, "cpss_stop"),
    "cpss-stop": partial(stop_model, "cpss_stop"),
}
