"""Intra-class diversity (``DataSpec(blend="SOURCE:α", blend_class=K)``, ``diffmem data --blend``):
the share replaced, nesting, balance, composition with resolution / classes / labels, and bad input."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import numpy as np
import pytest

from diffmem.data import (DataSpec, ImageSet, blend_counts, load_image_set, make_dataset, replaced_positions, resize,
                          save_npz, take)
from diffmem.data.spec import heldout_set
from diffmem.errors import InputError
from diffmem.studies.specs import parse_spec

K = 3  # the blended class


def _round(alpha: str, n: int) -> int:
    """α·n rounded halves up, in decimal arithmetic (the oracle, independent of the code's rule)."""
    return int((Decimal(alpha) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second source: 300 seeded-noise 8x8 images, 30 of each class 0..9 (interleaved), as an .npz."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(300, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(300) % 10
    path = tmp_path_factory.mktemp("other") / "other.npz"
    save_npz(path, images, labels)
    return str(path), ImageSet(images, labels)


def _first_of_class(data: ImageSet, k: int, m: int) -> np.ndarray:
    return data.images[np.flatnonzero(data.labels == k)[:m]]


def _from_other(images: np.ndarray, other_images: np.ndarray) -> np.ndarray:
    """For each image, its index among ``other_images`` (identical content), else -1."""
    flat = {img.tobytes(): i for i, img in enumerate(other_images)}
    return np.array([flat.get(img.tobytes(), -1) for img in images])


def test_the_rule_replaces_alpha_n_rounded_in_every_prefix():
    for alpha in ("0", "0.1", "0.15", "0.25", "0.3", "0.5", "0.55", "0.999", "1"):
        mask = replaced_positions(200, Fraction(alpha))
        for n in range(201):
            assert mask[:n].sum() == _round(alpha, n), (alpha, n)
            np.testing.assert_array_equal(replaced_positions(n, Fraction(alpha)), mask[:n])
    assert replaced_positions(10, Fraction("0.3")).nonzero()[0].tolist() == [1, 4, 8]  # spread, not a block


@pytest.mark.parametrize("alpha", ["0.25", "0.3", "0.5", "0.15", "0.75"])
def test_exact_share_by_content_other_classes_untouched(other, alpha):
    path, second = other
    plain = make_dataset(DataSpec("digits", size=100))
    mixed = make_dataset(DataSpec("digits", size=100, blend=f"{path}:{alpha}", blend_class=K))
    np.testing.assert_array_equal(mixed.labels, plain.labels)
    assert np.bincount(mixed.labels).tolist() == [10] * 10  # still class-balanced
    cls = mixed.labels == K
    np.testing.assert_array_equal(mixed.images[~cls], plain.images[~cls])  # other classes untouched
    found = _from_other(mixed.images[cls], second.images)
    m = _round(alpha, 10)
    assert (found >= 0).sum() == m  # exactly round(α · n_class) come from the second source ...
    kth = np.flatnonzero(second.labels == K)[:m]
    assert found[found >= 0].tolist() == kth.tolist()  # ... its first m of class K, in order
    np.testing.assert_array_equal(mixed.images[cls][found < 0], plain.images[cls][found < 0])
    assert (found >= 0).tolist() == replaced_positions(10, Fraction(alpha)).tolist()
    assert blend_counts(DataSpec("digits", size=100, blend=f"{path}:{alpha}", blend_class=K)) == (m, 10)


def test_nested_across_sizes(other):
    path, _ = other
    sets = [make_dataset(DataSpec("digits", size=n, blend=f"{path}:0.3", blend_class=K)) for n in (20, 40, 80, 160)]
    for small, big in zip(sets, sets[1:]):
        for k in range(10):  # class by class, the smaller set is a prefix of the larger one
            a, b = small.images[small.labels == k], big.images[big.labels == k]
            np.testing.assert_array_equal(a, b[:len(a)])
    assert [sum(_from_other(s.images[s.labels == K], other[1].images) >= 0) for s in sets] == \
        [_round("0.3", n // 10) for n in (20, 40, 80, 160)]


def test_alpha_zero_is_no_blend_and_one_replaces_the_class(other):
    path, second = other
    plain = make_dataset(DataSpec("digits", size=50, labels="random:4", seed=2))
    zero = make_dataset(DataSpec("digits", size=50, labels="random:4", seed=2, blend=f"{path}:0", blend_class=K))
    np.testing.assert_array_equal(zero.images, plain.images)
    np.testing.assert_array_equal(zero.labels, plain.labels)
    full = make_dataset(DataSpec("digits", size=50, blend=f"{path}:1", blend_class=K))
    np.testing.assert_array_equal(full.images[full.labels == K], _first_of_class(second, K, 5))


def test_whole_source_without_size(other, tmp_path):
    path, second = other
    digits = make_dataset(DataSpec("digits"))
    n_class = int((digits.labels == K).sum())  # 183 digits 3s; the noise source has 30
    with pytest.raises(InputError, match="only 30 images of class 3, 92 needed") as err:
        make_dataset(DataSpec("digits", blend=f"{path}:0.5", blend_class=K))
    assert err.value.param == "blend"
    mixed = make_dataset(DataSpec("digits", blend=f"{path}:0.1", blend_class=K))
    assert (_from_other(mixed.images[mixed.labels == K], second.images) >= 0).sum() == _round("0.1", n_class)


def test_composes_with_resolution_classes_and_labels(other):
    path, second = other
    base = dict(source="digits", size=50, classes=5, resolution=16, labels="random:3", seed=1)
    plain = make_dataset(DataSpec(**base))
    mixed = make_dataset(DataSpec(**base, blend=f"{path}:0.4", blend_class=K))
    assert mixed.images.shape == (50, 1, 16, 16)
    np.testing.assert_array_equal(mixed.labels, plain.labels)  # labels as without the blend
    true = make_dataset(DataSpec(**{**base, "labels": "true"}))
    cls = true.labels == K
    np.testing.assert_array_equal(mixed.images[~cls], plain.images[~cls])
    expected = resize(take(second, np.flatnonzero(second.labels == K)[:4]), 16).images  # the one resizer
    replaced = replaced_positions(10, Fraction("0.4"))
    np.testing.assert_array_equal(mixed.images[cls][replaced], expected)
    np.testing.assert_array_equal(mixed.images[cls][~replaced], plain.images[cls][~replaced])
    with pytest.raises(InputError, match="class 7 is not in the set") as err:
        make_dataset(DataSpec(**base, blend=f"{path}:0.4", blend_class=7))  # only classes 0..4
    assert err.value.param == "blend_class"


def test_mnist_resized_into_digits():
    pytest.importorskip("pureml")
    from diffmem.data import load_source

    mnist = load_source("mnist")
    for resolution in (None, 12):
        spec = DataSpec("digits", size=40, resolution=resolution, blend="mnist:0.5", blend_class=K)
        mixed = make_dataset(spec)
        expected = resize(take(mnist, np.flatnonzero(mnist.labels == K)[:2]), resolution or 8).images
        got = mixed.images[mixed.labels == K][replaced_positions(4, Fraction(1, 2))]
        np.testing.assert_array_equal(got, expected)
        assert "blend=mnist:0.5,blend_class=3" in mixed.source  # recorded in the recipe


def test_channels_and_pixel_type_follow_the_set(tmp_path, other):
    path, second = other
    rng = np.random.default_rng(3)
    rgb = rng.uniform(-1, 1, size=(40, 3, 8, 8)).astype(np.float32)
    save_npz(tmp_path / "rgb.npz", rgb, np.arange(40) % 4)
    mixed = make_dataset(DataSpec(str(tmp_path / "rgb.npz"), size=8, blend=f"{path}:1", blend_class=K))
    gray = _first_of_class(second, K, 2).astype(np.float32) / 127.5 - 1  # grey repeated, as float
    np.testing.assert_allclose(mixed.images[mixed.labels == K], np.repeat(gray, 3, axis=1), atol=1e-6)
    save_npz(tmp_path / "rgb8.npz", np.rint((rgb + 1) * 127.5).astype(np.uint8), np.arange(40) % 4)
    back = make_dataset(DataSpec(path, size=20, blend=f"{tmp_path / 'rgb8.npz'}:1", blend_class=K))
    src = np.rint((rgb[3::4][:2] + 1) * 127.5).astype(np.float64)
    luma = np.rint(0.299 * src[:, 0] + 0.587 * src[:, 1] + 0.114 * src[:, 2]).astype(np.uint8)
    np.testing.assert_array_equal(back.images[back.labels == K][:, 0], luma)


def test_cli_writes_the_blend_and_says_so(run_cli, tmp_path, other):
    path, _ = other
    out = tmp_path / "b.zip"
    code, stdout, stderr = run_cli(["data", "--source", "digits", "--size", 40, "--blend", f"{path}:0.5",
                                    "--blend-class", K, "--out", out])
    assert code == 0 and stderr == ""
    assert stdout.splitlines()[1] == f"blended: 2 of class 3's 4 images from {path}"
    back, made = load_image_set(out), make_dataset(DataSpec("digits", size=40, blend=f"{path}:0.5", blend_class=K))
    np.testing.assert_array_equal(back.images, made.images)
    np.testing.assert_array_equal(back.labels, made.labels)


def test_spec_reads_blend_in_data_and_axes(tmp_path, other):
    path, _ = other
    text = f"""
[data]
source = "digits"
size = 20
blend_class = 3
[train]
preset = "tiny"
steps = 2
[axes]
blend = ["{path}:0", "{path}:0.5"]
"""
    (tmp_path / "s.toml").write_text(text)
    cells = parse_spec(tmp_path / "s.toml").cells()
    assert [c.data.blend for c in cells] == [f"{path}:0", f"{path}:0.5"] and cells[1].data.blend_class == 3
    assert cells[1].name.startswith("blend-") and cells[1].name.endswith("-0.5") and cells[0].name != cells[1].name
    assert DataSpec(**cells[1].data.to_dict()) == cells[1].data  # data.json round trip (reports, select)
    (tmp_path / "bad.toml").write_text(text.replace(":0.5", ":2"))
    with pytest.raises(InputError, match=r"\[axes\] blend: α must be in \[0, 1\]"):
        parse_spec(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(text.replace("blend_class = 3\n", "blend_class = -2\n"))
    with pytest.raises(InputError, match=r"\[data\] blend_class: must be >= 0"):
        parse_spec(tmp_path / "bad2.toml")


def test_heldout_comes_from_the_first_source(other):
    path, _ = other
    spec = DataSpec("digits", size=40, blend=f"{path}:0.5", blend_class=K)
    np.testing.assert_array_equal(heldout_set(spec, 30).images, heldout_set(spec.replace(blend=None, blend_class=None),
                                                                            30).images)


@pytest.fixture(scope="module")
def odd_sources(tmp_path_factory):
    """Second sources that cannot serve class 3: one without it, one with too few, one unlabeled."""
    folder = tmp_path_factory.mktemp("odd")
    images = np.zeros((20, 1, 8, 8), dtype=np.uint8)
    save_npz(folder / "no3.npz", images, np.array([0, 1, 2, 4] * 5))
    save_npz(folder / "two3.npz", images, np.array([3, 3] + [0] * 18))
    save_npz(folder / "unlabeled.npz", images)
    return folder


BAD = [  # (flags after --source digits --size 100, flag named, words in the message)
    (["--blend", "mnist:1.5", "--blend-class", "3"], "--blend", "[0, 1]"),
    (["--blend", "mnist:-0.1", "--blend-class", "3"], "--blend", "[0, 1]"),
    (["--blend", "mnist:nan", "--blend-class", "3"], "--blend", "a number"),
    (["--blend", "mnist:half", "--blend-class", "3"], "--blend", "a number"),
    (["--blend", "mnist", "--blend-class", "3"], "--blend", "SOURCE:α"),
    (["--blend", ":0.5", "--blend-class", "3"], "--blend", "SOURCE:α"),
    (["--blend", "imagenet:0.5", "--blend-class", "3"], "--blend", "imagenet: unknown source"),
    (["--blend", "gaussian-mixture:2:0.5", "--blend-class", "3"], "--blend", "point cloud"),
    (["--blend", "digits:0.5", "--blend-class", "3"], "--blend", "own source"),
    (["--blend", "{odd}/no3.npz:0.5", "--blend-class", "3"], "--blend", "has no class 3"),
    (["--blend", "{odd}/two3.npz:0.5", "--blend-class", "3"], "--blend", "only 2 images of class 3, 5 needed"),
    (["--blend", "{odd}/unlabeled.npz:0.5", "--blend-class", "3"], "--blend", "has no labels"),
    (["--blend", "mnist:0.5"], "--blend-class", "needs the class"),
    (["--blend-class", "3"], "--blend-class", "only with"),
    (["--blend", "mnist:0.5", "--blend-class", "-1"], "--blend-class", ">= 0"),
    (["--blend", "mnist:0.5", "--blend-class", "12"], "--blend-class", "class 12 is not in the set"),
    (["--blend", "mnist:0.5", "--blend-class", "7", "--classes", "5"], "--blend-class", "class 7 is not in the set"),
    (["--blend", "mnist:0.5", "--blend-class", "three"], "--blend-class", "three"),
]


@pytest.mark.parametrize("args, flag, words", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_blends_one_line_nothing_written(run_cli, tmp_path, odd_sources, args, flag, words):
    args = [a.replace("{odd}", str(odd_sources)) for a in args]
    out = tmp_path / "o.zip"
    code, stdout, stderr = run_cli(["data", "--source", "digits", "--size", 100, *args, "--out", out,
                                    "--heldout-out", tmp_path / "h.zip"])
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert (f"{flag}:" in stderr or f"'{flag}'" in stderr) and words in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_a_point_source_has_no_blend(other):
    with pytest.raises(InputError, match="a point cloud has no blend") as err:
        make_dataset(DataSpec("toy2d", size=10, blend=f"{other[0]}:0.5", blend_class=K))
    assert err.value.param == "blend"
