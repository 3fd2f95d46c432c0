"""`diffmem sample --network`: a trained run is a denoiser like the optimum (samplers and audit work on it)."""

import json

import numpy as np
import torch

from diffmem.cli import run
from diffmem.data.io import load_image_set
from diffmem.rng import LABELS, numpy_rng
from diffmem.runs import load_run

TRAIN = ["--preset", "tiny", "--channels", "16", "--precond", "edm", "--steps", "6", "--batch", "8",
         "--lr", "1e-3", "--ema-rate", "0.9", "--device", "cpu", "--no-progress"]


def test_sample_network_end_to_end(tmp_path, capsys):
    torch.set_num_threads(1)
    assert run(["data", "--source", "digits", "--size", "20", "--labels", "none", "--out", str(tmp_path / "d.zip")]) == 0
    assert run(["train", "--data", str(tmp_path / "d.zip"), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    capsys.readouterr()
    args = ["sample", "--network", str(tmp_path / "run"), "--num", "6", "--steps", "4", "--seed", "3"]
    assert run(args + ["--out", str(tmp_path / "a.npz")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["network"] == str(tmp_path / "run")
    a = np.load(tmp_path / "a.npz")["images"]
    assert a.shape == (6, 1, 8, 8) and a.dtype == np.uint8
    # Same seed, same samples; and the sampler really used the trained weights.
    assert run(args + ["--out", str(tmp_path / "b.npz"), "--batch", "4"]) == 0
    np.testing.assert_array_equal(a, np.load(tmp_path / "b.npz")["images"])
    D = load_run(tmp_path / "run").denoiser
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(D(x, torch.full((2,), 1.0)), x * 0.25 / 1.25)  # not the untrained c_skip·x
    # The audit takes the samples as they are.
    capsys.readouterr()
    assert run(["memorization", "--train", str(tmp_path / "d.zip"), "--generated", str(tmp_path / "a.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_generated"] == 6


def test_sample_conditional_network_draws_labels(tmp_path, capsys):
    torch.set_num_threads(1)
    assert run(["data", "--source", "digits", "--size", "20", "--labels", "true", "--out", str(tmp_path / "d.zip")]) == 0
    assert run(["train", "--data", str(tmp_path / "d.zip"), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    assert run(["sample", "--network", str(tmp_path / "run"), "--num", "12", "--steps", "3",
                "--out", str(tmp_path / "g.zip")]) == 0
    labels = load_image_set(tmp_path / "g.zip").labels
    assert labels is not None and labels.min() >= 0 and labels.max() <= 9 and len(set(labels.tolist())) > 1
    assert run(["sample", "--network", str(tmp_path / "run"), "--num", "4", "--steps", "3", "--labels", "7",
                "--out", str(tmp_path / "h.zip")]) == 0
    assert (load_image_set(tmp_path / "h.zip").labels == 7).all()
    capsys.readouterr()
    assert run(["sample", "--network", str(tmp_path / "run"), "--num", "4", "--labels", "10",
                "--out", str(tmp_path / "i.zip")]) == 2
    assert "--labels" in capsys.readouterr().err
    # true would be the training set's labels, which a network run does not keep; unique is for data
    for labels, needle in [("true", "--labels: true needs the training set's labels"),
                           ("unique", "--labels: expected none, true, random, K or k1,k2,..."), ("", "--labels:")]:
        assert run(["sample", "--network", str(tmp_path / "run"), "--num", "4", "--labels", labels,
                    "--out", str(tmp_path / "i.zip")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "i.zip").exists()
    # random is uniform over the network's classes, from the stream (seed, LABELS)
    assert run(["sample", "--network", str(tmp_path / "run"), "--num", "6", "--steps", "2", "--seed", "9",
                "--labels", "random", "--out", str(tmp_path / "r.zip")]) == 0
    np.testing.assert_array_equal(load_image_set(tmp_path / "r.zip").labels,
                                  numpy_rng(9, LABELS).integers(0, 10, size=6))
    assert run(["sample", "--network", str(tmp_path / "nothing"), "--num", "4", "--out", str(tmp_path / "j.zip")]) == 2
    assert "--network" in capsys.readouterr().err
