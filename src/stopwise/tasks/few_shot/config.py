"""The few-shot task's typed config and presets."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ...config import Config, group, param
from .data import (
    character_images,
    kanji_files,
    omniglot_characters,
    omniglot_problem,
    split_counts,
    stroke_paths,
)

__all__ = ["FewShotConfig", "Glyphs", "MetaTraining", "PRESETS"]


@dataclass
class Glyphs:
    """The glyph renderer and its splits (ignored for sinusoids; ``data_dir`` replaces the
    rendered glyphs by the real Omniglot, whose split uses ``characters`` and ``split_seed``)."""

    characters: list[int] = param(
        [1100, 100, 423],
        ge=1,
        min_len=3,
        max_len=3,
        help="train, validation, test base characters (Omniglot's 1100 / 100 / 423)",
    )
    min_strokes: int = param(1, ge=1, help="fewest strokes of a character used")
    max_strokes: int = param(9, ge=1, help="most strokes of a character used")
    drawers: int = param(20, ge=2, le=200, help="samples (hands) per character")
    split_seed: int = param(0, ge=0, help="fixes the class split (not the run seed)")
    rotations: bool = param(True, help="90/180/270° rotations as new classes")
    size: int = param(28, ge=16, le=128, help="image side in pixels (Conv4 halves it 4 times)")
    rotation_deg: float = param(10.0, ge=0, le=45, help="hand jitter: max rotation (degrees)")
    scale: float = param(0.12, ge=0, lt=0.5, help="hand jitter: max relative scale per axis")
    shear: float = param(0.15, ge=0, le=0.5, help="hand jitter: max shear")
    shift: float = param(6.0, ge=0, le=20, help="hand jitter: max shift (of a 109-unit box)")
    stroke_noise: float = param(3.0, ge=0, le=10, help="smooth displacement amplitude (units)")
    stroke_offset: float = param(1.5, ge=0, le=10, help="offset sd of each stroke (units)")
    stroke_width: float = param(8.0, gt=0, le=20, help="pen width (units of the 109 box)")
    width_jitter: float = param(0.25, ge=0, lt=1, help="relative pen width jitter per hand")
    cache_dir: str = param(
        "", help="rendered-image cache (default $STOPWISE_CACHE or ~/.cache/stopwise)"
    )

    def check(self) -> None:
        if self.min_strokes > self.max_strokes:
            raise ValueError(
                f"glyphs.min_strokes={self.min_strokes} exceeds max_strokes={self.max_strokes}"
            )

    def renderer_settings(self) -> dict:
        """Every setting that changes a rendered pixel or the split (the cache key)."""
        return {
            k: getattr(self, k)
            for k in (
                "characters",
                "min_strokes",
                "max_strokes",
                "drawers",
                "split_seed",
                "rotations",
                "size",
                "rotation_deg",
                "scale",
                "shear",
                "shift",
                "stroke_noise",
                "stroke_offset",
                "stroke_width",
                "width_jitter",
            )
        }


@dataclass
class MetaTraining:
    """Outer loop: Adam over the meta-parameters (and the policy, for MAML-stop: one optimizer)."""

    meta_steps: int = param(2000, ge=1, help="outer updates")
    meta_batch: int = param(4, ge=1, help="tasks per outer update")
    outer_lr: float = param(1e-3, gt=0, le=1, help="Adam learning rate")
    log_every: int = param(25, ge=1, help="outer updates between metric lines")


@dataclass
class FewShotConfig(Config):
    LOCATION_KEYS = ("data_dir",)  # its jobs carry the images' digest (experiment.jobs)

    family: str = param(
        "glyphs", choices=("glyphs", "sinusoid"), help="task family (glyphs: see data_dir)"
    )
    data_dir: str = param("", help="an Omniglot folder (images_background/, images_evaluation/)")
    ways: int = param(5, ge=2, help="classes per task (glyphs)")
    shots: list[int] = param(
        [1, 10], ge=1, min_len=2, max_len=2, help="K range: each task draws one K (min, max)"
    )
    query: int = param(5, ge=1, help="query shots per class (glyphs) or query points (sinusoid)")
    steps: int = param(10, ge=1, le=100, help="inner steps T of MAML-stop (its largest depth)")
    maml_steps: list[int] = param(
        [10], ge=1, le=100, min_len=1, help="fixed T of the MAML baselines (two jobs each)"
    )
    inner_lr: float = param(0.1, gt=0, le=10, help="inner SGD learning rate α")
    width: int = param(32, ge=1, le=512, help="Conv4 filters")
    hidden: list[int] = param([40, 40], ge=1, min_len=1, help="sinusoid MLP hidden widths")
    beta: float = param(0.01, gt=0, help="oracle temperature β of the sampled step")
    policy_width: int = param(64, ge=1, help="DeepSets width of the policy")
    policy_hidden: int = param(128, ge=1, help="hidden width of the policy head")
    gain_head: bool = param(
        False,
        help="also fit a stop head for budgets on MAML-stop's frozen learner "
        "(stopwise.fit_gain_head: the score regresses on the gain rate of the query loss; "
        "not in the paper) and report its budget curve",
    )
    gain_tasks: int = param(300, ge=10, help="training tasks whose trajectories fit the gain head")
    gain_updates: int = param(500, ge=1, help="Adam updates of the gain head")
    gain_price: float = param(
        0.01, gt=0, le=100, help="the gain head's zero: stop once a step buys less query loss"
    )
    train: MetaTraining = group(MetaTraining)
    glyphs: Glyphs = group(Glyphs)
    val_tasks: int = param(300, ge=10, help="validation tasks (every choice is made on them)")
    test_tasks: int = param(600, ge=10, help="test tasks (read once)")
    eval_chunk: int = param(100, ge=1, help="tasks per evaluation chunk")
    curve_points: int = param(19, ge=2, le=200, help="budgets on the budget curve")
    timing_tasks: int = param(100, ge=1, help="test tasks timed (adaptive vs full depth)")
    timing_repeats: int = param(3, ge=1, help="interleaved timing repeats (medians)")
    vmap: bool = param(
        False,
        help="vmap the tasks of a meta-batch (sinusoids only: refused for the Conv4, whose "
        "BatchNorm gets a wrong second-order gradient under vmap; see docs)",
    )

    def check(self) -> None:
        low, high = self.shots
        if low > high:
            raise ValueError(f"shots={self.shots}: the minimum K exceeds the maximum")
        if self.family == "sinusoid":
            if self.data_dir:
                raise ValueError("data_dir (Omniglot) needs family=glyphs, not sinusoid")
            return
        if self.vmap:
            # torch.func.vmap differentiates twice through a batch-statistics BatchNorm wrongly
            # (torch 2.13): the Conv4's second-order meta-gradient under vmap differs from the
            # loop over tasks and from finite differences (docs/few_shot.md has the numbers).
            raise ValueError(
                "vmap=true is refused for family=glyphs: the Conv4 learner's BatchNorm (batch "
                "statistics) gives a wrong second-order meta-gradient under torch.func.vmap "
                "(it differs from the loop over tasks and from finite differences); set "
                "vmap=false"
            )
        split = f"glyphs.characters={list(self.glyphs.characters)} characters per split"
        remedy = "raise glyphs.characters"
        if self.data_dir:
            problem = omniglot_problem(self.data_dir)
            if problem:
                raise ValueError(problem)
            characters = omniglot_characters(self.data_dir)
            counts = split_counts(len(characters), tuple(self.glyphs.characters))
            drawers, fewest = min((len(character_images(c)), c) for c in characters)
            source, fewest = f"Omniglot at {self.data_dir}", f" (fewest in {fewest})"
            if counts != tuple(self.glyphs.characters):  # scaled to the tree's characters
                split = f"its {len(characters)} characters split {list(counts)}"
                remedy = "add characters"
        else:
            counts = tuple(self.glyphs.characters)
            drawers, fewest = self.glyphs.drawers, ""
            eligible = _eligible_characters(self.glyphs.min_strokes, self.glyphs.max_strokes)
            if sum(counts) > eligible:
                raise ValueError(
                    f"glyphs.characters={list(counts)} needs {sum(counts)} characters; only "
                    f"{eligible} have {self.glyphs.min_strokes}..{self.glyphs.max_strokes} "
                    "strokes (raise glyphs.max_strokes or lower the counts)"
                )
            source = "the rendered glyphs"
        per_class, rotated = (4, ", × 4 rotations") if self.glyphs.rotations else (1, "")
        for name, count in zip(("train", "validation", "test"), counts, strict=True):
            if self.ways > count * per_class:
                raise ValueError(
                    f"ways={self.ways} exceeds the {count * per_class} classes of the {name} "
                    f"split of {source} ({split}{rotated}): lower ways or {remedy}"
                )
        if high + self.query > drawers:
            raise ValueError(
                f"shots max {high} + query {self.query} exceeds the {drawers} samples per class "
                f"of {source}{fewest}"
            )


@functools.lru_cache(maxsize=8)
def _eligible_characters(min_strokes: int, max_strokes: int) -> int:
    return sum(
        min_strokes <= len(stroke_paths(p.read_text(encoding="utf-8"))) <= max_strokes
        for p in kanji_files()
    )


SINUSOID = {
    "family": "sinusoid",
    "shots": [1, 10],
    "query": 10,
    "inner_lr": 0.01,
    "hidden": [40, 40],
    "vmap": True,
    # A policy the size of the Conv4 one would cost half an inner step of the 40-unit MLP.
    "policy_width": 8,
    "policy_hidden": 32,
    # Query MSE is heavy-tailed (a 1-shot task can diverge to MSE 200): 300 validation tasks
    # chose depth 3 where 3,000 show the error still falling at depth 10. Validation is cheap.
    "val_tasks": 2000,
    "eval_chunk": 500,
}

PRESETS = {
    # Seconds: sinusoids, tiny MLP, a handful of outer updates (the contract tests run it).
    "tiny": {
        **SINUSOID,
        "shots": [1, 5],
        "steps": 4,
        "maml_steps": [4],
        "hidden": [16, 16],
        "train": {"meta_steps": 6, "meta_batch": 4, "log_every": 1},
        "val_tasks": 20,
        "test_tasks": 30,
        "curve_points": 4,
        "timing_tasks": 10,
        "timing_repeats": 1,
        "gain_head": True,
        "gain_tasks": 20,
        "gain_updates": 10,
    },
    # Minutes: glyphs 5-way K ∈ 1..10 on a narrow Conv4 (a smoke test of the benchmark).
    "quick": {
        "width": 16,
        "glyphs": {"characters": [300, 50, 150]},
        "train": {"meta_steps": 200, "meta_batch": 2},
        "val_tasks": 100,
        "test_tasks": 200,
        "timing_tasks": 20,
        "timing_repeats": 2,
    },
    # The benchmark (issue 14): glyphs 5-way, K ∈ 1..10, 5 query per class, T = 10, 32 filters,
    # 1,200 meta-training tasks per method, 3 seeds (≈ 105 CPU-minutes on one quiet thread).
    "benchmark": {
        "width": 32,
        "seeds": [0, 1, 2],
        "train": {"meta_steps": 600, "meta_batch": 2, "log_every": 50},
        "val_tasks": 200,
        "timing_tasks": 40,
    },
    # The Omniglot imbalance of the official code: 20-way, K ∈ 1..5, 1 query per class,
    # meta-batch 10, 64 filters; resumable, meant to run across sessions.
    "long": {
        "ways": 20,
        "shots": [1, 5],
        "query": 1,
        "width": 64,
        "train": {"meta_steps": 2000, "meta_batch": 10, "log_every": 10},
        "checkpoint_every": 50,
    },
    # Balanced glyphs: 5-way 5-shot.
    "glyphs-balanced": {
        "shots": [5, 5],
        "width": 32,
        "train": {"meta_steps": 600, "meta_batch": 2, "log_every": 50},
        "val_tasks": 200,
    },
    # Sinusoids K ∈ 1..10 (the MSE target), 3 seeds.
    "sinusoid": {
        **SINUSOID,
        "seeds": [0, 1, 2],
        "train": {"meta_steps": 5000, "meta_batch": 25, "log_every": 100},
    },
    # Sinusoids, balanced K = 5.
    "sinusoid-balanced": {
        **SINUSOID,
        "shots": [5, 5],
        "train": {"meta_steps": 5000, "meta_batch": 25, "log_every": 100},
    },
}
