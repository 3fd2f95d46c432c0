"""End to end as a user runs it: data → sample --optimal → memorization; and the demo."""

import json
import subprocess
import sys

import numpy as np
import pytest

from diffmem.cli import run
from diffmem.data.io import load_image_set


def diffmem(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "diffmem", *args], capture_output=True, text=True, cwd=cwd)


def test_data_sample_memorization_pipeline(tmp_path):
    """The check from the issue, through the installed console entry point."""
    r = diffmem("data", "--source", "digits", "--size", "64", "--out", str(tmp_path / "d64.zip"))
    assert r.returncode == 0, r.stderr
    r = diffmem("sample", "--optimal", "--train", str(tmp_path / "d64.zip"), "--num", "100",
                "--out", str(tmp_path / "gen"), "--seed", "7")
    assert r.returncode == 0, r.stderr
    gen = load_image_set(tmp_path / "gen")
    assert gen.images.dtype == np.uint8 and gen.images.shape == (100, 1, 8, 8)
    r = diffmem("memorization", "--train", str(tmp_path / "d64.zip"), "--generated", str(tmp_path / "gen"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["memorization_ratio"] >= 0.99


def test_sample_is_seeded_and_never_overwrites(tmp_path, capsys):
    run(["data", "--source", "digits", "--size", "30", "--out", str(tmp_path / "d.zip")])
    base = ["sample", "--optimal", "--train", str(tmp_path / "d.zip"), "--num", "12", "--steps", "8"]
    assert run(base + ["--out", str(tmp_path / "a.npz"), "--seed", "1"]) == 0
    assert run(base + ["--out", str(tmp_path / "b.npz"), "--seed", "1", "--batch", "5"]) == 0
    assert run(base + ["--out", str(tmp_path / "c.npz"), "--seed", "2"]) == 0
    a, b, c = (np.load(tmp_path / f"{n}.npz")["images"] for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    capsys.readouterr()
    before = (tmp_path / "a.npz").read_bytes()
    assert run(base + ["--out", str(tmp_path / "a.npz")]) == 2
    assert "--out" in capsys.readouterr().err
    assert (tmp_path / "a.npz").read_bytes() == before


def test_sample_conditional_labels_and_regularizer(tmp_path, capsys):
    run(["data", "--source", "digits", "--size", "50", "--out", str(tmp_path / "d.zip")])
    assert run(["sample", "--optimal", "--train", str(tmp_path / "d.zip"), "--num", "20", "--labels", "3",
                "--out", str(tmp_path / "g.zip")]) == 0
    gen, train = load_image_set(tmp_path / "g.zip"), load_image_set(tmp_path / "d.zip")
    assert (gen.labels == 3).all()
    capsys.readouterr()
    assert run(["memorization", "--train", str(tmp_path / "d.zip"), "--generated", str(tmp_path / "g.zip"),
                "--out", str(tmp_path / "audit")]) == 0
    idx1 = np.load(tmp_path / "audit" / "neighbors.npz")["idx1"]
    assert (train.labels[idx1] == 3).all()
    assert run(["sample", "--optimal", "--train", str(tmp_path / "d.zip"), "--num", "50",
                "--regularize", "tikhonov:1", "--out", str(tmp_path / "t.npz")]) == 0
    capsys.readouterr()
    run(["memorization", "--train", str(tmp_path / "d.zip"), "--generated", str(tmp_path / "t.npz"), "--json"])
    assert json.loads(capsys.readouterr().out)["memorization_ratio"] < 0.2


@pytest.mark.parametrize("args,flag", [
    (["--num", "0"], "--num"),
    (["--num", "-3"], "--num"),
    (["--num", "5", "--sampler", "ddim"], "--sampler"),
    (["--num", "5", "--labels", "12"], "--labels"),
    (["--num", "5", "--regularize", "ridge:1"], "--regularize"),
    (["--num", "5", "--batch", "0"], "--batch"),
])
def test_sample_bad_flags(tmp_path, capsys, args, flag):
    run(["data", "--source", "digits", "--size", "20", "--out", str(tmp_path / "d.zip")])
    capsys.readouterr()
    code = run(["sample", "--optimal", "--train", str(tmp_path / "d.zip"), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert not (tmp_path / "o").exists()


def test_sample_unwritable_out(tmp_path, capsys):
    run(["data", "--source", "digits", "--size", "20", "--out", str(tmp_path / "d.zip")])
    (tmp_path / "afile").write_text("mine")
    capsys.readouterr()
    for out in ["afile/sub", "afile/sub.npz", "afile"]:
        code = run(["sample", "--optimal", "--train", str(tmp_path / "d.zip"), "--num", "3", "--out", str(tmp_path / out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "--out" in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "afile").read_text() == "mine"


def test_sample_needs_a_source(tmp_path, capsys):
    assert run(["sample", "--num", "3", "--out", str(tmp_path / "o")]) == 2
    assert "--optimal" in capsys.readouterr().err
    assert run(["sample", "--optimal", "--train", str(tmp_path / "missing.zip"), "--num", "3",
                "--out", str(tmp_path / "o")]) == 2
    assert "missing.zip" in capsys.readouterr().err


def test_demo_runs_and_reports(tmp_path):
    """The demo at toy settings (about 2.5 minutes on 2 cores): the optimum copies at every |D|,
    held-out digits do not; it never overwrites (an existing ./diffmem-demo sends it to a new folder)."""
    (tmp_path / "diffmem-demo").mkdir()
    (tmp_path / "diffmem-demo" / "summary.json").write_text("mine")
    r = diffmem("demo", "--num", "20", "--sizes", "8,16", "--epochs", "4", "--workers", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "diffmem-demo" / "summary.json").read_text() == "mine"
    summary = json.loads((tmp_path / "diffmem-demo-2" / "summary.json").read_text())
    assert [p["size"] for p in summary["optimum"]] == [8, 16]
    assert all(p["ratio"] >= 0.99 for p in summary["optimum"])
    assert summary["held_out"]["ratio"] < 0.2
    assert (tmp_path / "diffmem-demo-2" / "report" / "index.html").exists()
