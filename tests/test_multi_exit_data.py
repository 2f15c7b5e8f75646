"""Data loaders of the multi-exit task on tiny generated fixtures (no dataset files needed)."""

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from stopwise.tasks.multi_exit.data import (
    DataError,
    digits_splits,
    fashion_splits,
    idx_shape,
    idx_sizes,
    load_fashion_mnist,
    mnist1d_splits,
    read_idx,
    resolve_data_dir,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand: 0, 0, type 0x08 (ubyte), rank, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder, n_train=40, n_test=12, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_read_back_exactly(tmp_path, gz):
    arrays = write_fashion(tmp_path / "f", gz=gz)
    data = load_fashion_mnist(str(tmp_path / "f"))
    assert np.array_equal(data["train_x"], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data["test_y"], arrays["t10k-labels-idx1-ubyte"])
    assert data["train_x"].dtype == np.uint8 and data["train_x"].shape == (40, 28, 28)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_headers_give_the_row_counts_and_image_size_without_the_data(tmp_path, gz):
    write_fashion(tmp_path / "f", n_train=37, n_test=11, gz=gz)
    assert idx_sizes(str(tmp_path / "f")) == (37, 11, (28, 28))


def test_mnist1d_rows_per_level_must_be_a_multiple_of_ten():
    """make_dataset makes 10·⌊n/10⌋ samples: 1,005 per level would silently give 1,000."""
    with pytest.raises(DataError, match="multiple of 10"):
        mnist1d_splits([0.0], per_level=1005, val_size=100, test_size=100)


def test_malformed_idx_files_are_named(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(DataError, match=r"bad.*not an IDX file.*magic"):
        read_idx(bad)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4)))[:-5]))
    with pytest.raises(DataError, match=r"truncated.*shape \(3, 4, 4\).*holds 43 bytes"):
        read_idx(truncated)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 2))))[:-8])
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(broken)
    garbled = tmp_path / "garbled.gz"  # a valid gzip header, then an invalid deflate block
    body = bytearray(gzip.compress(idx_bytes(np.zeros((4, 4)))))
    body[10] = 0b111  # final block of type 3, which deflate does not have: zlib.error
    garbled.write_bytes(bytes(body))
    with pytest.raises(DataError, match=r"cannot read IDX file .*garbled"):
        read_idx(garbled)
    with pytest.raises(DataError, match=r"cannot read IDX file .*garbled"):
        idx_shape(garbled, 2)


def float_idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of type 0x0D (big-endian float32)."""
    header = bytes([0, 0, 0x0D, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">f4").tobytes()


@pytest.mark.parametrize(
    "labels", [[1.0, 2.0, 3.0, 4.0], [1.0, 2.5, 3.0, 4.0], [1.0, np.nan, 3, 4]]
)
def test_labels_that_are_not_integers_are_refused(tmp_path, labels):
    """Float labels were cast to int64: 2.5 became 2, NaN the least int64 (scored as wrong)."""
    write_fashion(tmp_path / "f", n_train=4, n_test=4, gz=False)
    (tmp_path / "f" / "train-labels-idx1-ubyte").write_bytes(float_idx_bytes(np.array(labels)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: labels of IDX type >f4"):
        load_fashion_mnist(str(tmp_path / "f"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_pixels_that_are_not_finite_are_refused(tmp_path, bad):
    """They surfaced as 'training diverged, lower the learning rate'."""
    write_fashion(tmp_path / "f", n_train=4, n_test=4, gz=False)
    images = np.ones((4, 28, 28))
    images[2, 3, 4] = bad
    (tmp_path / "f" / "t10k-images-idx3-ubyte").write_bytes(float_idx_bytes(images))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: pixels that are NaN"):
        load_fashion_mnist(str(tmp_path / "f"))
    images[2, 3, 4] = 0.5
    (tmp_path / "f" / "t10k-images-idx3-ubyte").write_bytes(float_idx_bytes(images))
    assert load_fashion_mnist(str(tmp_path / "f"))["test_x"][2, 3, 4] == 0.5


def test_missing_files_say_where_they_looked_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("STOPWISE_DATA", raising=False)
    with pytest.raises(DataError) as error:
        load_fashion_mnist(str(tmp_path / "nowhere"))
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in message
    assert "apt install dataset-fashion-mnist" in message and "data_dir" in message
    folder = tmp_path / "mismatch"
    write_fashion(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5))))
    with pytest.raises(DataError, match=r"test images have shape \(12, 28, 28\) and labels \(5,\)"):
        load_fashion_mnist(str(folder))


def test_data_dir_comes_from_the_setting_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.setenv("STOPWISE_DATA", "/from/env")
    assert resolve_data_dir("/from/setting") == (Path("/from/setting"), "--set data_dir")
    assert str(resolve_data_dir("")[0]) == "/from/env"
    monkeypatch.delenv("STOPWISE_DATA")
    assert str(resolve_data_dir("")[0]) == "/usr/share/datasets/fashion-mnist"
    monkeypatch.setenv("HOME", "/home/user")  # ~ is the home folder, from either source
    assert resolve_data_dir("~/fashion") == (Path("/home/user/fashion"), "--set data_dir")
    monkeypatch.setenv("STOPWISE_DATA", "~/env")
    assert resolve_data_dir("") == (Path("/home/user/env"), "STOPWISE_DATA")


def test_fashion_splits_are_disjoint_normalised_and_sized(tmp_path, monkeypatch):
    write_fashion(tmp_path / "f", n_train=50, n_test=12)
    monkeypatch.setenv("STOPWISE_DATA", str(tmp_path / "f"))
    splits = fashion_splits(val_size=10, train_size=30)
    assert splits.sizes() == {"train": 30, "validation": 10, "test": 12}
    assert abs(float(splits.train_x.mean())) < 1e-5 and abs(float(splits.train_x.std()) - 1) < 1e-2
    rows = {tuple(r.flatten().tolist()) for r in splits.train_x}
    assert not rows & {tuple(r.flatten().tolist()) for r in splits.val_x}
    assert splits.train_x.shape[1:] == (28, 28) and splits.train_y.dtype.is_floating_point is False
    with pytest.raises(DataError, match="train_size must lie in 0..40"):
        fashion_splits(val_size=10, train_size=41)


def test_mnist1d_mixture_is_generated_offline_and_restores_global_rngs():
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    splits = mnist1d_splits([0.0, 1.0], per_level=60, val_size=20, test_size=30)
    assert (random.random(), np.random.rand()) == expected
    assert splits.sizes() == {"train": 70, "validation": 20, "test": 30}
    assert splits.train_x.shape == (70, 40) and splits.dims == 1
    assert set(splits.test_group.tolist()) <= {0, 1} and len(splits.test_group) == 30
    again = mnist1d_splits([0.0, 1.0], per_level=60, val_size=20, test_size=30)
    assert np.array_equal(splits.test_x.numpy(), again.test_x.numpy())
    with pytest.raises(DataError, match="must leave training rows"):
        mnist1d_splits([0.5], per_level=30, val_size=20, test_size=10)


def test_digits_splits():
    splits = digits_splits(val_size=100, test_size=200)
    assert splits.sizes() == {"train": 1497, "validation": 100, "test": 200}
    assert splits.train_x.shape[1:] == (8, 8)


def test_digits_splits_partition_the_rows_and_follow_the_split_seed():
    """Train, validation and test hold disjoint rows (the 1,797 digits are distinct images, and
    standardising with the training statistics keeps them so) that together are every row; the
    split seed, not anything else, decides which rows go where."""

    def rows(x):
        return {tuple(r.flatten().tolist()) for r in x}

    splits = digits_splits(val_size=100, test_size=200)
    train, val, test = rows(splits.train_x), rows(splits.val_x), rows(splits.test_x)
    assert (len(train), len(val), len(test)) == (1497, 100, 200)
    assert not train & val and not train & test and not val & test
    other = digits_splits(val_size=100, test_size=200, split_seed=1)
    assert rows(other.test_x) != test


def test_mnist1d_levels_are_drawn_from_different_seeds():
    """Each noise level's set is generated from its own seed: two equal levels give two
    different sets, so no signal appears twice in the pool (nor in two splits)."""
    splits = mnist1d_splits([0.5, 0.5], per_level=60, val_size=20, test_size=30)
    pool = [splits.train_x, splits.val_x, splits.test_x]
    signals = [tuple(r.tolist()) for x in pool for r in x.flatten(1)]
    assert len(signals) == 120 and len(set(signals)) == 120
