"""Few-shot task families: sinusoid regression, glyph classification rendered from KanjiVG stroke
data, and the real Omniglot when a user has it; imbalanced task sampling as in the official
MAML-stop code (one K per task, K support shots for every class of that task).

Glyphs: every character of the KanjiVG package (``kanji/<code>.svg``, one path per stroke) is
drawn by ``drawers`` different "hands": a random affine map and a smooth random displacement field
(plus a small offset per stroke and a stroke width per hand) applied to points sampled along the
strokes' Bézier curves, then drawn with Pillow at 4× and box-filtered down to 28×28. The 90°,
180° and 270° rotations of a character are new classes (the Omniglot protocol). Splits are
class-disjoint, in Omniglot's proportions (1,100 / 100 / 423 base characters by default), fixed by
``split_seed`` (not by the run's seed). Rendered images are cached on disk (``.npz``) under a name
that hashes every renderer setting and the character list.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...checkpoints import atomic_write_bytes
from ...config import DataError
from ...contract import files_digest
from ...datasets import from_16_bit

__all__ = [
    "RENDERER_VERSION",
    "SINUSOID",
    "TaskSet",
    "ClassSplit",
    "parse_path",
    "stroke_paths",
    "kanji_files",
    "render_glyph",
    "cache_root",
    "glyph_splits",
    "omniglot_characters",
    "omniglot_problem",
    "omniglot_splits",
    "omniglot_digest",
    "sample_classification_tasks",
    "sample_sinusoid_tasks",
    "split_counts",
]

RENDERER_VERSION = 1  # bump when the drawing changes: the cache key includes it
VIEWBOX = 109.0  # KanjiVG draws in a 109 × 109 box
SUPERSAMPLE = 4

# Finn et al. (2017): amplitude U[0.1, 5], phase U[0, π], inputs U[−5, 5].
SINUSOID = {"amplitude": (0.1, 5.0), "phase": (0.0, math.pi), "x": (-5.0, 5.0)}


# ---------------------------------------------------------------- a batch of tasks


@dataclass
class TaskSet:
    """Tasks of one shape family, padded to the largest support set.

    support_x: ``(B, S, *input)`` with S the largest support size; rows past ``support_n`` are 0.
    support_y: ``(B, S)`` labels (long) or targets (float); padding is 0.
    support_n: ``(B,)`` support size of each task (ways · K).
    query_x: ``(B, Q, *input)``; query_y: ``(B, Q)``.
    shots: ``(B,)`` K of each task.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    support_n: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    shots: torch.Tensor

    def __len__(self) -> int:
        return self.shots.shape[0]

    def inputs(self) -> dict[str, torch.Tensor]:
        """What the learner and the policy may see (never the query labels)."""
        return {
            "support_x": self.support_x,
            "support_y": self.support_y,
            "support_n": self.support_n,
            "query_x": self.query_x,
        }

    def task(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(support_x, support_y, query_x, query_y)`` of task ``i``, unpadded."""
        n = int(self.support_n[i])
        return self.support_x[i, :n], self.support_y[i, :n], self.query_x[i], self.query_y[i]

    def select(self, rows) -> TaskSet:
        return TaskSet(*(t[rows] for t in self.fields()))

    def fields(self) -> tuple[torch.Tensor, ...]:
        return (
            self.support_x,
            self.support_y,
            self.support_n,
            self.query_x,
            self.query_y,
            self.shots,
        )

    def to(self, device) -> TaskSet:
        return TaskSet(*(t.to(device) for t in self.fields()))


def _draw_shots(batch: int, shots: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    low, high = shots
    return torch.randint(low, high + 1, (batch,), generator=generator)


def sample_sinusoid_tasks(
    batch: int, shots: tuple[int, int], query: int, generator: torch.Generator
) -> TaskSet:
    """``batch`` sinusoid tasks y = A sin(x − φ): K ~ U{shots} support points, ``query`` query
    points, A, φ and x drawn as in Finn et al. (2017). Inputs ``(B, n, 1)``, targets ``(B, n)``."""
    K = _draw_shots(batch, shots, generator)
    S = int(shots[1])

    def uniform(low_high, *size):
        low, high = low_high
        return low + (high - low) * torch.rand(*size, generator=generator)

    amplitude = uniform(SINUSOID["amplitude"], batch, 1)
    phase = uniform(SINUSOID["phase"], batch, 1)
    x = uniform(SINUSOID["x"], batch, S + query)
    y = amplitude * torch.sin(x - phase)
    keep = (torch.arange(S).unsqueeze(0) < K.unsqueeze(1)).float()
    return TaskSet(
        (x[:, :S] * keep).unsqueeze(-1),
        y[:, :S] * keep,
        K.clone(),
        x[:, S:].unsqueeze(-1),
        y[:, S:],
        K,
    )


@dataclass
class ClassSplit:
    """The images of one class-disjoint split: ``images (C, D, H, W)`` uint8 ink (255 = ink) of
    C base characters by D drawers; ``rotations`` adds the 90/180/270° copies as classes."""

    images: torch.Tensor
    rotations: bool

    @property
    def num_classes(self) -> int:
        return self.images.shape[0] * (4 if self.rotations else 1)

    @property
    def drawers(self) -> int:
        return self.images.shape[1]


def sample_classification_tasks(
    split: ClassSplit,
    batch: int,
    ways: int,
    shots: tuple[int, int],
    query: int,
    generator: torch.Generator,
) -> TaskSet:
    """``batch`` N-way tasks from ``split``: ``ways`` distinct classes, one K ~ U{shots} per task,
    K support and ``query`` query images per class, drawn from distinct drawers. Labels 0..N−1
    follow the (random) order of the drawn classes. Images ``(B, n, 1, H, W)`` in [0, 1]."""
    C, D, H, W = split.images.shape
    if ways > split.num_classes:
        raise ValueError(f"ways={ways} exceeds the {split.num_classes} classes of the split")
    if shots[1] + query > D:
        raise ValueError(f"shots + query = {shots[1] + query} exceeds the {D} drawers per class")
    K = _draw_shots(batch, shots, generator)
    S = ways * int(shots[1])
    support_x = torch.zeros(batch, S, 1, H, W)
    support_y = torch.zeros(batch, S, dtype=torch.long)
    query_x = torch.zeros(batch, ways * query, 1, H, W)
    query_y = torch.arange(ways).repeat_interleave(query).expand(batch, -1).clone()
    for b in range(batch):
        classes = torch.randperm(split.num_classes, generator=generator)[:ways]
        k = int(K[b])
        for label, c in enumerate(classes.tolist()):
            character, turns = divmod(c, 4) if split.rotations else (c, 0)
            drawers = torch.randperm(D, generator=generator)[: k + query]
            images = split.images[character, drawers].float().div_(255.0)
            if turns:
                images = torch.rot90(images, turns, dims=(-2, -1))
            support_x[b, label * k : (label + 1) * k, 0] = images[:k]
            support_y[b, label * k : (label + 1) * k] = label
            query_x[b, label * query : (label + 1) * query, 0] = images[k:]
    return TaskSet(support_x, support_y, K * ways, query_x, query_y, K)


# ---------------------------------------------------------------- SVG strokes

_TOKEN = re.compile(r"[MmLlCcSsHhVvZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_ARITY = {"M": 2, "L": 2, "C": 6, "S": 4, "H": 1, "V": 1, "Z": 0}


def _bezier(p0, p1, p2, p3, points: int) -> list[tuple[float, float]]:
    out = []
    for i in range(1, points + 1):
        s = i / points
        a, b, c, d = (1 - s) ** 3, 3 * (1 - s) ** 2 * s, 3 * (1 - s) * s * s, s**3
        out.append(
            (
                a * p0[0] + b * p1[0] + c * p2[0] + d * p3[0],
                a * p0[1] + b * p1[1] + c * p2[1] + d * p3[1],
            )
        )
    return out


def parse_path(d: str, points_per_curve: int = 12) -> list[list[tuple[float, float]]]:
    """The polylines of an SVG path ``d`` (M/L/H/V/C/S/Z and their relative forms, implicit
    repetition of a command's arguments); each cubic Bézier sampled at ``points_per_curve`` points.
    Returns one list of ``(x, y)`` per sub-path."""
    tokens = _TOKEN.findall(d)
    polylines: list[list[tuple[float, float]]] = []
    current = (0.0, 0.0)
    start = (0.0, 0.0)
    last_control = None  # second control point of the previous cubic (for S)
    command = None
    i = 0
    while i < len(tokens):
        if tokens[i].isalpha():
            command = tokens[i]
            i += 1
            if command in "Zz":
                if polylines:
                    polylines[-1].append(start)
                current, last_control = start, None
                continue
        if command is None:
            raise ValueError(f"path data starts with a number: {d[:40]!r}")
        upper, relative = command.upper(), command.islower()
        arity = _ARITY[upper]
        args = [float(t) for t in tokens[i : i + arity]]
        if len(args) != arity or any(t.isalpha() for t in tokens[i : i + arity]):
            raise ValueError(f"path command {command} needs {arity} numbers in {d[:60]!r}")
        i += arity
        ox, oy = current if relative else (0.0, 0.0)
        if upper == "M":
            current = start = (ox + args[0], oy + args[1])
            polylines.append([current])
            command = "l" if relative else "L"  # further pairs are line-tos
            last_control = None
            continue
        if not polylines:
            polylines.append([current])
        if upper in "LHV":
            if upper == "L":
                point = (ox + args[0], oy + args[1])
            elif upper == "H":
                point = (ox + args[0] if relative else args[0], current[1])
            else:
                point = (current[0], oy + args[0] if relative else args[0])
            polylines[-1].append(point)
            current, last_control = point, None
            continue
        if upper == "C":
            c1 = (ox + args[0], oy + args[1])
            c2, end = (ox + args[2], oy + args[3]), (ox + args[4], oy + args[5])
        else:  # S: the first control point reflects the previous curve's second one
            c1 = (
                (2 * current[0] - last_control[0], 2 * current[1] - last_control[1])
                if last_control is not None
                else current
            )
            c2, end = (ox + args[0], oy + args[1]), (ox + args[2], oy + args[3])
        polylines[-1].extend(_bezier(current, c1, c2, end, points_per_curve))
        current, last_control = end, c2
    return polylines


_PATH_DATA = re.compile(r"<path\b[^>]*?\sd=\"([^\"]+)\"")


def stroke_paths(svg_text: str) -> list[str]:
    """The ``d`` attribute of every ``<path>`` of a KanjiVG file, in stroke order."""
    return _PATH_DATA.findall(svg_text)


def kanji_files() -> list[Path]:
    """The base (non-variant) stroke files of the installed ``kanjivg`` package, sorted."""
    try:
        files = importlib.metadata.files("kanjivg") or []
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            "the glyph family needs the kanjivg package (pip install kanjivg), or an Omniglot "
            "folder through --set data_dir=DIR"
        ) from None
    svgs = [
        Path(f.locate())
        for f in files
        if str(f).startswith("kanji/") and str(f).endswith(".svg") and "-" not in Path(f).stem
    ]
    if not svgs:
        raise ValueError("the kanjivg package ships no kanji/*.svg files")
    return sorted(svgs)


# ---------------------------------------------------------------- the renderer


@dataclass(frozen=True)
class Hand:
    """One drawer's jitter, in viewBox units: an affine map about the centre (rotation,
    anisotropic scale, shear, shift), a smooth displacement field (three plane waves), an offset
    per stroke and a stroke width."""

    matrix: np.ndarray  # (2, 2)
    shift: np.ndarray  # (2,)
    wave_vectors: np.ndarray  # (3, 2)
    wave_phases: np.ndarray  # (3,)
    wave_amplitudes: np.ndarray  # (3, 2)
    stroke_offsets: np.ndarray  # (strokes, 2)
    width: float


def draw_hand(settings: dict[str, float], strokes: int, rng: np.random.Generator) -> Hand:
    """A random hand from the jitter ``settings`` (see :func:`render_glyph`)."""
    angle = math.radians(rng.uniform(-1, 1) * settings["rotation_deg"])
    scale = 1.0 + rng.uniform(-1, 1, size=2) * settings["scale"]
    shear = rng.uniform(-1, 1) * settings["shear"]
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    shift = rng.uniform(-1, 1, size=2) * settings["shift"]
    directions = rng.uniform(0, 2 * math.pi, size=3)
    wavelengths = rng.uniform(0.6, 1.2, size=3) * VIEWBOX
    wave_vectors = (2 * math.pi / wavelengths)[:, None] * np.stack(
        [np.cos(directions), np.sin(directions)], axis=1
    )
    return Hand(
        matrix,
        shift,
        wave_vectors,
        rng.uniform(0, 2 * math.pi, size=3),
        rng.normal(size=(3, 2)) * settings["stroke_noise"] / math.sqrt(3),
        rng.normal(size=(strokes, 2)) * settings["stroke_offset"],
        settings["stroke_width"] * (1.0 + rng.uniform(-1, 1) * settings["width_jitter"]),
    )


def _apply_hand(points: np.ndarray, hand: Hand, stroke: int) -> np.ndarray:
    """``(P, 2)`` stroke points mapped by the hand: smooth displacement, stroke offset, affine."""
    waves = np.sin(points @ hand.wave_vectors.T + hand.wave_phases)  # (P, 3)
    points = points + waves @ hand.wave_amplitudes + hand.stroke_offsets[stroke]
    centre = VIEWBOX / 2
    return (points - centre) @ hand.matrix.T + centre + hand.shift


def render_glyph(
    strokes: list[list[np.ndarray]], hand: Hand | None, size: int = 28, width: float = 7.0
) -> np.ndarray:
    """``(size, size)`` uint8 ink image (255 = ink) of ``strokes`` (each a list of ``(P, 2)``
    polylines in viewBox units) drawn by ``hand`` (None: undistorted, stroke ``width``)."""
    from PIL import Image, ImageDraw

    canvas = size * SUPERSAMPLE
    scale = canvas / VIEWBOX
    image = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(image)
    pen = (hand.width if hand is not None else width) * scale
    radius = pen / 2
    for s, polylines in enumerate(strokes):
        for line in polylines:
            points = (_apply_hand(line, hand, s) if hand is not None else line) * scale
            if len(points) > 1:
                draw.line(points.ravel().tolist(), fill=255, width=max(1, round(pen)))
            for x, y in points[[0, -1]].tolist():  # round caps
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def _character_strokes(path: Path) -> list[list[np.ndarray]]:
    return [
        [np.asarray(line, dtype=np.float64) for line in parse_path(d)]
        for d in stroke_paths(path.read_text(encoding="utf-8"))
    ]


def cache_root(cache_dir: str) -> Path:
    """Where rendered and resized images are cached: ``cache_dir`` if set, else
    ``$STOPWISE_CACHE``, else ``$XDG_CACHE_HOME/stopwise``, else ``~/.cache/stopwise``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("STOPWISE_CACHE"):
        return Path(os.environ["STOPWISE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stopwise"


def split_counts(total: int, counts: tuple[int, int, int]) -> tuple[int, int, int]:
    """Train / validation / test class counts: ``counts`` (scaled to ``total`` if they exceed
    it, keeping Omniglot's proportions)."""
    if sum(counts) <= total:
        return counts
    train = round(total * counts[0] / sum(counts))
    val = round(total * counts[1] / sum(counts))
    return train, val, total - train - val


def _load_or_build(path: Path, build) -> dict[str, np.ndarray]:
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    arrays = build()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return arrays


def glyph_splits(settings: dict[str, Any], cache_dir: str = "", log=None) -> list[ClassSplit]:
    """Train, validation and test :class:`ClassSplit` of rendered KanjiVG characters.

    ``settings``: ``characters`` ([train, val, test] base characters), ``min_strokes`` /
    ``max_strokes`` (which characters qualify), ``drawers``, ``split_seed``, ``size``,
    ``rotations`` and the jitter keys of :func:`draw_hand`. Characters qualifying are shuffled by
    ``split_seed`` and cut into the three splits; every drawer of every character is rendered once
    and cached (the file name hashes all settings that change a pixel).
    """
    files = kanji_files()
    strokes = {}
    eligible = []
    for path in files:
        count = len(stroke_paths(path.read_text(encoding="utf-8")))
        if settings["min_strokes"] <= count <= settings["max_strokes"]:
            eligible.append(path)
    counts = tuple(settings["characters"])
    if sum(counts) > len(eligible):
        raise ValueError(
            f"glyphs.characters={list(counts)} needs {sum(counts)} characters but only "
            f"{len(eligible)} have {settings['min_strokes']}..{settings['max_strokes']} strokes"
        )
    order = np.random.default_rng(settings["split_seed"]).permutation(len(eligible))
    chosen = [eligible[i] for i in order[: sum(counts)]]
    key_settings = {
        "version": RENDERER_VERSION,
        "characters": [p.stem for p in chosen],
        **{k: settings[k] for k in sorted(settings) if k not in ("characters", "rotations")},
    }
    digest = hashlib.sha256(json.dumps(key_settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"glyphs-{digest}.npz"

    def build():
        if log is not None:
            log(f"rendering {len(chosen)} characters × {settings['drawers']} drawers to {path}")
        images = np.zeros(
            (len(chosen), settings["drawers"], settings["size"], settings["size"]), np.uint8
        )
        for c, file in enumerate(chosen):
            strokes = _character_strokes(file)
            for d in range(settings["drawers"]):
                rng = np.random.default_rng([settings["split_seed"], int(file.stem, 16), d])
                hand = draw_hand(settings, len(strokes), rng)
                images[c, d] = render_glyph(strokes, hand, settings["size"])
        return {"images": images, "codes": np.array([p.stem for p in chosen])}

    del strokes
    images = torch.from_numpy(_load_or_build(path, build)["images"])
    bounds = np.cumsum((0, *counts))
    return [ClassSplit(images[bounds[i] : bounds[i + 1]], settings["rotations"]) for i in range(3)]


# ---------------------------------------------------------------- the real Omniglot

OMNIGLOT_FOLDERS = ("images_background", "images_evaluation")


def omniglot_characters(data_dir: str) -> list[Path]:
    """Character folders of an Omniglot tree (``images_background/`` and
    ``images_evaluation/``, each ``alphabet/character/*.png``), background first, sorted.
    Hidden folders (``.ipynb_checkpoints``) are not alphabets or characters."""
    root = Path(data_dir).expanduser()
    characters = []
    for folder in OMNIGLOT_FOLDERS:
        base = root / folder
        if base.is_dir():
            characters += sorted(c for a in _folders(base) for c in _folders(a))
    return characters


def _folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def character_images(character: Path) -> list[Path]:
    """A character folder's images, sorted: ``*.png`` in any case of the suffix."""
    return sorted(p for p in character.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def omniglot_digest(data_dir: str) -> str:
    """``files_digest`` of every character image of the tree (by its path within it)."""
    root = Path(data_dir).expanduser()
    pngs = (p for c in omniglot_characters(data_dir) for p in character_images(c))
    return files_digest({str(p.relative_to(root)): p for p in pngs})


def _read_glyph(png: Path, size: int) -> np.ndarray:
    """One Omniglot image as ``(size, size)`` uint8 with ink = 255: drawn on white, or on a
    transparent background (composited onto white first); DataError for an unreadable or blank
    image, which would train on nothing without a word."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(png) as image:
            image.load()
            if image.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" as Pillow opens it)
                image = Image.fromarray(from_16_bit(np.asarray(image), png))
            if "A" in image.getbands() or "transparency" in image.info:
                white = Image.new("RGBA", image.size, "white")
                image = Image.alpha_composite(white, image.convert("RGBA"))
            grey = image.convert("L").resize((size, size), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"data_dir: cannot read the Omniglot image {png}: {error}") from None
    ink = 255 - np.asarray(grey, dtype=np.uint8)
    if ink.min() == ink.max():
        raise DataError(f"data_dir: the Omniglot image {png} is blank (one colour everywhere)")
    return ink


def omniglot_problem(data_dir: str) -> str | None:
    """Why ``data_dir`` is not an Omniglot layout, or None if it is one."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        return f"data_dir={data_dir!r} is not a directory"
    missing = [f for f in OMNIGLOT_FOLDERS if not (root / f).is_dir()]
    if missing:
        return (
            f"data_dir={data_dir!r} is not an Omniglot layout: it lacks {missing} (expected "
            "images_background/ and images_evaluation/, each alphabet/character/*.png)"
        )
    characters = omniglot_characters(data_dir)
    if not characters or not any(character_images(c) for c in characters[:5]):
        return f"data_dir={data_dir!r} has no alphabet/character/*.png images"
    return None


def omniglot_splits(
    data_dir: str,
    counts: tuple[int, int, int],
    split_seed: int,
    size: int,
    rotations: bool,
    cache_dir: str = "",
    log=None,
) -> list[ClassSplit]:
    """Train, validation and test splits of the real Omniglot: characters shuffled by
    ``split_seed`` and cut in Omniglot's 1,100 / 100 / 423 proportions (the official code's MAML
    split file is not shipped), images resized to ``size`` (box filter) with ink = 255, the
    first ``drawers`` = min over characters of their image count kept per character. Cached
    under a key of the images' contents and the settings."""
    characters = omniglot_characters(data_dir)
    pngs = [character_images(c) for c in characters]
    drawers = min(len(p) for p in pngs)
    counts = split_counts(len(characters), counts)
    key = {
        "files": omniglot_digest(data_dir),  # the images themselves: changed files, a new key
        "size": size,
        "split_seed": split_seed,
        "counts": list(counts),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"omniglot-{digest}.npz"

    def build():
        if log is not None:
            log(f"reading {len(characters)} Omniglot characters into {path}")
        order = np.random.default_rng(split_seed).permutation(len(characters))[: sum(counts)]
        images = np.zeros((len(order), drawers, size, size), np.uint8)
        for row, c in enumerate(order):
            for d, png in enumerate(pngs[c][:drawers]):
                images[row, d] = _read_glyph(png, size)
        return {"images": images}

    images = torch.from_numpy(_load_or_build(path, build)["images"])
    bounds = np.cumsum((0, *counts))
    return [ClassSplit(images[bounds[i] : bounds[i + 1]], rotations) for i in range(3)]
