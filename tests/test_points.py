"""Point clouds through the same API and CLI as images: data, train, track, sample, measure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import one_line
from diffmem.data.points import PointCloud, load_data, make_points, read_points, save_points
from diffmem.data.sources import gaussian_mixture
from diffmem.data.spec import DataSpec, make_dataset
from diffmem.errors import InputError
from diffmem.metrics.proximity import proximity


def test_point_cloud_holds_unbounded_floats_and_refuses_bad_arrays():
    cloud = PointCloud(np.array([[5.0, -7.0], [0.5, 0.25]]), labels=[1, 0])
    assert cloud.shape == (2,) and len(cloud) == 2 and cloud.num_classes == 2
    assert cloud.to_model().dtype == np.float32 and cloud.to_model()[0, 1] == -7.0  # no range, no quantization
    for bad in (np.zeros((3,)), np.zeros((0, 2)), np.array([[np.nan, 0.0]]), np.array([["a", "b"]])):
        with pytest.raises(InputError):
            PointCloud(bad)
    with pytest.raises(InputError, match="labels"):
        PointCloud(np.zeros((3, 2)), labels=[0, 1])


def test_sources_are_the_seeded_gaussians_and_nest():
    toy = make_points("toy2d", 20, seed=3)
    assert np.array_equal(toy.points, gaussian_mixture(20, 2, 1, 3)[0]) and toy.labels is None
    mix = make_points("gaussian-mixture:2", 64, dim=8)
    assert mix.shape == (8,) and set(mix.labels) == {0, 1}
    # seed 003's ±mu mixture: component means +-4 e1, unit variance in every other coordinate
    assert abs(mix.points[mix.labels == 0, 0].mean() - 4) < 0.5 and abs(mix.points[mix.labels == 1, 0].mean() + 4) < 0.5
    assert np.array_equal(make_points("gaussian-mixture:2", 16, dim=8).points, mix.points[:16])
    # DataSpec: labels none by default; the recipe names the source
    data = make_dataset(DataSpec(source="gaussian-mixture:2", size=16, dim=8))
    assert isinstance(data, PointCloud) and data.labels is None and np.array_equal(data.points, mix.points[:16])
    assert make_dataset(DataSpec(source="gaussian-mixture:2", size=16, dim=8, labels="true")).num_classes == 2


@pytest.mark.parametrize("kwargs, key", [
    (dict(source="toy2d", size=4, dim=3), "dim"), (dict(source="digits", dim=3), "dim"),
    (dict(source="gaussian-mixture:x", size=4), "source"), (dict(source="toy2d"), "size"),
    (dict(source="toy2d", size=4, resolution=8), "resolution"), (dict(source="toy2d", size=4, dim=0), "dim"),
])
def test_data_spec_refuses_bad_point_recipes(kwargs, key):
    with pytest.raises(InputError) as err:
        make_dataset(DataSpec(**kwargs))
    assert err.value.param == key


def test_npz_round_trip_and_load_data_dispatch(tmp_path, digits64):
    cloud = make_points("gaussian-mixture:3", 9, dim=4)
    path = save_points(tmp_path / "p.npz", cloud)
    back = load_data(path)
    assert isinstance(back, PointCloud) and np.array_equal(back.points, cloud.points)
    assert np.array_equal(back.labels, cloud.labels)
    with pytest.raises(InputError):
        save_points(path, cloud)  # never overwritten
    from diffmem.data.io import save_npz

    assert not isinstance(load_data(save_npz(tmp_path / "i.npz", digits64)), PointCloud)  # images stay images
    np.savez(tmp_path / "bad.npz", points=np.array([[np.inf, 0.0]]))
    with pytest.raises(InputError, match="bad.npz") as err:
        read_points(tmp_path / "bad.npz", param="train")
    assert err.value.param == "train"


def test_proximity_matches_a_direct_computation(rng):
    train = rng.standard_normal((20, 3))
    # near-copies, and samples of the training distribution (d1/d2 spread over (0, 1))
    generated = np.concatenate([train[:5] + 0.01 * rng.standard_normal((5, 3)), rng.standard_normal((195, 3))])
    result = proximity(train, generated, tolerance=0.05, bootstrap=100)
    dist = np.sqrt(((generated[:, None] - train[None]) ** 2).sum(-1))  # (200, 20), independent of knn
    d = np.sort(dist, axis=1)
    assert np.allclose(result.d1, d[:, 0]) and np.allclose(result.d2, d[:, 1])
    assert np.array_equal(result.idx1, dist.argmin(1))
    assert result.fraction_within == np.mean(d[:, 0] <= 0.05)
    assert result.ratio == np.mean((d[:, 0] < d[:, 1] / 3) | (d[:, 0] == 0))
    assert 0.025 <= result.fraction_within < result.ratio < 0.5  # the 5 near-copies, and chance (1/9 in 2-D)
    assert proximity(train, train, bootstrap=0).summary()["fraction_within"] == 1.0
    for kwargs, key in ((dict(tolerance=0), "tolerance"), (dict(threshold=1.5), "threshold")):
        with pytest.raises(InputError) as err:
            proximity(train, generated, **kwargs)
        assert err.value.param == key
    with pytest.raises(InputError) as err:
        proximity(train, generated[:, :2])
    assert err.value.param == "generated"


def test_a_toy_trains_end_to_end_through_the_cli(run_cli, tmp_path):
    pts, run, out = tmp_path / "pts.npz", tmp_path / "run", tmp_path / "s.npz"
    code, stdout, _ = run_cli(["data", "--source", "gaussian-mixture:2", "--dim", "8", "--size", "16", "--out", pts])
    assert code == 0 and "16 points in 8 dimensions" in stdout and np.load(pts)["points"].shape == (16, 8)
    code, _, err = run_cli(["train", "--data", pts, "--out", run, "--preset", "mlp-toy", "--hidden", "16",
                            "--precond", "edm", "--epochs", "4", "--batch", "8", "--track-every", "2",
                            "--track-samples", "20", "--device", "cpu"])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["dim"] == 8 and config["hidden"] == 16
    track = [json.loads(line) for line in (run / "memorization.jsonl").read_text().splitlines()]
    assert [t["epoch"] for t in track] == [2, 4] and all(0 <= t["fraction_within"] <= 1 for t in track)
    # the last measurement is the final EMA network's samples (seeded by the run's TRACK stream), measured here
    from diffmem.rng import TRACK, derive_seed
    from diffmem.runs import load_run
    from diffmem.sampling import sample

    x = sample(load_run(run).denoiser, 20, seed=derive_seed(0, TRACK), steps=18)
    again = proximity(np.load(pts)["points"], x, bootstrap=0)
    assert (track[-1]["fraction_within"], track[-1]["ratio"]) == (again.fraction_within, again.ratio)
    code, stdout, err = run_cli(["sample", "--network", run, "--num", "12", "--out", out, "--steps", "4"])
    assert code == 0, err
    samples = np.load(out)["points"]
    assert samples.shape == (12, 8) and samples.dtype == np.float32 and np.abs(samples).max() > 1  # not clipped


def test_the_optimum_on_points_returns_training_points(run_cli, tmp_path):
    pts = save_points(tmp_path / "toy.npz", make_points("toy2d", 20))
    for regularize, within in (("tikhonov:0", 1.0), ("tikhonov:1", None)):
        out = tmp_path / f"{regularize.replace(':', '')}.npz"
        code, _, err = run_cli(["sample", "--optimal", "--train", pts, "--num", "40", "--out", out, "--steps", "12",
                                "--regularize", regularize])
        assert code == 0, err
        result = proximity(np.load(pts)["points"], np.load(out)["points"], bootstrap=0)
        if within is not None:
            assert result.fraction_within == within and result.d1.max() < 1e-3
        else:
            assert result.fraction_within < 0.5  # c = 1 (the data's variance) smooths the copies away


def test_bad_point_flags_are_one_line(run_cli, tmp_path):
    pts = save_points(tmp_path / "toy.npz", make_points("toy2d", 20))
    cases = [
        (["data", "--source", "toy2d", "--size", "20", "--out", tmp_path / "o.zip"], "--out"),
        (["data", "--source", "toy2d", "--size", "20", "--dim", "3", "--out", tmp_path / "o.npz"], "--dim"),
        (["data", "--source", "gaussian-mixture:2", "--size", "8", "--dim", "0", "--out", tmp_path / "o.npz"], "--dim"),
        (["data", "--source", "digits", "--size", "8", "--dim", "4", "--out", tmp_path / "o.zip"], "--dim"),
        (["data", "--source", "gaussian-mixture:two", "--size", "8", "--out", tmp_path / "o.npz"], "--source"),
        (["data", "--source", "toy2d", "--out", tmp_path / "o.npz"], "--size"),
        (["train", "--data", pts, "--out", tmp_path / "r", "--preset", "tiny", "--epochs", "1"], "--arch"),
        (["sample", "--optimal", "--train", pts, "--num", "4", "--out", tmp_path / "png"], "--out"),
    ]
    for argv, flag in cases:
        one_line(*run_cli(argv), flag)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.npz"]  # nothing written


def test_sigma_data_reaches_the_preconditioner_and_the_loss(run_cli, tmp_path):
    from diffmem.config import TrainConfig
    from diffmem.denoisers.build import precond_options
    from diffmem.losses import LOSSES
    from diffmem.runs import load_run

    config = TrainConfig(preset="mlp-toy", precond="edm", sigma_data=1.0, epochs=1)
    loss = LOSSES["edm"](**precond_options(config))
    sigma = torch.tensor([0.3, 2.0])
    assert torch.allclose(loss.weight(sigma), (sigma**2 + 1.0) / sigma**2)  # λ = (σ² + σd²)/(σ·σd)², σd = 1
    assert precond_options(TrainConfig(epochs=1)) == {}  # VP has no σ_data
    pts = save_points(tmp_path / "toy.npz", make_points("toy2d", 8))
    code, _, err = run_cli(["train", "--data", pts, "--out", tmp_path / "r", "--preset", "mlp-toy", "--hidden", "8",
                            "--precond", "edm", "--sigma-data", "1", "--epochs", "1", "--batch", "8"])
    assert code == 0, err
    D = load_run(tmp_path / "r").denoiser
    s = torch.full((3,), 0.7)
    c_skip = 1.0 / (0.7**2 + 1.0)  # σd²/(σ²+σd²) with σd = 1: the skip path of D at σ = 0.7
    assert D.sigma_data == 1.0 and torch.allclose(D.coefficients(s.reshape(-1, 1))[0].flatten(), torch.full((3,), c_skip))
    for argv, flag in ((["--precond", "vp", "--sigma-data", "1"], "--sigma-data"),
                       (["--precond", "edm", "--sigma-data", "0"], "--sigma-data")):
        one_line(*run_cli(["train", "--data", pts, "--out", tmp_path / "bad", "--preset", "mlp-toy", "--epochs", "1",
                           *argv]), flag)


def test_tracking_measures_points_unquantized():
    from diffmem.denoisers.optimal import OptimalDenoiser
    from diffmem.tracking import track_memorization

    cloud = make_points("toy2d", 20)  # values beyond [-1, 1]: rounding to uint8 would destroy every copy
    D = OptimalDenoiser(cloud.points.astype(np.float64))  # D* copies its training points
    result = track_memorization(D, cloud, {"track_samples": 30, "num_classes": 0, "seed": 0}, "cpu")
    assert (result["fraction_within"], result["ratio"], result["n_generated"]) == (1.0, 1.0, 30)


def test_memorization_cli_measures_point_clouds(tmp_path, run_cli):
    """diffmem memorization on .npz point clouds: both of seed 002's shares, against a direct count."""
    train = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # copies (within 0.05, ratio < 1/3), a near miss (0.1 away: ratio 0.1/0.9 < 1/3, not within) and a midpoint
    generated = np.array([[0.01, 0.0], [1.0, 0.02], [0.1, 0.0], [0.5, 0.5]], dtype=np.float32)
    save_points(tmp_path / "t.npz", PointCloud(train))
    save_points(tmp_path / "g.npz", PointCloud(generated))
    code, out, err = run_cli(["memorization", "--train", tmp_path / "t.npz", "--generated", tmp_path / "g.npz",
                              "--json", "--bootstrap", "0"])
    assert code == 0, err
    got = json.loads(out)
    assert got["fraction_within"] == 0.5 and got["memorization_ratio"] == 0.75
    code, out, err = run_cli(["memorization", "--train", tmp_path / "t.npz", "--generated", tmp_path / "g.npz",
                              "--tolerance", "0.2", "--bootstrap", "0"])
    assert code == 0 and "0.7500 within 0.2" in out, out
    one_line(*run_cli(["memorization", "--train", tmp_path / "t.npz", "--generated", tmp_path / "g.npz",
                       "--tolerance", "0"]), "--tolerance")
    one_line(*run_cli(["memorization", "--train", tmp_path / "t.npz", "--generated", tmp_path / "g.npz",
                       "--out", tmp_path / "o"]), "--out")


def test_data_cli_takes_a_points_file_as_source(tmp_path, run_cli):
    """--source pts.npz is a point source as make_dataset decides (it used to take the image path)."""
    save_points(tmp_path / "p.npz", make_points("toy2d", 12))
    code, out, err = run_cli(["data", "--source", tmp_path / "p.npz", "--size", "5", "--out", tmp_path / "o.npz"])
    assert code == 0, err
    np.testing.assert_array_equal(read_points(tmp_path / "o.npz").points, read_points(tmp_path / "p.npz").points[:5])


def test_tikhonov_reaches_the_training_loss(run_cli, tmp_path):
    """--tikhonov C is stored in the run's config and adds (C/σ²)·(D - x)² to the loss it trains on:
    the same seed with C = 0 and C = 5 logs different losses; a negative C is refused by flag."""
    import json

    pts = save_points(tmp_path / "toy.npz", make_points("toy2d", 8))
    losses = []
    for c in ("0", "5"):
        code, _, err = run_cli(["train", "--data", pts, "--out", tmp_path / f"r{c}", "--preset", "mlp-toy",
                                "--hidden", "8", "--precond", "edm", "--epochs", "2", "--batch", "8", "--log-every", "1",
                                "--tikhonov", c])
        assert code == 0, err
        assert json.loads((tmp_path / f"r{c}" / "config.json").read_text())["tikhonov"] == float(c)
        losses.append([json.loads(line)["loss"] for line in (tmp_path / f"r{c}" / "stats.jsonl").read_text().splitlines()])
    assert losses[1][0] > losses[0][0]  # the first step: same network, same draws, plus the penalty
    one_line(*run_cli(["train", "--data", pts, "--out", tmp_path / "bad", "--preset", "mlp-toy", "--epochs", "1",
                       "--tikhonov", "-1"]), "--tikhonov")
