"""Meehan et al.'s C_T and Alaa et al.'s authenticity against independent computations: the U count by
pairs, C_T by hand on well-separated clusters, its sign on copied vs fresh samples, authenticity on a
hand-worked line of points."""

from __future__ import annotations

import numpy as np
import pytest

from diffmem.errors import InputError
from diffmem.metrics.copying import authenticity, combine_cells, data_copying, z_u

CENTRES = np.array([[-0.6, -0.6], [0.6, -0.6], [0.0, 0.6]])


def _cloud(rng, per_cluster, std=0.08):
    """(Σ per_cluster, 1, 1, 2) float points in [-1, 1] around three far-apart centres; ``per_cluster``
    an int or one count per centre."""
    sizes = [per_cluster] * 3 if np.isscalar(per_cluster) else per_cluster
    pts = np.concatenate([c + std * rng.standard_normal((k, 2)) for c, k in zip(CENTRES, sizes)])
    return np.clip(pts, -1, 1).reshape(-1, 1, 1, 2)


def _u_by_pairs(q, p):
    return sum((a > b) + 0.5 * (a == b) for a in q for b in p)


def test_z_u_counts_pairs_with_ties():
    q, p = np.array([1.0, 2.0, 2.0, 5.0]), np.array([2.0, 3.0, 0.5])
    u = _u_by_pairs(q, p)  # 1>0.5; 2>0.5 twice + 2 ties at 2; 5 beats all three -> 1 + 2 + 1 + 3 = 7
    assert u == 7
    m, n = 4, 3
    assert z_u(q, p) == pytest.approx((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12), rel=1e-12)
    assert z_u(np.zeros(5), np.ones(5)) < 0 < z_u(np.ones(5), np.zeros(5))  # closer generated: negative


def test_combine_cells_weights_by_heldout_share():
    z = np.array([-2.0, 1.0, 4.0])
    share = np.array([0.5, 0.3, 0.2])
    used = np.array([True, True, False])
    assert combine_cells(z, share, used) == pytest.approx((0.5 * -2 + 0.3 * 1) / 0.8)
    assert np.isnan(combine_cells(z, share, np.zeros(3, bool)))


def _nearest_centre(a):
    return np.argmin(((a.reshape(len(a), -1)[:, None, :] - CENTRES[None]) ** 2).sum(-1), axis=1)


def _c_t_by_hand(train, heldout, gen, tau, cells=None):
    """C_T by plain loops; ``cells`` = (train, heldout, generated) cell labels, by default the nearest
    true centre (what k-means finds on the clusters)."""
    t, h, g = (a.reshape(len(a), -1) for a in (train, heldout, gen))
    cell = cells or [_nearest_centre(a) for a in (t, h, g)]
    num = den = 0.0
    for c in range(int(max(map(np.max, cell))) + 1):
        tc = t[cell[0] == c]
        lh = [np.sqrt(((tc - x) ** 2).sum(1)).min() for x in h[cell[1] == c]]
        lg = [np.sqrt(((tc - x) ** 2).sum(1)).min() for x in g[cell[2] == c]]
        if len(lg) / len(g) > tau and lh:
            m, n = len(lg), len(lh)
            zc = (_u_by_pairs(lg, lh) - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12)
            share = n / len(h)
            num, den = num + share * zc, den + share
    return num / den


def test_c_t_equals_a_hand_computation(rng):
    train, heldout, fresh = _cloud(rng, 40), _cloud(rng, (10, 30, 50)), _cloud(rng, (40, 25, 10))
    r = data_copying(train, heldout, fresh, cells=3, tau=0.1)
    assert r.c_t == pytest.approx(_c_t_by_hand(train, heldout, fresh, 0.1), rel=1e-10)
    assert r.counts[:, 0].sum() == 120 and r.counts[:, 1].sum() == 90 and r.counts[:, 2].sum() == 75
    assert r.used.all() and len(r.per_sample()["copying_cell"]) == 75


def test_c_t_measures_within_cells(rng):
    """On one uniform cloud, nearest training points often lie across a cell border: L is measured
    to the training points of the sample's own cell, as the paper's L_π(·; T_π)."""
    from sklearn.cluster import KMeans

    train, heldout, gen = (rng.uniform(-1, 1, (k, 1, 1, 2)) for k in (80, 60, 60))
    r = data_copying(train, heldout, gen, cells=4, tau=0.05, seed=3)
    km = KMeans(n_clusters=4, n_init=10, random_state=3).fit(train.reshape(80, 2))
    labels = [km.labels_, km.predict(heldout.reshape(60, 2)), km.predict(gen.reshape(60, 2))]
    assert r.gen_cell.tolist() == labels[2].tolist()
    assert r.c_t == pytest.approx(_c_t_by_hand(train, heldout, gen, 0.05, labels), rel=1e-10)


def test_c_t_sign_copied_vs_fresh(rng):
    train, heldout = _cloud(rng, 40), _cloud(rng, 40)
    copies = np.clip(train + 0.002 * rng.standard_normal(train.shape), -1, 1)
    fresh = _cloud(rng, 40)
    copied = data_copying(train, heldout, copies, cells=3)
    clean = data_copying(train, heldout, fresh, cells=3)
    assert copied.c_t < -5  # strongly negative: data copying
    assert abs(clean.c_t) < 3
    assert "data copying" in copied.explain() and copied.explain().startswith("C_T = -")
    assert "no data copying" in clean.explain() or clean.c_t < 0
    s = copied.summary()
    assert s["cells"] == 3 and s["cells_used"] == 3 and s["c_t"] == pytest.approx(copied.c_t)


def test_tau_drops_sparse_cells(rng):
    train, heldout = _cloud(rng, 30), _cloud(rng, 30)
    gen = _cloud(rng, 30)
    gen = np.concatenate([gen[:30], gen[30:33]])  # cell 0: 30 samples, cell 1: 3, cell 2: 0
    r = data_copying(train, heldout, gen, cells=3)  # tau = 20/33: only the first cell
    assert r.used.sum() == 1 and r.tau == pytest.approx(20 / 33)
    assert r.c_t == pytest.approx(_c_t_by_hand(train, heldout, gen, 20 / 33), rel=1e-10)
    none = data_copying(train, heldout, gen[28:], cells=3, tau=0.9)  # shares 2/5, 3/5
    assert np.isnan(none.c_t) and none.summary()["c_t"] is None and "undefined" in none.explain()


def test_authenticity_hand_worked():
    # training grey levels 0, 10, 30: nearest other image 10, 10, 20
    train = np.array([0, 10, 30], np.uint8).reshape(3, 1, 1, 1)
    gen = np.array([1, 55, 18, 60, 33, 50], np.uint8).reshape(6, 1, 1, 1)
    r = authenticity(train, gen)
    # 1 -> 0 (1 <= 10: copy); 55 -> 30 (25 > 20); 18 -> 10 (8 <= 10); 60 -> 30 (30 > 20); 33 -> 30 (3 <= 20);
    # 50 -> 30 (20 <= 20: the tie is a copy)
    assert r.authentic.tolist() == [False, True, False, True, False, False]
    assert r.idx.tolist() == [0, 2, 1, 2, 2, 2]
    np.testing.assert_allclose(r.d_train * 127.5, [10, 20, 10, 20, 20, 20])
    np.testing.assert_allclose(r.d_gen * 127.5, [1, 25, 8, 30, 3, 20])
    assert r.authenticity == pytest.approx(2 / 6)
    assert "lower authenticity = more copying" in r.explain() and r.summary()["n_inauthentic"] == 4


def test_a_copy_of_a_duplicated_training_image_is_inauthentic():
    train = np.array([0, 0, 90], np.uint8).reshape(3, 1, 1, 1)  # image 0 appears twice
    r = authenticity(train, np.array([0, 200], np.uint8).reshape(2, 1, 1, 1))
    assert r.d_gen[0] == r.d_train[0] == 0 and r.authentic.tolist() == [False, True]


def test_authenticity_against_brute_force(rng):
    train = rng.integers(0, 256, (25, 1, 4, 4), dtype=np.uint8)
    gen = rng.integers(0, 256, (15, 1, 4, 4), dtype=np.uint8)
    gen[:4] = train[:4]  # exact copies are never authentic
    t, g = train.reshape(25, -1).astype(float), gen.reshape(15, -1).astype(float)
    dtt = np.sqrt(((t[:, None] - t[None]) ** 2).sum(-1))
    np.fill_diagonal(dtt, np.inf)
    dgt = np.sqrt(((g[:, None] - t[None]) ** 2).sum(-1))
    nearest = dgt.argmin(1)
    expect = dgt.min(1) > dtt[nearest].min(1)
    r = authenticity(train, gen)
    assert r.authentic.tolist() == expect.tolist() and not r.authentic[:4].any()


def test_heldout_of_another_shape(rng):
    train, heldout = _cloud(rng, 10), _cloud(rng, 10)
    with pytest.raises(InputError) as err:
        data_copying(train, heldout.reshape(-1, 1, 2, 1), _cloud(rng, 10), cells=2)
    assert err.value.param == "heldout" and "shape" in str(err.value)
    with pytest.raises(InputError) as err:
        data_copying(train, heldout, np.zeros((0, 1, 1, 2)), cells=2)
    assert err.value.param == "generated"


@pytest.mark.parametrize("kwargs, param", [({"cells": 0}, "cells"), ({"cells": 10**6}, "cells"),
                                           ({"tau": 1.5}, "tau"), ({"seed": -1}, "seed")])
def test_bad_parameters_name_themselves(rng, kwargs, param):
    train = _cloud(rng, 10)
    with pytest.raises(InputError) as err:
        data_copying(train, _cloud(rng, 10), _cloud(rng, 10), **kwargs)
    assert err.value.param == param


def test_cli_heldout_of_another_shape_one_line(run_cli, tmp_path, rng):
    """Through ``diffmem audit`` (which runs C_T when given --heldout): one line naming --heldout."""
    from conftest import one_line
    from diffmem.data import save_npz, write_dataset_zip

    write_dataset_zip(tmp_path / "train.zip", rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8))
    save_npz(tmp_path / "gen.npz", rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8))
    save_npz(tmp_path / "held.npz", rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8))
    one_line(*run_cli(["audit", tmp_path / "gen.npz", "--train", tmp_path / "train.zip", "--heldout",
                       tmp_path / "held.npz", "--out", tmp_path / "audit"]), "--heldout", "shape")
    assert not (tmp_path / "audit").exists()


def test_mixed_uint8_and_float_sets_agree(rng):
    """uint8 pixels and model-space floats of the same images give the same C_T and distances."""
    train, heldout, gen = (rng.integers(0, 256, (k, 1, 2, 2), dtype=np.uint8) for k in (60, 80, 80))
    gen[:40] = train[:40]
    as_float = lambda a: a.astype(np.float64) / 127.5 - 1  # noqa: E731
    a = data_copying(train, heldout, gen, cells=2)
    b = data_copying(train, as_float(heldout), as_float(gen), cells=2)
    assert a.c_t == pytest.approx(b.c_t, rel=1e-9) and a.c_t < 0
    np.testing.assert_allclose(a.gen_dist, b.gen_dist, rtol=1e-9, atol=1e-12)
    c = data_copying(as_float(train), as_float(heldout), as_float(gen), cells=2)
    np.testing.assert_allclose(a.gen_dist, c.gen_dist, rtol=1e-6)
