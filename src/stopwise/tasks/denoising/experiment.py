"""The denoising jobs (per seed) and what each measures.

    pretrain            plain DnCNN, last output (the shared start of every DnCNN below)
    dncnn               pretrain → more updates on the last output (the DnCNN baseline)
    dncnn-depth<d>      a plain DnCNN of depth d < depth, one per ``trained_depths``, trained
                        from its own start with DnCNN's schedule (pretrain, then fine-tune)
    dncnn-ds            pretrain → exit heads, uniform deep supervision
    stage1-beta<β>      pretrain → exit heads, L2S stage I under the oracle, one per β
    dncnn-stop          β chosen on validation; exits pruned; stage II policy; thresholds
                        calibrated on validation; the test images once, run for real (with
                        ``gain_head``, also a stop head for budgets on the same model and exits)
    classical           BM3D (true σ) and non-local means (h chosen on validation)

``dncnn``, ``dncnn-ds`` and every stage-I job take the same number of updates from the same
pretrained weights on the same patches, so they have the same training budget. The test set
(centre crops of the test images, every σ, noise per image and σ from the seed's ``test-noise``
stream) is opened once per job, after every choice.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import numpy as np
import torch

from ...contract import Job, JobContext, TrainedStopModel, files_digest
from ...inference import (
    HazardThreshold,
    ScoreThreshold,
    fit_threshold,
    run_adaptive,
    stop_indices,
    time_adaptive,
)
from ...selection import (
    Heldout,
    budget_grid,
    budget_sweep,
    calibrate_by_metric,
    curve_budgets,
    fixed_depth_curve,
    floored_costs,
    point_rule,
)
from ...stats import spearman
from .config import DenoisingConfig
from .data import (
    NoisySet,
    center_crop,
    folder_files,
    load_splits,
    noisy_set,
    png_base64,
    sample_patches,
    tiles,
)
from .methods import (
    bm3d_denoise,
    build_dncnn,
    near_best_exit,
    nlm_denoise,
    policy_data,
    stage_best_weights,
    train_dncnn,
    train_policy,
)
from .metrics import by_sigma, estimate, exit_table, psnr, ssim
from .models import ImagePolicy, inference_copy

__all__ = [
    "jobs",
    "data_params",
    "run_job",
    "validation_set",
    "test_set",
    "stage1_name",
    "stage1_candidates",
    "grid_item",
    "kept_exits",
    "oracle_under_budget",
    "budget_oracle_score",
]

# What every job reads of the data (and images_dir, a location key: a user's images enter the
# settings as their digest); the classical denoisers run on the CPU whatever `device` is.
_DATA = ("train_sigmas", "test_sigmas", "test_crop", "test_images", "val_crop", "val_tiles")
_GRID = ("grid_image", "grid_sigma")  # the picture grid: the jobs that draw one read it
_COMMON = _DATA + ("device",)
_NETWORK = _COMMON + (
    "depth", "width", "patch", "batch", "precision", "channels_last", "eval_every", "patience",
    "pretrain",
)  # fmt: skip
_FINETUNED = _NETWORK + ("finetune",)


def stage1_name(beta: float) -> str:
    return f"stage1-beta{beta:g}"


def trained_depth_name(depth: int) -> str:
    return f"dncnn-depth{depth}"


def data_params(config: DenoisingConfig) -> dict[str, str]:
    """``{"data": "sha256:…"}`` of a user's ``images_dir`` (other or changed images are other
    settings: a rerun with them is refused, not served the old jobs); ``{}`` for the built-in
    sample photos, whose jobs' settings stay as they were."""
    return {"data": files_digest(folder_files(config.images_dir))} if config.images_dir else {}


def jobs(config: DenoisingConfig) -> list[Job]:
    data = data_params(config)
    return [dataclasses.replace(job, params={**job.params, **data}) for job in _jobs(config)]


def _jobs(config: DenoisingConfig) -> list[Job]:
    stage1 = [
        Job(
            stage1_name(b),
            {"beta": b},
            ("pretrain",),
            _FINETUNED + ("exit_head", "oracle_detached"),
            cost=2.0,
        )
        for b in config.betas
    ]
    stop_keys = _FINETUNED + (
        "exit_head", "betas", "uniform_candidate", "stage1_criterion", "policy", "min_exit_frequency",
        "budget_points", "curve_validation", "inference_mode", "gain_head", "gain_price",
        "select_within_db", *_GRID, "timing_repeats",
    )  # fmt: skip
    candidates = [j.name for j in stage1] + (["dncnn-ds"] if config.uniform_candidate else [])
    shallow = [
        Job(trained_depth_name(d), {"depth": d}, (), _FINETUNED, cost=6.0 * d / config.depth)
        for d in sorted(set(config.trained_depths))
    ]
    return [
        Job("pretrain", {}, (), _NETWORK, cost=4.0),
        *shallow,
        Job("classical", {}, (), _DATA + _GRID + ("nlm_h", "bm3d_profiles"), cost=3.0),
        Job("dncnn", {}, ("pretrain",), _FINETUNED + _GRID, cost=2.0),
        Job("dncnn-ds", {}, ("pretrain",), _FINETUNED + ("exit_head",), cost=2.0),
        *stage1,
        Job("dncnn-stop", {}, tuple(candidates), stop_keys, cost=1.0),
    ]


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    if job.name.startswith("stage1-"):
        return _stage1(context, job.params["beta"])
    if job.name.startswith("dncnn-depth"):
        return _trained_depth(context, job.params["depth"])
    run = {
        "pretrain": _pretrain,
        "classical": _classical,
        "dncnn": _dncnn,
        "dncnn-ds": _dncnn_ds,
        "dncnn-stop": _dncnn_stop,
    }[job.name]
    return run(context)


# ---------------------------------------------------------------- data of a job


def validation_items(config: DenoisingConfig, like_test: bool = False) -> tuple[int, list, str]:
    """(tile side, noise levels, noise stream) of :func:`validation_set`."""
    if like_test:
        return config.test_crop, config.test_sigmas, "validation-noise-like-test"
    return config.val_crop, config.train_sigmas, "validation-noise"


def validation_set(
    config: DenoisingConfig,
    context: JobContext,
    device: torch.device | None = None,
    like_test: bool = False,
) -> NoisySet:
    """Tiles of the validation images under the training noise levels, or, ``like_test``,
    tiles of the test crops' side under the test noise levels (from a noise stream of their
    own); the seed's own noise, on ``device`` (default: the run's)."""
    split = load_splits(config.images_dir).val
    crop, sigmas, stream = validation_items(config, like_test)
    images, names = [], []
    for name, image in zip(split.names, split.images, strict=True):
        for k, tile in enumerate(tiles(image, crop, config.val_tiles)):
            images.append(tile)
            names.append(f"{name}#{k}")
    data = noisy_set(images, names, sigmas, context.generator(stream))
    return data.to(device or context.device)


def test_set(
    config: DenoisingConfig, context: JobContext, device: torch.device | None = None
) -> Heldout[NoisySet]:
    """Centre crops of the test images under every test σ, wrapped to be opened once, on
    ``device`` (default: the run's)."""
    split = load_splits(config.images_dir).test
    count = config.test_images or len(split.names)
    crops = [center_crop(image, config.test_crop) for image in split.images[:count]]
    names = split.names[:count]
    data = noisy_set(crops, names, config.test_sigmas, context.generator("test-noise"))
    return Heldout(data.to(device or context.device))


def grid_item(config: DenoisingConfig, data: NoisySet) -> int:
    """The item shown in the picture grid: ``grid_image`` (default the first) at ``grid_sigma``."""
    name = config.grid_image or data.names[0]
    for i, (n, s) in enumerate(zip(data.names, data.sigma.tolist(), strict=True)):
        if n == name and s == config.grid_sigma:
            return i
    raise ValueError(f"no test item {name!r} at σ={config.grid_sigma:g}")


def _quality(
    estimates: list[torch.Tensor], data: NoisySet, config: DenoisingConfig
) -> dict[str, Any]:
    """PSNR and SSIM of per-item estimates ``(1, H, W)``: per item and per σ."""
    clean = [data.item(i)[0].cpu() for i in range(data.size)]
    estimates = [e.cpu() for e in estimates]
    p = torch.cat(
        [psnr(e.unsqueeze(0), c.unsqueeze(0)) for e, c in zip(estimates, clean, strict=True)]
    )
    s = torch.cat(
        [ssim(e.unsqueeze(0), c.unsqueeze(0)) for e, c in zip(estimates, clean, strict=True)]
    )
    return {
        "psnr": p.tolist(),
        "ssim": s.tolist(),
        "psnr_by_sigma": by_sigma(p, data.sigma, config.test_sigmas),
        "ssim_by_sigma": by_sigma(s, data.sigma, config.test_sigmas),
    }


def _exit_psnr_by_sigma(table: torch.Tensor, data: NoisySet, config) -> list[list[float]]:
    """``[exit][σ]`` mean test PSNR (NaN where an exit has no head)."""
    return [by_sigma(table[:, t], data.sigma, config.test_sigmas) for t in range(table.shape[1])]


# ---------------------------------------------------------------- DnCNN jobs


def _pretrained(context: JobContext) -> torch.nn.Module:
    model = build_dncnn(context.config, context.device)
    model.load_state_dict(stage_best_weights(context.checkpoint("pretrain", job="pretrain")))
    return model


def _pretrain(context: JobContext) -> dict[str, Any]:
    config: DenoisingConfig = context.config
    context.manual_seed("init")
    model = build_dncnn(config, context.device)
    val = validation_set(config, context)
    with context.timed("train"):
        training = train_dncnn(
            model, config, config.pretrain, "last", context, val, "pretrain", "pretrain-batches"
        )
    return {"training": training}


def _dncnn(context: JobContext) -> dict[str, Any]:
    config: DenoisingConfig = context.config
    model = _pretrained(context)
    val = validation_set(config, context)
    with context.timed("train"):
        training = train_dncnn(
            model, config, config.finetune, "last", context, val, "finetune", "finetune-batches"
        )
    data = test_set(config, context).open()
    table = exit_table(model, data, keep_images=True)
    record = {"training": training, "test": _quality(table.last, data, config)}
    record["grid"] = png_base64(table.last[grid_item(config, data)])
    if config.precision == "bfloat16":
        record["bfloat16_check"] = _bfloat16_check(model, data, table.psnr[:, -1], config)
    return record


def _trained_depth(context: JobContext, depth: int) -> dict[str, Any]:
    """A plain DnCNN of ``depth`` layers with the baseline's two stages and batch streams."""
    config: DenoisingConfig = context.config
    context.manual_seed("init")
    model = build_dncnn(config, context.device, depth)
    val = validation_set(config, context)
    with context.timed("train"):
        training = [
            train_dncnn(model, config, stage, "last", context, val, name, f"{name}-batches")
            for name, stage in (("pretrain", config.pretrain), ("finetune", config.finetune))
        ]
    data = test_set(config, context).open()
    table = exit_table(model, data, keep_images=True)
    return {
        "depth": depth,
        "training": training,
        "macs_per_pixel": float(model.fixed_depth_macs()[-1]),
        "test": _quality(table.last, data, config),
    }


def _bfloat16_check(model, data: NoisySet, bf16_psnr: torch.Tensor, config) -> dict[str, Any]:
    """The same weights in float32: how far bfloat16 inference moves the test PSNR."""
    model.precision = "float32"
    try:
        fp32_psnr = exit_table(model, data).psnr[:, -1]
    finally:
        model.precision = "bfloat16"
    difference = bf16_psnr - fp32_psnr
    return {
        "psnr_float32_by_sigma": by_sigma(fp32_psnr, data.sigma, config.test_sigmas),
        "psnr_bfloat16_by_sigma": by_sigma(bf16_psnr, data.sigma, config.test_sigmas),
        "max_abs_psnr_difference": float(difference.abs().max()),
        "mean_psnr_difference": float(difference.mean()),
    }


def _with_heads(context: JobContext) -> torch.nn.Module:
    model = _pretrained(context)
    context.manual_seed("heads")
    return model.add_exit_heads(context.config.exit_head).to(context.device)


def _dncnn_ds(context: JobContext) -> dict[str, Any]:
    config: DenoisingConfig = context.config
    model = _with_heads(context)
    val = validation_set(config, context)
    with context.timed("train"):
        training = train_dncnn(
            model, config, config.finetune, "uniform", context, val, "finetune", "finetune-batches"
        )
    val_table = exit_table(model, val)
    data = test_set(config, context).open()
    table = exit_table(model, data, keep_images=True)
    costs = model.fixed_depth_macs()
    all_exits = torch.ones(model.max_steps, dtype=torch.bool)
    return {
        "training": training,
        "val_oracle_psnr": float(val_table.psnr.amax(dim=1).mean()),
        "val_last_psnr": float(val_table.psnr[:, -1].mean()),
        "test": _quality(table.last, data, config),
        "exit_psnr_by_sigma": _exit_psnr_by_sigma(table.psnr, data, config),
        "fixed_depth": fixed_depth_curve(
            data.size, _curve_metric(table, data, config), all_exits, costs
        ),
    }


def _stage1(context: JobContext, beta: float) -> dict[str, Any]:
    config: DenoisingConfig = context.config
    model = _with_heads(context)
    val = validation_set(config, context)
    with context.timed("train"):
        training = train_dncnn(
            model, config, config.finetune, "oracle", context, val, "stage1", "finetune-batches",
            beta=beta,
        )  # fmt: skip
    table = exit_table(model, val)
    return {
        "beta": beta,
        "training": training,
        "val_oracle_psnr": float(table.psnr.amax(dim=1).mean()),
        "val_last_psnr": float(table.psnr[:, -1].mean()),
    }


def _curve_metric(table, data: NoisySet, config: DenoisingConfig):
    """``metric(stop index (N,)) -> {"psnr", "psnr_by_sigma"}`` from a per-exit PSNR table."""

    def metric(index: torch.Tensor) -> dict[str, Any]:
        chosen = table.psnr.gather(1, index.cpu().view(-1, 1)).squeeze(1)
        return {
            "psnr": float(chosen.mean()),
            "psnr_by_sigma": by_sigma(chosen, data.sigma, config.test_sigmas),
        }

    return metric


# ---------------------------------------------------------------- DnCNN-stop


def stage1_candidates(config: DenoisingConfig) -> dict[str, tuple[str, str, float | None]]:
    """``{candidate: (job, stage, β)}``: the stage-I models DnCNN-stop chooses from, one per β,
    and with ``uniform_candidate`` the uniform-DS model (β = ∞: q* uniform over exits)."""
    out = {stage1_name(b): (stage1_name(b), "stage1", b) for b in config.betas}
    if config.uniform_candidate:
        out["uniform"] = ("dncnn-ds", "finetune", None)
    return out


def _stage1_model(context: JobContext, candidate: str):
    config: DenoisingConfig = context.config
    job, stage, _ = stage1_candidates(config)[candidate]
    model = build_dncnn(config, context.device).add_exit_heads(config.exit_head)
    model.load_state_dict(stage_best_weights(context.checkpoint(stage, job=job)))
    return model.eval()


def stop_models(config: DenoisingConfig) -> dict:
    """DnCNN-stop with its policy and, with ``gain_head``, with its gain head (``/gain``)."""
    heads = {"dncnn-stop": ("stage2", "curve")}
    if config.gain_head:
        heads["dncnn-stop/gain"] = ("stage2-gain", "gain_curve")
    return {name: ("dncnn-stop", partial(_trained, name, *head)) for name, head in heads.items()}


def _trained(
    name: str, stage: str, curve: str, context: JobContext, record: dict
) -> TrainedStopModel:
    config: DenoisingConfig = context.config
    model = _stage1_model(context, record["stage1"])
    policy = ImagePolicy(config.policy.width, model.max_steps, config.policy.step_bias)
    policy.load_state_dict(stage_best_weights(context.checkpoint(stage)))
    rules = {}
    if stage == "stage2":  # the job's own rows
        rules = {
            "stop": ScoreThreshold(record["calibration"]["score_threshold"]),
            "stop_official": HazardThreshold(0.5),
        }
    return TrainedStopModel(
        name,
        model,
        policy.to(context.device),
        curve_budgets(record[curve]),
        cost="multiply-adds per pixel (layers, exit heads and policy)",
        valid_steps=torch.tensor(record["valid_exits"]),
        rules=rules,
        inputs="noisy grey image (1, H, W) in [0, 1]; the prediction is the noise (its residual)",
        test_inputs=lambda: [noisy for _, _, noisy in test_set(config, context).open().groups],
        fast_copy=inference_copy,
    )


def budget_oracle_score(psnr_table: torch.Tensor, costs: torch.Tensor, points: int) -> float:
    """Mean, over ``points`` budgets evenly spread from the first to the last exit's cost, of
    the best mean PSNR an oracle stop reaches within the budget (:func:`oracle_under_budget`,
    interpolated): how good a model is for stopping at every budget, not only at full depth."""
    valid = torch.ones(psnr_table.shape[1], dtype=torch.bool)
    frontier = oracle_under_budget(psnr_table, valid, costs)
    xs = [p["mean_cost"] for p in frontier]
    ys = [p["psnr"] for p in frontier]
    grid = budget_grid(valid, points, costs)
    values = [float(np.interp(b, xs, ys, left=min(ys))) for b in grid]
    return sum(values) / len(values)


def _choose_stage1(context: JobContext, val: NoisySet) -> tuple[str, dict[str, float]]:
    """The stage-I model of best validation score (the first candidate on ties): its
    best-exit PSNR (``stage1_criterion=oracle``, the official stage-I criterion) or
    :func:`budget_oracle_score` (``budget_oracle``, every exit with a head and the policy's
    cost counted)."""
    config: DenoisingConfig = context.config
    candidates = stage1_candidates(config)
    scores = {}
    for name, (job, _, _) in candidates.items():
        if config.stage1_criterion == "oracle":
            scores[name] = context.dependency(job).record["val_oracle_psnr"]
        else:
            model = _stage1_model(context, name)
            policy_macs = ImagePolicy(config.policy.width, model.max_steps).macs()
            costs = model.adaptive_macs(torch.ones(model.max_steps, dtype=torch.bool), policy_macs)
            table = exit_table(model, val).psnr
            scores[name] = budget_oracle_score(table, costs, config.budget_points)
    order = list(candidates)
    return max(scores, key=lambda n: (scores[n], -order.index(n))), scores


def kept_exits(
    val_losses: torch.Tensor, min_frequency: float, tolerance_db: float = 0.0
) -> tuple[torch.Tensor, list]:
    """Exits whose validation stop-target frequency (share of items whose
    :func:`near_best_exit` is there; with δ = 0 the hard oracle argmin ℓ) is ≥
    ``min_frequency`` (the official pruning), and always the last exit, so every image may
    still use the whole network. Returns the ``(T,)`` mask and the frequencies."""
    T = val_losses.shape[1]
    target = near_best_exit(val_losses, None, tolerance_db)
    frequency = torch.bincount(target, minlength=T).double() / len(val_losses)
    valid = frequency >= min_frequency
    valid[-1] = True
    return valid, frequency.tolist()


def _dncnn_stop(context: JobContext) -> dict[str, Any]:
    config: DenoisingConfig = context.config
    # Choices, all on validation: the stage-I model, kept exits, the policy checkpoint, the
    # threshold.
    val = validation_set(config, context)
    chosen, stage1_scores = _choose_stage1(context, val)
    beta = stage1_candidates(config)[chosen][2]
    model = _stage1_model(context, chosen)
    T = model.max_steps
    val_table = exit_table(model, val)
    valid, frequency = kept_exits(
        val_table.loss, config.min_exit_frequency, config.policy.tolerance_db
    )
    pool_noisy, pool_noise = sample_patches(
        load_splits(config.images_dir).train.images,
        config.policy.pool,
        config.policy.crop,
        config.train_sigmas,
        context.generator("policy-pool"),
    )
    train_data = policy_data(model, pool_noisy.to(context.device), pool_noise.to(context.device))
    val_data = _val_policy_data(model, val)
    context.manual_seed("policy-init")
    policy = ImagePolicy(config.policy.width, T, config.policy.step_bias).to(context.device)
    with context.timed("train"):
        policy_training = train_policy(policy, train_data, val_data, valid, config, context)
    costs = model.adaptive_macs(valid, policy.macs())
    step_macs = float(model.module_macs()[-1] + model.head_macs(0))
    gain = None
    if config.gain_head:  # the same frozen model, kept exits and features; stage II for budgets
        context.manual_seed("gain-head-init")
        gain = ImagePolicy(config.policy.width, T, config.policy.step_bias).to(context.device)
        with context.timed("train-gain-head"):
            gain_training = train_policy(
                gain, train_data, val_data, valid, config, context, gain_costs=costs / step_macs
            )
    val_hazards = exit_table(model, val, policy=policy, valid=valid).hazards
    val_metric = _mean_psnr_at(val_table.psnr)
    budgets = budget_grid(valid, config.budget_points, costs)
    calibration = calibrate_by_metric(
        val_hazards, val_metric, budgets, ("hazard",), valid, costs, lower_is_better=False
    )
    if config.select_within_db > 0:  # the cheapest budget within the tolerance of the best
        best = max(c["value"] for c in calibration.candidates)
        kept = [c for c in calibration.candidates if c["value"] >= best - config.select_within_db]
        cheapest = min(kept, key=lambda c: c["cost"])
        calibration.rule = fit_threshold(val_hazards, cheapest["budget"], costs, "hazard", valid)
        calibration.budget, calibration.value = cheapest["budget"], cheapest["value"]
        calibration.mean_cost = cheapest["cost"]
    rules = {"stop": calibration.rule, "stop_official": HazardThreshold(0.5)}

    # The test images, once.
    data = test_set(config, context).open()
    table = exit_table(model, data, keep_images=True, policy=policy, valid=valid)
    test_hazards = table.hazards
    rows: dict[str, Any] = {}
    grid = grid_item(config, data)
    grid_images = {}
    for name, rule in rules.items():
        index, estimates = _run_rule(model, policy, rule, data, valid, costs, config)
        dense = stop_indices(test_hazards, rule, valid)
        rows[name] = {
            **_quality(estimates, data, config),
            **_exits(index, data, config, costs),
            "matches_dense": bool(torch.equal(index.cpu(), dense.cpu())),
        }
        grid_images[name] = png_base64(estimates[grid])
    oracle_index = table.best_index(valid)
    rows["oracle"] = {
        **_quality(table.best, data, config),
        **_exits(oracle_index, data, config, costs),
    }
    rows["last_exit"] = _quality(table.last, data, config)
    metric = _curve_metric(table, data, config)
    floor_saves = model.exit_macs(valid, policy.macs())  # heads and policy before a floor
    # The budget curves' rules are fitted on validation items made like the test items they
    # are measured on (by default); the choices above stay at the training noise levels.
    curve_val, curve_val_hazards, curve_val_metric = val, val_hazards, val_metric
    if config.curve_validation == "like_test":
        curve_val = validation_set(config, context, like_test=True)
        curve_val_table = exit_table(model, curve_val, policy=policy, valid=valid)
        curve_val_hazards = curve_val_table.hazards
        curve_val_metric = _mean_psnr_at(curve_val_table.psnr)

    def sweep(val_scores, test_scores):
        return budget_sweep(
            val_scores, test_scores, budgets, metric, "hazard", valid, costs,
            val_metric=curve_val_metric, lower_is_better=False, decision_costs=floor_saves,
        )  # fmt: skip

    curve = sweep(curve_val_hazards, test_hazards)
    for point in curve:
        index = stop_indices(test_hazards, point_rule(point), valid)
        point["spearman_exit_sigma"] = _finite(spearman(data.sigma.tolist(), index.tolist()))
    headed = torch.ones(T, dtype=torch.bool)
    fixed = fixed_depth_curve(data.size, metric, headed, model.fixed_depth_macs())
    stop_exit = torch.tensor(rows["stop"]["exit"], dtype=torch.float64)
    gain_head = {}
    if gain is not None:
        gain_val = exit_table(model, curve_val, policy=gain, valid=valid).hazards
        gain_test = exit_table(model, data, policy=gain, valid=valid).hazards
        gain_head = {
            "gain_training": gain_training,
            "gain_curve": sweep(gain_val, gain_test),
        }
    return {
        "sigma": data.sigma.tolist(),
        "stage1": chosen,
        "beta": beta,
        "stage1_criterion": config.stage1_criterion,
        "stage1_scores": stage1_scores,
        "valid_exits": valid.tolist(),
        "val_exit_frequency": frequency,
        "policy_training": policy_training,
        "calibration": calibration.plain(),
        "costs_per_pixel": {
            "adaptive": costs.tolist(),
            "fixed_depth": model.fixed_depth_macs().tolist(),
            "policy": policy.macs(),
            "step": step_macs,
            "policy_fraction_of_step": policy.macs() / step_macs,
        },
        "rows": rows,
        "exit_psnr_by_sigma": _exit_psnr_by_sigma(table.psnr, data, config),
        "curve": curve,
        "fixed_depth": fixed,
        "oracle_under_budget": oracle_under_budget(table.psnr, valid, costs),
        "spearman_exit_sigma": _finite(spearman(data.sigma.tolist(), stop_exit.tolist())),
        "grid": grid_images,
        "timing": _timing(model, policy, rules, curve, data, test_hazards, valid, costs, config),
        **gain_head,
    }


def oracle_under_budget(
    psnr_table: torch.Tensor, valid: torch.Tensor, costs: torch.Tensor, points: int = 200
) -> list[dict[str, float]]:
    """The best mean PSNR any policy could reach at each mean cost (issue 17's bound; needs the
    clean images): every item stops at argmax_t PSNR_t − λ c_t over the valid exits, for λ
    swept over a log grid (and 0), c in units of the cost range. Returns the frontier:
    ``{"lambda", "mean_cost", "psnr"}`` at strictly increasing cost and PSNR."""
    table = psnr_table.double().masked_fill(~valid.bool().view(1, -1), -math.inf)
    spread = float(costs[valid].max() - costs[valid].min()) or 1.0
    lambdas = [0.0] + torch.logspace(-4, 3, points - 1, dtype=torch.float64).tolist()
    out = []
    for lam in lambdas:
        index = (table - lam * costs.view(1, -1) / spread).argmax(dim=1)
        chosen = psnr_table.gather(1, index.view(-1, 1)).double()
        out.append(
            {"lambda": lam, "mean_cost": float(costs[index].mean()), "psnr": float(chosen.mean())}
        )
    frontier: list[dict[str, float]] = []
    for point in sorted(out, key=lambda p: (p["mean_cost"], -p["psnr"])):
        if not frontier or (
            point["mean_cost"] > frontier[-1]["mean_cost"] and point["psnr"] > frontier[-1]["psnr"]
        ):
            frontier.append(point)
    return frontier


def _finite(value: float) -> float | None:
    """``value``, or None where it is NaN (e.g. a rank correlation with a constant side)."""
    return None if math.isnan(value) else value


def _mean_psnr_at(psnr: torch.Tensor):
    """``metric(stop index (N,)) -> mean PSNR`` over the items of a per-exit PSNR table."""

    def metric(index: torch.Tensor) -> float:
        return float(psnr.gather(1, index.view(-1, 1)).mean())

    return metric


def _val_policy_data(model, val: NoisySet):
    """One :class:`PolicyData` per shape group of the validation set (noise = noisy − clean)."""
    return [policy_data(model, noisy, noisy - clean) for _, clean, noisy in val.groups]


@torch.no_grad()
def _run_rule(model, policy, rule, data: NoisySet, valid, costs, config):
    """Adaptive inference for real (``config.inference_mode``): per-item stop index ``(N,)`` and
    clamped estimates ``(1, H, W)``."""
    index = torch.empty(data.size, dtype=torch.long)
    estimates: list = [None] * data.size
    for rows, _, noisy in data.groups:
        result = run_adaptive(model, policy, noisy, rule, config.inference_mode, valid, costs)
        index[rows] = result.stop_index.cpu()
        for k, i in enumerate(rows.tolist()):
            estimates[i] = estimate(noisy[k], result.predictions[k]).cpu()
    return index, estimates


def _exits(index: torch.Tensor, data: NoisySet, config, costs: torch.Tensor) -> dict[str, Any]:
    exits = (index.cpu() + 1).double()
    return {
        "exit": exits.tolist(),
        "mean_exit_by_sigma": by_sigma(exits, data.sigma, config.test_sigmas),
        "mean_exit": float(exits.mean()),
        "mean_macs_per_pixel": float(costs[index.cpu()].mean()),
    }


def point_costs(model, policy, valid, costs: torch.Tensor, point: dict[str, Any]) -> torch.Tensor:
    """``(T,)`` per-pixel cost of stopping at each exit under a budget-curve point's rule: the
    adaptive ``costs`` less the exit heads and policy calls before the point's floor, which
    its rule skips (as its curve costs it)."""
    saves = model.exit_macs(valid, policy.macs())
    return floored_costs(costs, saves, valid.cpu(), point["floor_steps"] - 1)


def _timing(
    model, policy, rules, curve, data: NoisySet, hazards, valid, costs, config
) -> dict[str, Any]:
    """Wall-clock of full depth (every layer, the last head, no policy) against real adaptive
    inference (shrink mode), one image at a time, medians of interleaved repeats
    (``time_adaptive``), for the chosen rule and the budget-curve points at about a third and
    two thirds of the range, on the model's :func:`~.models.inference_copy` (the same function
    and multiply-adds; BatchNorm folded). Seconds are summed over the shape groups of the test
    set."""
    fast = inference_copy(model)
    timed, spent = {"stop": rules["stop"]}, {"stop": costs}
    for k in (len(curve) // 3, 2 * len(curve) // 3):
        name = f"budget_{curve[k]['budget']:.0f}"
        timed[name] = point_rule(curve[k])
        spent[name] = point_costs(model, policy, valid, costs, curve[k])
    full, seconds = 0.0, dict.fromkeys(timed, 0.0)
    for _, _, noisy in data.groups:
        result = time_adaptive(
            fast, policy, noisy, timed, valid, repeats=config.timing_repeats, chunk=1
        )
        full += result["full_seconds"]
        for name, r in result["rules"].items():
            seconds[name] += r["seconds"]
    n, full_macs = data.size, float(model.fixed_depth_macs()[-1])
    out = {"full_ms_per_image": 1e3 * full / n, "images": n, "model": "inference_copy", "rules": {}}
    for name, rule in timed.items():
        index = stop_indices(hazards, rule, valid)
        mean_exit = float((index + 1).double().mean())
        out["rules"][name] = {
            "ms_per_image": 1e3 * seconds[name] / n,
            "mean_exit": mean_exit,
            "time_ratio": seconds[name] / full,
            "exit_ratio": mean_exit / model.max_steps,
            "mac_ratio": float(spent[name][index].mean()) / full_macs,
        }
    return out


# ---------------------------------------------------------------- classical baselines


def _classical(context: JobContext) -> dict[str, Any]:
    """BM3D given the true σ (profile chosen on validation when several are listed) and
    non-local means with h/σ chosen on validation; both on every test item."""
    import time

    config: DenoisingConfig = context.config
    cpu = torch.device("cpu")
    val = validation_set(config, context, cpu)

    def run_all(data: NoisySet, denoise) -> tuple[list[torch.Tensor], float]:
        start = time.process_time()
        outputs = []
        for i in range(data.size):
            _, noisy = data.item(i)
            outputs.append(denoise(noisy, float(data.sigma[i])).clamp(0, 1))
        return outputs, time.process_time() - start

    def mean_psnr(data: NoisySet, outputs) -> float:
        clean = [data.item(i)[0] for i in range(data.size)]
        return float(
            torch.cat([psnr(o[None], c[None]) for o, c in zip(outputs, clean, strict=True)]).mean()
        )

    bm3d_val = {}
    for profile in config.bm3d_profiles:
        outputs, _ = run_all(val, lambda x, s, p=profile: bm3d_denoise(x, s, p))
        bm3d_val[profile] = mean_psnr(val, outputs)
    profile = max(config.bm3d_profiles, key=lambda p: bm3d_val[p])
    nlm_val = {}
    for h in config.nlm_h:
        outputs, _ = run_all(val, lambda x, s, h=h: nlm_denoise(x, s, h))
        nlm_val[h] = mean_psnr(val, outputs)
    h = max(config.nlm_h, key=lambda v: nlm_val[v])

    data = test_set(config, context, cpu).open()
    bm3d, bm3d_cpu = run_all(data, lambda x, s: bm3d_denoise(x, s, profile))
    nlm, nlm_cpu = run_all(data, lambda x, s: nlm_denoise(x, s, h))
    grid = grid_item(config, data)
    clean, noisy = data.item(grid)
    return {
        "sigma": data.sigma.tolist(),
        "names": data.names,
        "bm3d": {
            **_quality(bm3d, data, config),
            "profile": profile,
            "val_psnr": {p: v for p, v in bm3d_val.items()},
        },
        "nlm": {
            **_quality(nlm, data, config),
            "h_over_sigma": h,
            "val_psnr": {f"{v:g}": p for v, p in nlm_val.items()},
        },
        "noisy": _quality([noisy.clamp(0, 1).cpu() for noisy in _noisy_items(data)], data, config),
        "grid": {
            "item": grid,
            "name": data.names[grid],
            "clean": png_base64(clean),
            "noisy": png_base64(noisy.clamp(0, 1)),
            "bm3d": png_base64(bm3d[grid]),
        },
        "timing": {
            "bm3d_cpu_ms_per_image": 1e3 * bm3d_cpu / data.size,
            "nlm_cpu_ms_per_image": 1e3 * nlm_cpu / data.size,
        },
    }


def _noisy_items(data: NoisySet) -> list[torch.Tensor]:
    return [data.item(i)[1] for i in range(data.size)]
