"""The real loaders on small files in the real on-disk formats, written here; augmentation against a loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recipes.cifar10 import Flip, load_images, random_crop_flip
from runner.data import read_once
from runner.errors import UsageError
from tests.conftest import write_cifar10, write_fashion_mnist


def data_cfg(name: str, root: Path, **extra):
    return OmegaConf.create({"name": name, "root": str(root), "download": False, "train_limit": None,
                             "test_limit": None, "val_size": 0, "val_seed": 0, **extra})  # fmt: skip


def test_fashion_mnist_idx_files_load_exactly(tmp_path):
    arrays = write_fashion_mnist(tmp_path, n_train=20, n_test=7)
    images = load_images(data_cfg("fashion_mnist", tmp_path))
    assert images.train_x.shape == (20, 1, 28, 28) and images.train_x.dtype == torch.uint8
    np.testing.assert_array_equal(images.train_x[:, 0].numpy(), arrays["train"][0])
    np.testing.assert_array_equal(images.test_y.numpy(), arrays["t10k"][1])
    assert images.classes == 10


def test_limits_keep_the_first_examples(tmp_path):
    arrays = write_fashion_mnist(tmp_path, n_train=20, n_test=7)
    images = load_images(data_cfg("fashion_mnist", tmp_path, train_limit=5, test_limit=3))
    assert len(images.train_y) == 5 and len(images.test_y) == 3
    np.testing.assert_array_equal(images.train_y.numpy(), arrays["train"][1][:5])


def test_cifar10_python_batches_load_exactly(tmp_path):
    data, labels = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=4)
    images = load_images(data_cfg("cifar10", tmp_path))
    assert images.train_x.shape == (20, 3, 32, 32) and images.test_x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(images.train_x.reshape(20, -1).numpy(), data[:20])
    # the pickle stores the red plane, then green, then blue: pixel (0, 0) of the red channel is column 0
    assert images.test_x[1, 2, 0, 0] == data[21, 2 * 1024]
    np.testing.assert_array_equal(images.test_y.numpy(), labels[20:])


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        load_images(data_cfg("fashion_mnist", tmp_path))
    with pytest.raises(UsageError, match="data.download=true"):
        load_images(data_cfg("cifar10", tmp_path))


def test_not_an_idx_file_is_a_usage_error(tmp_path):
    write_fashion_mnist(tmp_path, n_train=4, n_test=4)
    import gzip

    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x03garbage")
    with pytest.raises(UsageError, match="not an IDX file"):
        load_images(data_cfg("fashion_mnist", tmp_path))


def test_random_crop_flip_equals_slicing_each_image():
    """The one-gather augmentation against the obvious per-image loop, with the same random draws."""
    padding, n = 2, 16
    padded = torch.randint(0, 256, (n, 3, 12 + 2 * padding, 10 + 2 * padding), dtype=torch.uint8)
    out = random_crop_flip(padded, padding, Flip.random, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + 12, dx[i] : dx[i] + 10]
        torch.testing.assert_close(out[i], crop.flip(-1) if flips[i] else crop)
    assert flips.any() and not flips.all()


def test_read_once_decodes_each_file_version_once_and_shares_it_read_only(tmp_path):
    calls = []

    @read_once
    def read(path: Path) -> np.ndarray:
        calls.append(path)
        return np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()

    path = tmp_path / "data.bin"
    path.write_bytes(b"\x01\x02\x03")
    first, second = read(path), read(tmp_path / "." / "data.bin")  # the same file by another name
    assert len(calls) == 1 and first is second
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 9
    path.write_bytes(b"\x04\x05\x06\x07")  # a new version: read again
    assert read(path).tolist() == [4, 5, 6, 7] and len(calls) == 2


def test_a_trial_that_changes_its_images_leaves_the_next_trials_alone(tmp_path):
    arrays = write_fashion_mnist(tmp_path, n_train=20, n_test=7)
    first = load_images(data_cfg("fashion_mnist", tmp_path))
    first.train_x.zero_()  # in place, as an augmentation might
    again = load_images(data_cfg("fashion_mnist", tmp_path))
    np.testing.assert_array_equal(again.train_x[:, 0].numpy(), arrays["train"][0])
