"""``diffmem data`` end to end, and every bad flag as one line on stderr with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from diffmem.data import class_balanced_indices, load_image_set, resize
from diffmem.rng import LABELS, numpy_rng


def test_digits_64_end_to_end(run_cli, digits, tmp_path):
    out = tmp_path / "x.zip"
    code, stdout, stderr = run_cli(["data", "--source", "digits", "--size", 64, "--out", out])
    assert code == 0 and stderr == ""
    assert stdout.strip() == f"wrote {out}: 64 images, shape 1x8x8, 10 classes (labels: true)"
    back = load_image_set(out)
    idx = class_balanced_indices(digits.labels, 64, exact=False)
    np.testing.assert_array_equal(back.images, digits.images[idx])
    np.testing.assert_array_equal(back.labels, digits.labels[idx])
    assert np.bincount(back.labels).tolist() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]


def test_classes_resolution_random_labels(run_cli, digits, tmp_path):
    out = tmp_path / "r.zip"
    code, stdout, _ = run_cli(["data", "--source", "digits", "--size", 32, "--classes", 4, "--resolution", 16,
                               "--labels", "random:5", "--seed", 3, "--out", out])
    assert code == 0 and "32 images, shape 1x16x16" in stdout
    back = load_image_set(out)
    idx = class_balanced_indices(digits.labels, 32, classes=4)
    np.testing.assert_array_equal(back.images, resize(digits, 16).images[idx])
    np.testing.assert_array_equal(back.labels, numpy_rng(3, LABELS).integers(0, 5, size=32))


def test_whole_source_unique_labels_and_overwrite(run_cli, digits, tmp_path):
    out = tmp_path / "all.zip"
    out.write_bytes(b"old")
    code, stdout, _ = run_cli(["data", "--source", "digits", "--labels", "unique", "--out", out, "--overwrite"])
    assert code == 0 and "1797 images" in stdout and "1797 classes" in stdout
    back = load_image_set(out)
    np.testing.assert_array_equal(back.images, digits.images)
    np.testing.assert_array_equal(back.labels, np.arange(1797))


def test_classes_without_size_and_unlabeled_source(run_cli, digits, tmp_path):
    code, stdout, _ = run_cli(["data", "--source", "digits", "--classes", 2, "--labels", "none",
                               "--out", tmp_path / "two.zip"])
    assert code == 0
    back = load_image_set(tmp_path / "two.zip")
    assert back.labels is None
    np.testing.assert_array_equal(back.images, digits.images[digits.labels < 2])
    # an unlabeled source (a PNG folder) gives its first SIZE images
    code, _, _ = run_cli(["data", "--source", tmp_path / "two.zip", "--size", 5, "--out", tmp_path / "five.zip"])
    assert code == 0
    np.testing.assert_array_equal(load_image_set(tmp_path / "five.zip").images, back.images[:5])


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--size", "0"], "--size"),
        (["--size", "-3"], "--size"),
        (["--size", "30", "--classes", "4"], "--size"),
        (["--size", "2000"], "--size"),
        (["--classes", "0"], "--classes"),
        (["--classes", "11"], "--classes"),
        (["--resolution", "3"], "--resolution"),
        (["--resolution", "257"], "--resolution"),
        (["--labels", "random:0"], "--labels"),
        (["--labels", "sometimes"], "--labels"),
        (["--split", "val"], "--split"),
        (["--split", "test"], "--split"),
        (["--size", "ten"], "--size"),
    ],
)
def test_bad_flags(run_cli, tmp_path, args, flag):
    out = tmp_path / "o.zip"
    code, stdout, stderr = run_cli(["data", "--source", "digits", *args, "--out", out])
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and flag in stderr, stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "source, flag",
    [("imagenet", "--source: imagenet"), ("cifar10", "--root"),
     ("gaussian-mixture:2", "--out"),  # a point cloud is written as an .npz of points, not a zip
     ("gaussian-mixture:x", "--source")],
)
def test_bad_sources(run_cli, tmp_path, source, flag):
    code, _, stderr = run_cli(["data", "--source", source, "--out", tmp_path / "o.zip"])
    assert code == 2 and stderr.count("\n") == 1 and flag in stderr, stderr


def test_bad_outputs(run_cli, tmp_path):
    existing = tmp_path / "x.zip"
    existing.write_bytes(b"keep me")
    code, _, stderr = run_cli(["data", "--source", "digits", "--size", 10, "--out", existing])
    assert code == 2 and "--out" in stderr and "already exists" in stderr
    assert existing.read_bytes() == b"keep me"
    (tmp_path / "afile").write_text("")
    code, _, stderr = run_cli(["data", "--source", "digits", "--size", 10, "--out", tmp_path / "afile" / "x.zip"])
    assert code == 2 and stderr.count("\n") == 1 and "--out" in stderr and "afile/x.zip" in stderr
    code, _, stderr = run_cli(["data", "--source", "digits", "--out", tmp_path / "x.npz"])
    assert code == 2 and "--out" in stderr and ".zip" in stderr


def test_bad_input_file_names_the_file(run_cli, tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"junk")
    code, _, stderr = run_cli(["data", "--source", tmp_path / "broken.npz", "--out", tmp_path / "o.zip"])
    assert code == 2 and "--source" in stderr and "broken.npz" in stderr and stderr.count("\n") == 1


def test_installed_entry_point_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from diffmem.cli import entry; entry()", "data",
                           "--source", "digits", "--size", "0", "--out", str(tmp_path / "o.zip")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["diffmem: error: --size: must be >= 1, got 0"]
