"""The MLP family's images: a fixed train / test split, standardised on the training images
alone, written out with numpy."""

import numpy as np
import torch
from sklearn.datasets import load_digits

from stopwise.tasks.learned_optimizers import load_images


def test_digits_are_standardised_on_train_and_pixels_constant_there_are_zero():
    images = load_images("digits", 300, seed=4)
    raw = load_digits().data.astype(np.float32)
    order = torch.randperm(len(raw), generator=torch.Generator().manual_seed(4)).numpy()
    train, test = raw[order[:300]], raw[order[300:]]
    mean, std = train.mean(0), train.std(0, ddof=1)
    constant = std == 0
    assert constant.any() and (test[:, constant] != 0).any()  # the case that matters
    expected = np.where(constant, 0.0, (test - mean) / np.where(constant, 1.0, std))
    np.testing.assert_allclose(images["x_test"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(images["x_test"].numpy()).max() < 1000  # 16 / 1e-3 = 16,000 with the old floor
    np.testing.assert_array_equal(images["y_test"].numpy(), load_digits().target[order[300:]])
    assert images["x_train"].shape == (300, 64)
