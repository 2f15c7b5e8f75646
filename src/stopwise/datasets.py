"""Small datasets that ship inside an installed package, shared by the tasks."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .config import DataError

__all__ = ["digits"]


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
