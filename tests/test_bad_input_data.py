"""Bad input to `diffmem data`, `diffmem memorization` and `diffmem demo`: one line on stderr naming
the flag or file, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from diffmem.data import ImageSet, load_image_set, load_source
from diffmem.data.imageset import MAX_LABEL
from diffmem.errors import InputError

from conftest import one_line as _one_line  # noqa: E402




def _memorization(sets, *extra):
    return ["memorization", "--train", sets / "train.zip", "--generated", sets / "gen.npz", *extra]


# Empty paths would mean the current folder ----------------------------------------------------------


@pytest.mark.parametrize("args, flag", [
    (["data", "--source", "", "--out", "o.zip"], "--source"),
    (["data", "--source", "digits", "--out", ""], "--out"),
    (["data", "--source", "mnist", "--root", "", "--out", "o.zip"], "--root"),
    (["memorization", "--train", "", "--generated", "gen.npz"], "--train"),
    (["memorization", "--train", "train.zip", "--generated", ""], "--generated"),
    (["memorization", "--train", "train.zip", "--generated", "gen.npz", "--out", ""], "--out"),
    (["memorization", "--train", "train.zip", "--generated", "gen.npz", "--out", " ", "--json"], "--out"),
    (["demo", "--out", "", "--num", "5"], "--out"),
])
def test_empty_paths_are_refused(sets, run_cli, monkeypatch, args, flag):
    """An empty path is not the current folder: the command names the flag and writes nothing."""
    monkeypatch.chdir(sets)
    (sets / "a.png").write_bytes(b"\x89PNG not really")  # a scan of the current folder would trip on it
    before = sorted(p.name for p in sets.iterdir())
    err = _one_line(*run_cli(args), flag + ":")
    assert "empty" in err
    assert sorted(p.name for p in sets.iterdir()) == before


def test_library_readers_refuse_empty_paths():
    for fn, kwargs, param in [(load_image_set, {"what": "generated"}, "generated"), (load_source, {}, "source")]:
        with pytest.raises(InputError) as info:
            fn("", **kwargs)
        assert info.value.param == param


# Numbers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["1e400", "1e400GiB", "nan", "inf", "-inf", "2XB", "1MiB"])
def test_memory_limit_must_be_a_finite_size(sets, run_cli, limit):
    _one_line(*run_cli(_memorization(sets, "--memory-limit", limit)), "--memory-limit:")


@pytest.mark.parametrize("args, flag", [
    (["--seed", "-1"], "--seed:"),
    (["--seed", str(2**63)], "--seed:"),
    (["--bootstrap", "-1"], "--bootstrap:"),
    (["--threshold", "nan"], "--threshold:"),
    (["--threshold", "1e400"], "--threshold:"),
])
def test_memorization_bad_numbers(sets, run_cli, args, flag):
    _one_line(*run_cli(_memorization(sets, *args)), flag)


@pytest.mark.parametrize("seed", ["-1", "-5", str(2**63)])
def test_data_seed_must_be_a_valid_seed(tmp_path, run_cli, seed):
    out = tmp_path / "o.zip"
    _one_line(*run_cli(["data", "--source", "digits", "--size", 10, "--labels", "random:3", "--seed", seed,
                        "--out", out]), "--seed:", "0..2^63-1")
    assert not out.exists()


def test_demo_bad_numbers(tmp_path, run_cli):
    _one_line(*run_cli(["demo", "--out", tmp_path / "d", "--num", "0"]), "--num:")
    _one_line(*run_cli(["demo", "--out", tmp_path / "d", "--seed", "-1"]), "--seed:")
    assert not (tmp_path / "d").exists()


# Labels are class indices ------------------------------------------------------------------------------


def _zip_with_labels(path, labels):
    with zipfile.ZipFile(path, "w") as zf:
        import io

        from PIL import Image

        names = []
        for i in range(len(labels)):
            buf = io.BytesIO()
            Image.fromarray(np.full((4, 4), i, np.uint8)).save(buf, format="PNG")
            names.append(f"img{i}.png")
            zf.writestr(names[-1], buf.getvalue())
        zf.writestr("dataset.json", json.dumps({"labels": [[n, v] for n, v in zip(names, labels)]}))
    return path


@pytest.mark.parametrize("big", [10**12, 2**20, 10**30])
def test_huge_labels_in_dataset_json_are_refused(tmp_path, run_cli, big):
    path = _zip_with_labels(tmp_path / "big.zip", [0, big])
    err = _one_line(*run_cli(["data", "--source", path, "--out", tmp_path / "o.zip"]), "--source:", "big.zip",
                    "labels must be < 1048576 (class indices)")
    assert str(big) in err
    _one_line(*run_cli(["memorization", "--train", path, "--generated", path]), "--train:", "big.zip",
              "labels must be < 1048576")
    assert not (tmp_path / "o.zip").exists()


def test_huge_labels_in_npz_are_refused(tmp_path, run_cli):
    np.savez(tmp_path / "big.npz", images=np.zeros((2, 1, 4, 4), np.uint8), labels=np.array([1, 10**12]))
    _one_line(*run_cli(["data", "--source", tmp_path / "big.npz", "--out", tmp_path / "o.zip"]),
              "--source:", "big.npz", "labels must be < 1048576")
    np.savez(tmp_path / "wrap.npz", images=np.zeros((1, 1, 4, 4), np.uint8), labels=np.array([2**64 - 1], np.uint64))
    _one_line(*run_cli(["memorization", "--train", tmp_path / "wrap.npz", "--generated", tmp_path / "wrap.npz"]),
              "--train:", "labels must be < 1048576")


@pytest.mark.parametrize("labels, message", [
    ([0, True], "list of [name, int] pairs"),
    ([0, "3"], "list of [name, int] pairs"),
    ([0, 1.5], "list of [name, int] pairs"),
    ([0, -2], "non-negative"),
])
def test_other_bad_labels_in_dataset_json(tmp_path, run_cli, labels, message):
    path = _zip_with_labels(tmp_path / "bad.zip", labels)
    _one_line(*run_cli(["data", "--source", path, "--out", tmp_path / "o.zip"]), "--source:", "bad.zip", message)


def test_imageset_label_cap_is_documented_and_exact():
    images = np.zeros((2, 1, 2, 2), np.uint8)
    assert ImageSet(images, [0, MAX_LABEL - 1]).num_classes == MAX_LABEL
    with pytest.raises(InputError, match="labels must be < 1048576 \\(class indices\\)"):
        ImageSet(images, [0, MAX_LABEL], source="x.npz")
    assert "MAX_LABEL" in ImageSet.__doc__
