"""Readers and writers of image sets: exact round trips, every format, every bad input."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffmem.data import (
    ImageSet,
    load_image_set,
    save_npz,
    to_uint8,
    write_dataset_zip,
    write_png_folder,
)
from diffmem.errors import InputError, flag_name


def _png(path, hwc_or_hw, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(hwc_or_hw, dtype=np.uint8), mode=mode).save(path)



def _as_cli(err: InputError) -> str:
    """The line the command line prints: the parameter shown as its flag."""
    return f"{flag_name(err.param)}: {err.detail}" if err.param else str(err)

def _raises(match_parts, fn, *args, **kwargs):
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    msg = _as_cli(info.value)
    for part in match_parts:
        assert str(part) in msg, msg
    assert "\n" not in msg
    return msg


# EDM dataset zip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_dataset_zip_round_trip_exact(tmp_path, rng, channels):
    images = rng.integers(0, 256, size=(13, channels, 5, 7), dtype=np.uint8)
    labels = rng.integers(0, 4, size=13)
    path = write_dataset_zip(tmp_path / "d.zip", images, labels)
    back = load_image_set(path)
    assert back.images.dtype == np.uint8
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.labels, labels)
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("dataset.json"))
        assert meta["labels"][12] == ["00000/img00000012.png", int(labels[12])]
        assert sorted(n for n in zf.namelist() if n.endswith(".png"))[0] == "00000/img00000000.png"


def test_dataset_zip_without_labels_writes_null_and_reads_none(tmp_path, rng):
    images = rng.integers(0, 256, size=(3, 3, 4, 4), dtype=np.uint8)
    path = write_dataset_zip(tmp_path / "d.zip", ImageSet(images))
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
    back = load_image_set(path)
    assert back.labels is None
    np.testing.assert_array_equal(back.images, images)


def test_dataset_zip_uses_one_folder_per_thousand_images(tmp_path):
    images = (np.arange(1002) % 256).astype(np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 1, 2, 2), np.uint8)
    path = write_dataset_zip(tmp_path / "d.zip", images, np.arange(1002) % 7)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert "00000/img00000999.png" in names and "00001/img00001000.png" in names
    back = load_image_set(path)
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.labels, np.arange(1002) % 7)


def test_dataset_zip_float_images_are_quantized_like_png(tmp_path, rng):
    x = rng.uniform(-1, 1, size=(4, 1, 3, 3)).astype(np.float32)
    back = load_image_set(write_dataset_zip(tmp_path / "d.zip", x))
    np.testing.assert_array_equal(back.images, to_uint8(x))


def test_dataset_zip_refuses_existing_file_unless_overwrite(tmp_path, rng):
    path = tmp_path / "d.zip"
    first = rng.integers(0, 256, size=(2, 1, 4, 4), dtype=np.uint8)
    write_dataset_zip(path, first)
    before = path.read_bytes()
    _raises([path, "already exists"], write_dataset_zip, path, first[::-1])
    assert path.read_bytes() == before
    write_dataset_zip(path, first[::-1], overwrite=True)
    np.testing.assert_array_equal(load_image_set(path).images, first[::-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zip"]  # no temporary file left behind


def test_dataset_zip_unwritable_path_names_it(tmp_path):
    (tmp_path / "file").write_text("x")
    _raises(["file/d.zip", "cannot write"], write_dataset_zip, tmp_path / "file" / "d.zip",
            np.zeros((1, 1, 2, 2), np.uint8))


def test_dataset_zip_labels_matched_by_file_name(tmp_path):
    path = tmp_path / "handmade.zip"
    values = {"b/img1.png": 10, "a/img2.png": 20, "a/img1.png": 30}
    with zipfile.ZipFile(path, "w") as zf:
        for name, v in values.items():
            buf = io.BytesIO()
            Image.fromarray(np.full((2, 2), v, np.uint8)).save(buf, format="PNG")
            zf.writestr(name, buf.getvalue())
        # labels listed in yet another order, keyed by name
        zf.writestr("dataset.json", json.dumps({"labels": [["a/img2.png", 2], ["b/img1.png", 1], ["a/img1.png", 3]]}))
    data = load_image_set(path)
    np.testing.assert_array_equal(data.images[:, 0, 0, 0], [30, 20, 10])  # sorted: a/img1, a/img2, b/img1
    np.testing.assert_array_equal(data.labels, [3, 2, 1])


def test_dataset_zip_bad_inputs(tmp_path):
    ok = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(ok, format="PNG")

    def make(name, members):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:
            for member, data in members.items():
                zf.writestr(member, data)
        return path

    _raises(["--train", "bad.zip", "00000/img00000001.png", "not a readable PNG"], load_image_set,
            make("bad.zip", {"00000/img00000000.png": ok.getvalue(), "00000/img00000001.png": b"garbage"}))
    _raises(["nolabel.zip", "no label for a.png"], load_image_set,
            make("nolabel.zip", {"a.png": ok.getvalue(), "dataset.json": json.dumps({"labels": []})}))
    _raises(["badjson.zip", "dataset.json"], load_image_set,
            make("badjson.zip", {"a.png": ok.getvalue(), "dataset.json": "{not json"}))
    _raises(["empty.zip", "no PNG"], load_image_set, make("empty.zip", {"readme.txt": "hi"}))
    (tmp_path / "notzip.zip").write_bytes(b"this is not a zip")
    _raises(["--generated", "notzip.zip", "not a readable zip"], load_image_set, tmp_path / "notzip.zip",
            what="--generated")


# npz ----------------------------------------------------------------------------------------------


def test_npz_layouts_round_trip(tmp_path, rng):
    nchw = rng.integers(0, 256, size=(6, 3, 5, 4), dtype=np.uint8)
    labels = np.arange(6) % 3
    layouts = {
        "nchw": nchw,
        "nhwc": nchw.transpose(0, 2, 3, 1),
        "gray_nhw": nchw[:, 0],
        "gray_nhwc": nchw[:, :1].transpose(0, 2, 3, 1),
    }
    for name, arr in layouts.items():
        np.savez(tmp_path / f"{name}.npz", images=arr, labels=labels)
        data = load_image_set(tmp_path / f"{name}.npz")
        expected = nchw[:, :1] if name.startswith("gray") else nchw
        assert data.images.dtype == np.uint8
        np.testing.assert_array_equal(data.images, expected, err_msg=name)
        np.testing.assert_array_equal(data.labels, labels)


def test_npz_float_and_other_ints(tmp_path, rng):
    x = rng.uniform(-1, 1, size=(5, 1, 4, 4)).astype(np.float64)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -1.0, 1.0
    np.savez(tmp_path / "f.npz", samples=x)  # the only array, whatever its name
    data = load_image_set(tmp_path / "f.npz")
    assert data.images.dtype == np.float32 and data.labels is None
    np.testing.assert_array_equal(data.images, x.astype(np.float32))
    ints = rng.integers(0, 256, size=(2, 4, 4, 3)).astype(np.int64)
    np.savez(tmp_path / "i.npz", images=ints)
    np.testing.assert_array_equal(load_image_set(tmp_path / "i.npz").images, ints.transpose(0, 3, 1, 2))


def test_save_npz_round_trip_and_refusal(tmp_path, rng):
    images = rng.integers(0, 256, size=(4, 1, 3, 3), dtype=np.uint8)
    path = save_npz(tmp_path / "s.npz", images, labels=[3, 1, 4, 1])
    back = load_image_set(path)
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.labels, [3, 1, 4, 1])
    x = rng.uniform(-1, 1, size=(2, 3, 2, 2)).astype(np.float32)
    _raises(["s.npz", "already exists"], save_npz, path, x)
    save_npz(path, ImageSet(x, [0, 1]), overwrite=True)
    back = load_image_set(path)
    np.testing.assert_array_equal(back.images, x)
    np.testing.assert_array_equal(back.labels, [0, 1])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.array([[[[np.nan]]]], np.float32)}, "NaN or Inf"),
        ({"images": np.full((1, 1, 2, 2), np.inf)}, "NaN or Inf"),
        ({"images": np.full((1, 1, 2, 2), 1.5)}, "[-1, 1]"),
        ({"images": np.full((1, 1, 2, 2), 300, np.int16)}, "0..255"),
        ({"images": np.full((1, 1, 2, 2), -1, np.int16)}, "0..255"),
        ({"images": np.zeros((0, 1, 4, 4), np.uint8)}, "empty"),
        ({"images": np.zeros((2, 5, 5, 5), np.uint8)}, "channel axis"),
        ({"images": np.zeros((2, 4), np.uint8)}, "shape"),
        ({"a": np.zeros((1, 1, 2, 2)), "b": np.zeros((1, 1, 2, 2))}, "'images'"),
        ({"images": np.zeros((2, 1, 2, 2), np.uint8), "labels": np.zeros(3, np.int64)}, "3 labels for 2 images"),
        ({"images": np.zeros((2, 1, 2, 2), np.uint8), "labels": np.zeros(2)}, "integer"),
        ({"images": np.zeros((1, 1, 2, 2), np.complex64)}, "dtype"),
    ],
)
def test_npz_bad_inputs(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    _raises(["--train", "bad.npz", message], load_image_set, tmp_path / "bad.npz")


def test_unreadable_and_missing_and_unknown(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 10)
    _raises(["junk.npz", "not a readable .npz"], load_image_set, tmp_path / "junk.npz")
    _raises(["--train", "nowhere.npz", "no such file"], load_image_set, tmp_path / "nowhere.npz")
    (tmp_path / "notes.txt").write_text("hello")
    _raises(["notes.txt", "unknown format"], load_image_set, tmp_path / "notes.txt")


# PNG folders --------------------------------------------------------------------------------------


def test_png_folder_recursive_sorted_by_relative_path(tmp_path):
    root = tmp_path / "pngs"
    for value, rel in enumerate(["c.png", "b/1.png", "a/2.png", "a/10.png", "a/sub/0.PNG"]):
        _png(root / rel, np.full((3, 4), value))
    (root / "notes.txt").write_text("ignored")
    data = load_image_set(root)
    # sorted relative paths: a/10.png, a/2.png, a/sub/0.PNG, b/1.png, c.png
    np.testing.assert_array_equal(data.images[:, 0, 0, 0], [3, 2, 4, 1, 0])
    assert data.images.shape == (5, 1, 3, 4) and data.labels is None


def test_png_folder_writer_round_trip(tmp_path, rng):
    images = rng.integers(0, 256, size=(12, 3, 6, 5), dtype=np.uint8)
    out = write_png_folder(tmp_path / "out", images, labels=np.arange(12) % 5)
    assert sorted(p.name for p in out.glob("*.png"))[:2] == ["000000.png", "000001.png"]
    back = load_image_set(out)
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.labels, np.arange(12) % 5)  # from dataset.json beside the PNGs
    # an empty existing folder is fine; a non-empty one is refused and left alone
    (tmp_path / "empty").mkdir()
    write_png_folder(tmp_path / "empty", images[:2, :1])
    np.testing.assert_array_equal(load_image_set(tmp_path / "empty").images, images[:2, :1])
    _raises(["out", "not an empty folder"], write_png_folder, out, images)
    assert len(list(out.iterdir())) == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]  # no temporary folder left


def test_png_folder_float_images_quantized(tmp_path, rng):
    x = rng.uniform(-1, 1, size=(3, 1, 4, 4))
    np.testing.assert_array_equal(load_image_set(write_png_folder(tmp_path / "g", x)).images, to_uint8(x))


def test_png_alpha_policy(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((4, 4, 1), 255, np.uint8)], axis=2)
    _png(tmp_path / "opaque" / "a.png", opaque, mode="RGBA")
    np.testing.assert_array_equal(load_image_set(tmp_path / "opaque").images[0], rgb.transpose(2, 0, 1))
    see_through = opaque.copy()
    see_through[0, 0, 3] = 0
    _png(tmp_path / "alpha" / "a.png", see_through, mode="RGBA")
    _raises(["alpha/a.png", "transparent"], load_image_set, tmp_path / "alpha")


def test_png_folder_bad_inputs(tmp_path):
    _png(tmp_path / "mixsize" / "a.png", np.zeros((4, 4)))
    _png(tmp_path / "mixsize" / "b.png", np.zeros((4, 5)))
    _raises(["--train", "mixsize", "mixed image sizes", "b.png"], load_image_set, tmp_path / "mixsize")

    _png(tmp_path / "mixchan" / "a.png", np.zeros((4, 4)))
    _png(tmp_path / "mixchan" / "b.png", np.zeros((4, 4, 3)))
    _raises(["mixchan", "mixed channel counts", "b.png", "grayscale"], load_image_set, tmp_path / "mixchan")

    _png(tmp_path / "corrupt" / "a.png", np.zeros((4, 4)))
    (tmp_path / "corrupt" / "sub").mkdir()
    (tmp_path / "corrupt" / "sub" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    _raises(["corrupt/sub/b.png", "not a readable PNG"], load_image_set, tmp_path / "corrupt")

    (tmp_path / "empty").mkdir()
    _raises(["empty", "no PNG"], load_image_set, tmp_path / "empty")

    (tmp_path / "sixteen").mkdir()
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "sixteen" / "a.png")
    _raises(["sixteen/a.png", "unsupported PNG mode"], load_image_set, tmp_path / "sixteen")


# CIFAR-10 python archive ------------------------------------------------------------------------


def _cifar_pickle(obj) -> bytes:
    """Pickle like the real CIFAR-10 files: protocol 2, byte keys, numpy 1.x module paths."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _write_cifar(path, rng, *, per_batch=2, n_test=3, skip=(), extra=None):
    """A tiny CIFAR-10 python archive; returns the (train, test) arrays and labels written."""
    train_data, train_labels = [], []
    with tarfile.open(path, "w:gz") as tar:

        def add(name, payload):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for i in range(1, 6):
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
            train_data.append(data)
            train_labels += labels
            if f"data_batch_{i}" not in skip:
                add(f"data_batch_{i}", _cifar_pickle({b"batch_label": b"training batch", b"labels": labels,
                                                      b"data": data, b"filenames": [b"x.png"] * per_batch}))
        test_data = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
        test_labels = [int(v) for v in rng.integers(0, 10, size=n_test)]
        add("test_batch", _cifar_pickle({b"labels": test_labels, b"data": test_data}))
        add("batches.meta", _cifar_pickle({b"label_names": [f"class{i}".encode() for i in range(10)],
                                           b"num_cases_per_batch": per_batch}))
        add("readme.html", b"<html></html>")
        for name, payload in (extra or {}).items():
            add(name, payload)
    return np.concatenate(train_data), np.array(train_labels), test_data, np.array(test_labels)


def _check_cifar(data, flat, labels):
    assert data.images.shape == (len(flat), 3, 32, 32) and data.images.dtype == np.uint8
    # each row holds the R plane, then G, then B, each 32x32 row-major
    np.testing.assert_array_equal(data.images[1, 0].ravel(), flat[1, :1024])
    np.testing.assert_array_equal(data.images[1, 2, 5, 7], flat[1, 2048 + 5 * 32 + 7])
    np.testing.assert_array_equal(data.labels, labels)


def test_cifar_archive_and_extracted_folder(tmp_path, rng):
    archive = tmp_path / "cifar-10-python.tar.gz"
    train, train_labels, test, test_labels = _write_cifar(archive, rng)
    data = load_image_set(archive, what="--root")
    _check_cifar(data, train, train_labels)
    assert data.label_names == [f"class{i}" for i in range(10)]
    _check_cifar(load_image_set(archive, split="test"), test, test_labels)

    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    _check_cifar(load_image_set(tmp_path / "x" / "cifar-10-batches-py"), train, train_labels)
    _check_cifar(load_image_set(tmp_path / "x", split="test"), test, test_labels)


def test_cifar_bad_archives(tmp_path, rng):
    _write_cifar(tmp_path / "partial.tar.gz", rng, skip={"data_batch_3"})
    _raises(["--root", "partial.tar.gz", "data_batch_3"], load_image_set, tmp_path / "partial.tar.gz", what="--root")

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    _write_cifar(tmp_path / "evil.tar.gz", rng, skip={"data_batch_1"},
                 extra={"data_batch_1": pickle.dumps({b"data": Evil()}, protocol=2)})
    _raises(["evil.tar.gz", "data_batch_1", "refusing"], load_image_set, tmp_path / "evil.tar.gz")

    _write_cifar(tmp_path / "shape.tar.gz", rng, skip={"test_batch"},
                 extra={"test_batch": _cifar_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})})
    _raises(["shape.tar.gz", "test_batch", "3072"], load_image_set, tmp_path / "shape.tar.gz", split="test")

    _write_cifar(tmp_path / "whole.tar.gz", rng, per_batch=40)
    whole = (tmp_path / "whole.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[:len(whole) // 2])
    _raises(["cut.tar.gz", "corrupt"], load_image_set, tmp_path / "cut.tar.gz")

    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    _raises(["junk.tar.gz", "not a readable tar"], load_image_set, tmp_path / "junk.tar.gz")


# idx (MNIST family) -----------------------------------------------------------------------------


def _idx(path, array, magic):
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_with_matching_labels(tmp_path, rng, suffix):
    images = rng.integers(0, 256, size=(7, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    _idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, 0x00000803)
    _idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, 0x00000801)
    data = load_image_set(tmp_path / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(data.images, images[:, None])
    np.testing.assert_array_equal(data.labels, labels)
    # without a labels file beside it: no labels
    _idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[:2], 0x00000803)
    assert load_image_set(tmp_path / f"t10k-images-idx3-ubyte{suffix}").labels is None


def test_idx_bad_inputs(tmp_path):
    img = np.zeros((3, 4, 4), np.uint8)
    _idx(tmp_path / "a-images-idx3-ubyte", img, 0x00000801)
    _raises(["a-images-idx3-ubyte", "bad idx magic number 0x00000801"], load_image_set, tmp_path / "a-images-idx3-ubyte")
    _idx(tmp_path / "b-images-idx3-ubyte", img, 0x00000803)
    (tmp_path / "b-images-idx3-ubyte").write_bytes((tmp_path / "b-images-idx3-ubyte").read_bytes()[:-5])
    _raises(["b-images-idx3-ubyte", "header says"], load_image_set, tmp_path / "b-images-idx3-ubyte")
    _idx(tmp_path / "c-images-idx3-ubyte", img, 0x00000803)
    _idx(tmp_path / "c-labels-idx1-ubyte", np.zeros(2, np.uint8), 0x00000801)
    _raises(["c-labels-idx1-ubyte", "2 labels for 3 images"], load_image_set, tmp_path / "c-images-idx3-ubyte")
    _idx(tmp_path / "d-images-idx3-ubyte.gz", img, 0x00000803)
    (tmp_path / "d-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    _raises(["d-images-idx3-ubyte.gz", "cannot read"], load_image_set, tmp_path / "d-images-idx3-ubyte.gz")
    _idx(tmp_path / "e-images-idx3-ubyte", np.zeros((0, 4, 4), np.uint8), 0x00000803)
    _raises(["e-images-idx3-ubyte", "no images"], load_image_set, tmp_path / "e-images-idx3-ubyte")


def test_cifar_archive_end_to_end_through_the_cli(tmp_path, rng, run_cli):
    """A user's CIFAR-10 archive: subset -> optimum samples -> audit against the archive itself."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    flat, labels, _, _ = _write_cifar(archive, rng, per_batch=20)
    code, out, err = run_cli(["data", "--source", "cifar10", "--root", archive, "--size", "20", "--out", tmp_path / "c20.zip"])
    assert code == 0, err
    subset = load_image_set(tmp_path / "c20.zip")
    assert subset.images.shape == (20, 3, 32, 32) and np.bincount(subset.labels).tolist() == [2] * 10
    code, out, err = run_cli(["sample", "--optimal", "--train", tmp_path / "c20.zip", "--num", "12", "--steps", "12",
                              "--out", tmp_path / "gen"])
    assert code == 0, err
    code, out, err = run_cli(["memorization", "--train", archive, "--generated", tmp_path / "gen", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n_train"] == 100 and summary["memorization_ratio"] == 1.0
