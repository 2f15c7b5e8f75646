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
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...config import DataError
from ...datasets import digits

__all__ = [
    "DataError",
    "Splits",
    "DEFAULT_FASHION_DIR",
    "read_idx",
    "idx_shape",
    "idx_sizes",
    "resolve_data_dir",
    "load_fashion_mnist",
    "fashion_splits",
    "mnist1d_splits",
    "digits_splits",
    "DATASETS",
    "check_sizes",
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


# ---------------------------------------------------------------- IDX files


def _idx_bytes(path: Path, size: int = -1) -> bytes:
    """The first ``size`` bytes (-1: all) of an IDX file, gunzipped if it is gzipped, checked to
    start as an IDX file does: 2 zero bytes, a known type byte and a rank byte."""
    try:
        with path.open("rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else path.open("rb") as handle:
            raw = handle.read(size)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"cannot read IDX file {path}: {error}. {HOW_TO_GET}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; expected "
            f"00 00 <type> <rank>). {HOW_TO_GET}"
        )
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or raw): 2 zero bytes, a type byte, a rank byte, big-endian
    uint32 sizes, then the data. Raises :class:`DataError` naming the file on any mismatch."""
    path = Path(path)
    raw = _idx_bytes(path)
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


def idx_shape(path: str | Path, rank: int) -> tuple[int, ...]:
    """The sizes in an IDX file's header (gzipped or raw), read without the data: 4 magic bytes
    and ``rank`` big-endian uint32 sizes. Raises :class:`DataError` naming the file when the
    header is not an IDX header of that rank."""
    path = Path(path)
    size = 4 + 4 * rank
    head = _idx_bytes(path, size)
    if head[3] != rank or len(head) < size:
        raise DataError(
            f"{path}: an IDX header of rank {head[3]} ({len(head)} bytes read); expected rank "
            f"{rank} ({'images (N, H, W)' if rank == 3 else 'labels (N,)'}). {HOW_TO_GET}"
        )
    return struct.unpack(f">{rank}I", head[4:size])


def resolve_data_dir(data_dir: str = "") -> tuple[Path, str]:
    """The Fashion-MNIST folder and where it came from: ``data_dir`` if given, else the
    STOPWISE_DATA variable, else the Debian default (``~`` expanded)."""
    if data_dir:
        return Path(data_dir).expanduser(), "--set data_dir"
    if os.environ.get("STOPWISE_DATA"):
        return Path(os.environ["STOPWISE_DATA"]).expanduser(), "STOPWISE_DATA"
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
        check_labels(labels, files[f"{part}_labels"])
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            raise DataError(f"{files[f'{part}_images']}: pixels that are NaN or infinite")
        out[f"{part}_x"], out[f"{part}_y"] = images, labels
    return out


def check_labels(labels: np.ndarray, path: Path) -> None:
    """DataError unless the labels are integers in 0..9."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: labels of IDX type {labels.dtype}; class labels are integers (unsigned "
            f"byte in Fashion-MNIST). {HOW_TO_GET}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9. {HOW_TO_GET}")


# ---------------------------------------------------------------- splits


def check_sizes(rows: int, val_size: int, test_size: int, train_size: int, what: str) -> None:
    """DataError unless ``rows`` give ``val_size`` validation and ``test_size`` test rows (0: the
    test split comes from elsewhere) and leave training rows; ``train_size`` 0 takes them all."""
    left = rows - val_size - test_size
    if val_size < 1 or left < 1:
        raise DataError(
            f"{what} has {rows} rows: val_size {val_size} + test_size {test_size} must leave "
            "training rows"
        )
    if not 0 <= train_size <= left:
        raise DataError(
            f"train_size must lie in 0..{left} for {what} ({rows} rows, {val_size} for "
            f"validation, {test_size} for test; 0 means all); got {train_size}"
        )


def _normalised(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    train = train.astype(np.float32)
    mean, std = float(train.mean()), float(train.std()) or 1.0
    return [torch.from_numpy((a.astype(np.float32) - mean) / std) for a in (train, *others)]


def _splits(name, dims, x, y, sizes, split_seed, info, test=None, group=None) -> Splits:
    """Shuffle the pool ``(x, y)`` with ``split_seed``: the first ``test_size`` rows are test
    (unless ``test``, a separate ``(x, y)``, is given), the next ``val_size`` validation, then
    ``train_size`` (0: all the rest) training; standardised with the training rows' statistics."""
    val_size, test_size, train_size = sizes
    test_size = 0 if test is not None else test_size
    check_sizes(len(y), val_size, test_size, train_size, name)
    order = np.random.default_rng(split_seed).permutation(len(y))
    test_rows, val_rows, train_rows = np.split(order, [test_size, test_size + val_size])
    train_rows = train_rows[:train_size] if train_size else train_rows
    test_x, test_y = test if test is not None else (x[test_rows], y[test_rows])
    train_x, val_x, test_x = _normalised(x[train_rows], x[val_rows], test_x)
    train_y, val_y, test_y = (
        torch.from_numpy(a.astype(np.int64)) for a in (y[train_rows], y[val_rows], test_y)
    )
    return Splits(
        name, dims, 10, train_x, train_y, val_x, val_y, test_x, test_y,
        {**info, "split_seed": split_seed},
        None if group is None else torch.from_numpy(group[test_rows]),
    )  # fmt: skip


def fashion_splits(
    data_dir: str = "", val_size: int = 5000, train_size: int = 0, split_seed: int = 0
) -> Splits:
    """Fashion-MNIST: validation and training rows from the 60,000 training images, the 10,000
    test images as test. Images ``(N, 28, 28)``."""
    data = load_fashion_mnist(data_dir)
    folder, source = resolve_data_dir(data_dir)
    info = {"source": f"IDX files in {folder} ({source})"}
    x, y, test = data["train_x"], data["train_y"], (data["test_x"], data["test_y"])
    return _splits("fashion-mnist", 2, x, y, (val_size, 0, train_size), split_seed, info, test)


def mnist1d_splits(
    noise_levels: list[float],
    per_level: int = 4000,
    val_size: int = 2000,
    test_size: int = 2000,
    split_seed: int = 0,
    train_size: int = 0,
) -> Splits:
    """MNIST-1D (Greydanus 2020) generated offline with ``mnist1d.data.make_dataset``, one set per
    noise level (``corr_noise_scale`` = level, ``iid_noise_scale`` = 0.08·level, the package's
    default ratio), concatenated and shuffled, so samples differ in difficulty. Signals ``(N, 40)``;
    ``test_group`` holds each test row's noise level.

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
    if per_level < 10 or per_level % 10:
        raise DataError(
            f"mnist1d_per_level must be a positive multiple of 10 (make_dataset makes "
            f"10·⌊n/10⌋ samples, one template each); got {per_level}"
        )
    check_sizes(len(noise_levels) * per_level, val_size, test_size, train_size, "mnist1d")
    saved = random.getstate(), np.random.get_state()
    sets = []
    try:
        for i, level in enumerate(noise_levels):
            args = get_dataset_args()
            args.num_samples, args.train_split = per_level, 1.0
            args.corr_noise_scale, args.iid_noise_scale = level, 0.08 * level
            args.seed = split_seed * 1000 + i
            sets.append(make_dataset(args))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    info = {
        "source": "mnist1d.data.make_dataset (generated, no download)",
        "noise_levels": list(noise_levels),
        "per_level": per_level,
    }
    x, y = (np.concatenate([data[k] for data in sets]) for k in ("x", "y"))
    group = np.concatenate([np.full(len(data["y"]), i) for i, data in enumerate(sets)])
    sizes = (val_size, test_size, train_size)
    return _splits("mnist1d", 1, x, y, sizes, split_seed, info, group=group)


def digits_splits(
    val_size: int = 300, test_size: int = 400, split_seed: int = 0, train_size: int = 0
) -> Splits:
    """scikit-learn's 1,797 8×8 digits (bundled with the package, no download), for tests."""
    images, labels = digits()
    info = {"source": "sklearn.datasets.load_digits"}
    sizes = (val_size, test_size, train_size)
    return _splits("digits", 2, images, labels, sizes, split_seed, info)


DATASETS = ("fashion-mnist", "mnist1d", "digits")
DIGITS_ROWS = 1797
DIGITS_SIZE = (8, 8)
MNIST1D_LENGTH = 40  # mnist1d's final_seq_length (the package's default, never changed here)


def idx_sizes(data_dir: str = "") -> tuple[int, int, tuple[int, ...]]:
    """Training rows, test rows and the image size ``(H, W)`` of the IDX files in the data
    folder, from the images' headers; DataError names a file whose images and labels disagree
    or whose labels are not classes 0..9 (the label files are read whole)."""
    files = fashion_mnist_files(data_dir)
    rows, size = [], None
    for part in ("train", "test"):
        images = idx_shape(files[f"{part}_images"], 3)
        labels = idx_shape(files[f"{part}_labels"], 1)
        if images[0] != labels[0] or (size is not None and images[1:] != size):
            raise DataError(
                f"{files[f'{part}_images']} holds {images[0]} images of {images[1]}×{images[2]} "
                f"and {files[f'{part}_labels']} {labels[0]} labels; expected as many labels as "
                f"images, and training and test images of one size. {HOW_TO_GET}"
            )
        rows.append(images[0])
        size = images[1:]
    for part in ("train", "test"):  # a few kilobytes: read now, so a bad one writes nothing
        check_labels(read_idx(files[f"{part}_labels"]), files[f"{part}_labels"])
    return rows[0], rows[1], size


def check_data(config) -> None:
    """Refuse, before anything is read or written, split sizes the data cannot give (the IDX
    files' row counts read from their headers), a ``stem`` that does not divide the input size,
    and missing Fashion-MNIST files (:class:`DataError`, a ValueError, names the key, or each
    path tried)."""
    what, test_size, test_rows = config.dataset, config.test_size, None
    if config.data_dir and config.dataset != "fashion-mnist":
        raise DataError(
            f"data_dir (IDX files) needs dataset=fashion-mnist, not {config.dataset}: "
            "add --set dataset=fashion-mnist"
        )
    if config.dataset == "fashion-mnist":  # the test rows are the IDX test files'
        rows, test_rows, size = idx_sizes(config.data_dir)
        folder, _ = resolve_data_dir(config.data_dir)
        what, test_size = f"the IDX training file in {folder}", 0
    elif config.dataset == "mnist1d":
        rows, size = len(config.mnist1d_noise) * config.mnist1d_per_level, (MNIST1D_LENGTH,)
    else:
        rows, size = DIGITS_ROWS, DIGITS_SIZE
    check_sizes(rows, config.val_size, test_size, config.train_size, what)
    if test_rows == 0:
        raise DataError(f"the IDX test files in {folder} hold no rows. {HOW_TO_GET}")
    train_rows = config.train_size or rows - config.val_size - test_size
    if min(size) < 1:
        raise DataError(f"{what}: images of size {'×'.join(map(str, size))}; need at least 1×1")
    if any(n % config.stem for n in size):
        raise DataError(
            f"stem {config.stem} must divide the input size {'×'.join(map(str, size))} of "
            f"{config.dataset}"
        )
    if 0 < train_rows < config.batch_size:
        if config.train_size:
            given = f"train_size {train_rows}"
        else:  # what the user set that left so few
            taken = f"val_size {config.val_size}" + (
                f" and test_size {test_size}" * bool(test_size)
            )
            given = f"{taken} leave {train_rows} training rows of {what}"
        raise DataError(
            f"{given}: fewer than batch_size {config.batch_size}; give at least one batch of "
            "training rows"
        )


@functools.lru_cache(maxsize=2)
def _load(dataset, data_dir, val_size, test_size, train_size, split_seed, noise, per_level):
    if dataset == "fashion-mnist":
        return fashion_splits(data_dir, val_size, train_size, split_seed)
    if dataset == "mnist1d":
        return mnist1d_splits(list(noise), per_level, val_size, test_size, split_seed, train_size)
    return digits_splits(val_size, test_size, split_seed, train_size)


def load_splits(config) -> Splits:
    """The splits named by ``config.dataset`` with the config's sizes (cached per process: every
    job of a run reads the same data)."""
    c = config
    return _load(
        c.dataset, c.data_dir, c.val_size, c.test_size, c.train_size, c.split_seed,
        tuple(c.mnist1d_noise), c.mnist1d_per_level,
    )  # fmt: skip
