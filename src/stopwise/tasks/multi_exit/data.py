"""Data for multi-exit classification: Fashion-MNIST from IDX files, MNIST-1D generated with the
``mnist1d`` package (a mixture of noise levels), and scikit-learn's 8×8 digits for tests.

Every loader returns :class:`Splits`: train, a held-out validation split (never trained on; used
only for thresholds and policy selection) and test, as float tensors normalised with the training
split's mean and standard deviation, and integer labels.
"""

from __future__ import annotations

import functools
import gzip
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DataError",
    "Splits",
    "DEFAULT_FASHION_DIR",
    "read_idx",
    "resolve_data_dir",
    "load_fashion_mnist",
    "fashion_splits",
    "mnist1d_splits",
    "digits_splits",
    "DATASETS",
    "check_data",
    "load_splits",
]

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HOW_TO_GET = (
    "Install Debian's package (`apt install dataset-fashion-mnist`, which puts the files in "
    f"{DEFAULT_FASHION_DIR}), or put the four IDX files (train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not) in "
    "a folder and pass `--set data_dir=FOLDER` or set STOPWISE_DATA=FOLDER. Without the files, "
    "`--set dataset=mnist1d` needs only pip."
)
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Missing or malformed data; the message says where it looked and how to get the data."""


@dataclass
class Splits:
    """Row-aligned tensors of one dataset. Inputs are ``(N, H, W)`` images or ``(N, L)`` signals
    (float32), labels ``(N,)`` long. ``group`` optionally marks a difficulty group per test row
    (the MNIST-1D noise level)."""

    name: str
    dims: int
    classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: dict = field(default_factory=dict)
    test_group: torch.Tensor | None = None

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "validation": len(self.val_y), "test": len(self.test_y)}

    def subset_train(self, rows: int) -> Splits:
        """The first ``rows`` training rows (0: all); validation and test unchanged."""
        if rows:
            self.train_x, self.train_y = self.train_x[:rows], self.train_y[:rows]
        return self


# ---------------------------------------------------------------- IDX files


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or raw): 2 zero bytes, a type byte, a rank byte, big-endian
    uint32 sizes, then the data. Raises :class:`DataError` naming the file on any mismatch."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read IDX file {path}: {error}. {HOW_TO_GET}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; expected "
            f"00 00 <type> <rank>). {HOW_TO_GET}"
        )
    rank = raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated (rank {rank}). {HOW_TO_GET}")
    shape = struct.unpack(f">{rank}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header} bytes; the file is truncated or corrupted. {HOW_TO_GET}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def resolve_data_dir(data_dir: str = "") -> tuple[Path, str]:
    """The Fashion-MNIST folder and where it came from: ``data_dir`` if given, else the
    STOPWISE_DATA variable, else the Debian default."""
    if data_dir:
        return Path(data_dir), "--set data_dir"
    if os.environ.get("STOPWISE_DATA"):
        return Path(os.environ["STOPWISE_DATA"]), "STOPWISE_DATA"
    return Path(DEFAULT_FASHION_DIR), "the default location"


def _find(folder: Path, stem: str, source: str) -> Path:
    tried = [folder / stem, folder / f"{stem}.gz"]
    for path in tried:
        if path.is_file():
            return path
    raise DataError(
        f"Fashion-MNIST file {stem} not found in {folder} (from {source}); looked for "
        f"{', '.join(str(p) for p in tried)}. {HOW_TO_GET}"
    )


def fashion_mnist_files(data_dir: str = "") -> dict[str, Path]:
    """The four IDX files (``{"train_images", "train_labels", "test_images", "test_labels"}``),
    found without reading them; DataError names every path tried when one is missing."""
    folder, source = resolve_data_dir(data_dir)
    return {
        f"{part}_{kind}": _find(folder, f"{prefix}-{kind}-idx{dims}-ubyte", source)
        for part, prefix in (("train", "train"), ("test", "t10k"))
        for kind, dims in (("images", 3), ("labels", 1))
    }


def load_fashion_mnist(data_dir: str = "") -> dict[str, np.ndarray]:
    """``{"train_x" (60000, 28, 28) uint8, "train_y", "test_x", "test_y"}`` from IDX files."""
    folder, _ = resolve_data_dir(data_dir)
    files = fashion_mnist_files(data_dir)
    out = {}
    for part in ("train", "test"):
        images = read_idx(files[f"{part}_images"])
        labels = read_idx(files[f"{part}_labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{folder}: {part} images have shape {images.shape} and labels {labels.shape}; "
                f"expected (N, H, W) images and (N,) labels with the same N. {HOW_TO_GET}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{folder}: {part} labels outside 0..9. {HOW_TO_GET}")
        out[f"{part}_x"], out[f"{part}_y"] = images, labels
    return out


# ---------------------------------------------------------------- splits


def _normalised(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    train = train.astype(np.float32)
    mean, std = float(train.mean()), float(train.std()) or 1.0
    return [torch.from_numpy((a.astype(np.float32) - mean) / std) for a in (train, *others)]


def _split_train(
    x: np.ndarray, y: np.ndarray, val_size: int, train_size: int, split_seed: int, what: str
):
    """Shuffle with ``split_seed``; the first ``val_size`` rows are validation, the next
    ``train_size`` (0: all the rest) training."""
    n = len(y)
    if not 0 < val_size < n:
        raise DataError(f"val_size must lie in 1..{n - 1} for {what} ({n} rows); got {val_size}")
    available = n - val_size
    if train_size < 0 or train_size > available:
        raise DataError(
            f"train_size must lie in 0..{available} for {what} ({n} rows, {val_size} for "
            f"validation; 0 means all); got {train_size}"
        )
    order = np.random.default_rng(split_seed).permutation(n)
    val, rest = order[:val_size], order[val_size:]
    train = rest[:train_size] if train_size else rest
    return x[train], y[train], x[val], y[val]


def _labels(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a.astype(np.int64)) for a in arrays]


def fashion_splits(
    data_dir: str = "", val_size: int = 5000, train_size: int = 0, split_seed: int = 0
) -> Splits:
    """Fashion-MNIST: validation and training rows from the 60,000 training images, the 10,000
    test images as test. Images ``(N, 28, 28)``."""
    data = load_fashion_mnist(data_dir)
    tx, ty, vx, vy = _split_train(
        data["train_x"], data["train_y"], val_size, train_size, split_seed, "Fashion-MNIST"
    )
    train_x, val_x, test_x = _normalised(tx, vx, data["test_x"])
    train_y, val_y, test_y = _labels(ty, vy, data["test_y"])
    folder, source = resolve_data_dir(data_dir)
    info = {"source": f"IDX files in {folder} ({source})", "split_seed": split_seed}
    return Splits("fashion-mnist", 2, 10, train_x, train_y, val_x, val_y, test_x, test_y, info)


def mnist1d_splits(
    noise_levels: list[float],
    per_level: int = 4000,
    val_size: int = 2000,
    test_size: int = 2000,
    split_seed: int = 0,
) -> Splits:
    """MNIST-1D (Greydanus 2020) generated offline with ``mnist1d.data.make_dataset``, one set per
    noise level (``corr_noise_scale`` = level, ``iid_noise_scale`` = 0.08·level, the package's
    default ratio), concatenated and shuffled, so samples differ in difficulty. Signals ``(N, 40)``.

    ``make_dataset`` standardises each generated set and reseeds Python's and NumPy's global
    generators; both generators are restored afterwards. The package's ``get_dataset`` (which
    downloads) is never called.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise DataError(
            f"MNIST-1D needs the mnist1d package ({error}); `pip install 'stopwise[data]'`"
        ) from None
    if not noise_levels or min(noise_levels) < 0:
        raise DataError(
            f"mnist1d_noise must be a non-empty list of levels >= 0; got {noise_levels}"
        )
    saved = random.getstate(), np.random.get_state()
    xs, ys, groups = [], [], []
    try:
        for i, level in enumerate(noise_levels):
            args = get_dataset_args()
            args.num_samples, args.train_split = per_level, 1.0
            args.corr_noise_scale, args.iid_noise_scale = level, 0.08 * level
            args.seed = split_seed * 1000 + i
            data = make_dataset(args)
            xs.append(data["x"])
            ys.append(data["y"])
            groups.append(np.full(len(data["y"]), i))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    x, y, group = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    n = len(y)
    if val_size < 1 or test_size < 1 or val_size + test_size >= n:
        raise DataError(
            f"MNIST-1D has {n} rows ({len(noise_levels)} levels × {per_level}); val_size "
            f"{val_size} + test_size {test_size} must leave training rows"
        )
    order = np.random.default_rng(split_seed).permutation(n)
    test, val, train = np.split(order, [test_size, test_size + val_size])
    train_x, val_x, test_x = _normalised(x[train], x[val], x[test])
    train_y, val_y, test_y = _labels(y[train], y[val], y[test])
    info = {
        "source": "mnist1d.data.make_dataset (generated, no download)",
        "noise_levels": list(noise_levels),
        "per_level": per_level,
        "split_seed": split_seed,
    }
    return Splits(
        "mnist1d", 1, 10, train_x, train_y, val_x, val_y, test_x, test_y, info,
        test_group=torch.from_numpy(group[test]),
    )  # fmt: skip


def digits_splits(val_size: int = 300, test_size: int = 400, split_seed: int = 0) -> Splits:
    """scikit-learn's 1,797 8×8 digits (bundled with the package, no download), for tests."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DataError(
            f"digits need scikit-learn ({error}); `pip install 'stopwise[data]'`"
        ) from None
    digits = load_digits()
    x, y = digits.images.astype(np.float32), digits.target
    n = len(y)
    if val_size < 1 or test_size < 1 or val_size + test_size >= n:
        raise DataError(f"digits has {n} rows; val_size + test_size must leave training rows")
    order = np.random.default_rng(split_seed).permutation(n)
    test, val, train = np.split(order, [test_size, test_size + val_size])
    train_x, val_x, test_x = _normalised(x[train], x[val], x[test])
    train_y, val_y, test_y = _labels(y[train], y[val], y[test])
    info = {"source": "sklearn.datasets.load_digits", "split_seed": split_seed}
    return Splits("digits", 2, 10, train_x, train_y, val_x, val_y, test_x, test_y, info)


DATASETS = ("fashion-mnist", "mnist1d", "digits")
DIGITS_ROWS = 1797


def check_data(config) -> None:
    """Refuse, before anything is read or written, split sizes the data set cannot give and
    missing Fashion-MNIST files (:class:`DataError`, a ValueError, names each path tried)."""
    if config.dataset == "fashion-mnist":
        fashion_mnist_files(config.data_dir)
        return
    if config.dataset == "mnist1d":
        rows = len(config.mnist1d_noise) * config.mnist1d_per_level
        what = f"MNIST-1D ({len(config.mnist1d_noise)} levels × {config.mnist1d_per_level})"
    else:
        rows, what = DIGITS_ROWS, "digits"
    if config.val_size + config.test_size >= rows:
        raise DataError(
            f"{what} has {rows} rows: val_size {config.val_size} + test_size "
            f"{config.test_size} must leave training rows"
        )
    if config.train_size > rows - config.val_size - config.test_size:
        raise DataError(
            f"train_size {config.train_size} exceeds the {rows - config.val_size - config.test_size}"
            f" training rows {what} leaves (0 means all)"
        )


def load_splits(config) -> Splits:
    """The splits named by ``config.dataset``, with the config's sizes (cached per process: every
    job of a run reads the same data)."""
    return _load(
        config.dataset,
        config.data_dir,
        config.val_size,
        config.test_size,
        config.train_size,
        config.split_seed,
        tuple(config.mnist1d_noise),
        config.mnist1d_per_level,
    )


@functools.lru_cache(maxsize=2)
def _load(dataset, data_dir, val_size, test_size, train_size, split_seed, noise, per_level):
    if dataset == "fashion-mnist":
        return fashion_splits(data_dir, val_size, train_size, split_seed)
    if dataset == "mnist1d":
        splits = mnist1d_splits(list(noise), per_level, val_size, test_size, split_seed)
    elif dataset == "digits":
        splits = digits_splits(val_size, test_size, split_seed)
    else:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    return splits.subset_train(train_size)
