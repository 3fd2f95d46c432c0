"""What a hostile new user found in `diffmem data` and `diffmem memorization`, each now one line on
stderr naming the flag and the file, exit status 2, nothing written: images past PIL's size limit,
a huge --bootstrap, files and folders that cannot be read (in an unreadable folder, an unreadable
sub-folder whose images would silently be dropped, an unreadable dataset.json), symlink loops, and
--root / --split where the source has no use for them."""

from __future__ import annotations

import errno
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from diffmem.data import load_image_set, load_source, save_npz
from diffmem.errors import InputError

from conftest import one_line as _one_line  # noqa: E402




def _png_folder(folder, n=2, sub=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        place = folder / sub if sub and i else folder
        place.mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4), 10 * i, np.uint8)).save(place / f"img{i}.png")
    return folder


@pytest.fixture
def deny(monkeypatch):
    """``deny(path)``: reading ``path`` (listing it, or looking at anything inside it) raises
    PermissionError, as it does for a user without read permission (the tests may run as root)."""
    denied: list[str] = []

    def blocked(p) -> bool:
        p = os.fspath(p)
        return any(p == d or p.startswith(d + os.sep) for d in denied)

    def refuse(p):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))

    real_scandir, real_listdir, real_stat = os.scandir, os.listdir, pathlib.Path.stat
    real_read_bytes = pathlib.Path.read_bytes

    monkeypatch.setattr(os, "scandir", lambda p=".": refuse(p) if blocked(p) else real_scandir(p))
    monkeypatch.setattr(os, "listdir", lambda p=".": refuse(p) if blocked(p) else real_listdir(p))
    monkeypatch.setattr(pathlib.Path, "stat",
                        lambda self, **kw: refuse(self) if blocked(os.path.dirname(self)) else real_stat(self, **kw))
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: refuse(self) if blocked(self) else real_read_bytes(self))
    return lambda path: denied.append(os.fspath(path))


# Images past PIL's decompression-bomb limit -----------------------------------------------------------


def test_png_past_the_size_limit_is_refused_not_warned_about(tmp_path, run_cli, monkeypatch):
    """PIL only *warns* between its limit and twice it: the warning used to reach stderr (two more
    lines) and the image was read anyway."""
    _png_folder(tmp_path / "big", n=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # a 4x4 image is then past it, but not twice past
    err = _one_line(*run_cli(["data", "--source", tmp_path / "big", "--out", tmp_path / "o.zip"]),
                    "--source:", "img0.png", "not a readable PNG", "exceeds limit")
    assert "Warning" not in err
    assert not (tmp_path / "o.zip").exists()


# --bootstrap --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", ["100000000000", "10000001"])
def test_huge_bootstrap_is_refused_before_any_work(sets, run_cli, n):
    """10^11 resamples used to end in a 745 GiB MemoryError traceback after the neighbour search."""
    _one_line(*run_cli(["memorization", "--train", sets / "train.zip", "--generated", sets / "gen.npz",
                        "--bootstrap", n, "--out", sets / "m"]), "--bootstrap:", "<= 1e+07")
    assert not (sets / "m").exists()


def test_library_bootstrap_bound():
    from diffmem.metrics.memorization import MAX_BOOTSTRAP, bootstrap_ci, memorization

    with pytest.raises(InputError) as info:
        bootstrap_ci(np.ones(4, bool), MAX_BOOTSTRAP + 1)
    assert info.value.param == "bootstrap"
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 2, 2), dtype=np.uint8)
    with pytest.raises(InputError) as info:
        memorization(x, x, bootstrap=MAX_BOOTSTRAP + 1)
    assert info.value.param == "bootstrap"


# Files and folders that cannot be read ---------------------------------------------------------------------


def test_file_in_an_unreadable_folder(sets, run_cli, deny):
    """Path.exists() raises PermissionError there (it does not return False): that was a traceback."""
    locked = sets / "locked"
    locked.mkdir()
    save_npz(locked / "x.npz", np.zeros((3, 1, 4, 4), np.uint8))
    deny(locked)
    _one_line(*run_cli(["data", "--source", locked / "x.npz", "--out", sets / "o.zip"]),
              "--source:", "locked/x.npz", "Permission denied")
    _one_line(*run_cli(["memorization", "--train", sets / "train.zip", "--generated", locked / "x.npz"]),
              "--generated:", "locked/x.npz", "Permission denied")
    assert not (sets / "o.zip").exists()


def test_unreadable_folder(sets, run_cli, deny):
    folder = _png_folder(sets / "pngs")
    deny(folder)
    _one_line(*run_cli(["data", "--source", folder, "--out", sets / "o.zip"]),
              "--source:", "pngs: cannot read the folder (Permission denied)")
    _one_line(*run_cli(["memorization", "--train", folder, "--generated", sets / "gen.npz"]),
              "--train:", "pngs: cannot read the folder")
    assert not (sets / "o.zip").exists()


def test_unreadable_subfolder_is_not_silently_skipped(sets, run_cli, deny):
    """The recursive PNG search used to skip a sub-folder it could not list: a set with fewer images."""
    folder = _png_folder(sets / "pngs", n=3, sub="more")
    assert len(load_image_set(folder)) == 3
    deny(folder / "more")
    _one_line(*run_cli(["data", "--source", folder, "--out", sets / "o.zip"]),
              "--source:", "pngs/more: cannot read the folder (Permission denied)")
    assert not (sets / "o.zip").exists()


def test_unreadable_dataset_json(sets, run_cli, deny):
    folder = _png_folder(sets / "pngs", n=1)
    (folder / "dataset.json").write_text('{"labels": [["img0.png", 1]]}')
    assert load_image_set(folder).labels.tolist() == [1]
    deny(folder / "dataset.json")
    _one_line(*run_cli(["data", "--source", folder, "--out", sets / "o.zip"]),
              "--source:", "pngs/dataset.json: cannot read (Permission denied)")
    assert not (sets / "o.zip").exists()


def test_symlink_loop_names_the_file(sets, run_cli):
    (sets / "a").symlink_to(sets / "b")
    (sets / "b").symlink_to(sets / "a")
    _one_line(*run_cli(["data", "--source", sets / "a", "--out", sets / "o.zip"]), "--source:", "cannot read")
    _one_line(*run_cli(["memorization", "--train", sets / "a", "--generated", sets / "gen.npz"]),
              "--train:", "cannot read")
    assert not (sets / "o.zip").exists()


def test_over_long_input_names(sets, run_cli):
    _one_line(*run_cli(["memorization", "--train", "a" * 300, "--generated", sets / "gen.npz"]), "--train:")
    _one_line(*run_cli(["data", "--source", "/tmp/" + "/".join(["b" * 200] * 30), "--out", sets / "o.zip"]),
              "--source:")


# Flags the source has no use for ----------------------------------------------------------------------


def test_root_only_for_sources_that_read_it(sets, run_cli):
    """--root with digits (or a path) was silently ignored."""
    for source in ("digits", str(sets / "gen.npz")):
        _one_line(*run_cli(["data", "--source", source, "--root", sets, "--out", sets / "o.zip"]),
                  "--root:", "only mnist, fashion-mnist and cifar10")
    with pytest.raises(InputError) as info:
        load_source("digits", root=sets)
    assert info.value.param == "root"
    assert not (sets / "o.zip").exists()


def test_split_only_for_sources_that_have_one(sets, run_cli):
    """--split test on an .npz used to give the whole file, as if it were a test split."""
    _one_line(*run_cli(["data", "--source", sets / "gen.npz", "--split", "test", "--out", sets / "o.zip"]),
              "--split:", "gen.npz", "without a test split")
    assert not (sets / "o.zip").exists()
    assert len(load_source(str(sets / "gen.npz"), split="train")) == 6
