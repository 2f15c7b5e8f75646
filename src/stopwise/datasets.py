"""Small datasets that ship inside an installed package, and image-file helpers, shared by the
tasks."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .config import DataError

__all__ = ["digits", "from_16_bit", "require_packages", "DATA_PACKAGES", "DATASET_PACKAGES"]

# Import name → distribution name of the packages the ``data`` extra installs for the tasks.
DATA_PACKAGES = {
    "sklearn": "scikit-learn",
    "mnist1d": "mnist1d",
    "skimage": "scikit-image",
    "bm3d": "bm3d",
}
# The package each generated data set comes from (import names).
DATASET_PACKAGES = {"digits": "sklearn", "mnist1d": "mnist1d"}


def require_packages(what: str, *modules: str) -> None:
    """For a config's ``check()``: a ValueError naming the packages among ``modules`` (import
    names, keys of :data:`DATA_PACKAGES`) that are not installed, and the extra that installs
    them. Found up front, before anything is written (a job importing them failed with a
    traceback, the run directory written)."""
    missing = [DATA_PACKAGES[m] for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{what} needs {' and '.join(missing)}; `pip install 'stopwise[data]'`")


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8×8 handwritten digits: ``images (1797, 8, 8)`` float64 with values
    0..16 and ``labels (1797,)`` int64, the arrays of ``sklearn.datasets.load_digits()``.

    Read from the CSV file scikit-learn ships, without importing scikit-learn (its import takes
    about 1.5 s, longer than a test run's training); where that file is not found (another
    layout of the package), from ``load_digits`` itself."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise DataError("digits need scikit-learn; `pip install 'stopwise[data]'`")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        with gzip.open(path, "rt") as file:
            table = np.loadtxt(file, delimiter=",")
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.images, bunch.target.astype(np.int64)
    return images, labels


def from_16_bit(array: np.ndarray, path: Path) -> np.ndarray:
    """16-bit grey pixels to 8 bits: v / 257 rounded (65535 → 255), the inverse of 8 → 16 bits'
    v · 257 (Pillow's ``convert("L")`` clips them at 255 instead: grey becomes white)."""
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() > 65535:
        raise DataError(f"image {path}: pixel values outside 0..65535 (not a 16-bit image)")
    return np.floor(array / 257 + 0.5).astype(np.uint8)
