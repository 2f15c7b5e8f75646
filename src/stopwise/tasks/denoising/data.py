"""Clean grey photos shipped inside installed packages (or a user's folder), split by image into
train / validation / test, and the noisy patches, tiles and crops built from them.

Every image is read from disk only: scikit-image fetches some of its sample images with pooch,
and those are skipped unless they are already in a local cache; nothing is ever downloaded. An
image is converted to 8-bit grey (ITU-R 601 luma, PIL's ``convert("L")`` weights in floating
point), then to [0, 1];
one whose shorter side exceeds :data:`MAX_SIDE` is shrunk by the integer factor
⌈side / MAX_SIDE⌉ (block mean, rounded back to 8 bits). Identical arrays count once (PyWavelets
ships scikit-image's ``camera`` again): the first in catalogue order keeps its split.

Noise is Gaussian, σ given on the 0–255 scale, added without clipping (as the official code).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...config import DataError
from ...datasets import from_16_bit

__all__ = [
    "MAX_SIDE",
    "SPLITS",
    "IMAGE_SUFFIXES",
    "CatalogueImage",
    "CATALOGUE",
    "DataError",
    "Split",
    "Splits",
    "load_splits",
    "image_sizes",
    "sample_patches",
    "center_crop",
    "tiles",
    "NoisySet",
    "noisy_set",
    "png_base64",
    "from_png_base64",
]

MAX_SIDE = 512
BM3D_MIN_SIDE = 16  # the bm3d package segfaults on 11×11 and refuses 8×8
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class CatalogueImage:
    """A sample photo that ships inside a package: where it lies, whose it is, which split."""

    name: str
    package: str  # the importable package whose folder holds the file
    path: str  # relative to that package's folder
    split: str
    source: str
    licence: str


_SK = "skimage"
_PD = "public domain"
_SK_NOTE = "no licence note; ships with scikit-image (BSD-3-Clause)"
# The fixed split (docs/denoising.md lists it with the same sources and licences). Test: a
# "Set12-like" dozen of varied photos; validation: three; training: the rest.
CATALOGUE: tuple[CatalogueImage, ...] = (
    CatalogueImage("camera", _SK, "data/camera.png", "test", "scikit-image (Lav Varshney)", "CC0"),
    CatalogueImage("astronaut", _SK, "data/astronaut.png", "test", "scikit-image (NASA)", _PD),
    CatalogueImage(
        "chelsea", _SK, "data/chelsea.png", "test", "scikit-image (Stefan van der Walt)", "CC0"
    ),
    CatalogueImage("coffee", _SK, "data/coffee.png", "test", "scikit-image (Rachel Michetti)", "CC0"),
    CatalogueImage("rocket", _SK, "data/rocket.jpg", "test", "scikit-image (SpaceX)", _PD),
    CatalogueImage(
        "coins", _SK, "data/coins.png", "test", "scikit-image (Brooklyn Museum)", "no known copyright"
    ),
    CatalogueImage("moon", _SK, "data/moon.png", "test", "scikit-image", _SK_NOTE),
    CatalogueImage("brick", _SK, "data/brick.png", "test", "scikit-image (CC0Textures)", "CC0"),
    CatalogueImage("aero", "pywt", "data/aero.npz", "test", "PyWavelets", "no source note; ships with PyWavelets (MIT)"),
    CatalogueImage(
        "ascent", "pywt", "data/ascent.npz", "test", "PyWavelets (public-domain-image.com)", _PD
    ),
    CatalogueImage(
        "flower", "sklearn", "datasets/images/flower.jpg", "test", "scikit-learn (vultilion, Flickr)",
        "CC BY 2.0",
    ),
    CatalogueImage(
        "grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "test",
        "matplotlib (US Navy)", _PD,
    ),
    CatalogueImage(
        "clock", _SK, "data/clock_motion.png", "val", "scikit-image (Stefan van der Walt)", _PD
    ),
    CatalogueImage("grass", _SK, "data/grass.png", "val", "scikit-image (DeviantArt, Linolafett)", "CC0"),
    CatalogueImage("page", _SK, "data/page.png", "val", "scikit-image", _SK_NOTE),
    CatalogueImage(
        "china", "sklearn", "datasets/images/china.jpg", "train",
        "scikit-learn (danielbuechele, Flickr)", "CC BY 2.0",
    ),
    CatalogueImage(
        "motorcycle", _SK, "data/motorcycle_left.png", "train",
        "scikit-image (Middlebury 2014 stereo)", "see Middlebury terms (research use)",
    ),
    CatalogueImage(
        "hubble_deep_field", _SK, "data/hubble_deep_field.jpg", "train", "scikit-image (NASA)", _PD
    ),
    CatalogueImage(
        "immunohistochemistry", _SK, "data/ihc.png", "train", "scikit-image (CMMI)",
        "no known copyright",
    ),
    CatalogueImage(
        "retina", _SK, "data/retina.jpg", "train", "scikit-image (Mikael Häggström)", "CC0"
    ),
    CatalogueImage("gravel", _SK, "data/gravel.png", "train", "scikit-image (CC0Textures)", "CC0"),
    CatalogueImage("text", _SK, "data/text.png", "train", "scikit-image (Wikipedia)", _PD),
    CatalogueImage(
        "camera_pywt", "pywt", "data/camera.npz", "train", "PyWavelets (= scikit-image camera)",
        "CC0",
    ),
)  # fmt: skip


@dataclass
class Split:
    """The images of one split: names and ``(H, W)`` float32 tensors in [0, 1]."""

    names: list[str]
    images: list[torch.Tensor]


@dataclass
class Splits:
    """train / val / test, and what was left out (``{name: reason}``)."""

    train: Split
    val: Split
    test: Split
    skipped: dict[str, str] = field(default_factory=dict)
    source: str = "built-in sample images"

    def plain(self) -> dict:
        return {
            "source": self.source,
            **{s: getattr(self, s).names for s in SPLITS},
            "sizes": {s: [list(im.shape) for im in getattr(self, s).images] for s in SPLITS},
            "skipped": self.skipped,
        }


def _to_grey_uint8(array: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 grey from a grey, RGB or RGBA array (ITU-R 601 luma, rounded)."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise DataError(f"expected 8-bit pixels; got {array.dtype}")
    if array.ndim == 3:
        rgb = array[..., :3].astype(np.float64)
        if rgb.shape[-1] == 1:
            return array[..., 0]
        array = np.floor(rgb @ np.array([0.299, 0.587, 0.114]) + 0.5).clip(0, 255)
        return array.astype(np.uint8)
    if array.ndim != 2:
        raise DataError(f"expected a 2-D or 3-D image; got shape {array.shape}")
    return array


def _shrink(grey: np.ndarray) -> np.ndarray:
    """Block-mean downscale by ⌈shorter side / MAX_SIDE⌉ (rounded to 8 bits); else unchanged."""
    factor = math.ceil(min(grey.shape) / MAX_SIDE)
    if factor <= 1:
        return grey
    h, w = (s // factor * factor for s in grey.shape)
    blocks = grey[:h, :w].reshape(h // factor, factor, w // factor, factor).astype(np.float64)
    return np.floor(blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """An image file (PNG/JPEG via Pillow, or a PyWavelets ``.npz``) as uint8 grey."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return _to_grey_uint8(data["data"])
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" as Pillow opens it)
                return from_16_bit(np.asarray(image), path)
            if image.mode == "F":
                raise DataError(
                    f"image {path} has floating-point pixels (mode F); save it as 8 or 16 bits"
                )
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGB")
            return _to_grey_uint8(np.asarray(image))
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None


def _header_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the file header (PNG/JPEG: no decoding; a PNG's chunks are verified)."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return tuple(data["data"].shape[:2])
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "PNG":
                image.verify()  # checks every chunk's CRC without decoding
            else:  # Pillow's verify does nothing for JPEG: decode it (a truncated file fails)
                image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None
    return height, width


def _shrunk_size(size: tuple[int, int]) -> tuple[int, int]:
    factor = math.ceil(min(size) / MAX_SIDE)
    return size if factor <= 1 else (size[0] // factor, size[1] // factor)


def image_sizes(images_dir: str = "") -> dict[str, list[tuple[str, tuple[int, int]]]]:
    """``{split: [(name, (H, W))]}`` of the images :func:`load_splits` would load (after the
    shrink): the check a config runs before anything is written. A user's folder is loaded
    (decoded once, cached); the catalogue's images are sized from their headers (PNG chunks
    verified, JPEGs decoded, since a truncated one has a valid header). Raises
    :class:`DataError` for a missing folder or split, an empty split, an unreadable file, or,
    in a user's folder, one picture in two splits. (Identical catalogue images are counted
    once when the images are loaded.)"""
    if images_dir:
        splits = load_splits(images_dir)
        return {
            name: [
                (n, tuple(image.shape)) for n, image in zip(split.names, split.images, strict=True)
            ]
            for name, split in zip(SPLITS, (splits.train, splits.val, splits.test), strict=True)
        }
    sizes: dict[str, list] = {s: [] for s in SPLITS}
    for entry in CATALOGUE:
        path = _catalogue_path(entry)
        if path is not None:
            sizes[entry.split].append((entry.name, _shrunk_size(_header_size(path))))
    empty = [s for s in SPLITS if not sizes[s]]
    if empty:
        raise DataError(f"no built-in sample image available for split(s) {empty}")
    return sizes


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _catalogue_path(entry: CatalogueImage) -> Path | None:
    """The file on disk, or None. For scikit-image also its pooch cache (never downloaded)."""
    root = _package_dir(entry.package)
    if root is None:
        return None
    candidates = [root / entry.path]
    if entry.package == _SK:
        import skimage.data

        cache = getattr(skimage.data, "data_dir", None)
        if cache:
            candidates.append(Path(cache) / Path(entry.path).name)
    return next((p for p in candidates if p.is_file()), None)


def _tensor(grey: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grey.astype(np.float32) / 255.0)


@functools.lru_cache(maxsize=4)
def load_splits(images_dir: str = "") -> Splits:
    """The built-in catalogue split (``images_dir`` empty) or a user's folder with ``train/``,
    ``val/`` and ``test/`` subfolders of PNG/JPEG images. Raises :class:`DataError`."""
    if images_dir:
        return _folder_splits(Path(images_dir).expanduser())
    found: dict[str, Split] = {s: Split([], []) for s in SPLITS}
    skipped: dict[str, str] = {}
    seen: dict[str, str] = {}
    for entry in CATALOGUE:
        path = _catalogue_path(entry)
        if path is None:
            skipped[entry.name] = f"not on disk ({entry.package}/{entry.path}); not downloaded"
            continue
        grey = _shrink(read_image(path))
        digest = _pixel_digest(grey)
        if digest in seen:
            skipped[entry.name] = f"identical to {seen[digest]}"
            continue
        seen[digest] = entry.name
        found[entry.split].names.append(entry.name)
        found[entry.split].images.append(_tensor(grey))
    empty = [s for s in SPLITS if not found[s].names]
    if empty:
        raise DataError(f"no built-in sample image available for split(s) {empty}: {skipped}")
    return Splits(found["train"], found["val"], found["test"], skipped)


def _folder_files(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DataError(f"images_dir={str(root)!r} is not a folder")
    files = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"images_dir={str(root)!r} has no {split}/ subfolder")
        files[split] = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files[split]:
            raise DataError(f"images_dir={str(root)!r}: {split}/ holds no PNG or JPEG image")
    return files


def folder_files(images_dir: str) -> dict[str, Path]:
    """The image files of a user's ``images_dir``, by ``split/name`` (what a job's data digest
    covers); DataError as :func:`load_splits`."""
    root = Path(images_dir).expanduser()
    return {f"{split}/{p.name}": p for split, files in _folder_files(root).items() for p in files}


def _folder_splits(root: Path) -> Splits:
    splits = {}
    seen: dict[str, Path] = {}  # one picture in two splits would leak a test image into training
    for split, files in _folder_files(root).items():
        images = []
        for path in files:
            grey = _shrink(read_image(path))
            other = seen.setdefault(_pixel_digest(grey), path)
            if other.parent != path.parent:  # the pixels, however the files were saved
                raise DataError(f"images_dir={str(root)!r}: {other} and {path} hold the same image")
            images.append(_tensor(grey))
        splits[split] = Split([p.name for p in files], images)
    return Splits(splits["train"], splits["val"], splits["test"], {}, f"folder {root}")


def _pixel_digest(grey: np.ndarray) -> str:
    return hashlib.sha256(grey.tobytes() + str(grey.shape).encode()).hexdigest()


def sample_patches(
    images: list[torch.Tensor],
    count: int,
    size: int,
    sigmas: list[float],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy, noise)``, each ``(count, 1, size, size)``: patches at uniform positions of
    images drawn in proportion to their area, each under one of the 8 flips/rotations, with
    Gaussian noise of σ/255 for σ drawn uniformly from ``sigmas`` (blind training)."""
    areas = torch.tensor([float(im.numel()) for im in images], dtype=torch.float64)
    which = torch.multinomial(areas, count, replacement=True, generator=generator)
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    transform = torch.randint(8, (count,), generator=generator)
    sigma = torch.tensor(sigmas)[torch.randint(len(sigmas), (count,), generator=generator)]
    patches = []
    for i in range(count):
        image = images[int(which[i])]
        top = int(corner[i, 0] * (image.shape[0] - size + 1))
        left = int(corner[i, 1] * (image.shape[1] - size + 1))
        patch = image[top : top + size, left : left + size]
        k = int(transform[i])
        patch = torch.rot90(patch, k % 4, dims=(0, 1))
        patches.append(patch.flip(1) if k >= 4 else patch)
    clean = torch.stack(patches).unsqueeze(1)
    noise = torch.randn(clean.shape, generator=generator) * (sigma / 255.0).view(-1, 1, 1, 1)
    return clean + noise, noise


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``min(size, H) × min(size, W)`` window of ``(H, W)``."""
    h, w = min(size, image.shape[0]), min(size, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top : top + h, left : left + w]


def tiles(image: torch.Tensor, size: int, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` non-overlapping square tiles of side ``min(size, H, W)``, evenly spread
    over the grid of tiles (row-major order)."""
    side = min(size, *image.shape)
    rows, cols = image.shape[0] // side, image.shape[1] // side
    grid = [(r, c) for r in range(rows) for c in range(cols)]
    picked = (
        [grid[round(i * len(grid) / limit)] for i in range(limit)] if len(grid) > limit else grid
    )
    return [image[r * side : (r + 1) * side, c * side : (c + 1) * side] for r, c in picked]


@dataclass
class NoisySet:
    """Noisy versions of clean images, one item per (σ, image), σ outermost.

    ``groups`` holds the items batched by shape: ``(item indices (n,), clean (n, 1, H, W),
    noisy (n, 1, H, W))``; ``sigma`` ``(N,)`` (0–255 scale) and ``names`` describe the items.
    """

    sigma: torch.Tensor
    names: list[str]
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    @property
    def size(self) -> int:
        return len(self.names)

    def to(self, device: torch.device) -> NoisySet:
        groups = [(i, c.to(device), n.to(device)) for i, c, n in self.groups]
        return NoisySet(self.sigma, self.names, groups)

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean, noisy)`` of item ``i``, each ``(1, H, W)``."""
        for index, clean, noisy in self.groups:
            rows = (index == i).nonzero().flatten()
            if rows.numel():
                return clean[int(rows[0])], noisy[int(rows[0])]
        raise IndexError(f"no item {i}")

    def map(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(noisy, clean)`` on every group (each returning ``(n, ...)``), rows put back in
        item order: ``(N, ...)``."""
        parts = [(index, fn(noisy, clean)) for index, clean, noisy in self.groups]
        out = parts[0][1].new_empty((self.size, *parts[0][1].shape[1:]))
        for index, values in parts:
            out[index] = values
        return out


def noisy_set(
    images: list[torch.Tensor], names: list[str], sigmas: list[float], generator: torch.Generator
) -> NoisySet:
    """Every image under every σ, each with its own noise draw (in item order, σ outermost)."""
    items, sigma, labels = [], [], []
    for s in sigmas:
        for image, name in zip(images, names, strict=True):
            noise = torch.randn(image.shape, generator=generator) * (s / 255.0)
            items.append((image, image + noise))
            sigma.append(float(s))
            labels.append(name)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (image, _) in enumerate(items):
        by_shape.setdefault(tuple(image.shape), []).append(i)
    groups = [
        (
            torch.tensor(index),
            torch.stack([items[i][0] for i in index]).unsqueeze(1),
            torch.stack([items[i][1] for i in index]).unsqueeze(1),
        )
        for index in by_shape.values()
    ]
    return NoisySet(torch.tensor(sigma, dtype=torch.float64), labels, groups)  # σ = 12.3 exactly


def png_base64(image: torch.Tensor) -> str:
    """An image in [0, 1] (``(H, W)`` or ``(1, H, W)``) as a base64 8-bit grey PNG (for records)."""
    import base64
    import io

    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1).reshape(image.shape[-2:]) * 255.0).round()
    buffer = io.BytesIO()
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def from_png_base64(text: str) -> np.ndarray:
    """The ``(H, W)`` float array in [0, 1] that :func:`png_base64` encoded."""
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image, dtype=np.float64) / 255.0
