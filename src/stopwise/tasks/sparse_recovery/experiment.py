"""The ``sparse-recovery`` experiment: every method of the L2S paper's Table 2 and a stronger stop
model, trained and measured in one run directory.

Stages (each a resumable :func:`~stopwise.training.train_loop` stage with its checkpoint):

1. ISTA and FISTA tuned per iteration budget on validation (``classical.json``; no training);
2. ``lista``: LISTA from the tuned ISTA(T) start, deep supervision (mean of the layers' losses);
3. ``lista-stop-stage1``: LISTA under the oracle (β), warm-started from (2) or from ISTA;
   exits pruned by mean validation oracle mass; ``lista-stop-stage2``: the MLP policy imitates the
   (hard or soft) oracle on the valid exits;
4. ``alista``: ALISTA with support selection, deep supervision;
5. ``cpss-stop-stage1``: LISTA-CP-SS started at (4), under the oracle; pruning;
   ``cpss-stop-stage2``: its policy.

Then every model is measured on the test set (stop models through ``run_adaptive`` in shrink mode,
with the sampled rule of the paper and a threshold rule calibrated on validation) and the run
writes ``results.json``, ``table.md`` and the figures. A stage that has finished is skipped on a
rerun; an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...checkpoints import load_checkpoint, save_checkpoint
from ...inference import MODES, SampleRule
from ...training import GeneratedBatches, fit_oracle, fit_policy, fit_predictor
from .classical import CLASSICAL, PAPER_SETTINGS, tune
from .data import (
    SparseBatch,
    check_problem,
    fixed_split,
    sample_batch,
    sensing_matrix,
    target_singular_values,
)
from .metrics import column_names, error_columns, per_step_squared_errors, step_losses
from .models import ALISTA, LISTA, LISTACPSS, support_sizes
from .perf import reuse_freed_memory
from .policy import StopPolicy
from .report import write_figures, write_table
from .stopping import (
    RULE_KINDS,
    calibrate_by_nmse,
    errors_at,
    evaluate_rule,
    oracle_mass,
    oracle_stop,
    prune_exits,
    split_hazards,
    tradeoff_curve,
)

__all__ = ["run", "check_config", "Problem", "make_problem", "load_stop_model", "STOP_MODELS"]

# The two stop models: key -> (table label, stage prefix).
STOP_MODELS = {
    "lista_stop": ("LISTA-stop", "lista-stop"),
    "cpss_stop": ("LISTA-CP-SS-stop (ALISTA start)", "cpss-stop"),
}


def log(message: str) -> None:
    print(f"sparse-recovery: {message}", file=sys.stderr, flush=True)


def check_config(config: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad key or value."""
    check_problem(config["m"], config["n"], config["condition"], config["sparsity"], config["snrs"])
    positive = [
        "steps",
        "per_snr",
        "lista_steps",
        "lista_batch",
        "stage1_batch",
        "stage2_batch",
        "alista_batch",
        "cpss_batch",
        "eval_chunk",
        "budget_points",
    ]
    for key in positive:
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1; got {config[key]}")
    for key in [
        "stage1_steps",
        "stage2_steps",
        "alista_steps",
        "cpss_stage1_steps",
        "cpss_stage2_steps",
    ]:
        if config[key] < 0:
            raise ValueError(f"{key} must be >= 0; got {config[key]}")
    if config["steps"] < 2:
        raise ValueError(
            f"steps (layers of the learned models) must be >= 2; got {config['steps']}"
        )
    if not config["classical_budgets"] or min(config["classical_budgets"]) < 1:
        raise ValueError(
            f"classical_budgets must be a non-empty list of iteration counts >= 1; "
            f"got {config['classical_budgets']}"
        )
    if config["steps"] not in config["classical_budgets"]:
        raise ValueError(
            f"classical_budgets {config['classical_budgets']} must include steps={config['steps']} "
            f"(LISTA starts from the ISTA tuned at that budget)"
        )
    if not config["beta"] > 0:
        raise ValueError(f"beta must be > 0; got {config['beta']}")
    if config["oracle"] not in ("hard", "soft"):
        raise ValueError(f"oracle must be 'hard' or 'soft'; got {config['oracle']!r}")
    if config["stage1_init"] not in ("lista", "ista"):
        raise ValueError(f"stage1_init must be 'lista' or 'ista'; got {config['stage1_init']!r}")
    if config["threshold_rule"] not in (*RULE_KINDS, "best"):
        raise ValueError(
            f"threshold_rule must be one of {[*sorted(RULE_KINDS), 'best']}; "
            f"got {config['threshold_rule']!r}"
        )
    if config["inference_mode"] not in MODES:
        raise ValueError(f"inference_mode must be one of {MODES}; got {config['inference_mode']!r}")
    if not 0 <= config["prune_mass"] < 1:
        raise ValueError(f"prune_mass must lie in [0, 1); got {config['prune_mass']}")
    if str(config["device"]).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {config['device']!r} requested but CUDA is not available")
    for key in ("lista_lr", "stage1_lr", "stage2_lr", "alista_lr", "cpss_lr"):
        if not config[key] > 0:
            raise ValueError(f"{key} must be > 0; got {config[key]}")
    if not 0 < config["lr_final"] <= 1:
        raise ValueError(
            f"lr_final (the final fraction of each learning rate) must lie in (0, 1]; "
            f"got {config['lr_final']}"
        )
    if not config["classical_only"] and config["stage2_steps"] * config["cpss_stage2_steps"] == 0:
        raise ValueError("the stop models need stage2_steps >= 1 and cpss_stage2_steps >= 1")


# ---------------------------------------------------------------- the problem


@dataclass
class Problem:
    """The sensing matrix, the fixed validation and test splits (on the run's device) and the
    training sampler (fresh samples each call, mixed SNR)."""

    A: torch.Tensor
    val: SparseBatch
    test: SparseBatch
    sparsity: float
    snrs: list[float]
    device: torch.device

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b = sample_batch(self.A_cpu, batch, self.sparsity, self.snrs, generator)
        return b.y.to(self.device), b.x.to(self.device)

    @property
    def A_cpu(self) -> torch.Tensor:
        return self.A.cpu()

    @property
    def columns(self) -> list[str]:
        return column_names(self.snrs)


def make_problem(config: dict[str, Any], run_path: str | Path) -> Problem:
    """Build A from the seed and record it in the run directory ``run_path`` (``problem.pt``);
    on a rerun the recorded A must be identical. Validation and test sets are fixed by the seed."""
    seed = config["seed"]
    A = sensing_matrix(config["m"], config["n"], config["condition"], seed)
    path = Path(run_path) / "problem.pt"
    if path.exists():
        saved = load_checkpoint(path)
        if not torch.equal(saved["A"], A):
            raise ValueError(f"{path} holds a different sensing matrix than seed {seed} gives")
    else:
        save_checkpoint(
            path,
            {
                "A": A,
                "seed": seed,
                "condition": config["condition"],
                "target_singular_values": target_singular_values(
                    config["m"], config["n"], config["condition"]
                ),
                "note": "singular values set before the columns were normalised to unit norm",
            },
        )
    device = torch.device(config["device"])
    args = (A, config["per_snr"], config["sparsity"], config["snrs"])
    val = fixed_split(*args, seed=seed * 1_000_003 + 11)
    test = fixed_split(*args, seed=seed * 1_000_003 + 22)
    to = lambda b: SparseBatch(*(t.to(device) for t in b))  # noqa: E731
    return Problem(A.to(device), to(val), to(test), config["sparsity"], config["snrs"], device)


# ---------------------------------------------------------------- training stages


class Stages:
    """Runs training stages through the core loop, recording their wall and CPU (process) time
    in ``stages.json`` (a stage restored from a finished checkpoint keeps the times of the run
    that trained it; a resumed stage records only the time of its last part)."""

    def __init__(self, config: dict[str, Any], run_dir, problem: Problem):
        self.config, self.run_dir, self.problem = config, run_dir, problem
        self.settings = run_dir.loop_settings(log_every=config["log_every"])
        self.records: dict[str, Any] = run_dir.read_json("stages.json") or {}

    def batches(self, stream: int, batch: int) -> GeneratedBatches:
        seed = self.config["seed"] * 1_000_003 + 101 * (stream + 1)
        return GeneratedBatches(self.problem.sample, batch, seed)

    def adam(self, parameters, lr: float, weight_decay: float = 0.0):
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)

    def cosine(self, optimizer, steps: int, lr: float):
        """Cosine decay from ``lr`` to ``lr · lr_final`` over the stage."""
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(steps, 1), eta_min=lr * self.config["lr_final"]
        )

    def _done_step(self, stage: str) -> int:
        path = Path(self.run_dir.checkpoints) / f"{stage}.pt"
        return load_checkpoint(path)["step"] if path.exists() else 0

    def run(self, stage: str, steps: int, train, **details) -> None:
        """Call ``train(stage)``, which trains, resumes, or (finished) restores the final state
        from the stage's checkpoint; time it unless it had finished already."""
        done = self._done_step(stage)
        if done >= steps and stage in self.records:
            train(stage)  # restores the trained state; nothing to time
            return
        log(f"{stage}: {steps} steps" + (f" (resuming at {done})" if done else ""))
        start, cpu_start = time.perf_counter(), time.process_time()
        train(stage)
        seconds = time.perf_counter() - start
        self.records[stage] = {
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu_start,
            "steps": steps,
            "resumed_from_step": done,
            "threads": torch.get_num_threads(),
            **details,
        }
        self.run_dir.write_json("stages.json", self.records)


def train_deep_supervision(stages: Stages, model, name: str, stream: int, prefix: str):
    """Train ``model`` on the mean of all layers' losses as stage ``name``; its schedule is the
    config keys ``{prefix}_steps``, ``{prefix}_batch`` and ``{prefix}_lr``."""
    config = stages.config
    steps, batch, lr = (config[f"{prefix}_{key}"] for key in ("steps", "batch", "lr"))

    def train(stage):
        optimizer = stages.adam(model.parameters(), lr)
        fit_predictor(
            model,
            stages.batches(stream, batch),
            step_losses,
            optimizer,
            steps,
            settings=stages.settings,
            stage=stage,
            scheduler=stages.cosine(optimizer, steps, lr),
        )

    stages.run(name, steps, train, batch=batch, lr=lr)
    return model


def train_lista(config, stages: Stages, A: torch.Tensor, start: tuple[float, float]) -> LISTA:
    """LISTA from ISTA(L, λ) = ``start``, deep supervision (mean of all layers' losses)."""
    model = LISTA(A, config["steps"], *start).to(A.device)
    return train_deep_supervision(stages, model, "lista", 0, "lista")


def train_stop_model(
    config, stages: Stages, problem: Problem, model, prefix: str, stream: int, keys: dict
) -> tuple[Any, StopPolicy, dict[str, Any]]:
    """Stage I (oracle), exit pruning on validation, stage II (policy) for one stop model.

    ``keys`` names the config keys of this model's schedule: ``stage1_steps``, ``batch``,
    ``lr``, ``weight_decay``, ``stage2_steps``."""
    beta = config["beta"]
    steps1, lr1 = config[keys["stage1_steps"]], config[keys["lr"]]

    def stage1(stage):
        optimizer = stages.adam(model.parameters(), lr1, config[keys["weight_decay"]])
        fit_oracle(
            model,
            stages.batches(stream, config[keys["batch"]]),
            step_losses,
            optimizer,
            steps1,
            beta,
            settings=stages.settings,
            stage=stage,
            scheduler=stages.cosine(optimizer, steps1, lr1),
        )

    stages.run(f"{prefix}-stage1", steps1, stage1, batch=config[keys["batch"]], lr=lr1, beta=beta)
    model.eval()
    val = problem.val
    val_errors = per_step_squared_errors(model, val.y, val.x, config["eval_chunk"])
    mass = oracle_mass(val_errors, beta)
    valid = prune_exits(mass, config["prune_mass"])
    log(f"{prefix}: exits kept {valid.nonzero().flatten().add(1).tolist()} of {model.max_steps}")

    policy = StopPolicy(
        problem.A.shape[0],
        problem.A.shape[1],
        model.max_steps,
        hidden=tuple(config["policy_hidden"]),
        summaries=config["policy_summaries"],
    ).to(problem.device)
    steps2, lr2 = config[keys["stage2_steps"]], config["stage2_lr"]

    def stage2(stage):
        optimizer = stages.adam(policy.parameters(), lr2)
        fit_policy(
            model,
            policy,
            stages.batches(stream + 1, config["stage2_batch"]),
            step_losses,
            optimizer,
            steps2,
            beta,
            hard=config["oracle"] == "hard",
            mask=valid.to(problem.device),
            settings=stages.settings,
            stage=stage,
            scheduler=stages.cosine(optimizer, steps2, lr2),
        )

    stages.run(
        f"{prefix}-stage2",
        steps2,
        stage2,
        batch=config["stage2_batch"],
        lr=lr2,
        oracle=config["oracle"],
    )
    model.eval()
    policy.eval()
    return (
        model,
        policy,
        {"oracle_mass": mass.tolist(), "valid_steps": valid.tolist(), "val_errors": val_errors},
    )


def train_alista(config, stages: Stages, A: torch.Tensor) -> ALISTA:
    """ALISTA with support selection (analytic W; only γ_t, θ_t learned), deep supervision."""
    keep = support_sizes(A.shape[1], config["steps"], config["ss_increment"], config["ss_max"])
    model = ALISTA(A, config["steps"], config["alista_gamma"], config["alista_theta"], keep)
    return train_deep_supervision(stages, model.to(A.device), "alista", 4, "alista")


# ---------------------------------------------------------------- measurement


def _columns(step_errors: torch.Tensor, split: SparseBatch, snrs, index=None) -> dict[str, float]:
    """NMSE columns of the estimates at 0-based ``index (B,)`` (default: the last step)."""
    if index is None:
        index = torch.full((step_errors.shape[0],), step_errors.shape[1] - 1)
    errors = errors_at(step_errors, index.to(step_errors.device))
    return error_columns(errors, (split.x**2).sum(-1), split.snr, snrs)


def per_layer_curves(step_errors: torch.Tensor, split: SparseBatch, snrs) -> dict[str, list]:
    """NMSE(dB) after every step, per column: ``{"mixed": [T values], "20dB": [...], ...}``."""
    T = step_errors.shape[1]
    curves = {c: [] for c in column_names(snrs)}
    for t in range(T):
        for key, value in _columns(
            step_errors, split, snrs, torch.full((step_errors.shape[0],), t)
        ).items():
            curves[key].append(value)
    return curves


def measure_stop_model(
    config, problem: Problem, name: str, model, policy, info: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table rows (sampled, threshold, oracle stop, full depth) and details of one stop model."""
    label = STOP_MODELS[name][0]
    snrs, chunk, kind = problem.snrs, config["eval_chunk"], config["threshold_rule"]
    points = config["budget_points"]
    valid = torch.tensor(info["valid_steps"])
    val, test = problem.val, problem.test
    val_errors = info["val_errors"]
    test_errors = per_step_squared_errors(model, test.y, test.x, chunk)
    val_hazards = split_hazards(model, policy, val.y, chunk)
    test_hazards = split_hazards(model, policy, test.y, chunk)
    val_energies, test_energies = (val.x**2).sum(-1), (test.x**2).sum(-1)
    kinds = sorted(RULE_KINDS) if kind == "best" else [kind]
    calibration = min(
        (calibrate_by_nmse(val_errors, val_energies, val_hazards, valid, k, points) for k in kinds),
        key=lambda c: (c["validation_nmse"], c["validation_steps"]),
    )
    # MACs per sample of stopping after step t: the model, the policy's features and the policy.
    per_step = model.feature_costs() + policy.macs()
    costs = model.step_costs() + torch.cumsum(per_step, 0)
    mode = config["inference_mode"]
    rules = {"sampled": SampleRule(config["sample_seed"]), "threshold": calibration["rule"]}
    rows, stops = [], {}
    for rule_name, rule in rules.items():
        start = time.perf_counter()
        measured = evaluate_rule(model, policy, test, rule, valid, snrs, mode, costs)
        seconds = time.perf_counter() - start
        index = measured.pop("stop_index")
        dense = _columns(test_errors, test, snrs, index)
        stops[rule_name] = index
        rows.append(
            {
                "key": f"{name}-{rule_name}",
                "label": f"{label}, {rule_name}"
                + (f" ({calibration['kind']})" if rule_name == "threshold" else ""),
                "model": name,
                "rule": rule_name,
                **measured,
                "inference_seconds": seconds,
                "matches_dense_selection": all(
                    abs(dense[c] - measured[c]) < 1e-4 for c in problem.columns
                ),
            }
        )
    best = oracle_stop(test_errors, test_energies, test.snr, snrs, valid)
    stops["oracle"] = best.pop("stop_index")
    rows.append(
        {
            "key": f"{name}-oracle",
            "label": f"{label}, oracle stop (needs x*)",
            "model": name,
            "rule": "oracle",
            **best,
        }
    )
    full = _columns(test_errors, test, snrs)
    rows.append(
        {
            "key": f"{name}-full",
            "label": f"{label} model, all {model.max_steps} layers",
            "model": name,
            "rule": "full depth",
            **full,
            "mean_steps": float(model.max_steps),
            "mean_cost": float(model.step_costs()[-1]),
        }
    )
    curve = tradeoff_curve(
        val_hazards, test_errors, test_energies, test_hazards, valid, calibration["kind"], points
    )
    histogram = {
        rule: {
            f"{s:g}dB": torch.bincount(
                index[test.snr.cpu() == s].cpu(), minlength=model.max_steps
            ).tolist()
            for s in snrs
        }
        for rule, index in ((r, i.cpu()) for r, i in stops.items())
    }
    details = {
        "valid_steps": info["valid_steps"],
        "oracle_mass": info["oracle_mass"],
        "calibration": {k: v for k, v in calibration.items() if k != "rule"},
        "tradeoff": curve,
        "stop_histogram": histogram,
        "per_layer": per_layer_curves(test_errors, test, snrs),
        "policy_macs_per_step": policy.macs(),
        "step_costs": costs.tolist(),
    }
    return rows, details


def add_same_depth_baseline(rows: list[dict], per_layer: dict, baseline: str) -> None:
    """Give every stop row the NMSE of ``baseline`` (ISTA tuned for T) run for ⌈mean steps⌉
    iterations: the comparison at the same mean depth."""
    curve = per_layer.get(baseline)
    if curve is None:
        return
    for row in rows:
        if row["rule"] in ("sampled", "threshold", "oracle"):
            depth = min(math.ceil(row["mean_steps"] - 1e-9), len(curve["mixed"]))
            row["ista_same_depth"] = {"depth": depth, **{k: v[depth - 1] for k, v in curve.items()}}


def load_stop_model(run_path: str | Path, name: str):
    """Rebuild a trained stop model of a finished run from its checkpoints.

    Returns ``(model, policy, valid_steps (T,) bool, threshold rule, problem)``, with the rule
    calibrated on validation as in ``results.json``; ``name`` is a key of :data:`STOP_MODELS`.
    """
    run_path = Path(run_path)
    config = json.loads((run_path / "config.json").read_text())
    results = json.loads((run_path / "results.json").read_text())
    if name not in STOP_MODELS or name not in results["stop_models"]:
        raise ValueError(
            f"no stop model {name!r} in {run_path}; choose one of {sorted(STOP_MODELS)}"
        )
    details = results["stop_models"][name]
    problem = make_problem(config, run_path)
    A, T = problem.A, config["steps"]
    if name == "lista_stop":
        ista = results["classical"][f"ista-{T}"]
        model = LISTA(A, T, ista["L"], ista["lam"])
    else:
        keep = support_sizes(A.shape[1], T, config["ss_increment"], config["ss_max"])
        alista = ALISTA(A, T, config["alista_gamma"], config["alista_theta"], keep)
        model = LISTACPSS.from_alista(alista)
    prefix = STOP_MODELS[name][1]
    checkpoints = run_path / "checkpoints"
    model.load_state_dict(load_checkpoint(checkpoints / f"{prefix}-stage1.pt")["state"]["model"])
    policy = StopPolicy(
        A.shape[0],
        A.shape[1],
        T,
        hidden=tuple(config["policy_hidden"]),
        summaries=config["policy_summaries"],
    )
    policy.load_state_dict(load_checkpoint(checkpoints / f"{prefix}-stage2.pt")["state"]["policy"])
    calibration = details["calibration"]
    rule = RULE_KINDS[calibration["kind"]].from_score_threshold(calibration["score_threshold"])
    return model.eval(), policy.eval(), torch.tensor(details["valid_steps"]), rule, problem


# ---------------------------------------------------------------- the run


def run(config: dict[str, Any], run_dir) -> dict[str, Any]:
    """Train and measure every method of ``config`` into ``run_dir``; returns the results."""
    check_config(config)
    if config["device"] == "cpu":
        reuse_freed_memory()
    started = time.perf_counter()
    problem = make_problem(config, run_dir.path)
    snrs, chunk = problem.snrs, config["eval_chunk"]
    val, test = problem.val, problem.test

    classical = run_dir.read_json("classical.json")
    if classical is None:
        log("tuning ISTA and FISTA (L, λ) on validation")
        start = time.perf_counter()
        classical = {
            f"{algorithm}-{budget}": tune(
                algorithm,
                problem.A,
                budget,
                val.y,
                val.x,
                PAPER_SETTINGS.get((algorithm, budget), PAPER_SETTINGS[(algorithm, 20)]),
                config["tune_lambda_factors"],
                config["tune_L_factors"],
            )
            for algorithm in CLASSICAL
            for budget in config["classical_budgets"]
        }
        classical["seconds"] = time.perf_counter() - start
        run_dir.write_json("classical.json", classical)

    rows: list[dict[str, Any]] = []
    per_layer: dict[str, dict[str, list]] = {}
    for algorithm in CLASSICAL:
        for budget in config["classical_budgets"]:
            tuned = classical[f"{algorithm}-{budget}"]
            model = CLASSICAL[algorithm](problem.A, budget, tuned["L"], tuned["lam"])
            errors = per_step_squared_errors(model, test.y, test.x, chunk)
            key = f"{algorithm}-{budget}"
            rows.append(
                {
                    "key": key,
                    "label": f"{algorithm.upper()} (T={budget})",
                    "model": key,
                    "rule": "fixed",
                    **_columns(errors, test, snrs),
                    "mean_steps": float(budget),
                    "mean_cost": float(model.step_costs()[-1]),
                    "L": tuned["L"],
                    "lam": tuned["lam"],
                }
            )
            per_layer[key] = per_layer_curves(errors, test, snrs)

    details: dict[str, Any] = {}
    stages = Stages(config, run_dir, problem)
    if not config["classical_only"]:
        T = config["steps"]
        ista = classical[f"ista-{T}"]
        lista = train_lista(config, stages, problem.A, (ista["L"], ista["lam"]))
        lista.eval()
        errors = per_step_squared_errors(lista, test.y, test.x, chunk)
        rows.append(
            {
                "key": "lista",
                "label": f"LISTA (T={T})",
                "model": "lista",
                "rule": "fixed",
                **_columns(errors, test, snrs),
                "mean_steps": float(T),
                "mean_cost": float(lista.step_costs()[-1]),
            }
        )
        per_layer["lista"] = per_layer_curves(errors, test, snrs)

        start_model = (
            copy.deepcopy(lista)
            if config["stage1_init"] == "lista"
            else LISTA(problem.A, T, ista["L"], ista["lam"]).to(problem.device)
        )
        lista_keys = {
            "stage1_steps": "stage1_steps",
            "batch": "stage1_batch",
            "lr": "stage1_lr",
            "weight_decay": "stage1_weight_decay",
            "stage2_steps": "stage2_steps",
        }
        model, policy, info = train_stop_model(
            config, stages, problem, start_model, "lista-stop", 1, lista_keys
        )
        stop_rows, details["lista_stop"] = measure_stop_model(
            config, problem, "lista_stop", model, policy, info
        )
        rows += stop_rows

        alista = train_alista(config, stages, problem.A)
        alista.eval()
        errors = per_step_squared_errors(alista, test.y, test.x, chunk)
        rows.append(
            {
                "key": "alista",
                "label": f"ALISTA with support selection (T={T})",
                "model": "alista",
                "rule": "fixed",
                **_columns(errors, test, snrs),
                "mean_steps": float(T),
                "mean_cost": float(alista.step_costs()[-1]),
            }
        )
        per_layer["alista"] = per_layer_curves(errors, test, snrs)

        cpss_keys = {
            "stage1_steps": "cpss_stage1_steps",
            "batch": "cpss_batch",
            "lr": "cpss_lr",
            "weight_decay": "cpss_weight_decay",
            "stage2_steps": "cpss_stage2_steps",
        }
        model, policy, info = train_stop_model(
            config, stages, problem, LISTACPSS.from_alista(alista), "cpss-stop", 6, cpss_keys
        )
        stop_rows, details["cpss_stop"] = measure_stop_model(
            config, problem, "cpss_stop", model, policy, info
        )
        rows += stop_rows

    add_same_depth_baseline(rows, per_layer, f"ista-{config['steps']}")
    results = {
        "task": {k: config[k] for k in ("m", "n", "condition", "sparsity", "snrs", "per_snr")},
        "columns": problem.columns,
        "rows": rows,
        "per_layer": per_layer,
        "stop_models": details,
        "classical": classical,
        "stages": stages.records,
        "training_seconds": sum(r["seconds"] for r in stages.records.values()),
        "training_cpu_seconds": sum(r["cpu_seconds"] for r in stages.records.values()),
        "wall_seconds_this_run": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }
    results["table"] = write_table(results, config, run_dir)
    write_figures(results, run_dir)
    run_dir.write_results(results)
    return results
