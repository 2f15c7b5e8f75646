"""Numbers README.md publishes under "Measured" are checked against the committed result files they
come from (benchmarks/results/), so that a number which drifts from its source, or a source that
changes under a number, fails here.

Each entry of PUBLISHED names a snippet of README text (unique in it, whitespace collapsed), the
number as printed in that snippet, the result file and a function giving the source value, and the
format spec the number is printed at (a percentage point scale is applied in the function; a
``%`` spec prints a fraction as a percentage). A README edit that drops the snippet fails too:
update the entry with the text.
"""

import json
from functools import cache
from pathlib import Path
from statistics import mean, stdev

import pytest

ROOT = Path(__file__).parents[1]


@cache
def readme() -> str:
    return " ".join((ROOT / "README.md").read_text().split())


@cache
def result(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def pick(rows: list[dict], **fields) -> dict:
    """The one row of rows whose fields equal the given ones."""
    (row,) = [row for row in rows if all(row.get(k) == v for k, v in fields.items())]
    return row


def sparse(d: dict, key: str) -> dict:
    return pick(d["benchmark_preset"]["rows"], key=key)


def deep_supervision(d: dict, model: str, field: str) -> list[float]:
    """A stop model's curve minus the model trained for every depth: one field per budget."""
    return [point[field] for point in d["adaptive_vs_deep_supervision"][model]["points"]]


def parity(d: dict, method: str, rule: str, variant: str = "") -> dict:
    return pick(d["runs"][0]["best"], method=method, rule=rule, variant=variant)


def parity_paired(d: dict, method: str, rule: str, variant: str = "") -> dict:
    rows = d["runs"][0]["paired_vs_fixed_depth"]
    return pick(rows, method=method, rule=rule, variant=variant)["interpolation"]


def seeds_behind(comparison: dict) -> int:
    """The seeds where the first method's value is above the second's (a paired comparison)."""
    return sum(value > 0 for value in comparison["per_seed"].values())


def l2w_short_of_target(d: dict, budget: int) -> float:
    """How far L2W - uniform falls short of its target gain at a budget (points)."""
    row = d["l2w_minus_uniform"][budget]
    return row["target_points"] - row["difference_points"]["mean"]


def psnr(d: dict, method: str, sigma: int) -> float:
    """Test PSNR of a denoiser at the sigma-th noise level, the mean over seeds."""
    per_seed = d["results"]["quality"][method]["psnr"]
    return mean(values[sigma] for values in per_seed.values())


def bm3d_minus_dncnn(d: dict) -> list[float]:
    return [psnr(d, "bm3d", i) - psnr(d, "dncnn", i) for i in range(5)]


def per_seed(d: dict, preset: str, *keys: str) -> list[float]:
    """One field (a key path) of a few-shot preset's results, per seed."""
    values = []
    for value in d["presets"][preset]["per_seed"].values():
        for key in keys:
            value = value[key]
        values.append(value)
    return values


def lstm_minus(d: dict, family: str, step: str, optimizer: str) -> dict:
    targets = d["targets"][f"{family}: LSTM beats every tuned optimizer"]
    return targets["lstm_minus_each"][step][optimizer]


def log10_gap(d: dict, family: str, optimizer: str, step: str) -> float:
    return d["families"][family]["optimizers"]["numbers"][optimizer][step]["pooled"]["mean"]


def stopping(d: dict, rule: str) -> dict:
    return d["families"]["regression"]["stopping"]["rows"][rule]


def nll_over_full(d: dict, rule: str) -> float:
    return stopping(d, rule)["nll"] / stopping(d, "lstm")["nll"] - 1


def speed(d: dict, model: str, threads: int, field: str = "wall_over_ideal") -> list[float]:
    """One field of stop_speed's rows of a stop model, one per budget."""
    return [r[field] for r in d["rows"] if r["model"] == model and r["threads"] == threads]


def models_meeting_speed(d: dict, threads: int) -> int:
    """How many stop models reach 0.8 of the ideal speedup at every budget."""
    models = {r["model"] for r in d["rows"]}
    return sum(min(speed(d, m, threads)) >= d["targets"]["wall_speedup_over_ideal"] for m in models)


SPARSE, SPARSE_8_10 = "sparse_recovery.json", "sparse_recovery-benchmark-s8910.json"
PARITY, PARITY_ACT_LR = "parity-tuned.json", "parity-act-lr.json"
EXITS, EXITS_5_7 = "multi_exit-mnist1d.json", "multi_exit-mnist1d-s567-20261206.json"
FASHION = "multi_exit-fashion-fixed.json"
DENOISING = "denoising.json"
FEW_SHOT, FEW_SHOT_5_SEEDS = "few_shot.json", "few_shot-sinusoid-5seeds.json"
LEARNED, MLP_150 = "learned_optimizers.json", "learned_optimizers-mlp-iter150.json"
MLP_UNSEEN = "learned_optimizers-mlp-unseen-s3-7.json"
MLP_UNSEEN_MORE = "learned_optimizers-mlp-unseen-s8-17.json"
QUADRATIC_UNSEEN = "learned_optimizers-quadratic-unseen-s3-7.json"
QUICK_UNSEEN = "sparse_recovery-quick-s14-16.json"
QUADRATIC_1000 = "learned_optimizers-quadratic1000.json"
RERUN, CHUNKED = "learned_optimizers-rerun-20261206.json", "learned_optimizers-rerun-chunked.json"
STACKED = "learned_optimizers-rerun-stacked.json"
SPEED = "stop_speed.json"
STREAM = "stop_speed-batch-10000-chunk-1000-20261207.json"
EXITS_SPEED_CL = "stop_speed-multi-exit-20261208.json"
VARIANTS_CL = "multi_exit_speed-1d-channels-last.json"
EXITS_SPEED_FASTEST = "stop_speed-multi-exit-fastest-20261208.json"
MAML_SPEED_1000 = "stop_speed-few-shot-1000-tasks-20261208.json"


def ncl_over_channels_last(d: dict, threads: int, field: str, budget: str | None = None) -> float:
    """How many times faster the MNIST-1D copy runs channels-last than NCL (same run)."""
    timings = d["results"]["mnist1d"]["threads"][str(threads)]
    old, new = timings["bn+stem-folded"], timings["fast"]
    if budget is None:
        return old[field] / new[field]
    return old["rules"][budget][field] / new["rules"][budget][field]


# (id, README snippet, the number as printed in it, result file, source value, format spec)
PUBLISHED = [
    # Sparse recovery
    ("sparse-cpss-mixed", "**−25.29 ± 0.07**", "−25.29", SPARSE,
     lambda d: sparse(d, "cpss_stop-threshold")["mixed"], ".2f"),
    ("sparse-cpss-mixed-sd", "**−25.29 ± 0.07**", "0.07", SPARSE,
     lambda d: sparse(d, "cpss_stop-threshold")["sd"]["mixed"], ".2f"),
    ("sparse-cpss-steps", "| **11.46** |", "11.46", SPARSE,
     lambda d: sparse(d, "cpss_stop-threshold")["mean_steps"], ".2f"),
    ("sparse-lista-mixed", "| −20.58 ± 0.08 |", "−20.58", SPARSE,
     lambda d: sparse(d, "lista")["mixed"], ".2f"),
    ("sparse-fista100-mixed", "| −19.55 ± 0.03 |", "−19.55", SPARSE,
     lambda d: sparse(d, "fista-100")["mixed"], ".2f"),
    ("sparse-lista-stop-steps", "| −24.96 | 19.51 |", "19.51", SPARSE,
     lambda d: sparse(d, "lista_stop-threshold")["mean_steps"], ".2f"),
    ("sparse-bound", "| −30.01 ± 0.04 |", "−30.01", SPARSE,
     lambda d: d["bounds"]["least_squares_on_true_support"]["mixed"], ".2f"),
    ("sparse-cpu-minutes", "(60.1 CPU-minutes of jobs as the file records them", "60.1", SPARSE,
     lambda d: d["benchmark_preset"]["jobs_cpu_minutes"], ".1f"),
    ("sparse-vs-paper-20dB", "by −2.88 / −1.27 / −6.03 / −6.40 dB", "−1.27", SPARSE,
     lambda d: d["quality"]["margin_db"]["20dB"], ".2f"),
    ("sparse-vs-paper-40dB", "by −2.88 / −1.27 / −6.03 / −6.40 dB", "−6.40", SPARSE,
     lambda d: d["quality"]["margin_db"]["40dB"], ".2f"),
    ("sparse-full-depth-gap", "−0.01 [−0.04, +0.03] dB from its full-depth NMSE", "+0.03", SPARSE,
     lambda d: d["benchmark_preset"]["domination"]["cpss_stop"]["threshold_row_gap"]["hi"], "+.2f"),
    ("sparse-vs-deep-supervision", "−0.18 [−0.40, +0.03]), up to 2.75 dB", "2.75", SPARSE,
     lambda d: -min(deep_supervision(d, "cpss_stop", "margin")), ".2f"),
    ("sparse-vs-deep-supervision-by-interval", "(37 with the interval below zero", "37", SPARSE,
     lambda d: sum(hi < 0 for _, hi in deep_supervision(d, "cpss_stop", "margin_interval")), "d"),
    ("sparse-vs-deep-supervision-1.5-steps", "at 1.5 steps −0.18 [−0.40, +0.03]", "+0.03", SPARSE,
     lambda d: pick(d["adaptive_vs_deep_supervision"]["cpss_stop"]["points"], budget=1.5)["margin_interval"][1], "+.2f"),
    ("sparse-one-step", "worse at one step by 0.017 dB", "0.017", SPARSE,
     lambda d: d["adaptive_vs_deep_supervision"]["cpss_stop"]["worst_margin"], ".3f"),
    ("sparse-8-10-steps", "+0.01 [−0.04, +0.07] dB with 11.0", "11.0", SPARSE_8_10,
     lambda d: d["domination"]["cpss_stop"]["threshold_row_steps"]["mean"], ".1f"),
    ("sparse-8-10-vs-paper", "on 8–10 by −1.20 [−1.67, −0.73]", "−1.67", SPARSE_8_10,
     lambda d: d["paper_comparison"]["margin_interval"]["20dB"][0], ".2f"),
    ("sparse-8-10-one-step", "above fixed depth at one step by 0.00002 dB", "0.00002", SPARSE_8_10,
     lambda d: d["domination"]["cpss_stop"]["worst_margin"], ".5f"),
    # Parity (accuracies in the file are fractions, printed in percent)
    ("parity-act-accuracy", "| 96.38 ± 4.49 |", "96.38", PARITY,
     lambda d: 100 * parity(d, "act", "act")["interpolation_mean"], ".2f"),
    ("parity-l2s-soft-sd", "| 99.67 ± 0.41 | 4/5 | 6.09 |", "0.41", PARITY,
     lambda d: 100 * parity(d, "l2s", "median", "soft")["interpolation_std"], ".2f"),
    ("parity-l2s-soft-steps", "| 99.67 ± 0.41 | 4/5 | 6.09 |", "6.09", PARITY,
     lambda d: parity(d, "l2s", "median", "soft")["mean_steps"], ".2f"),
    ("parity-act-minus-fixed", "| −3.54 [−9.13, +2.05] |", "−9.13", PARITY,
     lambda d: 100 * parity_paired(d, "act", "act")["lo"], ".2f"),
    ("parity-pondernet-minus-fixed", "| −2.24 [−4.00, −0.47] |", "−0.47", PARITY,
     lambda d: 100 * parity_paired(d, "pondernet", "sample")["hi"], ".2f"),
    ("parity-bound-steps", "does in 2.25 steps", "2.25", PARITY,
     lambda d: parity(d, "thesis", "greedy")["mean_steps"], ".2f"),
    ("parity-wall", "6,413 s wall", "6,413", PARITY,
     lambda d: d["runs"][0]["wall_seconds"], ",.0f"),
    ("parity-act-lr", "is 9.0 [+3.4, +14.5] points above itself", "9.0", PARITY_ACT_LR,
     lambda d: 100 * d["paired"]["act lr=0.001 - act lr=0.003"]["mean"], ".1f"),
    # Multi-exit (accuracies in the file are fractions; paired differences are in points)
    ("exits-first-exit", "on test: 60.1 against 76.6%", "60.1", EXITS,
     lambda d: 100 * pick(d["lines"], key="uniform")["anytime_accuracy_mean"][0], ".1f"),
    ("exits-last-exit", "on test: 60.1 against 76.6%", "76.6", EXITS,
     lambda d: 100 * pick(d["lines"], key="uniform")["anytime_accuracy_mean"][-1], ".1f"),
    ("exits-l2w-cost-top-seed", "seeds 2.54–3.10, target 3×", "3.10", EXITS,
     lambda d: max(d["train_seconds_vs_uniform"]["l2w"]["cpu"]["per_seed"].values()), ".2f"),
    ("exits-l2s-above-uniform", "policy is 1.2–3.5 points above uniform", "3.5", EXITS,
     lambda d: max(p["mean"] for p in d["paired_vs_uniform_points"]["l2s (policy)"]), ".1f"),
    ("exits-uniform-5%", "| 64.35 ± 0.91 |", "64.35", EXITS,
     lambda d: 100 * pick(d["lines"], key="uniform")["budget_accuracy_mean"][0], ".2f"),
    ("exits-l2s-10%", "**72.16 ± 0.81**", "72.16", EXITS,
     lambda d: 100 * pick(d["l2s_selected"], key="l2s (policy)")["budget_accuracy_mean"][1], ".2f"),
    ("exits-l2w-minus-uniform-5%", "| −3.54 [−7.27, +0.19] |", "−7.27", EXITS,
     lambda d: d["paired_vs_uniform_points"]["l2w"][0]["lo"], ".2f"),
    ("exits-l2s-minus-uniform-10%", "| +3.28 [+1.77, +4.80] |", "+3.28", EXITS,
     lambda d: d["paired_vs_uniform_points"]["l2s (policy)"][1]["mean"], "+.2f"),
    ("exits-l2w-cost", "training cost 2.80× uniform", "2.80", EXITS,
     lambda d: d["train_seconds_vs_uniform"]["l2w"]["cpu"]["mean"], ".2f"),
    ("exits-l2w-target-miss", "missed by 4.5 and", "4.5", EXITS,
     lambda d: l2w_short_of_target(d, budget=0), ".1f"),
    ("exits-s567-l2w", "−2.30 [−6.54, +1.95] at 5%", "−2.30", EXITS_5_7,
     lambda d: d["paired_vs_uniform_points"]["l2w"][0]["mean"], ".2f"),
    ("exits-s567-l2w-10%", "−2.19 [−4.96, +0.59] at 10%", "+0.59", EXITS_5_7,
     lambda d: d["paired_vs_uniform_points"]["l2w"][1]["hi"], "+.2f"),
    ("exits-s567-l2s-10%", "it is −0.57 / +2.19 / +2.17", "+2.19", EXITS_5_7,
     lambda d: d["paired_vs_uniform_points"]["l2s (policy)"][1]["mean"], "+.2f"),
    ("exits-s567-l2s-20%", "(+2.17 [+1.80, +2.53],", "+1.80", EXITS_5_7,
     lambda d: d["paired_vs_uniform_points"]["l2s (policy)"][2]["lo"], "+.2f"),
    ("exits-s567-l2w-cost", "at 2.87× uniform's training cost", "2.87", EXITS_5_7,
     lambda d: d["train_seconds_vs_uniform"]["l2w"]["cpu"]["mean"], ".2f"),
    ("exits-fashion-l2w", "−0.50 [−1.12, +0.13] points at 15%", "−0.50", FASHION,
     lambda d: pick(d["l2w_minus_uniform"], budget_fraction=0.15)["difference_points"]["mean"], ".2f"),
    ("exits-fashion-cost", "5.27× the training cost", "5.27", FASHION,
     lambda d: d["train_seconds_vs_uniform"]["l2w"]["cpu"]["mean"], ".2f"),
    # Denoising (sigma index 0..4: 35, 45, 55, 65, 75)
    ("denoising-cpu-minutes", "3 seeds, 85.7 CPU-minutes", "85.7", DENOISING,
     lambda d: d["run"]["cpu_seconds_all_jobs"] / 60, ".1f"),
    ("denoising-bm3d-35", "BM3D 29.40 / 28.23 / 27.24", "29.40", DENOISING,
     lambda d: psnr(d, "bm3d", 0), ".2f"),
    ("denoising-dncnn-65", "26.65 / 25.32 / 23.84 / 22.29 / 20.71", "22.29", DENOISING,
     lambda d: psnr(d, "dncnn", 3), ".2f"),
    ("denoising-stop-75", "DnCNN-stop 26.64 / 25.28 / 23.77 / 22.18 / 20.59", "20.59", DENOISING,
     lambda d: psnr(d, "stop", 4), ".2f"),
    ("denoising-stop-minus-dncnn-75", "(paired − DnCNN: −0.01 to −0.13 dB", "−0.13", DENOISING,
     lambda d: pick(d["results"]["comparisons"], a="stop", b="dncnn", sigma=75.0)["mean"], ".2f"),
    ("denoising-below-bm3d-least", "DnCNN is 2.8–5.0 dB below BM3D", "2.8", DENOISING,
     lambda d: min(bm3d_minus_dncnn(d)), ".1f"),
    ("denoising-below-bm3d-most", "DnCNN is 2.8–5.0 dB below BM3D", "5.0", DENOISING,
     lambda d: max(bm3d_minus_dncnn(d)), ".1f"),
    ("denoising-policy-cost", "The policy costs 0.99% of a step", "0.99%", DENOISING,
     lambda d: d["results"]["policy_cost"]["policy_fraction_of_step"], ".2%"),
    # Few-shot
    ("few-shot-stop-mse", "MAML-stop 0.837 ± 0.059 test MSE", "0.837", FEW_SHOT,
     lambda d: mean(per_seed(d, "sinusoid", "maml_stop")), ".3f"),
    ("few-shot-stop-mse-sd", "MAML-stop 0.837 ± 0.059 test MSE", "0.059", FEW_SHOT,
     lambda d: stdev(per_seed(d, "sinusoid", "maml_stop")), ".3f"),
    ("few-shot-stop-steps", "at 8.1 mean inner steps", "8.1", FEW_SHOT,
     lambda d: mean(per_seed(d, "sinusoid", "maml_stop_mean_steps")), ".1f"),
    ("few-shot-maml-mse", "1.301 ± 0.264 — MSE ratio", "1.301", FEW_SHOT,
     lambda d: mean(per_seed(d, "sinusoid", "best_maml", "test_value")), ".3f"),
    ("few-shot-stop-learner-oracle", "under that oracle: 0.696)", "0.696", FEW_SHOT,
     lambda d: mean(per_seed(d, "sinusoid", "oracle", "mean")), ".3f"),
    ("few-shot-ratio-seed-2", "MSE ratio 0.55 / 0.65 / 0.77 per seed", "0.77", FEW_SHOT,
     lambda d: d["presets"]["sinusoid"]["verdicts"]["mse_ratio"]["2"], ".2f"),
    ("few-shot-spearman-seed-1", "ρ(stop step, K) +0.58 / +0.78 / +0.74", "+0.78", FEW_SHOT,
     lambda d: d["presets"]["sinusoid"]["verdicts"]["spearman_steps_shots"]["1"], "+.2f"),
    ("few-shot-ratio-interval", "seeds 0–2 alone [0.39, 0.92]", "0.92", FEW_SHOT,
     lambda d: d["presets"]["sinusoid"]["verdicts"]["mse_ratio_over_seeds"]["hi"], ".2f"),
    ("few-shot-ratio-interval-5-seeds", "interval is [0.37, 0.93]", "0.93", FEW_SHOT_5_SEEDS,
     lambda d: d["mse_ratio_over_seeds"]["hi"], ".2f"),
    ("few-shot-glyph-cpu-minutes", "3 seeds, 100.8 CPU-minutes", "100.8", FEW_SHOT,
     lambda d: d["presets"]["benchmark"]["cpu_seconds_all_jobs"] / 60, ".1f"),
    ("few-shot-glyph-maml", "MAML reaches 99.7%", "99.7", FEW_SHOT,
     lambda d: mean(per_seed(d, "benchmark", "best_maml", "test_value")), ".1f"),
    ("few-shot-glyph-stop-minus-maml", "MAML is +0.01 [−0.17, +0.19] points", "−0.17", FEW_SHOT,
     lambda d: d["presets"]["benchmark"]["stop_minus_best_over_seeds"]["lo"], ".2f"),
    # Learned optimizers (mean log10 suboptimality)
    ("lo-cpu-minutes", "seeds, 54 CPU-minutes before", "54", LEARNED,
     lambda d: d["cpu_budget"]["cpu_minutes"], ".0f"),
    ("lo-cpu-minutes-stacked", "and **54.4** with", "54.4", STACKED,
     lambda d: d["cpu_budget"]["cpu_minutes"], ".1f"),
    ("lo-cpu-minutes-chunked", "60.8 with the LSTM optimizer evaluated", "60.8", CHUNKED,
     lambda d: d["cpu_budget"]["cpu_minutes"], ".1f"),
    ("lo-cpu-minutes-rerun", "150 iterations, 61.8 since", "61.8", RERUN,
     lambda d: d["cpu_budget"]["cpu_minutes"], ".1f"),
    ("lo-regression-20-lstm", "−16.40 vs RMSprop −14.36: −2.05 [−3.91, −0.18]", "−16.40", LEARNED,
     lambda d: log10_gap(d, "regression", "lstm", "20"), ".2f"),
    ("lo-regression-20-rmsprop", "−16.40 vs RMSprop −14.36: −2.05 [−3.91, −0.18]", "−14.36", LEARNED,
     lambda d: log10_gap(d, "regression", "rmsprop", "20"), ".2f"),
    ("lo-regression-20-paired", "−16.40 vs RMSprop −14.36: −2.05 [−3.91, −0.18]", "−2.05", LEARNED,
     lambda d: lstm_minus(d, "regression", "20", "rmsprop")["mean"], ".2f"),
    ("lo-regression-100-paired", "−23.95 vs RMSprop −22.39: −1.55 [−1.73, −1.38]", "−1.73", LEARNED,
     lambda d: lstm_minus(d, "regression", "100", "rmsprop")["lo"], ".2f"),
    ("lo-quadratic-20-paired", "−0.49 vs RMSprop −0.13: −0.36 [−0.45, −0.27]", "−0.36", LEARNED,
     lambda d: lstm_minus(d, "quadratic", "20", "rmsprop")["mean"], ".2f"),
    ("lo-quadratic-100-lstm", "−2.34 vs momentum −2.38: +0.04 [−0.73, +0.81]", "−2.34", LEARNED,
     lambda d: log10_gap(d, "quadratic", "lstm", "100"), ".2f"),
    ("lo-quadratic-100-paired", "−2.34 vs momentum −2.38: +0.04 [−0.73, +0.81]", "+0.81", LEARNED,
     lambda d: lstm_minus(d, "quadratic", "100", "momentum")["hi"], "+.2f"),
    ("lo-act-steps", "stops after 6.8 and L2S-stop after 6.5 of 100", "6.8", LEARNED,
     lambda d: stopping(d, "act")["steps"], ".1f"),
    ("lo-l2s-steps", "stops after 6.8 and L2S-stop after 6.5 of 100", "6.5", LEARNED,
     lambda d: stopping(d, "l2s")["steps"], ".1f"),
    ("lo-act-nll", "within 0.4% / 0.07% of the full run's NLL", "0.4%", LEARNED,
     lambda d: nll_over_full(d, "act"), ".1%"),
    ("lo-l2s-nll", "within 0.4% / 0.07% of the full run's NLL", "0.07%", LEARNED,
     lambda d: nll_over_full(d, "l2s"), ".2%"),
    ("lo-quadratic1000-paired", "in the mean, −0.06 [−0.29, +0.16]", "−0.06", QUADRATIC_1000,
     lambda d: lstm_minus(d, "quadratic", "100", "momentum")["mean"], ".2f"),
    ("lo-quadratic1000-cpu-minutes", "takes 66.7 CPU-minutes", "66.7", QUADRATIC_1000,
     lambda d: d["cpu_budget"]["cpu_minutes"], ".1f"),
    ("lo-mlp150-minus-momentum", "− momentum −0.0059 [−0.0073, −0.0045]", "−0.0059", MLP_150,
     lambda d: d["lstm_minus"]["loss"]["momentum"]["mean"], ".4f"),
    ("lo-mlp150-minus-adam-log", "(−0.36 [−0.73, +0.01]: *missed*)", "+0.01", MLP_150,
     lambda d: d["lstm_minus"]["log10_loss"]["adam"]["hi"], "+.2f"),
    ("lo-mlp150-accuracy", "its test accuracy, 0.955,", "0.955", MLP_150,
     lambda d: mean(d["per_seed_lstm"]["accuracy"]), ".3f"),
    ("lo-mlp-unseen-minus-adam", "is separated, −0.29 [−0.48, −0.09]", "−0.09", MLP_UNSEEN,
     lambda d: d["comparisons"]["base"]["log10_loss"]["adam"]["hi"], ".2f"),
    ("lo-mlp-unseen-minus-momentum", "is not, −0.16 [−0.35, +0.02]", "+0.02", MLP_UNSEEN,
     lambda d: d["comparisons"]["base"]["log10_loss"]["momentum"]["hi"], "+.2f"),
    ("sparse-quick-unseen-gap", "+0.02 [−0.16, +0.20] dB at 11.0 layers", "+0.20", QUICK_UNSEEN,
     lambda d: d["domination"]["cpss_stop"]["threshold_row_gap"]["hi"], "+.2f"),
    ("sparse-quick-unseen-steps", "+0.02 [−0.16, +0.20] dB at 11.0 layers", "11.0", QUICK_UNSEEN,
     lambda d: d["domination"]["cpss_stop"]["threshold_row_steps"]["mean"], ".1f"),
    ("lo-quadratic-unseen-100", "behind tuned momentum on every seed, +0.16 [−0.00, +0.33]", "+0.33",
     QUADRATIC_UNSEEN, lambda d: d["comparisons"]["100"]["momentum"]["hi"], "+.2f"),
    ("lo-quadratic-unseen-glance", "(on unseen seeds 3–7: +0.16 [−0.00, +0.33], behind", "+0.16",
     QUADRATIC_UNSEEN, lambda d: d["comparisons"]["100"]["momentum"]["mean"], "+.2f"),
    ("lo-mlp-unseen-glance", "(on unseen seeds 3–7: −0.16 [−0.35, +0.02] vs momentum", "−0.16",
     MLP_UNSEEN, lambda d: d["comparisons"]["base"]["log10_loss"]["momentum"]["mean"], ".2f"),
    ("lo-mlp-unseen-more-glance", "on unseen seeds 8–17: −0.13 [−0.31, +0.04] vs momentum", "+0.04",
     MLP_UNSEEN_MORE, lambda d: d["comparisons"]["base"]["log10_loss"]["momentum"]["hi"], "+.2f"),
    ("lo-mlp-unseen-more-mean", "−0.13 [−0.31, +0.04] on seeds 8–17 (behind on 2 of", "−0.13",
     MLP_UNSEEN_MORE, lambda d: d["comparisons"]["base"]["log10_loss"]["momentum"]["mean"], ".2f"),
    ("lo-mlp-unseen-more-behind", "on seeds 8–17 (behind on 2 of 10;", "2",
     MLP_UNSEEN_MORE, lambda d: seeds_behind(d["comparisons"]["base"]["log10_loss"]["momentum"]),
     "d"),
    # Stop speed (measured / ideal speedup over the budgets)
    ("speed-cpss-best", "| LISTA-CP-SS-stop | 0.99–1.39 | 0.98–1.45 |", "1.39", SPEED,
     lambda d: max(speed(d, "LISTA-CP-SS-stop", 1)), ".2f"),
    ("speed-cpss-worst-2-threads", "| LISTA-CP-SS-stop | 0.99–1.39 | 0.98–1.45 |", "0.98", SPEED,
     lambda d: min(speed(d, "LISTA-CP-SS-stop", 2)), ".2f"),
    ("speed-dncnn-worst", "| DnCNN-stop | 0.85–1.00 | 0.80–1.00 | 1.5% |", "0.85", SPEED,
     lambda d: min(speed(d, "DnCNN-stop", 1)), ".2f"),
    ("speed-dncnn-policy", "| DnCNN-stop | 0.85–1.00 | 0.80–1.00 | 1.5% |", "1.5%", SPEED,
     lambda d: speed(d, "DnCNN-stop", 1, "policy_fraction")[0], ".1%"),
    ("speed-lstm-l2s-policy", "| LSTM optimizer + L2S | 0.73–0.87 | 0.58–0.83 | 4.5% |", "4.5%", SPEED,
     lambda d: speed(d, "LSTM optimizer + L2S", 1, "policy_fraction")[0], ".1%"),
    ("speed-exit-policy-fixed-share", "L2S exit policy | 0.54–0.80 | 0.52–0.74 | 0.8% | 22% |", "22%", SPEED,
     lambda d: speed(d, "L2S exit policy", 1, "fixed_share")[0], ".0%"),
    ("speed-models-met-1-thread", "*missed* | 4 of 9 stop models with one thread, 4 of 9 with two",
     "4", SPEED, lambda d: models_meeting_speed(d, 1), "d"),
    ("speed-models-met-2-threads", "*missed* | 4 of 9 stop models with one thread, 4 of 9 with two",
     "4", SPEED, lambda d: models_meeting_speed(d, 2), "d"),
    ("speed-policy-most", "| **met** in every task | 0–4.5% |", "4.5%", SPEED,
     lambda d: max(r["policy_fraction"] for r in d["rows"]), ".1%"),
    ("speed-lista-worst", "(0.87 at its cheapest budget, an ideal of 58×", "0.87", SPEED,
     lambda d: min(speed(d, "LISTA-stop", 1)), ".2f"),
    ("speed-lista-ideal", "(0.87 at its cheapest budget, an ideal of 58×", "58", SPEED,
     lambda d: max(speed(d, "LISTA-stop", 1, "ideal_speedup")), ".0f"),
    ("speed-stream-act-worst", "one but at its one-step budget (0.78); multi-exit misses in 9", "0.78",
     STREAM, lambda d: min(speed(d, "LSTM optimizer + ACT halting", 1)), ".2f"),
    ("speed-stream-exit-misses", "one but at its one-step budget (0.78); multi-exit misses in 9", "9",
     STREAM, lambda d: sum(not r["speedup_target_met"] for r in d["rows"]
                           if r["task"] == "multi-exit"), "d"),
    ("speed-stream-exit-worst", "multi-exit misses in 9 of its 14 cells (0.67 at worst)", "0.67",
     STREAM, lambda d: min(r["wall_over_ideal"] for r in d["rows"] if r["task"] == "multi-exit"),
     ".2f"),
    ("speed-1d-cl-full", "runs MNIST-1D's steps 2–4 channels-last (as height-one images): 1.57×",
     "1.57", VARIANTS_CL, lambda d: ncl_over_channels_last(d, 1, "full_cpu_seconds"), ".2f"),
    ("speed-1d-cl-cheapest", "1.57× faster at full depth and 1.18–1.43× faster", "1.18", VARIANTS_CL,
     lambda d: ncl_over_channels_last(d, 1, "cpu_seconds", "0.05"), ".2f"),
    ("speed-1d-cl-best", "1.57× faster at full depth and 1.18–1.43× faster", "1.43", VARIANTS_CL,
     lambda d: ncl_over_channels_last(d, 1, "cpu_seconds", "0.5"), ".2f"),
    ("speed-1d-cl-ratio-1", "to 0.45–0.83 with one thread and 0.35–0.76 with two", "0.45",
     EXITS_SPEED_CL, lambda d: min(r["wall_over_ideal"] for r in d["rows"] if r["threads"] == 1),
     ".2f"),
    ("speed-1d-cl-ratio-1-top", "to 0.45–0.83 with one thread and 0.35–0.76 with two", "0.83",
     EXITS_SPEED_CL, lambda d: max(r["wall_over_ideal"] for r in d["rows"] if r["threads"] == 1),
     ".2f"),
    ("speed-1d-cl-ratio-2", "to 0.45–0.83 with one thread and 0.35–0.76 with two", "0.35",
     EXITS_SPEED_CL, lambda d: min(r["wall_over_ideal"] for r in d["rows"] if r["threads"] == 2),
     ".2f"),
    ("speed-fastest-1", "after which the multi-exit ratios were 0.45–0.80 with one thread", "0.45",
     EXITS_SPEED_FASTEST,
     lambda d: min(r["wall_over_ideal"] for r in d["rows"] if r["threads"] == 1), ".2f"),
    ("speed-fastest-2", "0.38–0.82 with two, the target met at 3 of 14 budgets", "0.82",
     EXITS_SPEED_FASTEST,
     lambda d: max(r["wall_over_ideal"] for r in d["rows"] if r["threads"] == 2), ".2f"),
    ("speed-fastest-met", "0.38–0.82 with two, the target met at 3 of 14 budgets", "3",
     EXITS_SPEED_FASTEST, lambda d: sum(r["speedup_target_met"] for r in d["rows"]), "d"),
    ("speed-maml-1000-low", "MAML-stop meets it with one thread, 0.94–1.06", "0.94",
     MAML_SPEED_1000, lambda d: min(r["wall_over_ideal"] for r in d["rows"]), ".2f"),
    ("speed-maml-1000-high", "MAML-stop meets it with one thread, 0.94–1.06", "1.06",
     MAML_SPEED_1000, lambda d: max(r["wall_over_ideal"] for r in d["rows"]), ".2f"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("snippet", "printed", "source", "value", "spec"),
    [entry[1:] for entry in PUBLISHED],
    ids=[entry[0] for entry in PUBLISHED],
)
def test_a_published_number_is_its_source_value_as_printed(snippet, printed, source, value, spec):
    occurrences = readme().count(snippet)
    assert occurrences == 1, f"README.md says {snippet!r} {occurrences} times, not once"
    assert printed in snippet
    source_value = value(result(source))
    assert format(source_value, spec) == printed.replace("−", "-"), (
        f"README.md prints {printed} in {snippet!r}; {source} gives {source_value!r}"
    )


def test_the_original_task_folders_line_count_is_the_trees():
    """Issue 11's size target: counted from the source tree itself, at the printed precision."""
    folders = ["sparse_recovery", "parity", "multi_exit", "toy"]
    tasks = ROOT / "src" / "stopwise" / "tasks"
    lines = sum(len(p.read_text().splitlines()) for f in folders for p in (tasks / f).rglob("*.py"))
    assert f"5.4k lines (#11) | *missed* | {lines / 1000:.1f}k lines (" in readme()
