"""Outputs: the one output-path check (prepare_output) and file modes that honour the umask."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from diffmem.atomic import atomic_path, current_umask, prepare_output, write_json, write_npz
from diffmem.data import save_npz, write_dataset_zip, write_png_folder
from diffmem.errors import InputError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


# prepare_output ----------------------------------------------------------------------------------


def _refused(expected_param, *parts, **kwargs):
    with pytest.raises(InputError) as info:
        prepare_output(**kwargs)
    assert info.value.param == expected_param
    for part in parts:
        assert str(part) in info.value.detail, info.value.detail
    return info.value.detail


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_path_is_refused(tmp_path, monkeypatch, kind, empty):
    monkeypatch.chdir(tmp_path)
    _refused("out", "empty path", path=empty, kind=kind)
    _refused("generated", "empty path", path=empty, kind=kind, param="generated")
    assert list(tmp_path.iterdir()) == []


def test_file_checks(tmp_path):
    (tmp_path / "taken.zip").write_bytes(b"keep")
    (tmp_path / "afile").write_text("x")
    _refused("out", "taken.zip", "already exists", path=tmp_path / "taken.zip", kind="file")
    assert prepare_output(tmp_path / "taken.zip", kind="file", overwrite=True) == tmp_path / "taken.zip"
    assert (tmp_path / "taken.zip").read_bytes() == b"keep"  # a check never writes
    _refused("out", "is a folder", path=tmp_path, kind="file", overwrite=True)
    _refused("data", "afile/sub/x.zip", "afile is a file", path=tmp_path / "afile" / "sub" / "x.zip", kind="file",
             param="data")
    new = prepare_output(str(tmp_path / "a" / "b" / "x.npz"), kind="file")
    assert new == tmp_path / "a" / "b" / "x.npz" and (tmp_path / "a" / "b").is_dir() and not new.exists()
    later = prepare_output(tmp_path / "c" / "x.npz", kind="file", create=False)
    assert later == tmp_path / "c" / "x.npz" and not (tmp_path / "c").exists()


def test_folder_checks(tmp_path):
    (tmp_path / "afile").write_text("x")
    _refused("out", "not a folder", path=tmp_path / "afile", kind="folder")
    _refused("out", "afile is a file", path=tmp_path / "afile" / "sub", kind="folder")
    made = prepare_output(tmp_path / "new" / "deeper", kind="folder")
    assert made.is_dir()
    (made / "summary.json").write_text("{}")
    # named outputs: only those names are protected
    _refused("out", "summary.json", "refusing to overwrite", path=made, kind="folder", names=("summary.json", "x"))
    assert prepare_output(made, kind="folder", names=("neighbors.npz",)) == made
    assert prepare_output(made, kind="folder", names=("summary.json",), overwrite=True) == made
    # without names: any content is protected
    _refused("out", "not an empty folder", path=made, kind="folder")
    assert prepare_output(tmp_path / "empty", kind="folder") == tmp_path / "empty"
    assert prepare_output(tmp_path / "empty", kind="folder") == tmp_path / "empty"  # empty and existing: fine
    with pytest.raises(ValueError):
        prepare_output(tmp_path / "x", kind="zip")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _refused("out", "not writable", path=locked, kind="folder")
    _refused("out", "locked", path=locked / "sub" / "x.zip", kind="file")


def test_writers_use_the_check(tmp_path):
    images = np.zeros((2, 1, 4, 4), np.uint8)
    for writer, name in [(write_dataset_zip, "d.zip"), (save_npz, "d.npz")]:
        with pytest.raises(InputError) as info:
            writer("", images, param="out")
        assert info.value.param == "out" and "empty path" in str(info.value)
        writer(tmp_path / name, images)
        with pytest.raises(InputError) as info:
            writer(tmp_path / name, images, param="out")
        assert info.value.param == "out" and "already exists" in str(info.value)
    with pytest.raises(InputError) as info:
        write_png_folder("  ", images, param="out")
    assert info.value.param == "out"


# Modes -----------------------------------------------------------------------------------------------


def test_current_umask_reads_without_changing(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # still in force


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                          (0o002, 0o664, 0o775)], ids=["022", "077", "002"])
def test_outputs_honour_the_umask(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    images = np.arange(3 * 16, dtype=np.uint8).reshape(3, 1, 4, 4)
    write_dataset_zip(tmp_path / "d.zip", images, labels=[0, 1, 2])
    save_npz(tmp_path / "d.npz", images)
    png = write_png_folder(tmp_path / "nested" / "pngs", images, labels=[0, 1, 2])
    with atomic_path(tmp_path / "plain.bin") as tmp, open(tmp, "wb") as f:
        f.write(b"x")
    write_json(tmp_path / "s.json", {"a": 1})
    write_npz(tmp_path / "n.npz", a=np.zeros(2))
    for name in ["d.zip", "d.npz", "plain.bin", "s.json", "n.npz"]:
        assert _mode(tmp_path / name) == file_mode, name
    assert _mode(png) == folder_mode and _mode(tmp_path / "nested") == folder_mode
    files = sorted(png.iterdir())
    assert [p.name for p in files] == ["000000.png", "000001.png", "000002.png", "dataset.json"]
    assert all(_mode(p) == file_mode for p in files)
    assert not [p for p in tmp_path.rglob(".*")]  # no temporaries left


def test_cli_outputs_honour_the_umask(tmp_path, umask, run_cli, digits64_zip):
    umask(0o022)
    code, _, err = run_cli(["data", "--source", "digits", "--size", 20, "--out", tmp_path / "sub" / "d.zip"])
    assert code == 0, err
    assert _mode(tmp_path / "sub" / "d.zip") == 0o644 and _mode(tmp_path / "sub") == 0o755
    umask(0o077)
    code, _, err = run_cli(["memorization", "--train", digits64_zip, "--generated", tmp_path / "sub" / "d.zip",
                            "--out", tmp_path / "m"])
    assert code == 0, err
    assert _mode(tmp_path / "m") == 0o700
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["neighbors.npz", "neighbors.png", "summary.json"]
    assert all(_mode(p) == 0o600 for p in (tmp_path / "m").iterdir())
