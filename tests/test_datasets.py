"""Bundled datasets read without importing their package equal the package's own loader."""

import subprocess
import sys

import numpy as np

from stopwise.datasets import digits


def test_digits_equal_scikit_learns_load_digits():
    from sklearn.datasets import load_digits

    images, labels = digits()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and labels.dtype == np.int64
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)


def test_digits_do_not_import_scikit_learn():
    check = "import sys; from stopwise.datasets import digits; digits(); print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
