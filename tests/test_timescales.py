"""τ_gen / τ_mem (seed 003): extraction on synthetic curves with known answers, the fits against
independent computations, a tiny end-to-end spec (resumable), and bad specs named in one line."""

import json
import math
import re

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

from diffmem.studies.timescales import (TimescaleSettings, analyze, first_crossing, fit_proportional, power_law, tau_gen,
                                tau_mem)
from conftest import one_line


pytestmark = pytest.mark.usefixtures("one_thread")


def test_first_crossing_interpolates_in_log_time():
    # v rises 0 -> 0.5 between t = 1 and t = 10: level 0.25 is half way in log t, i.e. at sqrt(10).
    assert first_crossing([1, 10, 100], [0.0, 0.5, 1.0], 0.25) == pytest.approx(math.sqrt(10), rel=1e-12)
    # falling curve, first point at or below 0.75: between 10 (1.0) and 100 (0.5), 1/2 of the way.
    assert first_crossing([1, 10, 100], [2.0, 1.0, 0.5], 0.75, above=False) == pytest.approx(10 ** 1.5, rel=1e-12)
    # 0.1 of the way: 10^(1 + 0.1) (checks the fraction, not only the midpoint)
    assert first_crossing([1, 10, 100], [0.0, 0.0, 1.0], 0.1) == pytest.approx(10 ** 1.1, rel=1e-12)
    assert first_crossing([1, 10], [0.5, 0.9], 0.1) == 1.0  # already above at the first point
    assert first_crossing([1, 10], [0.0, 0.01], 0.1) is None  # never


def test_tau_mem_of_a_logistic_curve():
    """f(t) = σ(k·log(t/T0)) crosses the threshold q at log t = log T0 + logit(q)/k."""
    t = np.geomspace(1, 1e5, 400)
    T0, k, q = 3000.0, 2.5, 0.03
    f = scipy.special.expit(k * np.log(t / T0))
    expected = T0 * math.exp(scipy.special.logit(q) / k)
    assert tau_mem(t, f, q) == pytest.approx(expected, rel=2e-3)
    assert tau_mem(t, f, 0.5) == pytest.approx(T0, rel=2e-3)


def test_tau_gen_of_an_exponential_approach():
    """FD = P + A·exp(-t/T) from t0 = 1: FD - P ≤ tol·(FD(t0) - P) at t = t0 + T·ln(1/tol)."""
    t = np.geomspace(1, 1e4, 2000)
    P, A, T, tol = 3.0, 50.0, 100.0, 0.1
    fd = P + A * np.exp(-t / T)
    assert tau_gen(t, fd, tol) == pytest.approx(1 + T * math.log(1 / tol), rel=2e-3)
    assert tau_gen(t, fd, 0.5) == pytest.approx(1 + T * math.log(2), rel=2e-3)
    # the plateau is the curve's minimum, even if quality gets worse again later (memorization)
    fd_late = np.where(t > 2000, fd + 0.5 * np.log(t / 2000), fd)
    assert tau_gen(t, fd_late, tol) == pytest.approx(tau_gen(t, fd, tol), rel=1e-2)


def test_fit_proportional_against_curve_fit():
    n = np.array([8.0, 16, 32, 64])
    tau = np.array([790.0, 1700, 3100, 6600])
    fit = fit_proportional(n, tau)
    a, cov = scipy.optimize.curve_fit(lambda x, a: a * x, n, tau, p0=[1.0])  # independent least squares
    half = scipy.stats.t.ppf(0.975, len(n) - 1) * math.sqrt(cov[0, 0])
    assert fit["a"] == pytest.approx(a[0], rel=1e-6)
    assert fit["interval"] == pytest.approx([a[0] - half, a[0] + half], rel=1e-5)
    resid = tau - a[0] * n
    assert fit["r2"] == pytest.approx(1 - (resid**2).sum() / ((tau - tau.mean()) ** 2).sum(), rel=1e-9)
    exact = fit_proportional(n, 3 * n)
    assert exact["a"] == pytest.approx(3) and exact["r2"] == pytest.approx(1)
    assert exact["interval"] == pytest.approx([3, 3])


def test_power_law_exponents():
    n = np.array([8.0, 16, 32, 64])
    assert power_law(n, 5 * n)["beta"] == pytest.approx(1.0)
    flat = power_law(n, np.array([100.0, 104, 97, 101]))
    assert abs(flat["beta"]) < 0.05 and flat["interval"][0] < 0 < flat["interval"][1]


def _synthetic_curves(c=1000.0, k=3.0, gen=400.0, seeds=None):
    """f_mem = σ(k log(t / (c n))) (τ_mem ∝ n) and FD = 2 + 40 exp(-t / gen) (τ_gen flat) at 160
    log-spaced snapshots, in images seen; with ``seeds`` ({seed: factor}) one run per (n, seed) with
    c scaled by the factor."""
    if seeds is not None:
        return {(n, s): pts for s, f in seeds.items() for n, pts in _synthetic_curves(c * f, k, gen).items()}
    curves = {}
    for n in (8, 16, 32, 64):
        t = np.unique(np.geomspace(8, 1e6, 160).round())
        f = scipy.special.expit(k * np.log(t / (c * n)))
        curves[n] = [dict(epoch=int(ti // n), step=int(ti), images=float(ti), n=n, f_mem=float(fi), ci95=[0, 1],
                          fd=float(2 + 40 * np.exp(-ti / gen))) for ti, fi in zip(t, f)]
    return curves


def test_analyze_recovers_proportional_tau_mem_and_flat_tau_gen():
    settings = TimescaleSettings(threshold=0.03, tolerance=0.1, time="images")
    result = analyze(_synthetic_curves(), settings)
    a_true = 1000.0 * math.exp(scipy.special.logit(0.03) / 3.0)
    fit = result["fits"]["tau_mem"]
    assert fit["proportional"]["a"] == pytest.approx(a_true, rel=0.02)
    assert fit["proportional"]["r2"] > 0.999 and fit["power_law"]["beta"] == pytest.approx(1, abs=0.02)
    gen = result["fits"]["tau_gen"]["power_law"]
    assert abs(gen["beta"]) < 0.02
    assert "consistent with independent of n" in result["summary"]
    # time / n (epochs) collapses τ_mem onto one value
    epochs = analyze(_synthetic_curves(), TimescaleSettings(time="epochs"))
    taus = [r["tau_mem"] for r in epochs["rows"]]
    assert max(taus) / min(taus) == pytest.approx(1, abs=0.03)


def test_tau_gen_plateau_is_taken_before_f_mem_rises():
    """With memorization starting at 3.1·n images, before the FD reaches its plateau (about 920),
    τ_gen comes from the snapshots before f_mem > 0.03 only: their own minimum and range."""
    from diffmem.studies.timescales import generalization_window

    settings = TimescaleSettings(threshold=0.03, tolerance=0.1, time="images")
    curves = _synthetic_curves(c=10.0)
    result = analyze(curves, settings)
    for row in result["rows"]:
        pts = curves[row["n"]]
        t, f, fd = [p["images"] for p in pts], [p["f_mem"] for p in pts], [p["fd"] for p in pts]
        k = generalization_window(f, 0.03)
        assert k == sum(1 for v in np.maximum.accumulate(np.array(f) > 0.03) if not v)
        assert row["snapshots_before_mem"] == k and row["fd_plateau"] == min(fd[:k])
        assert row["tau_gen"] == pytest.approx(tau_gen(t[:k], fd[:k], 0.1))
        assert row["tau_gen"] < row["tau_mem"] * 1.0001  # never a time that already copies
    assert generalization_window([0.5, 0.0], 0.03) == 0 and generalization_window([0.0, 0.01], 0.03) == 2


def test_seeds_give_per_run_rows_means_with_intervals_and_one_fit():
    factors = {0: 0.8, 1: 1.0, 2: 1.3}
    settings = TimescaleSettings(threshold=0.03, tolerance=0.1, time="images")
    result = analyze(_synthetic_curves(seeds=factors), settings)
    assert len(result["rows"]) == 12 and {r["seed"] for r in result["rows"]} == {0, 1, 2}
    a_true = 1000.0 * math.exp(scipy.special.logit(0.03) / 3.0)
    for row in result["by_n"]:
        taus = np.array([r["tau_mem"] for r in result["rows"] if r["n"] == row["n"]])
        assert row["runs"] == 3 and row["tau_mem_reached"] == 3
        assert row["tau_mem"] == pytest.approx(taus.mean()) and row["tau_mem"] == pytest.approx(a_true * row["n"] * 31 / 30, rel=0.02)
        half = scipy.stats.t.ppf(0.975, 2) * taus.std(ddof=1) / math.sqrt(3)
        assert row["tau_mem_ci95"] == pytest.approx([taus.mean() - half, taus.mean() + half])
        assert row["tau_mem_over_n"] == pytest.approx(taus.mean() / row["n"])
    fit = result["fits"]["tau_mem"]
    assert fit["proportional"]["k"] == 12 and fit["proportional"]["interval"][0] < fit["proportional"]["a"]


@pytest.mark.parametrize("key, value, needle", [
    ("threshold", "1.5", "[timescales] threshold"), ("tolerance", "0", "[timescales] tolerance"),
    ("time", '"hours"', "[timescales] time"), ("samples", "1", "[timescales] samples"),
    ("bogus", "1", "[timescales] bogus"), ("features", '""', "[timescales] features"),
])
def test_bad_settings_named(tmp_path, run_cli, key, value, needle):
    spec = tmp_path / "s.toml"
    text = SPEC.format(sizes="[4, 8]", batch=4, extra="")
    text = re.sub(rf"^{key} = .*$", "", text, flags=re.M) + f"{key} = {value}\n"
    spec.write_text(text)
    one_line(*run_cli(["timescales", spec, "--out", tmp_path / "o"]), needle)
    assert not (tmp_path / "o").exists()


def test_bad_axes_and_batch_named(tmp_path, run_cli):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(sizes="[4]", batch=4, extra=""))
    one_line(*run_cli(["timescales", spec]), "[axes] size")
    spec.write_text(SPEC.format(sizes="[4, 8]", batch=4, extra="").replace("[axes]", "[axes]\nlr = [1e-3, 2e-3]"))
    one_line(*run_cli(["timescales", spec]), "[axes] size")
    spec.write_text(SPEC.format(sizes="[4, 8]", batch=8, extra=""))
    one_line(*run_cli(["timescales", spec]), "[train] batch")
    one_line(*run_cli(["timescales", spec, "--workers", "0"]), "--workers")
    one_line(*run_cli(["timescales", tmp_path / "missing.toml"]), "missing.toml")


SPEC = """
name = "tiny-timescales"
mode = "timescales"
[data]
source = "digits"
labels = "none"
[train]
preset = "tiny"
channels = 8
precond = "edm"
epochs = 12
batch = {batch}
lr = 2e-3
ema_rate = 0.9
snapshots = "log:4"
log_every = 10
checkpoint_every = 100
device = "cpu"
[axes]
size = {sizes}
[timescales]
samples = 16
heldout = 24
features = "pixels"
bootstrap = 100
{extra}
"""


def test_tiny_spec_end_to_end_and_resumable(tmp_path, run_cli, monkeypatch):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(sizes="[4, 8]", batch=4, extra=""))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["timescales", spec, "--out", out, "--threads", "1"])
    assert code == 0, stderr
    assert "n =      4" in stdout and "results in" in stdout
    result = json.loads((out / "results.json").read_text())
    assert [r["n"] for r in result["rows"]] == [4, 8]
    for name in ("results.csv", "curves.csv", "curves.png", "collapse.png", "tau_vs_n.png"):
        assert (out / name).stat().st_size > 0
    curve = json.loads((out / "size-4" / "timescales.json").read_text())["points"]
    assert [p["epoch"] for p in curve] == [1, 2, 5, 12]  # log:4 over 12 epochs: geomspace(1, 12, 4) rounded
    assert all(0 <= p["f_mem"] <= 1 and p["ci95"][0] <= p["f_mem"] <= p["ci95"][1] and p["fd"] > 0 for p in curve)
    assert curve[0]["images"] == curve[0]["step"] * 4
    # a re-run measures nothing again and gives the same table
    import diffmem.studies.timescales as ts

    monkeypatch.setattr(ts, "measure_snapshot", lambda *a, **k: pytest.fail("re-measured a finished snapshot"))
    code, stdout2, stderr = run_cli(["timescales", spec, "--out", out, "--threads", "1"])
    assert code == 0, stderr
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]


def test_seed_axis_and_batch_cap_end_to_end(tmp_path, run_cli):
    """Seed 003's protocol: batch min(cap, n) per n, one step grid, seeds repeated per n."""
    spec = tmp_path / "s.toml"
    text = SPEC.format(sizes="[4, 8]", batch=32, extra="batch_cap = 6\ntime = \"steps\"")
    text = text.replace("epochs = 12", "steps = 6").replace('snapshots = "log:4"', 'snapshots = "3"')
    spec.write_text(text.replace("[axes]", "[axes]\n\"train.seed\" = [0, 1]"))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["timescales", spec, "--out", out, "--threads", "1"])
    assert code == 0, stderr
    result = json.loads((out / "results.json").read_text())
    assert [(r["n"], r["seed"]) for r in result["rows"]] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert [r["runs"] for r in result["by_n"]] == [2, 2] and "mean of 2 runs" in stdout
    batches = {c.name: json.loads((c / "config.json").read_text())["batch"] for c in out.iterdir() if c.is_dir()}
    assert sorted(batches.values()) == [4, 4, 6, 6]
    for cell in (c for c in out.iterdir() if c.is_dir()):
        steps = [p["step"] for p in json.loads((cell / "timescales.json").read_text())["points"]]
        assert steps[-1] == 6  # one grid of steps for every n
