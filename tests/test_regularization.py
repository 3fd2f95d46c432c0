"""Regularized optima on low-dimensional data against direct formulas, and the regularization mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from conftest import one_line
from diffmem.data.points import make_points
from diffmem.denoisers.optimal import OptimalDenoiser
from diffmem.errors import InputError
from diffmem.studies.regularization import RegularizationSettings, measure_strength, run_regularization
from diffmem.studies.specs import parse_spec

TOY = make_points("toy2d", 20).points.astype(np.float64)  # seed 002's toy: N = 20 points of N(0, I2)


def _direct(x, sigma, kind=None, strength=0.0):
    """D(x; σ) from the formulas, one sample at a time, with scipy (no streaming, no chunks)."""
    out = []
    for xi, s in zip(x, sigma):
        sq = ((xi - TOY) ** 2).sum(1)
        w = softmax(-sq / (2 * s**2))
        x_bar = w @ TOY  # D*(x; σ) = Σ softmax_i(-‖x - y_i‖²/2σ²) y_i
        if kind == "tikhonov":  # (c·x + σ²·x̄_w) / (σ² + c)
            out.append((strength * xi + s**2 * x_bar) / (s**2 + strength))
        elif kind == "eb":  # x + σ² Σ w_i (y_i - x)/σ², w_i = exp(ℓ_i) / max(Σ exp(ℓ_j), τ)
            ell = -sq / (2 * s**2)  # the authors' unnormalized kernels
            weights = np.exp(ell - max(logsumexp(ell), math.log(strength)))
            out.append(xi + (weights[:, None] * (TOY - xi)).sum(0))
        else:
            out.append(x_bar)
    return np.array(out)


@pytest.fixture
def queries(rng):
    return rng.standard_normal((30, 2)) * 2, np.exp(rng.uniform(np.log(0.01), np.log(20), 30))


@pytest.mark.parametrize("kind, strength", [("tikhonov", 0.05), ("tikhonov", 2.0), ("eb", 1e-3), ("eb", 0.3)])
def test_regularized_optimum_on_2d_points_matches_the_formula(queries, kind, strength):
    x, sigma = queries
    got = OptimalDenoiser(TOY, regularize=(kind, strength), chunk=7)(torch.from_numpy(x), torch.from_numpy(sigma))
    assert np.allclose(got.numpy(), _direct(x, sigma, kind, strength), rtol=1e-9, atol=1e-12)


def test_vanishing_regularization_recovers_the_optimum(queries):
    x, sigma = queries
    sigma = np.maximum(sigma, 0.5)  # keeps Σ_j exp(ℓ_j) above the floor e^-690 at every query
    optimum = _direct(x, sigma)
    for regularize in (("tikhonov", 1e-14), ("eb", 1e-300)):
        got = OptimalDenoiser(TOY, regularize=regularize)(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
        assert np.allclose(got, optimum, atol=1e-9)
    huge = OptimalDenoiser(TOY, regularize=("tikhonov", 1e12))(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    assert np.allclose(huge, x, atol=1e-8)  # c → ∞: the identity, nothing is denoised


def test_memorized_fraction_falls_with_c_on_the_toy():
    settings = RegularizationSettings(tikhonov=(0.0, 1.0), num=60, steps=10, bootstrap=0)
    cloud = make_points("toy2d", 20)
    exact, _ = measure_strength(cloud, "tikhonov", 0.0, settings)
    smooth, x = measure_strength(cloud, "tikhonov", 1.0, settings)
    assert exact["fraction_within"] == 1.0 and exact["memorization_ratio"] == 1.0  # D* copies every sample
    assert smooth["fraction_within"] < 0.3 and smooth["memorization_ratio"] < 0.5 and x.shape == (60, 2)
    assert exact["fraction_beyond_diameter"] == smooth["fraction_beyond_diameter"] == 0.0
    # the kernel sum S ≤ 20 at every σ: a floor far above it never lets the samples be denoised
    floored, x = measure_strength(cloud, "eb", 1000.0, settings)
    assert floored["fraction_beyond_diameter"] > 0.9 and floored["fraction_within"] < 0.05
    assert np.median(np.linalg.norm(x, axis=1)) > 20


def test_eb_floor_makes_new_samples_on_the_toy():
    """Seed 002's three shares at the authors' τ = 1 (their range 1e-2 ... 10): some copies, few
    undenoised, most samples new (measured with 1000 samples: 0.28 / 0.05 / 0.67)."""
    settings = RegularizationSettings(eb=(1.0,), num=200, bootstrap=0)
    row, _ = measure_strength(make_points("toy2d", 20), "eb", 1.0, settings)
    shares = row["fraction_within"], row["fraction_beyond_diameter"], row["fraction_new"]
    assert 0.15 < shares[0] < 0.45 and 0.0 < shares[1] < 0.15 and 0.45 < shares[2] < 0.8
    assert math.isclose(sum(shares), 1.0)


def test_image_samples_are_measured_as_pngs_in_model_space(digits):
    from diffmem.data import class_balanced_subset

    train = class_balanced_subset(digits, 10)
    settings = RegularizationSettings(tikhonov=(0.0,), num=12, steps=8, bootstrap=0, tolerance=1e-9)
    row, x = measure_strength(train, "tikhonov", 0.0, settings)
    assert row["fraction_within"] == 1.0 and row["median_d1"] == 0.0  # rounded copies are exact copies
    assert np.allclose(x * 127.5 + 127.5, np.rint(x * 127.5 + 127.5), atol=1e-4) and x.min() >= -1


def _spec(tmp_path, body: str, name="reg.toml"):
    path = tmp_path / name
    path.write_text('name = "reg"\nmode = "regularization"\n[data]\nsource = "toy2d"\nsize = 20\n' + body)
    return path


def test_regularization_spec_runs_through_the_cli(run_cli, tmp_path):
    spec = _spec(tmp_path, "[axes]\nsize = [10, 20]\n[regularization]\ntikhonov = [0.0, 1.0]\nlog_eb = [-6.0]\n"
                           "num = 30\nsteps = 8\nbootstrap = 10\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["regularization", spec, "--out", out])
    assert code == 0, err
    rows = json.loads((out / "results.json").read_text())
    assert [(r["cell"], r["kind"]) for r in rows] == [(f"size-{n}", k) for n in (10, 20) for k in ("tikhonov",) * 2
                                                       + ("eb",)]
    assert rows[0]["fraction_within"] == 1.0 and rows[2]["log_strength"] == -6.0
    assert (out / "tikhonov.png").stat().st_size and (out / "size-20" / "samples.png").exists()
    before = (out / "size-10" / "regularization.json").read_text()
    assert run_cli(["regularization", spec, "--out", out])[0] == 0  # finished cells are read back
    assert (out / "size-10" / "regularization.json").read_text() == before


@pytest.mark.parametrize("body, needle", [
    ("[regularization]\ntikhonov = [-1.0]\n", "[regularization] tikhonov"),
    ("[regularization]\neb = [0.0]\n", "[regularization] eb"),
    ("[regularization]\nnum = 0\ntikhonov = [1.0]\n", "[regularization] num"),
    ("[regularization]\nwobble = 1\n", "[regularization] wobble: unknown key"),
    ("[regularization]\nnum = 5\n", "[regularization] tikhonov"),
    ("[regularization]\ntikhonov = [1.0]\nsampler = \"rk4\"\n", "[regularization] sampler"),
    ("[axes]\nlr = [0.1, 0.2]\n[regularization]\ntikhonov = [1.0]\n", "[axes] lr"),
])
def test_bad_regularization_specs_name_the_key(run_cli, tmp_path, body, needle):
    stderr = one_line(*run_cli(["regularization", _spec(tmp_path, body), "--out", tmp_path / "out"]), needle)
    assert "reg.toml" in stderr and not (tmp_path / "out" / "results.csv").exists()


def test_runs_only_its_own_mode(tmp_path):
    path = tmp_path / "runs.toml"
    path.write_text('mode = "runs"\n[data]\nsource = "toy2d"\nsize = 20\n[train]\npreset = "mlp-toy"\nepochs = 1\n')
    with pytest.raises(InputError, match="mode"):
        run_regularization(parse_spec(path), tmp_path / "out")


def test_tikhonov_in_time_uses_strength_c_g_squared(queries):
    """tikhonov_time:c is the constant form with strength c·g(t)², g² = dσ²/dt = 2t = 2σ on EDM's
    σ(t) = t: checked per noise level against the constant form at strength 2cσ, and by hand."""
    x, sigma = queries
    c = 0.07
    got = OptimalDenoiser(TOY, regularize=("tikhonov_time", c))(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    x_bar = _direct(x, sigma)
    g2 = 2 * sigma[:, None]
    np.testing.assert_allclose(got, (c * g2 * x + sigma[:, None] ** 2 * x_bar) / (sigma[:, None] ** 2 + c * g2),
                               rtol=1e-10, atol=1e-12)
    for i in (0, 7):
        const = _direct(x[i:i + 1], sigma[i:i + 1], "tikhonov", 2 * c * sigma[i])
        np.testing.assert_allclose(got[i:i + 1], const, rtol=1e-10, atol=1e-12)


def test_tikhonov_in_time_strength_grows_with_noise_and_still_lowers_copies():
    """Sampled, the time form copies less as c grows (c = 0 is D*, every sample a training point)."""
    cloud = make_points("toy2d", 20)
    settings = RegularizationSettings(tikhonov_time=(0.0, 0.1), num=60, steps=10, bootstrap=0)
    zero, _ = measure_strength(cloud, "tikhonov_time", 0.0, settings)
    some, _ = measure_strength(cloud, "tikhonov_time", 0.1, settings)  # measured, 500 samples: 0.084
    assert zero["fraction_within"] == 1.0 and some["fraction_within"] < 0.3
    assert [r[0] for r in settings.strengths()] == ["tikhonov_time"] * 2
