"""Membership inference: the per-image loss against a direct loop; AUC and TPR at 1 % FPR on planted
scores against direct counts; the optimum's own training set is recognised at small σ."""

import json

import numpy as np
import pytest
import torch

from diffmem.losses import per_image_loss
from diffmem.rng import MEMBERSHIP, derive_seed
from tests.conftest import one_line


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_D(x, sigma, labels=None):
    """D(x; σ, c) = x/(1 + σ) + c/10 per image: a known denoiser that uses σ and the labels."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
    c = 0 if labels is None else labels.to(x.dtype).reshape(-1, 1, 1, 1) / 10
    return x / (1 + s) + c


def test_per_image_loss_equals_a_direct_loop():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (5, 2, 3, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0])
    sigmas = [0.05, 0.7, 3.0]
    got = per_image_loss(_linear_D, pixels, sigmas, labels=labels, seed=7, batch=2)

    y = pixels.astype(np.float64) / 127.5 - 1.0
    expected = np.empty((5, 3))
    for i in range(5):
        for j, s in enumerate(sigmas):
            g = torch.Generator().manual_seed(derive_seed(7, MEMBERSHIP, i, j))
            n = torch.randn((2, 3, 3), generator=g, dtype=torch.float32).double().numpy()
            d = (y[i] + s * n) / (1 + s) + labels[i] / 10
            expected[i, j] = np.mean((d - y[i]) ** 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The batch does not change a row, and float model-space input equals uint8 input.
    again = per_image_loss(_linear_D, y.astype(np.float32), sigmas, labels=labels, seed=7, batch=256)
    np.testing.assert_allclose(again, got, rtol=1e-6)
    assert not np.allclose(per_image_loss(_linear_D, pixels, sigmas, labels=labels, seed=8), got)


@pytest.mark.parametrize("bad", [[], [0.0], [-1.0], [float("nan")]])
def test_per_image_loss_refuses_bad_sigmas(bad):
    from diffmem.errors import InputError

    with pytest.raises(InputError, match="sigmas"):
        per_image_loss(_linear_D, np.zeros((2, 1, 2, 2), np.uint8), bad)


def test_per_image_loss_takes_an_imagesets_labels_for_a_conditional_denoiser():
    from diffmem.data import ImageSet
    from diffmem.denoisers.protocol import denoiser_from_function

    rng = np.random.default_rng(2)
    images = ImageSet(rng.integers(0, 256, (4, 1, 2, 2), dtype=np.uint8), labels=np.array([3, 0, 2, 1]))
    D = denoiser_from_function(_linear_D, (1, 2, 2), num_classes=4)
    direct = per_image_loss(_linear_D, images.images, [0.5], labels=images.labels)
    np.testing.assert_allclose(per_image_loss(D, images, [0.5]), direct, rtol=1e-7)
    assert not np.allclose(per_image_loss(_linear_D, images, [0.5]), direct)  # unconditional: no labels


# --- AUC, ROC and TPR at 1 % FPR on planted scores -------------------------------------------------

from diffmem.metrics.membership import (  # noqa: E402
    DEFAULT_SIGMAS, auc_score, membership, roc, roc_figure, t_error, tpr_at_fpr,
)


def test_auc_equals_a_direct_pairwise_count():
    rng = np.random.default_rng(3)
    members = rng.integers(0, 20, 70).astype(float)  # many ties
    others = rng.integers(5, 25, 90).astype(float)
    pairs = members[:, None] - others[None, :]
    direct = ((pairs < 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size  # P(member lower) + ½ P(tie)
    assert auc_score(members, others) == pytest.approx(direct, abs=1e-12)


def test_bootstrap_interval_of_the_auc_equals_a_direct_loop():
    from diffmem.metrics.membership import bootstrap_auc
    from diffmem.rng import BOOTSTRAP, numpy_rng

    rng = np.random.default_rng(6)
    members, others = rng.normal(0, 1, 30).round(1), rng.normal(0.8, 1, 40).round(1)  # with ties
    draw, aucs = numpy_rng(3, BOOTSTRAP, 1), []
    for _ in range(200):
        a, b = members[draw.integers(0, 30, 30)], others[draw.integers(0, 40, 40)]
        pairs = a[:, None] - b[None, :]
        aucs.append(((pairs < 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size)
    expected = np.percentile(aucs, [2.5, 97.5])
    np.testing.assert_allclose(bootstrap_auc(members, others, 200, seed=3), expected, rtol=1e-12)
    assert bootstrap_auc(np.zeros(5), np.ones(5), 50) == (1.0, 1.0)


def test_planted_scores_give_known_auc_and_tpr():
    fpr, tpr = roc(np.arange(10.0), np.arange(10.0) + 100)  # perfectly separated: members lower
    assert auc_score(np.arange(10.0), np.arange(10.0) + 100) == 1.0 and tpr_at_fpr(fpr, tpr) == 1.0
    assert auc_score(np.arange(10.0) + 100, np.arange(10.0)) == 0.0
    # 30 members below all 50 held-out; 20 members tied with the lowest held-out image: the ROC runs
    # (0, 0.6) -> (0.02, 1.0) in one diagonal step, so at FPR 0.01 the interpolated TPR is 0.8.
    members, others = np.r_[np.full(30, -1.0), np.zeros(20)], np.arange(50.0)
    fpr, tpr = roc(members, others)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(0.8)
    assert tpr_at_fpr(fpr, tpr, 0.02) == pytest.approx(1.0)  # the top of a vertical step
    assert auc_score(members, others) == pytest.approx((30 * 50 + 20 * (49 + 0.5)) / (50 * 50))
    rng = np.random.default_rng(4)
    same = auc_score(rng.normal(size=4000), rng.normal(size=4000))  # identical distributions
    assert abs(same - 0.5) < 0.02


def test_the_optimum_recognises_its_own_training_set(digits):
    from diffmem.data import ImageSet
    from diffmem.denoisers.optimal import OptimalDenoiser

    train, held = ImageSet(digits.images[:40]), ImageSet(digits.images[40:80])
    D = OptimalDenoiser(train)
    for method in ("loss", "secmi"):
        res = membership(D, train, held, method=method, sigmas=[0.05] if method == "loss" else None)
        assert res.auc == 1.0 and res.tpr_at_1fpr == 1.0, method
        assert res.train_stats.max() < 1e-6 < res.heldout_stats.min()
        assert res.summary()["auc"] == 1.0 and "AUC = 1.000" in res.explain()
    fig = roc_figure(res)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"


def test_t_error_of_a_linear_denoiser_equals_a_direct_ddim_loop():
    """D(x; σ) = x/(1 + σ²) (the optimum for N(0, I) data): every Euler step multiplies x by
    1 + (σ' - σ)·(1 - 1/(1+σ²))/σ. SecMI's grid is DDPM's σ at t = 0, 10, …, 90, then 100 and back."""
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    s_t = np.sqrt((1 - alpha_bar) / alpha_bar)[np.arange(0, 101, 10)]
    assert DEFAULT_SIGMAS["secmi"][0] == pytest.approx(s_t[10], rel=1e-12)

    def step(s0, s1):
        return 1 + (s1 - s0) * (1 - 1 / (1 + s0**2)) / s0

    y = np.random.default_rng(5).uniform(-1, 1, (3, 1, 2, 2))
    x_t = y * np.sqrt(1 + s_t[0] ** 2) * np.prod([step(a, b) for a, b in zip(s_t[:9], s_t[1:10])])
    back = x_t * step(s_t[9], s_t[10]) * step(s_t[10], s_t[9])
    expected = ((back - x_t) ** 2).reshape(3, -1).mean(1)
    got = t_error(lambda x, s, c: x / (1 + s.reshape(-1, 1, 1, 1) ** 2), y.astype(np.float32), s_t[10])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_t_error_follows_secmis_released_procedure():
    """The released code (jinhaoduan/SecMI, get_intermediate_results, t_sec = 100, timestep = 10) in
    DDPM's x_t-space with an ε-model: ddim_multistep from t_c = 0 over range(0, 100, 10)[1:], then
    ddim_singlestep 90 → 100 and 100 → 90, score Σ_pixels (x_sec - recon)². Ours is the same number
    divided by ᾱ_90 · pixels. The denoiser is nonlinear, so a step taken at another t would show."""
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))

    def D(x, s):  # any smooth nonlinear denoiser in EDM's x = x_t/√ᾱ_t
        return np.tanh(1.5 * x) / (1 + s**2) + 0.1 * np.sin(3 * x) * s

    def eps_model(x_t, t):  # ε(x_t, t) of D: x_t = √ᾱ (y + σ n), ε = n
        a = alpha_bar[t]
        x, s = x_t / np.sqrt(a), np.sqrt((1 - a) / a)
        return (x - D(x, s)) / s

    def ddim(x_t, t_c, t_target):
        eps = eps_model(x_t, t_c)
        pred_x0 = (x_t - np.sqrt(1 - alpha_bar[t_c]) * eps) / np.sqrt(alpha_bar[t_c])
        return np.sqrt(alpha_bar[t_target]) * pred_x0 + np.sqrt(1 - alpha_bar[t_target]) * eps

    y = np.random.default_rng(6).uniform(-1, 1, (4, 1, 3, 3)).astype(np.float32).astype(np.float64)
    target_steps = list(range(0, 100, 10))[1:]
    x, t_c = y, 0
    for t in target_steps:
        x, t_c = ddim(x, t_c, t), t
    recon = ddim(ddim(x, 90, 100), 100, 90)
    expected = ((x - recon) ** 2).reshape(4, -1).sum(1)
    got = t_error(lambda x, s, c: torch.from_numpy(D(x.numpy(), s.reshape(-1, 1, 1, 1).numpy())),
                  y, DEFAULT_SIGMAS["secmi"][0], steps=10)
    np.testing.assert_allclose(got * alpha_bar[90] * 9, expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs,needle", [({"method": "lira"}, "method"), ({"sigmas": []}, "sigmas"),
                                           ({"method": "secmi", "sigmas": [200.0]}, "sigmas"),
                                           ({"method": "secmi", "sigmas": [0.001]}, "sigmas")])
def test_membership_refuses_bad_settings(kwargs, needle):
    from diffmem.errors import InputError

    x = np.zeros((2, 1, 2, 2), np.uint8)
    with pytest.raises(InputError, match=needle):
        membership(_linear_D, x, x, **kwargs)


# --- diffmem membership ----------------------------------------------------------------------------

class _Shrink(torch.nn.Module):
    def forward(self, x: torch.Tensor, sigma: torch.Tensor):
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


@pytest.fixture
def member_files(tmp_path, digits):
    from diffmem.data import write_dataset_zip
    from diffmem.denoisers.adapters import save_torchscript

    write_dataset_zip(tmp_path / "train.zip", digits.images[:12])
    write_dataset_zip(tmp_path / "held.zip", digits.images[12:24])
    save_torchscript(_Shrink(), tmp_path / "model.pt", shape=(1, 8, 8))
    return tmp_path


def test_membership_cli_writes_scores_roc_and_summary(member_files, run_cli):
    t = member_files
    code, out, err = run_cli(["membership", "--model", t / "model.pt", "--train", t / "train.zip", "--heldout",
                              t / "held.zip", "--sigma", "0.1,0.5", "--out", t / "mi", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sigmas"] == [0.1, 0.5] and summary["n_train"] == 12 and 0 <= summary["auc"] <= 1
    assert sorted(p.name for p in (t / "mi").iterdir()) == ["roc.png", "scores.npz", "summary.json"]
    scores = np.load(t / "mi" / "scores.npz")
    D = lambda x, s, c: x / (1 + s.reshape(-1, 1, 1, 1) ** 2)  # noqa: E731 -- the scripted model, directly
    np.testing.assert_allclose(scores["train_stats"], per_image_loss(D, _digits12(t), [0.1, 0.5]), rtol=1e-5)
    # a second run into the same folder is refused, nothing overwritten
    again = run_cli(["membership", "--model", t / "model.pt", "--train", t / "train.zip", "--heldout",
                     t / "held.zip", "--out", t / "mi"])
    one_line(*again, "--out")


def _digits12(t):
    from diffmem.data.io import load_image_set

    return load_image_set(t / "train.zip")


@pytest.mark.parametrize("change,needle", [
    ({"--model": "empty"}, "--model"), ({"--model": "missing.pt"}, "--model"), ({"--heldout": "nope.zip"}, "--heldout"),
    ({"--sigma": "abc"}, "--sigma"), ({"--sigma": "-1"}, "--sigma"), ({"--sigma": "0.1,"}, "--sigma"),
    ({"--method": "lira"}, "--method"), ({"--seed": "-3"}, "--seed"), ({"--bootstrap": "-1"}, "--bootstrap"),
    ({"--method": "secmi", "--sigma": "500"}, "--sigma"),
])
def test_membership_cli_bad_input_is_one_line(member_files, run_cli, change, needle):
    t = member_files
    (t / "empty").mkdir()
    args = {"--model": "model.pt", "--train": "train.zip", "--heldout": "held.zip", **change}
    argv = ["membership"]
    for flag, value in args.items():
        argv += [flag, t / value if flag in ("--model", "--train", "--heldout") else value]
    one_line(*run_cli(argv), needle)
