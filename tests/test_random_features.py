"""The random-features model of seed 003 (diffmem.denoisers.random_features) and its study
(diffmem.studies.rf, ``diffmem random-features``): the loss, gradient and score error against direct
computations on tiny sizes, the time normalization, the onset and the fits, the CLI and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import one_line
from diffmem.denoisers.random_features import (RandomFeatureScore, diffusion_coefficients, dsm_loss,
                                               dsm_loss_and_gradient, feature_coefficients, score_error)
from diffmem.errors import InputError
from diffmem.studies.rf import RFSettings, eval_steps, fit_onsets, gd_step, onset_time, simulate, stability


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(d=3, p=5, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = RandomFeatureScore(d, p, generator=gen)
    model.A = torch.randn(d, p, generator=gen, dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    eta = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return model, x, eta


def test_diffusion_coefficients_known_answer():
    a, delta = diffusion_coefficients(math.log(2))
    assert a == pytest.approx(0.5) and delta == pytest.approx(0.75)


def test_loss_against_a_direct_loop():
    """L = 1/(d n) Σ_ν ‖√Δ A tanh(W x̃_ν/√d)/√p + η_ν‖², x̃ = a x + √Δ η, one sample at a time in numpy."""
    model, x, eta = _tiny()
    t = 0.4
    a, delta = math.exp(-t), 1 - math.exp(-2 * t)
    W, A = model.W.numpy(), model.A.numpy()
    total = 0.0
    for xv, ev in zip(x.numpy(), eta.numpy()):
        xt = a * xv + math.sqrt(delta) * ev
        s = A @ np.tanh(W @ xt / math.sqrt(3)) / math.sqrt(5)
        total += np.sum((math.sqrt(delta) * s + ev) ** 2)
    assert float(dsm_loss(model, x, eta, t)) == pytest.approx(total / (3 * 4), rel=1e-12)


def test_zero_model_loss_is_the_noise_energy():
    model, x, eta = _tiny()
    model.A.zero_()
    assert float(dsm_loss(model, x, eta, 0.7)) == pytest.approx(float((eta ** 2).sum()) / (3 * 4), rel=1e-12)


def test_gradient_matches_autograd():
    model, x, eta = _tiny(d=4, p=6, n=5)
    loss, grad = dsm_loss_and_gradient(model, x, eta, 0.3)
    model.A.requires_grad_(True)
    auto = dsm_loss(model, x, eta, 0.3)
    auto.backward()
    assert float(loss) == pytest.approx(float(auto.detach()), rel=1e-12)
    torch.testing.assert_close(grad, model.A.grad, rtol=1e-10, atol=1e-12)


def test_score_error_against_a_direct_loop():
    model, x, _ = _tiny()
    W, A = model.W.numpy(), model.A.numpy()
    direct = np.mean([np.sum((A @ np.tanh(W @ v / math.sqrt(3)) / math.sqrt(5) + v) ** 2) / 3 for v in x.numpy()])
    assert float(score_error(model, x)) == pytest.approx(direct, rel=1e-12)


def test_one_step_moves_time_by_dt():
    """A step is A ← A - (dt d²/2) ∂L/∂A, so that the GD operator is A(I - dt Δ U/ψ_p): from A = 0
    with a fixed η, A₁ = -dt·√Δ·d/(n·√p)·ηᵀΦ (the residual at A = 0 is η)."""
    s = RFSettings(d=4, t=0.5, psi_n=[2], psi_p=[3], dt=0.25, time=0.25, eval_points=2, eval_draws=1)
    model, x, eta = _tiny(d=4, p=12, n=8)
    model.A.zero_()
    gd_step(model, x, eta, s.t, s.dt)
    a, delta = diffusion_coefficients(s.t)
    phi = model.features(a * x + math.sqrt(delta) * eta)
    expected = -s.dt * math.sqrt(delta) * 4 / (8 * math.sqrt(12)) * eta.T @ phi
    torch.testing.assert_close(model.A, expected)


def test_stability_number_against_numpy():
    """dt·Δ_t·λ_max(U)/ψ_p with U = ΦᵀΦ/n (p, p), diagonalized directly in numpy."""
    from diffmem.studies.rf import _draw

    s = _settings(dt=0.7)
    cell = s.cells()[2]
    model, x, *_ = _draw(cell, s)
    eta = torch.randn(x.shape, generator=torch.Generator().manual_seed(cell["seed"] + 1), dtype=torch.float64)
    a, delta = diffusion_coefficients(s.t)
    phi = np.tanh((a * x.numpy() + math.sqrt(delta) * eta.numpy()) @ model.W.numpy().T / math.sqrt(6))
    lam = np.linalg.eigvalsh(phi.T @ phi / cell["n"])[-1]
    assert stability(cell, s) == pytest.approx(0.7 * delta * lam / (cell["p"] / 6), rel=1e-9)


def test_onset_interpolates_in_log_time():
    tau, gap = [0, 1, 10, 100], [0.0, 0.0, 1.0, 3.0]
    assert onset_time(tau, gap, 2.0) == pytest.approx(math.sqrt(1000))
    assert onset_time(tau, gap, 1.0) == pytest.approx(10.0)
    assert onset_time(tau, gap, 5.0) is None
    assert onset_time(tau, [9, 9, 9, 9], 1.0) == 1.0  # τ = 0 is ignored


def test_gap_onset_counts_the_excess_from_the_baseline():
    from diffmem.studies.rf import gap_onset

    tau = [0, 1, 2, 4, 8, 16, 32, 64]
    gap = [0, 0.1, 0.2, 0.25, 0.3, 0.3, 0.5, 0.9]
    test = [1, 0.8, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]  # minimum at τ = 2
    out = gap_onset(tau, gap, test, 0.2, 4.0)
    assert out["tau_test_min"] == 2 and out["tau_ref"] == 8 and out["gap_ref"] == pytest.approx(0.3)
    assert out["tau_onset"] == pytest.approx(32) and out["tau_onset_raw"] == pytest.approx(2)
    between = gap_onset(tau, gap, test, 0.2, 3.0)  # τ_ref = 6: gap_ref interpolated in log τ
    assert between["gap_ref"] == pytest.approx(0.25 + 0.05 * math.log(1.5) / math.log(2))
    assert gap_onset(tau, gap, test, 0.2, 0.0)["tau_onset"] == pytest.approx(2)
    assert gap_onset(tau, gap, test, 0.2, 40.0)["tau_onset"] is None  # τ_ref past the horizon


def test_fits_recover_a_known_line():
    fit = fit_onsets([1, 2, 4, 8], [3, 6, 12, 24])
    assert fit["linear"]["slope"] == pytest.approx(3) and fit["linear"]["r2"] == pytest.approx(1)
    assert fit["power"]["exponent"] == pytest.approx(1) and fit["proportional"]["c"] == pytest.approx(3)
    noisy = fit_onsets([1, 2, 4, 8], [2, 7, 11, 25])
    lo, hi = noisy["linear"]["slope_ci95"]
    assert lo < noisy["linear"]["slope"] < hi and noisy["linear"]["r2"] < 1
    slope, intercept = np.polyfit([1, 2, 4, 8], [2, 7, 11, 25], 1)
    assert noisy["linear"]["slope"] == pytest.approx(slope) and noisy["linear"]["intercept"] == pytest.approx(intercept)
    assert "note" in fit_onsets([1, 2], [1, 2])


def test_eval_grid():
    grid = eval_steps(1000, 20)
    assert grid[0] == 0 and grid[1] == 1 and grid[-1] == 1000 and len(set(grid)) == len(grid) == sorted(grid).__len__()
    assert grid == sorted(grid)


def _settings(**kw):
    base = dict(d=6, t=0.3, psi_n=[1, 2, 3], psi_p=[8], dt=1.0, time=60.0, eval_points=12, eval_draws=2)
    return RFSettings(**{**base, **kw})


def test_simulation_curves():
    s = _settings()
    cell = s.cells()[1]
    out = simulate(cell, s)
    assert out["n"] == 12 and out["p"] == 48 and out["step"][0] == 0 and out["step"][-1] == 60
    assert out["gap"][0] == 0.0  # common evaluation noise: identical losses at A = 0
    from diffmem.studies.rf import _draw

    _, _, x_test, noise, _ = _draw(cell, s)  # at A = 0: loss = ‖E‖²/(d·m·n), score error = ‖x_t‖²/(d·m·n)
    a, delta = diffusion_coefficients(s.t)
    x_t = a * x_test + math.sqrt(delta) * noise
    assert out["test_loss"][0] == pytest.approx(float((noise ** 2).sum()) / noise.numel(), rel=1e-12)
    assert out["score_error"][0] == pytest.approx(float((x_t ** 2).sum()) / x_t.numel(), rel=1e-12)
    assert out["train_loss"][-1] < out["train_loss"][0]
    assert out["score_error"][-1] < out["score_error"][0]
    again = simulate(cell, s)
    assert again["test_loss"] == out["test_loss"]
    single = simulate(cell, _settings(dtype="float32"))
    np.testing.assert_allclose(single["train_loss"], out["train_loss"], rtol=1e-3)


def test_unstable_time_step_is_refused():
    from diffmem.studies.rf import check_stability

    s = _settings(dt=100.0, time=200.0)
    assert stability(s.cells()[0], s) > 2
    with pytest.raises(InputError) as err:
        check_stability(s)
    assert str(err.value).startswith("[rf] dt: ")


SPEC = """name = "tiny-rf"
[rf]
d = 6
t = 0.3
psi_n = [1, 2, 3]
psi_p = [8]
dt = 1.0
time = 40.0
eval_points = 10
eval_draws = 2
seeds = [0]
onset_threshold = 0.02
"""


def test_cli_end_to_end_and_refuses_to_overwrite(tmp_path, run_cli):
    spec = tmp_path / "rf.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["random-features", spec, "--out", out, "--threads", "1"])
    assert code == 0, stderr
    record = json.loads((out / "results.json").read_text())
    assert record["name"] == "tiny-rf" and len(record["cells"]) == 3
    assert set(record["fits"]) == {"8"}
    for name in ("curves.csv", "onsets.csv", "losses.png", "gap.png", "onset.png"):
        assert (out / name).stat().st_size > 0
    assert "psi_p = 8" in stdout
    one_line(*run_cli(["random-features", spec, "--out", out]), "--out", "already exist")


@pytest.mark.parametrize("text, needle", [
    ("name = 'x'\n[rf]\nd = 6\nbogus = 1\n", "[rf] bogus"),
    ("name = 'x'\nextra = 1\n[rf]\nd = 6\n", "extra"),
    ("name = 'x'\n", "[rf]"),
    ("[rf]\nd = 1\n", "[rf] d"),
    ("[rf]\nd = 6\npsi_n = []\n", "[rf] psi_n"),
    ("[rf]\nd = 6\npsi_n = [1, -2]\n", "[rf] psi_n"),
    ("[rf]\nd = 6\npsi_p = [0.01]\n", "[rf] psi_p"),
    ("[rf]\nd = 6\nt = 0\n", "[rf] t"),
    ("[rf]\nd = 6\ndt = 'big'\n", "[rf] dt"),
    ("[rf]\nd = 6\ndt = 2.0\ntime = 1.0\n", "[rf] time"),
    ("[rf]\nd = 6\nseeds = [1, 1]\n", "[rf] seeds"),
    ("[rf]\nd = 6\neval_draws = 0\n", "[rf] eval_draws"),
    ("[rf]\nd = 6\nonset_threshold = -1\n", "[rf] onset_threshold"),
    ("[rf]\nd = 6\ndtype = 'float16'\n", "[rf] dtype"),
    ("[rf]\nd = 6\nnormalization = 'p'\n", "[rf] normalization"),
    ("[rf\nd = 6\n", "not valid TOML"),
])
def test_bad_spec_is_one_line_naming_the_key(tmp_path, run_cli, text, needle):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    one_line(*run_cli(["random-features", spec, "--out", tmp_path / "out"]), needle)
    assert not (tmp_path / "out").exists()


def test_bad_flags(tmp_path, run_cli):
    spec = tmp_path / "rf.toml"
    spec.write_text(SPEC)
    one_line(*run_cli(["random-features", spec, "--out", tmp_path / "o", "--workers", "0"]), "--workers")
    one_line(*run_cli(["random-features", spec, "--out", tmp_path / "o", "--threads", "-1"]), "--threads")
    one_line(*run_cli(["random-features", tmp_path / "missing.toml", "--out", tmp_path / "o"]), "missing.toml")
    (tmp_path / "file").write_text("x")
    one_line(*run_cli(["random-features", spec, "--out", tmp_path / "file"]), "--out")
    unstable = tmp_path / "unstable.toml"
    unstable.write_text(SPEC.replace("dt = 1.0", "dt = 100.0").replace("time = 40.0", "time = 400.0"))
    one_line(*run_cli(["random-features", unstable, "--out", tmp_path / "o"]), "[rf] dt", "use dt <")
    assert not (tmp_path / "o").exists()


def test_feature_coefficients_against_direct_integrals():
    """μ₁ = E z tanh z, μ*² = E tanh² z - μ₁², and v_t² from g(u) = E_ξ tanh(a u + √Δ ξ) by
    scipy's adaptive quadrature; at t → 0 the noise vanishes and v_t² → μ*²; the issue's numbers
    (0.0039 at t = 0.3, 0.0006 at 0.6)."""
    from scipy import integrate
    from scipy.stats import norm

    def expect(f):
        return integrate.quad(lambda z: f(z) * norm.pdf(z), -12, 12, limit=200)[0]

    for t in (0.3, 0.6):
        a, delta = diffusion_coefficients(t)
        g = lambda u: expect(lambda xi: np.tanh(a * u + math.sqrt(delta) * xi))  # noqa: E731
        v2 = expect(lambda u: g(u) ** 2) - expect(g) ** 2 - expect(lambda u: u * g(u)) ** 2
        got = feature_coefficients(t)
        assert got["v_t2"] == pytest.approx(v2, rel=1e-6, abs=1e-9)
        assert got["mu_1"] == pytest.approx(expect(lambda z: z * np.tanh(z)), rel=1e-9)
        assert got["mu_star2"] == pytest.approx(expect(lambda z: np.tanh(z) ** 2) - got["mu_1"] ** 2, rel=1e-9)
    assert round(feature_coefficients(0.3)["v_t2"], 4) == 0.0039 and round(feature_coefficients(0.6)["v_t2"], 4) == 0.0006
    assert feature_coefficients(1e-6)["v_t2"] == pytest.approx(feature_coefficients(0.3)["mu_star2"], rel=1e-3)


def test_authors_time_is_tau_d2_over_2p():
    """The authors' model (no 1/√p) trained with plain GD at lr = dt·d²/(2p) follows our normalized
    model trained at dt, step for step: same score function, so their steps × lr is τ·d²/(2p)."""
    d, p, n, t, dt = 5, 14, 9, 0.4, 0.3
    ours = RandomFeatureScore(d, p, generator=torch.Generator().manual_seed(2))
    theirs = RandomFeatureScore(d, p, generator=torch.Generator().manual_seed(2), normalize=False)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    for _ in range(4):
        eta = torch.randn(n, d, generator=gen, dtype=torch.float64)
        gd_step(ours, x, eta, t, dt)
        gd_step(theirs, x, eta, t, dt * d * d / (2 * p))  # normalization none: τ is steps × lr
    probe = torch.randn(7, d, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(theirs(probe), ours(probe), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(theirs.A, ours.A / math.sqrt(p), rtol=1e-10, atol=1e-12)


def test_stability_without_the_normalization():
    """Without 1/√p the stability number is dt·2Δ_t·λ_max(U)/d (lr = dt), against numpy."""
    from diffmem.studies.rf import _draw

    s = _settings(dt=0.01, normalization="none")
    cell = s.cells()[2]
    model, x, *_ = _draw(cell, s)
    assert model.scale == 1.0
    eta = torch.randn(x.shape, generator=torch.Generator().manual_seed(cell["seed"] + 1), dtype=torch.float64)
    a, delta = diffusion_coefficients(s.t)
    phi = np.tanh((a * x.numpy() + math.sqrt(delta) * eta.numpy()) @ model.W.numpy().T / math.sqrt(6))
    lam = np.linalg.eigvalsh(phi.T @ phi / cell["n"])[-1]
    assert stability(cell, s) == pytest.approx(0.01 * 2 * delta * lam / 6, rel=1e-9)
