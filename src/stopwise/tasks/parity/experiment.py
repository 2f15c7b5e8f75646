"""The parity experiment: every (method, hyperparameter value, seed) is one job; jobs run one after
the other or in parallel worker processes (one thread each), and each writes
``jobs/<id>.json`` when done, so a rerun on the same run directory skips finished jobs and resumes
unfinished ones from their checkpoints (``checkpoints/<id>/``; metrics in ``metrics/<id>.jsonl``).
The summary (``results.json``, ``table.md``, figures) is rebuilt from the job files.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from ...checkpoints import atomic_write_text
from ...inference import MODES
from ...training import LoopSettings, seed_everything, set_threads
from .data import check_k_range, sample_parity
from .methods import METHODS, RULES, Training, infer, train_method
from .metrics import evaluate_rule
from .model import ParityGRU
from .report import summarize, write_figures, write_tables

__all__ = ["run", "make_jobs", "run_job", "check_config", "job_settings"]

# The config keys that decide a job's numbers, besides its method, value and seed.
JOB_KEYS = (
    "n",
    "train_k",
    "test_k",
    "hidden",
    "max_steps",
    "batch_size",
    "updates",
    "lr",
    "grad_clip",
    "policy_updates",
    "val_size",
    "test_size",
    "act_eps",
    "act_halting_bias",
    "pondernet_beta",
    "thesis_prior_p",
    "inference_mode",
    "device",
)


def job_settings(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config[key] for key in JOB_KEYS}


def check_config(config: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad key or value."""
    check_k_range(config["n"], config["train_k"])
    check_k_range(config["n"], config["test_k"])
    for key in ("hidden", "max_steps", "batch_size", "updates", "num_seeds", "workers"):
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1; got {config[key]}")
    for key in ("val_size", "test_size", "policy_updates"):
        if config[key] < 0:
            raise ValueError(f"{key} must be >= 0; got {config[key]}")
    if config["val_size"] == 0 or config["test_size"] == 0:
        raise ValueError("val_size and test_size must be > 0")
    if not config["methods"]:
        raise ValueError(f"methods is empty; choose from {sorted(METHODS)}")
    unknown = sorted(set(config["methods"]) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    for name in config["methods"]:
        key = METHODS[name].hyperparameter
        if not config[key]:
            raise ValueError(f"{key} (the values of {name}'s hyperparameter) is empty")
    bounds = {
        "fixed_depth": (lambda v: v == int(v) and 1 <= v <= config["max_steps"], "1..max_steps"),
        "act_tau": (lambda v: v >= 0, ">= 0"),
        "pondernet_lambda_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "l2s_beta": (lambda v: v > 0, "> 0"),
        "thesis_beta": (lambda v: v >= 0, ">= 0"),
    }
    for key, (ok, text) in bounds.items():
        bad = [v for v in config[key] if not ok(v)]
        if bad:
            raise ValueError(f"{key} values must be {text}; got {bad}")
    if not 0 < config["thesis_prior_p"] < 1:
        raise ValueError(f"thesis_prior_p must lie in (0, 1); got {config['thesis_prior_p']}")
    if not 0 < config["act_eps"] < 1:
        raise ValueError(f"act_eps must lie in (0, 1); got {config['act_eps']}")
    if config["inference_mode"] not in MODES:
        raise ValueError(f"inference_mode must be one of {MODES}; got {config['inference_mode']!r}")
    if config["device"].startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {config['device']!r} requested but CUDA is not available")
    if config["reuse_from"] and not Path(config["reuse_from"]).is_dir():
        raise ValueError(f"reuse_from {config['reuse_from']!r} is not a run directory")
    if "l2s" in config["methods"] and config["policy_updates"] < 1:
        raise ValueError("L2S needs policy_updates >= 1 for its stage II")


def make_jobs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One job per method, hyperparameter value and seed, in a stable order."""
    seeds = range(config["seed"], config["seed"] + config["num_seeds"])
    jobs = []
    for name in config["methods"]:
        for value in config[METHODS[name].hyperparameter]:
            for seed in seeds:
                jobs.append(
                    {
                        "id": f"{name}-{value:g}-s{seed}",
                        "method": name,
                        "value": value,
                        "seed": seed,
                    }
                )
    return jobs


def _cost(job: dict[str, Any], config: dict[str, Any]) -> float:
    """Rough relative cost, to start the longest jobs first."""
    steps = job["value"] if job["method"] == "fixed" else config["max_steps"]
    extra = 2 * config["policy_updates"] / 3 if job["method"] == "l2s" else 0
    return (config["updates"] + extra) * steps


def evaluation_set(config: dict[str, Any], seed: int, which: str):
    """The validation set (training k range) or the test set (test k range) of a seed."""
    offset, size, k_range = {
        "val": (101, config["val_size"], config["train_k"]),
        "test": (202, config["test_size"], config["test_k"]),
    }[which]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + offset)
    return sample_parity(size, config["n"], k_range, generator)


def run_job(job: dict[str, Any], config: dict[str, Any], run_path: str) -> dict[str, Any]:
    """Train and evaluate one job; returns (and saves as ``jobs/<id>.json``) its result rows."""
    path = Path(run_path)
    out = path / "jobs" / f"{job['id']}.json"
    if out.exists():
        return json.loads(out.read_text())
    set_threads(config["threads"])
    seed_everything(job["seed"])
    device = torch.device(config["device"])
    method = METHODS[job["method"]]
    n, train_k = config["n"], check_k_range(config["n"], config["train_k"])
    steps = int(job["value"]) if method.name == "fixed" else config["max_steps"]
    bias = config["act_halting_bias"] if method.name == "act" else None
    model = ParityGRU(n, config["hidden"], steps, halting_bias=bias).to(device)

    def sample(batch: int, generator: torch.Generator):
        x, y, _ = sample_parity(batch, n, train_k, generator)
        return x.to(device), y.to(device)

    checkpoints = path / "checkpoints" / job["id"]
    resumed = checkpoints.exists() and any(checkpoints.iterdir())
    settings = LoopSettings(
        checkpoint_dir=checkpoints,
        checkpoint_every=config["checkpoint_every"],
        metrics_path=path / "metrics" / f"{job['id']}.jsonl",
        log_every=config["log_every"],
        progress=False if config["workers"] > 1 or not config["progress"] else None,
    )
    training = Training(config, settings, sample, job["seed"])
    heads = train_method(method.name, model, job["value"], training)

    sets = {which: evaluation_set(config, job["seed"], which) for which in ("val", "test")}
    rows = []
    for variant, head in heads.items():
        for rule in method.rules:
            measured = {}
            for which, batch in sets.items():
                start = time.perf_counter()
                logits, stop = infer(
                    rule, model, head, batch.x.to(device), config, sample_seed=job["seed"] + 7
                )
                seconds = time.perf_counter() - start
                measured[which] = evaluate_rule(logits.cpu(), stop.cpu(), batch.y, batch.k, train_k)
                measured[which]["inference_seconds"] = seconds
            rows.append(
                {
                    **{k: job[k] for k in ("id", "method", "value", "seed")},
                    "variant": variant,
                    "label": method.variant_label(variant),
                    "rule": rule,
                    "causal": RULES[rule][1],
                    **measured["test"],
                    # what the rule computes: a non-causal rule runs every step before choosing
                    "steps_run": measured["test"]["mean_steps"] if RULES[rule][1] else steps,
                    "validation_accuracy": measured["val"]["accuracy"],
                    "validation_steps": measured["val"]["mean_steps"],
                    "train_seconds": training.variant_seconds(variant),
                    "resumed": resumed,
                }
            )
    result = {"job": job, "settings": job_settings(config), "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return result


def _reuse(jobs: list[dict[str, Any]], config: dict[str, Any], path: Path) -> None:
    """Copy finished jobs of the run ``reuse_from`` that were run with the same settings."""
    source = Path(config["reuse_from"]) / "jobs"
    settings = job_settings(config)
    for job in jobs:
        mine, theirs = path / "jobs" / f"{job['id']}.json", source / f"{job['id']}.json"
        if mine.exists() or not theirs.exists():
            continue
        result = json.loads(theirs.read_text())
        if result.get("settings") == settings:
            result["reused_from"] = str(theirs.resolve())
            atomic_write_text(mine, json.dumps(result, indent=1) + "\n")


def _run_jobs(jobs: list[dict[str, Any]], config: dict[str, Any], path: Path) -> list[dict]:
    if config["reuse_from"]:
        _reuse(jobs, config, path)
    done = {job["id"] for job in jobs if (path / "jobs" / f"{job['id']}.json").exists()}
    pending = sorted(
        (job for job in jobs if job["id"] not in done), key=lambda j: -_cost(j, config)
    )
    if pending:
        print(
            f"parity: {len(pending)} job(s) to run ({len(done)} already done), "
            f"{config['workers']} worker(s)",
            file=sys.stderr,
        )
    if config["workers"] == 1:
        for job in pending:
            run_job(job, config, str(path))
            print(f"parity: done {job['id']}", file=sys.stderr)
    elif pending:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config["workers"], mp_context=context) as pool:
            futures = {pool.submit(run_job, job, config, str(path)): job for job in pending}
            for future in as_completed(futures):
                future.result()  # re-raise a worker's error here
                print(f"parity: done {futures[future]['id']}", file=sys.stderr)
    return [json.loads((path / "jobs" / f"{job['id']}.json").read_text()) for job in jobs]


def run(config: dict[str, Any], run_dir) -> dict[str, Any]:
    """Run every job of ``config`` into ``run_dir`` and write the summary, tables and figures."""
    check_config(config)
    start = time.perf_counter()
    results = _run_jobs(make_jobs(config), config, Path(run_dir.path))
    rows = [row for result in results for row in result["rows"]]
    summary = summarize(rows, config)
    summary["wall_seconds"] = time.perf_counter() - start
    run_dir.write_results(summary)
    run_dir.write_table(write_tables(summary, config))
    write_figures(rows, summary, run_dir)
    return summary
