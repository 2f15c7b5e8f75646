"""The table (with the paper's Table 2 beside ours) and the figures of a sparse-recovery run."""

from __future__ import annotations

from typing import Any

from ...reporting import markdown_table, new_figure, save_figure

__all__ = ["PAPER", "PAPER_SCHEDULE", "schedules", "write_table", "write_figures"]

# L2S (Chen et al. 2020), Table 2: NMSE (dB), mixed / 20 / 30 / 40 dB.
PAPER: dict[str, tuple[float, float, float, float]] = {
    "ista-20": (-9.17, -9.12, -9.24, -9.16),
    "ista-100": (-14.66, -13.99, -14.99, -15.07),
    "fista-20": (-11.12, -10.98, -11.19, -11.19),
    "fista-100": (-18.96, -16.75, -20.46, -20.97),
    "lista": (-17.53, -16.53, -18.07, -18.20),
    "lista_stop-sampled": (-22.41, -20.29, -23.90, -24.21),
}

# The paper's training schedules, (steps, batch).
PAPER_SCHEDULE = {"lista": (100_000, 512), "stage1": (50_000, 1024), "stage2": (40_000, 256)}

# The protocol the paper's numbers were measured on; they are printed only for runs of it.
PAPER_PROTOCOL = {
    "m": 250,
    "n": 500,
    "condition": 5.0,
    "sparsity": 0.1,
    "snrs": [20.0, 30.0, 40.0],
    "steps": 20,
}


def _k(steps: int) -> str:
    return f"{steps / 1000:g}k" if steps >= 1000 else str(steps)


def schedules(config: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Per trained model: (schedule text, shortened relative to the paper's)."""
    lista = (config["lista_steps"], config["lista_batch"])
    stage1 = (config["stage1_steps"], config["stage1_batch"])
    stage2 = (config["stage2_steps"], config["stage2_batch"])

    def shorter(ours, paper):
        return ours[0] * ours[1] < paper[0] * paper[1]

    start = "from LISTA" if config["stage1_init"] == "lista" else "from ISTA"
    cpss = (
        f"ALISTA {_k(config['alista_steps'])}×{config['alista_batch']}; "
        f"I {_k(config['cpss_stage1_steps'])}×{config['cpss_batch']}; "
        f"II {_k(config['cpss_stage2_steps'])}×{config['stage2_batch']}"
    )
    return {
        "lista": (f"{_k(lista[0])}×{lista[1]}", shorter(lista, PAPER_SCHEDULE["lista"])),
        "lista_stop": (
            f"I {_k(stage1[0])}×{stage1[1]} {start}; II {_k(stage2[0])}×{stage2[1]}",
            shorter(stage1, PAPER_SCHEDULE["stage1"]) or shorter(stage2, PAPER_SCHEDULE["stage2"]),
        ),
        "alista": (f"{_k(config['alista_steps'])}×{config['alista_batch']}", False),
        "cpss_stop": (cpss, False),
    }


def _paper_text(key: str) -> str:
    values = PAPER.get(key)
    return " / ".join(f"{v:.2f}" for v in values) if values else ""


def write_table(results: dict[str, Any], config: dict[str, Any], run_dir) -> str:
    """``table.md``: our NMSE columns, steps and cost, the paper's numbers, the schedule."""
    columns = results["columns"]
    plan = schedules(config)
    paper_protocol = all(config[k] == v for k, v in PAPER_PROTOCOL.items())
    rows = []
    classical = sorted(
        (row for row in results["rows"] if row["model"].startswith(("ista", "fista"))),
        key=lambda row: (row["mean_steps"], row["key"]),
    )
    ordered = classical + [row for row in results["rows"] if row not in classical]
    for row in ordered:
        text, shortened = plan.get(row["model"], ("", False))
        if row["model"].startswith(("ista", "fista")):
            text = f"tuned on val: L={row['L']:.3g}, λ={row['lam']:.3g}"
        rows.append(
            {
                **row,
                "label": row["label"] + (" †" if shortened else ""),
                "paper": _paper_text(row["key"]) if paper_protocol else "",
                "schedule": text,
                "mmac": row.get("mean_cost", float("nan")) / 1e6,
            }
        )
    spec = [("label", "method", "s")]
    spec += [(c, c.replace("dB", " dB"), ".2f") for c in columns]
    spec += [
        ("mean_steps", "mean steps", ".2f"),
        ("mmac", "MMAC/sample", ".2f"),
        ("paper", "paper (" + " / ".join(c.replace("dB", "") for c in columns) + ")", "s"),
        ("schedule", "training (steps×batch)", "s"),
    ]
    stages = results.get("stages", {})
    train_min = sum(r["seconds"] for r in stages.values()) / 60
    cpu_min = sum(r.get("cpu_seconds", r["seconds"]) for r in stages.values()) / 60
    notes = [
        f"NMSE in dB on {len(columns) - 1} × {config['per_snr']} test samples (m={config['m']}, "
        f"n={config['n']}, condition {config['condition']:g}, sparsity {config['sparsity']:g}); "
        f"seed {config['seed']}, preset `{config['preset']}`.",
        "† trained on a shortened schedule; the paper: LISTA 100k×512, stage I 50k×1024, "
        "stage II 40k×256.",
        f'Stop rows run through `run_adaptive(mode="{config["inference_mode"]}")`; *sampled* '
        "stops at step t with probability λ_t (the paper's inference), *threshold* is a "
        "threshold on the hazard or on the cumulative stop probability (the kind named in the "
        f"row; `threshold_rule={config['threshold_rule']}`), calibrated on validation. "
        "MMAC/sample counts "
        "multiply-adds of the model plus, for stop rows, the policy and its features.",
        f"Training: {train_min:.1f} min wall, {cpu_min:.1f} min CPU, {results['threads']} "
        "thread(s).",
    ]
    markdown = markdown_table(rows, spec) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    run_dir.write_table(markdown)
    return markdown


def _curve_label(key: str) -> str:
    names = {
        "lista": "LISTA",
        "alista": "ALISTA-SS",
        "lista_stop": "LISTA-stop model",
        "cpss_stop": "LISTA-CP-SS-stop model",
    }
    if key in names:
        return names[key]
    algorithm, budget = key.split("-")
    return f"{algorithm.upper()} (tuned for T={budget})"


def write_figures(results: dict[str, Any], run_dir) -> None:
    """``nmse_per_layer``, ``stop_steps`` and ``nmse_vs_steps`` (PNG)."""
    curves = dict(results["per_layer"])
    for name, details in results["stop_models"].items():
        curves[name] = details["per_layer"]
    columns = results["columns"]

    figure, ax = new_figure(6.5, 4.2)
    for key, curve in curves.items():
        if key.startswith(("ista", "fista")) and not key.endswith(("-100",)):
            continue
        values = curve["mixed"]
        ax.plot(range(1, len(values) + 1), values, label=_curve_label(key))
    ax.set_xscale("log")
    ax.set_xlabel("layer / iteration")
    ax.set_ylabel("test NMSE (dB), mixed SNR")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(figure, run_dir.figure("nmse_per_layer"))

    stops = results["stop_models"]
    if stops:
        figure, axes = new_figure(4.2 * len(stops), 3.4)
        figure.clf()
        for i, (name, details) in enumerate(stops.items()):
            ax = figure.add_subplot(1, len(stops), i + 1)
            histogram = details["stop_histogram"]["threshold"]
            width = 0.8 / len(histogram)
            for j, (snr, counts) in enumerate(histogram.items()):
                steps = [t + 1 + (j - (len(histogram) - 1) / 2) * width for t in range(len(counts))]
                ax.bar(steps, counts, width=width, label=snr)
            ax.set_title(f"{_curve_label(name)}, threshold rule", fontsize=8)
            ax.set_xlabel("stop step")
            ax.set_ylabel("test samples")
            ax.legend(fontsize=7)
        save_figure(figure, run_dir.figure("stop_steps"))

    figure, ax = new_figure(6.5, 4.2)
    for key, curve in curves.items():
        if key in stops or (key.startswith(("ista", "fista")) and not key.endswith("-100")):
            continue
        values = curve["mixed"]
        ax.plot(range(1, len(values) + 1), values, ":", label=f"{_curve_label(key)}, fixed depth")
    by_key = {row["key"]: row for row in results["rows"]}
    for name, details in stops.items():
        points = details["tradeoff"]
        ax.plot(
            [p["mean_steps"] for p in points],
            [p["nmse"] for p in points],
            "-o",
            markersize=3,
            label=f"{_curve_label(name).replace(' model', '')}, calibrated thresholds",
        )
        for rule, marker in (("sampled", "^"), ("oracle", "*")):
            row = by_key.get(f"{name}-{rule}")
            if row:
                ax.plot(
                    row["mean_steps"],
                    row["mixed"],
                    marker,
                    markersize=8,
                    label=f"{_curve_label(name).replace(' model', '')}, {rule}",
                )
    ax.set_xscale("log")
    ax.set_xlabel("mean steps used (log scale)")
    ax.set_ylabel(f"test NMSE (dB), {columns[0]}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    save_figure(figure, run_dir.figure("nmse_vs_steps"))
