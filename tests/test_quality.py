"""Sample quality: the Fréchet distance against closed forms (by hand and on Gaussian samples), the
held-out split (disjoint from the training subset), the loss gap of the optimum, and the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import linalg

from diffmem.data import load_image_set, save_npz
from diffmem.data.spec import DataSpec, heldout_set, make_dataset
from diffmem.denoisers.optimal import OptimalDenoiser
from diffmem.errors import InputError
from diffmem.metrics.quality import feature_stats, frechet_distance, gaussian_frechet, loss_gap, sample_quality

from conftest import one_line


def test_gaussian_frechet_by_hand():
    # diagonal: ‖μ1-μ2‖² + Σ_i (√a_i - √b_i)² = (1 + 4) + (1 - 2)² + (2 - 3)² = 7
    fd = gaussian_frechet([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0]))
    assert fd == pytest.approx(7.0, abs=1e-10)
    # one dimension: (m1 - m2)² + (s1 - s2)²
    assert gaussian_frechet([3.0], [[0.25]], [1.0], [[4.0]]) == pytest.approx(4 + (0.5 - 2) ** 2, abs=1e-10)
    # singular covariances (rank 1) take the eps route and stay finite
    assert gaussian_frechet([0, 0], np.diag([1.0, 0.0]), [0, 0], np.diag([1.0, 0.0])) == pytest.approx(0, abs=1e-5)


def test_singular_covariances_need_no_warning(rng):
    """Features that never vary (pixels always 0) make Σ₁Σ₂ singular: the FD is that of the other
    features, and no LinAlgWarning reaches the user's stderr."""
    x, y = rng.standard_normal((200, 6)), 0.5 + rng.standard_normal((200, 6))
    x[:, :2], y[:, :2] = 0.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = frechet_distance(x, y)
    assert fd == pytest.approx(frechet_distance(x[:, 2:], y[:, 2:]), abs=1e-4)


def test_an_inaccurate_square_root_takes_the_regularized_route(monkeypatch):
    """scipy only warns when sqrtm's answer is wrong; a root that does not square back to Σ₁Σ₂ is
    refused and the eps·I route taken."""
    import diffmem.metrics.quality as Q

    real, calls = Q.linalg.sqrtm, []

    def flaky(m):
        calls.append(m)
        return real(m) + (0.5 if len(calls) == 1 else 0.0)  # finite, but wrong the first time

    monkeypatch.setattr(Q.linalg, "sqrtm", flaky)
    assert gaussian_frechet([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0])) == pytest.approx(7.0, abs=1e-4)
    assert len(calls) == 2


def test_gaussian_frechet_matches_the_symmetric_form(rng):
    """tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½), the latter from eigendecompositions only."""
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = psd_sqrt(c1)
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(psd_sqrt(r1 @ c2 @ r1))
    assert gaussian_frechet(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-9)
    assert gaussian_frechet(m1, c1, m1, c1) == pytest.approx(0, abs=1e-9)


def test_feature_stats_are_the_mean_and_unbiased_covariance(rng):
    f = rng.standard_normal((6, 3))
    mu, cov = feature_stats(f)
    centred = f - f.sum(0) / 6
    np.testing.assert_allclose(mu, f.sum(0) / 6)
    np.testing.assert_allclose(cov, centred.T @ centred / 5)
    with pytest.raises(InputError):
        feature_stats(f[:1])


def test_fd_of_samples_approaches_the_closed_form(rng):
    c1 = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 0.5]])
    c2 = np.diag([0.5, 1.0, 1.5])
    m1, m2 = np.zeros(3), np.array([1.0, -0.5, 0.25])
    x = rng.multivariate_normal(m1, c1, 40_000)
    y = rng.multivariate_normal(m2, c2, 40_000)
    exact = gaussian_frechet(m1, c1, m2, c2)
    assert frechet_distance(x, y) == pytest.approx(exact, abs=0.03)
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    assert np.isclose(linalg.norm(m1 - m2) ** 2, 1.3125)  # the mean term alone, for scale


def test_sample_quality_in_pixels_is_the_fd_of_model_space_pixels(rng):
    a = rng.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)
    b = rng.integers(0, 200, (40, 1, 4, 4), dtype=np.uint8)
    out = sample_quality(a, b, "pixels")
    flat = lambda x: x.reshape(len(x), -1) / 127.5 - 1  # noqa: E731
    assert out["fd"] == pytest.approx(frechet_distance(flat(a), flat(b)), rel=1e-6)
    assert (out["features"], out["dim"], out["n_generated"], out["n_heldout"]) == ("pixels", 16, 50, 40)
    assert sample_quality(a, a, "pca:4")["fd"] == pytest.approx(0, abs=1e-6)
    with pytest.raises(InputError) as err:
        sample_quality(a, np.zeros((5, 1, 8, 8), np.uint8), "pixels")
    assert err.value.param == "generated"


def _rows(images):
    return sorted(img.tobytes() for img in images)


@pytest.mark.parametrize("size, classes", [(64, None), (40, 2)])
def test_heldout_is_the_rest_of_the_source(digits, size, classes):
    spec = DataSpec(source="digits", size=size, classes=classes)
    train, held = make_dataset(spec), heldout_set(spec)
    pool = digits.images if classes is None else digits.images[digits.labels < classes]
    assert len(train) + len(held) == len(pool)
    assert _rows(np.concatenate([train.images, held.images])) == _rows(pool)  # a partition of the source
    assert set(np.unique(held.labels)) == set(range(classes or 10))
    small = heldout_set(spec, 20)
    assert len(small) == 20 and np.bincount(small.labels).min() >= 20 // (classes or 10)
    with pytest.raises(InputError) as err:
        heldout_set(spec, len(pool))
    assert err.value.param == "heldout_size"


def test_heldout_of_unique_images_never_overlaps(tmp_path):
    """On a source whose images are all different, no held-out image is a training image."""
    images = np.arange(300 * 16, dtype=np.int64).reshape(300, 1, 4, 4) % 251
    images = (images + np.arange(300)[:, None, None, None] * 7).astype(np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(300) % 256, np.arange(300) // 256
    save_npz(tmp_path / "s.npz", images, np.arange(300) % 3)
    spec = DataSpec(source=str(tmp_path / "s.npz"), size=30, resolution=4)
    train, held = make_dataset(spec), heldout_set(spec, 90)
    assert not set(_rows(train.images)) & set(_rows(held.images))
    assert np.bincount(held.labels).tolist() == [30, 30, 30]


def test_loss_gap_of_the_optimum(digits64, digits):
    """The optimum D* returns its training images at small σ (train loss ≈ 0), not held-out ones."""
    held = heldout_set(DataSpec(source="digits", size=64), 32)
    D = OptimalDenoiser(digits64)
    out = loss_gap(D, digits64, held, sigmas=[0.02, 0.5])
    assert out["sigmas"] == [0.02, 0.5] and (out["n_train"], out["n_heldout"]) == (64, 32)
    assert out["train_loss_per_sigma"][0] < 1e-8
    assert out["heldout_loss_per_sigma"][0] > 0.01
    assert out["gap"] == pytest.approx(np.mean(np.subtract(out["heldout_loss_per_sigma"],
                                                           out["train_loss_per_sigma"])))
    assert out["gap"] > 0


def test_cli_data_heldout_and_quality(tmp_path, run_cli):
    code, out, err = run_cli(["data", "--source", "digits", "--size", "50", "--out", tmp_path / "t.zip",
                              "--heldout-out", tmp_path / "h.zip", "--heldout-size", "100"])
    assert code == 0, err
    train, held = load_image_set(tmp_path / "t.zip"), load_image_set(tmp_path / "h.zip")
    assert len(held) == 100 and len(train) == 50
    expected = heldout_set(DataSpec(source="digits", size=50), 100)
    np.testing.assert_array_equal(held.images, expected.images)
    code, out, err = run_cli(["quality", "--generated", tmp_path / "t.zip", "--heldout", tmp_path / "h.zip",
                              "--features", "pixels", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["fd"] == pytest.approx(sample_quality(train, held, "pixels")["fd"])
    code, out, err = run_cli(["quality", "--generated", tmp_path / "t.zip", "--heldout", tmp_path / "h.zip",
                              "--features", "pca:5"])
    assert code == 0 and out.startswith("FD ") and "pca:5" in out


@pytest.mark.parametrize("extra, needles", [
    (["--features", "inception"], ["--features:", "inception"]),
    (["--features", "pca:0"], ["--features:", "pca:0"]),
    (["--network", "run"], ["--train:", "go together"]),
    (["--features", "classifier"], ["--source:", "built-in source"]),
    (["--features", "classifier", "--source", "cifar10"], ["--source:", "cifar10"]),
])
def test_cli_quality_bad_input(sets, run_cli, extra, needles):
    one_line(*run_cli(["quality", "--generated", sets / "gen.npz", "--heldout", sets / "train.zip", *extra]),
             *needles)


@pytest.mark.parametrize("extra, needles", [
    (["--heldout-size", "5"], ["--heldout-size:", "needs --heldout-out"]),
    (["--heldout-out", "{t}/t.zip"], ["--heldout-out:", "is also --out"]),
    (["--heldout-out", "{t}/h.npz"], ["--heldout-out:", ".zip"]),
    (["--heldout-out", "{t}/h.zip", "--heldout-size", "5000"], ["--heldout-size:", "only 1747"]),
    (["--heldout-out", "{t}/h.zip", "--heldout-size", "0"], ["--heldout-size:", ">= 1"]),
    (["--heldout-out", "{t}/h.zip", "--source", "toy2d", "--out", "{t}/p.npz"], ["--heldout-out:", "point source"]),
])
def test_cli_data_heldout_bad_input(tmp_path, run_cli, extra, needles):
    extra = [e.format(t=tmp_path) for e in extra]
    one_line(*run_cli(["data", "--source", "digits", "--size", "50", "--out", tmp_path / "t.zip", *extra]),
             *needles)
    assert not (tmp_path / "t.zip").exists() and not (tmp_path / "h.zip").exists()


def test_cli_quality_loss_gap_of_a_trained_run(tmp_path, run_cli):
    """--network RUN --train T adds the library's loss_gap of the run's denoiser."""
    import torch

    from diffmem.runs import load_run

    torch.set_num_threads(1)
    assert run_cli(["data", "--source", "digits", "--size", "20", "--labels", "none", "--out", tmp_path / "t.zip",
                    "--heldout-out", tmp_path / "h.zip", "--heldout-size", "20"])[0] == 0
    assert run_cli(["train", "--data", tmp_path / "t.zip", "--out", tmp_path / "run", "--preset", "tiny",
                    "--channels", "16", "--precond", "edm", "--steps", "4", "--batch", "8", "--device", "cpu",
                    "--no-progress"])[0] == 0
    code, out, err = run_cli(["quality", "--generated", tmp_path / "t.zip", "--heldout", tmp_path / "h.zip",
                              "--features", "pixels", "--network", tmp_path / "run", "--train", tmp_path / "t.zip",
                              "--device", "cpu", "--json"])
    assert code == 0, err
    loss = json.loads(out)["loss"]
    train, held = load_image_set(tmp_path / "t.zip"), load_image_set(tmp_path / "h.zip")
    expected = loss_gap(load_run(tmp_path / "run").denoiser, train, held)
    assert loss["sigmas"] == expected["sigmas"]
    assert loss["gap"] == pytest.approx(expected["gap"]) and loss["train_loss"] == pytest.approx(expected["train_loss"])


def test_heldout_falls_back_to_the_test_split_when_training_takes_the_whole_split():
    pytest.importorskip("pureml")
    from diffmem.data import load_source

    held = heldout_set(DataSpec(source="mnist", classes=1), 30)  # training: every 0 of the train split
    test = load_source("mnist", split="test")
    np.testing.assert_array_equal(held.images, test.images[test.labels == 0][:30])
    assert "the test split" in held.source and set(held.labels) == {0}
