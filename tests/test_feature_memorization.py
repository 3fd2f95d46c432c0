"""The feature-space audit: the 1/3 rule, cosine replication and the train-to-train background, against
an independent numpy computation through a tiny TorchScript extractor; the CLI's --features,
--metric, --similarity-threshold; bad extractors as one line, exit 2."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import one_line
from diffmem.data import save_npz, write_dataset_zip
from diffmem.metrics.memorization import BACKGROUND_QUANTILES, feature_memorization, memorization

W = np.random.default_rng(7).standard_normal((16, 5)).astype(np.float32)  # 1x4x4 pixels -> 5 features


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.from_numpy(W), requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.w


class Fails(nn.Module):
    def forward(self, x):
        raise RuntimeError("extractor exploded")


class WrongShape(nn.Module):
    def forward(self, x):
        return x  # (N, C, H, W), not (N, k)


class Zero(nn.Module):
    def forward(self, x):
        return x.flatten(1) * 0.0


def _script(module, path):
    with warnings.catch_warnings():  # torch 2.x marks torch.jit as deprecated; users still export to it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture
def planted(rng):
    train = rng.integers(0, 256, (24, 1, 4, 4), dtype=np.uint8)
    gen = rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    gen[3], gen[8] = train[17], train[2]
    return train, gen


def _cosine_by_hand(train, gen):
    """Nearest and second-nearest cosine similarities by dot products of normalised numpy features."""
    def feats(x):
        f = (x.astype(np.float64) / 127.5 - 1).reshape(len(x), -1) @ W.astype(np.float64)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    ft, fg = feats(train), feats(gen)
    sim = fg @ ft.T
    order = np.argsort(-sim, axis=1)
    own = ft @ ft.T
    np.fill_diagonal(own, -np.inf)
    return sim[np.arange(len(gen)), order[:, 0]], sim[np.arange(len(gen)), order[:, 1]], order[:, 0], own.max(1)


def test_cosine_against_numpy(planted, tmp_path):
    train, gen = planted
    r = feature_memorization(train, gen, features=str(_script(Linear(), tmp_path / "f.pt")), metric="cosine",
                             similarity_threshold=0.9)
    c1, c2, nearest, own = _cosine_by_hand(train, gen)
    np.testing.assert_allclose(r.similarity, c1, atol=1e-6)
    assert r.idx1.tolist() == nearest.tolist()
    d1, d2 = np.sqrt(np.maximum(2 - 2 * c1, 0)), np.sqrt(np.maximum(2 - 2 * c2, 0))
    np.testing.assert_allclose(r.d1, d1, atol=1e-6)
    assert r.memorized.tolist() == ((d1 < d2 / 3) | (d1 < 1e-6)).tolist()
    assert r.replicated.tolist() == (c1 > 0.9).tolist()
    assert r.replicated[[3, 8]].all() and r.memorized[[3, 8]].all()  # planted copies
    for q in BACKGROUND_QUANTILES:
        assert r.background[f"q{q:g}"] == pytest.approx(np.quantile(own, q), abs=1e-6)
    s = r.summary()
    assert s["replication_fraction"] == pytest.approx((c1 > 0.9).mean()) and s["feature_dim"] == 5
    assert s["metric"] == "cosine" and s["features"] == "file:f.pt" and "memorization_ratio" in s
    assert set(r.per_sample()) >= {"similarity", "replicated", "d1", "idx1"}


def test_pixels_l2_is_the_pixel_audit(planted):
    train, gen = planted
    r = feature_memorization(train, gen, features="pixels", metric="l2")
    ref = memorization(train, gen)
    np.testing.assert_allclose(r.d1, ref.d1, rtol=1e-6)
    assert r.memorized.tolist() == ref.memorized.tolist() and r.similarity is None
    cos = feature_memorization(train, gen, features="pixels", similarity_threshold=-1.0, bootstrap=0)
    assert "not calibrated" in cos.explain() and cos.replicated.all()
    assert "not calibrated" not in feature_memorization(train, gen, similarity_threshold=1.0, bootstrap=0).explain()
    assert r.summary()["replication_fraction"] is None
    own = np.sort(np.sqrt(((train[:, None].astype(float) - train[None]) ** 2).reshape(24, 24, -1).sum(-1)), 1)[:, 1]
    assert r.background["q0.5"] == pytest.approx(np.median(own) / 127.5, rel=1e-6)


def _cli_sets(tmp_path, planted):
    train, gen = planted
    write_dataset_zip(tmp_path / "train.zip", train)
    save_npz(tmp_path / "gen.npz", gen)
    return tmp_path / "train.zip", tmp_path / "gen.npz"


def test_cli_features_json_and_out(run_cli, planted, tmp_path):
    t, g = _cli_sets(tmp_path, planted)
    model = _script(Linear(), tmp_path / "f.pt")
    code, out, err = run_cli(["memorization", "--train", t, "--generated", g, "--features", model, "--json",
                              "--similarity-threshold", "0.9", "--out", tmp_path / "res"])
    assert code == 0, err
    s = json.loads(out)
    for key in ("memorization_ratio", "n_generated", "n_train", "threshold", "ci95"):
        assert key in s
    assert s["metric"] == "cosine" and s["similarity_threshold"] == 0.9 and s["replication_fraction"] >= 0.2
    with np.load(tmp_path / "res" / "neighbors.npz") as z:
        assert z["replicated"][[3, 8]].all() and z["similarity"].shape == (10,)
    code, out, _ = run_cli(["memorization", "--train", t, "--generated", g, "--metric", "l2"])
    assert code == 0 and "pixels features (l2)" in out


@pytest.mark.parametrize("module, needle", [(Fails(), "extractor exploded"), (WrongShape(), "(N, k)"),
                                            (Zero(), "zero")])
def test_cli_bad_extractor_one_line(run_cli, planted, tmp_path, module, needle):
    t, g = _cli_sets(tmp_path, planted)
    model = _script(module, tmp_path / "bad.pt")
    res = tmp_path / "res"
    stderr = one_line(*run_cli(["memorization", "--train", t, "--generated", g, "--features", model,
                                "--out", res]), "--features", needle)
    assert "bad.pt" in stderr and not res.exists()


@pytest.mark.parametrize("args, flag", [
    (["--features", "no/such/file.pt"], "--features"), (["--features", "pca:0"], "--features"),
    (["--metric", "manhattan"], "--metric"), (["--similarity-threshold", "2"], "--similarity-threshold"),
    (["--features", "classifier"], "--source"),
])
def test_cli_bad_flags_one_line(run_cli, planted, tmp_path, args, flag):
    t, g = _cli_sets(tmp_path, planted)
    one_line(*run_cli(["memorization", "--train", t, "--generated", g, *args]), flag)


def test_library_bad_metric(planted):
    from diffmem.errors import InputError

    with pytest.raises(InputError) as err:
        feature_memorization(*planted, metric="dot")
    assert err.value.param == "metric"


def test_background_of_a_large_set_comes_from_a_seeded_subset(planted, monkeypatch):
    """Above BACKGROUND_ROWS training images, the background is the nearest-other distance of a seeded
    subset of them, each searched against the whole set (checked by hand), and the same per seed."""
    import importlib

    mm = importlib.import_module("diffmem.metrics.memorization")  # the module (the package exports a function by that name)
    train, gen = planted
    monkeypatch.setattr(mm, "BACKGROUND_ROWS", 10)
    r = feature_memorization(train, gen, features="pixels", metric="l2", bootstrap=0, seed=3)
    full = np.sqrt(((train[:, None].astype(float) - train[None]) ** 2).reshape(len(train), len(train), -1).sum(-1))
    own = np.sort(full, 1)[:, 1] / 127.5
    rows = np.sort(mm.numpy_rng(3, mm.SUBSET).choice(len(train), 10, replace=False))
    assert r.background["q0.5"] == pytest.approx(np.median(own[rows]), rel=1e-6)
    assert r.background["q0.5"] != pytest.approx(np.median(own), rel=1e-6)  # a subset, not the whole set
    again = feature_memorization(train, gen, features="pixels", metric="l2", bootstrap=0, seed=3)
    assert again.background == r.background
