"""Carlini et al.'s extraction criterion against independent brute-force computations: a hand-worked
answer, planted copies at known positions, the tiled distance, the "most copied" table."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from diffmem.errors import InputError
from diffmem.metrics.extraction import (
    DEFAULT_ALPHA, DEFAULT_DELTA, DEFAULT_NEIGHBORS, extraction, most_copied_figure, tiled_distances,
)


def _brute_scores(gen, train, n, alpha, grid=None):
    """ℓ per sample by plain loops over float64 pixel values (grid: max tile distance)."""
    gen, train = gen.astype(np.float64), train.astype(np.float64)
    out = []
    for g in gen:
        if grid is None:
            d = np.sqrt(((train - g) ** 2).reshape(len(train), -1).sum(1))
        else:
            th, tw = g.shape[1] // grid, g.shape[2] // grid
            d = np.zeros(len(train))
            for a in range(grid):
                for b in range(grid):
                    diff = train[:, :, a * th:(a + 1) * th, b * tw:(b + 1) * tw] - g[:, a * th:(a + 1) * th, b * tw:(b + 1) * tw]
                    d = np.maximum(d, np.sqrt((diff ** 2).reshape(len(train), -1).sum(1)))
        d = np.sort(d)[:n]
        out.append(d[0] / (alpha * d.mean()) if d[0] > 0 else 0.0)
    return np.array(out)


def test_defaults_are_the_papers():
    assert DEFAULT_ALPHA == 0.5 and DEFAULT_NEIGHBORS == 50 and DEFAULT_DELTA == 1.0  # δ: d1 < α · mean_n


def test_hand_worked_score():
    # train grey levels 0, 10, 20, 40; generated 12: distances 12, 2, 8, 28 -> nearest 3: 2, 8, 12
    train = np.array([0, 10, 20, 40], np.uint8).reshape(4, 1, 1, 1)
    gen = np.array([12], np.uint8).reshape(1, 1, 1, 1)
    r = extraction(train, gen, n_neighbors=3, alpha=0.5, delta=0.6)
    assert r.score[0] == pytest.approx(2 / (0.5 * 22 / 3), rel=1e-12)
    assert r.d1[0] == pytest.approx(2 / 127.5) and r.idx1[0] == 1
    assert r.mean_n[0] == pytest.approx(22 / 3 / 127.5)
    assert r.extracted[0]  # 0.545 < 0.6
    assert not extraction(train, gen, n_neighbors=3, alpha=0.5, delta=0.5).extracted[0]


@pytest.fixture
def planted(rng):
    train = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    gen = rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)
    gen[2] = train[5]
    gen[7] = np.clip(train[5].astype(int) + rng.integers(-2, 3, train[5].shape), 0, 255)
    gen[4] = train[11]
    return train, gen


def test_planted_copies_found_at_their_positions(planted):
    train, gen = planted
    r = extraction(train, gen, n_neighbors=10)
    np.testing.assert_allclose(r.score, _brute_scores(gen, train, 10, 0.5), rtol=1e-12, atol=0)
    assert np.flatnonzero(r.extracted).tolist() == [2, 4, 7]
    assert r.n_unique == 2 and r.copies[5] == 2 and r.copies[11] == 1 and r.copies.sum() == 3
    table = r.most_copied()
    assert table[0] == {"train_index": 5, "copies": 2, "generated": [2, 7]}  # exact copy first
    assert table[1] == {"train_index": 11, "copies": 1, "generated": [4]}
    s = r.summary()
    assert s["n_extracted"] == 3 and s["n_unique_extracted"] == 2 and s["n_neighbors"] == 10
    assert set(r.per_sample()) >= {"extraction_score", "extracted"}
    assert all(len(v) == 12 for v in r.per_sample().values())
    assert "3 of 12" in r.explain() and "lower" in r.explain()


def test_float_generated_against_uint8_train(planted):
    train, gen = planted
    as_float = gen.astype(np.float64) / 127.5 - 1
    a, b = extraction(train, gen, n_neighbors=7), extraction(train, as_float, n_neighbors=7)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-12, atol=1e-12)  # x/127.5 - 1 rounds
    np.testing.assert_allclose(a.d1, b.d1, rtol=1e-12, atol=1e-12)


def test_neighbors_capped_at_training_size(planted):
    train, gen = planted
    r = extraction(train, gen)  # n = 50 > 30 training images
    assert r.n_neighbors == 30
    np.testing.assert_allclose(r.score, _brute_scores(gen, train, 30, 0.5), rtol=1e-12)


def test_tiled_distance_is_the_largest_tile():
    a = np.zeros((1, 1, 4, 4))
    b = np.zeros((1, 1, 4, 4))
    b[0, 0, 0, 0], b[0, 0, 1, 1] = 3, 4  # top-left tile: 5
    b[0, 0, 3, 3] = 2  # bottom-right tile: 2
    assert tiled_distances(a, b, 2)[0, 0] == pytest.approx(5.0)
    assert tiled_distances(a, b, 1)[0, 0] == pytest.approx(np.sqrt(29.0))


def test_tiled_extraction_against_brute_force(planted):
    train, gen = planted
    r = extraction(train, gen, n_neighbors=10, tiles=4)
    np.testing.assert_allclose(r.score, _brute_scores(gen, train, 10, 0.5, grid=4), rtol=1e-12)
    assert r.extracted[[2, 4, 7]].all() and r.tiles == 4


def test_most_copied_figure(planted):
    train, gen = planted
    r = extraction(train, gen, n_neighbors=10)
    fig = most_copied_figure(r, train, gen, top=5, per_row=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 4
    empty = extraction(train, gen[:2], n_neighbors=10, delta=1e-9)
    assert isinstance(most_copied_figure(empty, train, gen[:2]), Figure)


@pytest.mark.parametrize("kwargs, param", [
    ({"alpha": 0}, "alpha"), ({"n_neighbors": 0}, "n_neighbors"), ({"delta": -1}, "delta"),
    ({"tiles": 3}, "tiles"), ({"tiles": 0}, "tiles"),
])
def test_bad_parameters_name_themselves(planted, kwargs, param):
    train, gen = planted
    with pytest.raises(InputError) as err:
        extraction(train, gen, **kwargs)
    assert err.value.param == param


def test_generated_of_another_shape(planted):
    train, _ = planted
    with pytest.raises(InputError) as err:
        extraction(train, np.zeros((3, 1, 4, 4), np.uint8))
    assert err.value.param == "generated"
