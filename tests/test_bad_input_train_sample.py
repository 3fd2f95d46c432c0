"""Bad input to `diffmem train` and `diffmem sample`: one line on stderr naming the flag, exit 2,
nothing written or overwritten; resumed runs refuse other data and broken run folders."""

import json

import numpy as np
import pytest
import torch

from diffmem.cli import run
from diffmem.data import ImageSet, write_dataset_zip

TINY = ["--preset", "tiny", "--channels", "8", "--precond", "vp", "--batch", "8", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two data sets of the same count and shape but other images, and a trained 2-step VP run."""
    root = tmp_path_factory.mktemp("bad")
    a, b = root / "a.zip", root / "b.zip"
    assert run(["data", "--source", "digits", "--size", "16", "--labels", "none", "--out", str(a)]) == 0
    digits = np.random.default_rng(0).integers(0, 256, size=(16, 1, 8, 8), dtype=np.uint8)
    write_dataset_zip(b, ImageSet(digits))
    torch.set_num_threads(1)
    assert run(["train", "--data", str(a), "--out", str(root / "run"), *TINY, "--steps", "2"]) == 0
    return a, b, root / "run"


def _one_line(run_cli, argv, flag):
    code, out, err = run_cli(argv)
    assert code == 2, (argv, code, err)
    assert len(err.strip().splitlines()) == 1 and flag in err and "Traceback" not in err, err
    return err


TRAIN_BAD = [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--epochs", "nan"], "--epochs"), (["--epochs", "inf"], "--epochs"), (["--lr-warmup", "1e400"], "--lr-warmup"),
    (["--ema", "1e400"], "--ema"), (["--ema-rate", "nan"], "--ema-rate"), (["--seed", "-1"], "--seed"),
    (["--dropout", "nan"], "--dropout"), (["--ema-rampup", "inf"], "--ema-rampup"),
]


@pytest.mark.parametrize("extra,flag", TRAIN_BAD, ids=[" ".join(b[0]) for b in TRAIN_BAD])
def test_train_refuses_non_finite_and_negative_numbers(data, tmp_path, run_cli, extra, flag):
    duration = [] if "--epochs" in extra else ["--steps", "2"]
    _one_line(run_cli, ["train", "--data", data[0], "--out", tmp_path / "r", *TINY, *duration, *extra], flag)
    assert not (tmp_path / "r").exists()


def test_train_out_that_cannot_be_created(data, tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line(run_cli, ["train", "--data", data[0], "--out", blocker / "run", *TINY, "--steps", "2"], "--out")
    _one_line(run_cli, ["train", "--data", data[0], "--out", "", *TINY, "--steps", "2"], "--out")


def test_resume_refuses_other_data_and_keeps_the_record(data, run_cli):
    a, b, run_dir = data
    before = (run_dir / "config.json").read_text()
    err = _one_line(run_cli, ["train", "--data", b, "--out", run_dir, "--resume"], "--data")
    assert "content hash" in err
    assert (run_dir / "config.json").read_text() == before
    assert json.loads(before)["data"] == str(a.resolve())


def test_resume_of_nothing_is_an_error(data, tmp_path, run_cli):
    _one_line(run_cli, ["train", "--data", data[0], "--out", tmp_path / "none", *TINY, "--steps", "2", "--resume"],
              "--out")
    assert not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()
    _one_line(run_cli, ["train", "--data", data[0], "--out", tmp_path / "empty", "--resume"], "--out")


def _copy_run(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_resume_with_a_broken_run_folder(data, tmp_path, run_cli):
    a, _, run_dir = data
    corrupt = _copy_run(run_dir, tmp_path / "corrupt")
    (corrupt / "config.json").write_text('{"arch": "ddpmpp", ')
    _one_line(run_cli, ["train", "--out", corrupt, "--resume"], "--out")
    # no config.json, other network flags: refused before any weights are loaded (no size-mismatch trace)
    missing = _copy_run(run_dir, tmp_path / "missing")
    (missing / "config.json").unlink()
    _one_line(run_cli, ["train", "--data", a, "--out", missing, "--preset", "tiny", "--channels", "16",
                        "--steps", "4", "--resume"], "--out")


def test_resume_after_a_torn_stats_line_continues(data, tmp_path, run_cli):
    """A kill during an append leaves half a JSON line: the resume cuts it away and goes on."""
    a, _, run_dir = data
    torn = _copy_run(run_dir, tmp_path / "torn")
    with open(torn / "stats.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')
    code, _, err = run_cli(["train", "--out", torn, "--steps", "4", "--resume"])
    assert code == 2 and "--steps" in err  # a resumed run keeps its length ...
    code, _, err = run_cli(["train", "--out", torn, "--resume"])
    assert code == 0, err  # ... and a finished one resumes to a no-op, with its logs repaired
    lines = (torn / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2]


def test_label_index_too_large_for_a_network(tmp_path, run_cli):
    images = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 2, 10**12])
    path = tmp_path / "huge.npz"
    np.savez(path, images=images, labels=labels)
    code, _, err = run_cli(["train", "--data", path, "--out", tmp_path / "r", *TINY, "--steps", "1"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


SAMPLE_BAD = [
    (["--sigma-max", "inf"], "--sigma-max"), (["--rho", "nan"], "--rho"), (["--rho", "0"], "--rho"),
    (["--rho", "-7"], "--rho"), (["--sampler", "sde", "--s-churn", "nan"], "--s-churn"),
    (["--sampler", "sde", "--s-churn", "-100"], "--s-churn"), (["--s-churn", "5"], "--s-churn"),
    (["--seed", "-1"], "--seed"), (["--num", "1000000000000"], "--num"), (["--num", "0"], "--num"),
    (["--batch", "0"], "--batch"), (["--steps", "0"], "--steps"),
    (["--sigma-min", "1e-4", "--sigma-max", "1e-3"], "--sigma-min/--sigma-max"),  # below the VP net's range
]


@pytest.mark.parametrize("extra,flag", SAMPLE_BAD, ids=[" ".join(b[0]) for b in SAMPLE_BAD])
def test_sample_refuses_garbage_parameters(data, tmp_path, run_cli, extra, flag):
    argv = ["sample", "--network", data[2], "--out", tmp_path / "g.npz", "--steps", "2", *extra]
    if "--num" not in extra:
        argv += ["--num", "2"]
    _one_line(run_cli, argv, flag)
    assert not (tmp_path / "g.npz").exists()
