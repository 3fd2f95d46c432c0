"""The audit's nearest-neighbour search against an independent brute-force float64 computation."""

import numpy as np
import pytest
import torch

from diffmem.metrics.neighbors import knn


def brute_force(query, reference, k=2):
    q = np.asarray(query, dtype=np.float64).reshape(len(query), -1)
    r = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    d2 = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, order, 1)), order


def near_tie_data(rng, n=700, m=260, d=48, dtype="uint8"):
    """Random data with exact copies, duplicated training rows and near-ties (two references at
    almost the same distance from a query)."""
    ref = rng.integers(0, 256, (n, d)).astype(np.int64)
    qry = rng.integers(0, 256, (m, d)).astype(np.int64)
    qry[:30] = ref[:30]  # exact copies
    ref[40:45] = ref[40]  # a training image present 5 times ...
    qry[30:40] = ref[40]  # ... copied by 10 queries (d1 = d2 = 0)
    for i in range(40, 80):  # near-ties: two references one grey level apart from the query
        base = qry[i].copy()
        a, b = base.copy(), base.copy()
        a[0] = np.clip(base[0] + 3, 0, 255)
        b[1] = np.clip(base[1] + 3, 0, 255)
        b[2] = np.clip(base[2] + 1, 0, 255)
        ref[100 + 2 * i], ref[101 + 2 * i] = a, b
    if dtype == "uint8":
        return qry.astype(np.uint8), ref.astype(np.uint8)
    return (qry / 127.5 - 1).astype(np.float32), (ref / 127.5 - 1).astype(np.float32)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_knn_matches_brute_force(dtype):
    qry, ref = near_tie_data(np.random.default_rng(0), dtype=dtype)
    nb = knn(qry, ref, k=2)
    d_ref, i_ref = brute_force(qry, ref)
    if dtype == "uint8":
        np.testing.assert_array_equal(nb.dist, d_ref)  # integer distances are exact
    else:
        np.testing.assert_allclose(nb.dist, d_ref, rtol=0, atol=1e-12)
    # Indices agree wherever the distances are not tied.
    untied = d_ref[:, 0] != d_ref[:, 1]
    np.testing.assert_array_equal(nb.index[untied, 0], i_ref[untied, 0])


def test_knn_small_memory_budget_streams_reference():
    """A budget far smaller than the reference forces reference chunking; results stay exact."""
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (5000, 256)).astype(np.uint8)
    qry = np.concatenate([ref[::97], rng.integers(0, 256, (100, 256)).astype(np.uint8)])
    nb = knn(qry, ref, k=3, memory_limit=16 * 2**20)
    d_ref, _ = brute_force(qry, ref, k=3)
    np.testing.assert_array_equal(nb.dist, d_ref)


def test_knn_certification_falls_back_on_many_duplicates():
    """More duplicates of a row than shortlist slots: the shortlist cannot be certified, the row is
    re-scanned exactly and still gives the right answer."""
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, (300, 16)).astype(np.uint8)
    ref[:20] = ref[0]
    qry = ref[:1].copy()
    qry[0, 0] ^= 1  # one grey level off the duplicated image
    nb = knn(qry, ref, k=2, candidates=4)
    d_ref, _ = brute_force(qry, ref)
    np.testing.assert_array_equal(nb.dist, d_ref)


def test_knn_accepts_tensors_and_any_row_shape():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((50, 3, 4, 4)).astype(np.float32)
    qry = rng.standard_normal((7, 3, 4, 4)).astype(np.float32)
    nb = knn(torch.from_numpy(qry), torch.from_numpy(ref), k=2)
    np.testing.assert_allclose(nb.dist, brute_force(qry, ref)[0], atol=1e-12)


def test_float32_cannot_rank_these_but_the_answer_is_still_exact():
    """Two far clusters (so centred norms are large) and, in one, neighbours that differ far below
    float32's resolution at that norm: the float32 ranking is noise, the certification notices and
    the exact re-checks give the float64 answer."""
    rng = np.random.default_rng(4)
    d = 512
    far = np.concatenate([np.full((200, d), -0.9), np.full((40, d), 0.9)])
    ref = far + rng.normal(0, 1e-3, far.shape)
    ref[200:] = 0.9 + rng.normal(0, 1e-6, (40, d))  # the close cluster: spacing ~1e-6 per pixel
    qry = 0.9 + rng.normal(0, 1e-6, (12, d))
    nb = knn(qry, ref, k=2, candidates=4)
    d_ref, i_ref = brute_force(qry, ref)
    np.testing.assert_allclose(nb.dist, d_ref, rtol=1e-9)
    np.testing.assert_array_equal(nb.index, i_ref)
    assert nb.n_fallback > 0  # the shortlist could not be certified: rows were re-scanned exactly


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_inputs_are_left_untouched(dtype):
    rng = np.random.default_rng(5)
    ref = (rng.uniform(0, 1, (300, 20)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    qry = ref[:10].copy()
    ref_before, qry_before = ref.copy(), qry.copy()
    knn(qry, ref, k=2)
    knn(torch.from_numpy(qry), torch.from_numpy(ref), k=2)
    np.testing.assert_array_equal(ref, ref_before)
    np.testing.assert_array_equal(qry, qry_before)


def near_tie_cloud(seed, m=400, d=4, near=16, spread=3e-4):
    """Queries and a cluster of references all within float32's resolution of one another at their
    norm (a far mirror cluster keeps the centring offset away from them): the float32 shortlist
    is wrong for many rows, and only the rounding-error bound tells which."""
    rng = np.random.default_rng(seed)
    center = rng.uniform(0.5, 1.0, d)
    ref = np.concatenate([center + rng.normal(0, spread, (near, d)), -center + rng.normal(0, 0.01, (near, d))])
    qry = center + rng.normal(0, spread, (m, d))
    return qry.astype(np.float32), ref.astype(np.float32)


@pytest.mark.parametrize("k, candidates", [(1, 2), (2, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_near_ties_are_exact_only_thanks_to_the_error_bound(seed, k, candidates):
    """Without the float32 error bound (u = 0) about one row in ten would be certified with a wrong
    nearest neighbour here; with it, every row equals the float64 brute force."""
    qry, ref = near_tie_cloud(seed)
    nb = knn(qry, ref, k=k, candidates=candidates)
    d_ref, i_ref = brute_force(qry, ref, k=k)
    np.testing.assert_allclose(nb.dist, d_ref, rtol=1e-12, atol=0)
    untied = d_ref[:, 0] != d_ref[:, 1] if k > 1 else np.ones(len(qry), bool)
    np.testing.assert_array_equal(nb.index[untied, 0], i_ref[untied, 0])


@pytest.mark.parametrize("case", ["near_ties", "far_clusters", "uint8"])
def test_error_bound_covers_the_observed_float32_error(case):
    """The certification's bound c·(‖q‖² + max‖r‖²) is at least the float32 error of every computed
    ‖q‖² + s_j against the exact squared distance, and the cases do carry rounding error."""
    from diffmem.metrics.neighbors import _centred, _row_mean, _sq_norms, float32_scores, score_error_factor

    rng = np.random.default_rng(6)
    if case == "near_ties":
        qry, ref = near_tie_cloud(0, m=200, d=8)
    elif case == "far_clusters":
        ref = np.concatenate([np.full((60, 512), -0.9), 0.9 + rng.normal(0, 1e-3, (60, 512))]).astype(np.float32)
        qry = (0.9 + rng.normal(0, 1e-3, (40, 512))).astype(np.float32)
    else:
        qry, ref = near_tie_data(rng, n=300, m=100, d=784)
    offset = torch.as_tensor(_row_mean(ref[:: max(1, len(ref) // 1024)]), dtype=torch.float32)
    q32, r32 = _centred(qry, offset), _centred(ref, offset)
    r_norm, q_norm = _sq_norms(r32), _sq_norms(q32).double()
    computed = q_norm[:, None] + float32_scores(q32, r32, r_norm).double()
    q64, r64 = qry.astype(np.float64), ref.astype(np.float64)
    exact = torch.from_numpy(((q64[:, None, :] - r64[None, :, :]) ** 2).sum(-1))
    error = (computed - exact).abs()
    bound = score_error_factor(qry.shape[1]) * (q_norm[:, None] + float(r_norm.max()))
    assert error.max() > 0
    assert (error <= bound).all(), float((error / bound).max())
