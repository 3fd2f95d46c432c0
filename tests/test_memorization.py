"""The memorization ratio: the rule, the bootstrap, and `diffmem memorization` end to end."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from scipy import stats

from diffmem.cli import run
from diffmem.data.io import save_npz, write_dataset_zip
from diffmem.metrics import MemorizationResult, bootstrap_ci, is_memorized, memorization


def brute_ratio(train, gen, threshold=1 / 3):
    t = train.reshape(len(train), -1).astype(np.float64)
    g = gen.reshape(len(gen), -1).astype(np.float64)
    d = np.sqrt(((g[:, None] - t[None]) ** 2).sum(-1))
    d.sort(axis=1)
    return ((d[:, 0] < threshold * d[:, 1]) | (d[:, 0] == 0)).mean(), d[:, :2]


def brute_nearest(train, gen):
    """Index of the nearest training image of each generated one, and whether it is untied."""
    t = train.reshape(len(train), -1).astype(np.float64)
    g = gen.reshape(len(gen), -1).astype(np.float64)
    d = ((g[:, None] - t[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")
    first, second = np.take_along_axis(d, order[:, :2], 1).T
    return order[:, 0], first != second


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (120, 1, 8, 8)).astype(np.uint8)
    gen = rng.integers(0, 256, (60, 1, 8, 8)).astype(np.uint8)
    gen[:25] = train[:25]  # copies
    noisy = train[25:40].astype(int) + rng.integers(-6, 7, (15, 1, 8, 8))
    gen[25:40] = np.clip(noisy, 0, 255)  # near copies
    write_dataset_zip(tmp_path / "train.zip", train, labels=np.arange(120) % 10)
    save_npz(tmp_path / "gen.npz", gen)
    return train, gen, tmp_path


def test_rule_counts_exact_copies_of_duplicates():
    assert is_memorized(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.0, 5.0, 3.0, 3.0001])).tolist() == [
        True, True, False, True]


def test_memorization_matches_brute_force(sets):
    train, gen, _ = sets
    result = memorization(train, gen)
    assert isinstance(result, MemorizationResult)
    ratio, d = brute_ratio(train, gen)
    assert result.ratio == ratio
    np.testing.assert_allclose(result.d1, d[:, 0] / 127.5, atol=1e-12)
    np.testing.assert_allclose(result.d2, d[:, 1] / 127.5, atol=1e-12)
    nearest, untied = brute_nearest(train, gen)
    np.testing.assert_array_equal(result.idx1[untied], nearest[untied])
    np.testing.assert_array_equal(result.idx1[:25], np.arange(25))  # the exact copies point at their source
    assert result.memorized[:25].all() and (result.d1[:25] == 0).all()
    # the bootstrap is the one of bootstrap_ci on the same flags and seed
    assert (result.ci95, result.stderr) == bootstrap_ci(result.memorized, 1000, 0)
    assert result.ci95[0] <= ratio <= result.ci95[1]


def test_float_and_uint8_inputs_agree(sets):
    train, gen, _ = sets
    a = memorization(train, gen)
    b = memorization(train.astype(np.float32) / 127.5 - 1, gen.astype(np.float32) / 127.5 - 1)
    np.testing.assert_array_equal(a.memorized, b.memorized)
    np.testing.assert_allclose(a.d1, b.d1, atol=1e-6)


def test_bootstrap_matches_explicit_resampling():
    flags = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    (lo, hi), se = bootstrap_ci(flags, 4000, seed=1)
    rng = np.random.default_rng(5)
    explicit = np.array([flags[rng.integers(0, 100, 100)].mean() for _ in range(4000)])
    assert abs(se - explicit.std()) < 0.004
    assert abs(lo - np.percentile(explicit, 2.5)) <= 0.02 and abs(hi - np.percentile(explicit, 97.5)) <= 0.02
    assert abs(se - np.sqrt(0.3 * 0.7 / 100)) < 0.004


@pytest.mark.parametrize("n, k", [(20, 10), (20, 4), (25, 12)])  # quantiles >= 12 sd from a CDF step
def test_bootstrap_quantiles_are_exact_binomial_quantiles(n, k):
    """The bootstrap distribution of the memorized fraction is Binomial(n, k/n)/n exactly: with many
    resamples its 2.5 % / 97.5 % percentiles are the binomial quantiles and its spread is
    √(p(1-p)/n). A factor n/(n+1) (dividing by n+1) or an off-by-one in the count shows at small n."""
    flags = np.r_[np.ones(k, bool), np.zeros(n - k, bool)]
    p = k / n
    (lo, hi), se = bootstrap_ci(flags, 200_000, seed=3)
    assert lo == stats.binom.ppf(0.025, n, p) / n
    assert hi == stats.binom.ppf(0.975, n, p) / n
    assert abs(se - np.sqrt(p * (1 - p) / n)) < 0.0015
    assert bootstrap_ci(flags, 200_000, seed=3) == ((lo, hi), se)  # seeded


def test_bootstrap_refuses_bad_arguments():
    from diffmem.errors import InputError

    for kwargs, param in [({"resamples": 0}, "bootstrap"), ({"seed": -1}, "seed")]:
        with pytest.raises(InputError) as info:
            bootstrap_ci(np.ones(5, bool), **kwargs)
        assert info.value.param == param


def test_cli_json_and_outputs(sets, capsys):
    train, gen, tmp = sets
    assert run(["memorization", "--train", str(tmp / "train.zip"), "--generated", str(tmp / "gen.npz"),
                "--json", "--out", str(tmp / "audit")]) == 0
    summary = json.loads(capsys.readouterr().out)
    ratio, d = brute_ratio(train, gen)
    assert summary["memorization_ratio"] == ratio
    assert summary["n_memorized"] == round(ratio * 60)
    assert summary["n_generated"] == 60 and summary["n_train"] == 120
    assert summary["threshold"] == pytest.approx(1 / 3)
    flags = (d[:, 0] < d[:, 1] / 3) | (d[:, 0] == 0)
    (lo, hi), se = bootstrap_ci(flags, 1000, 0)
    assert summary["ci95"] == [lo, hi] and summary["stderr"] == se and summary["bootstrap"] == 1000
    assert json.loads((tmp / "audit" / "summary.json").read_text()) == summary
    nb = np.load(tmp / "audit" / "neighbors.npz")
    assert set(nb.files) >= {"d1", "d2", "idx1", "idx2", "memorized"}
    np.testing.assert_array_equal(nb["memorized"], flags)
    np.testing.assert_allclose(nb["d1"], d[:, 0] / 127.5, atol=1e-12)
    np.testing.assert_allclose(nb["d2"], d[:, 1] / 127.5, atol=1e-12)
    nearest, untied = brute_nearest(train, gen)
    np.testing.assert_array_equal(nb["idx1"][untied], nearest[untied])
    # 6 most and 6 least memorized rows of 3 panels, 1.6 x 1.7 inches each, at 110 dpi
    assert Image.open(tmp / "audit" / "neighbors.png").size == (round(3 * 1.6 * 110), round(12 * 1.7 * 110))


def test_cli_png_folder_generated_and_threshold(sets, capsys):
    train, gen, tmp = sets
    folder = tmp / "pngs" / "nested"
    folder.mkdir(parents=True)
    for i, img in enumerate(gen):
        Image.fromarray(img[0]).save(folder / f"{i:03d}.png")
    assert run(["memorization", "--train", str(tmp / "train.zip"), "--generated", str(tmp / "pngs"),
                "--threshold", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memorization_ratio"] == brute_ratio(train, gen, 0.5)[0]


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _bad(tmp, name, make):
    path = tmp / name
    make(path)
    return path


@pytest.mark.parametrize("case", [
    "corrupt_png", "mixed_sizes", "mixed_channels", "empty_folder", "empty_array", "nan", "inf",
    "out_of_range_float", "out_of_range_int", "missing",
])
def test_bad_generated_inputs_exit_2(sets, capsys, case):
    _, gen, tmp = sets

    def folder(path, images):
        path.mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(path / f"{i}.png")

    makers = {
        "corrupt_png": lambda p: (folder(p, [gen[0, 0], gen[1, 0]]), (p / "1.png").write_bytes(b"\x89PNG garbage")),
        "mixed_sizes": lambda p: folder(p, [gen[0, 0], np.zeros((9, 9), np.uint8)]),
        "mixed_channels": lambda p: folder(p, [gen[0, 0], np.zeros((8, 8, 3), np.uint8)]),
        "empty_folder": lambda p: p.mkdir(),
        "empty_array": lambda p: np.savez(p, images=np.zeros((0, 1, 8, 8), np.uint8)),
        "nan": lambda p: np.savez(p, images=np.full((2, 1, 8, 8), np.nan, np.float32)),
        "inf": lambda p: np.savez(p, images=np.full((2, 1, 8, 8), np.inf, np.float32)),
        "out_of_range_float": lambda p: np.savez(p, images=np.full((2, 1, 8, 8), 1.5, np.float32)),
        "out_of_range_int": lambda p: np.savez(p, images=np.full((2, 1, 8, 8), 300, np.int32)),
        "missing": lambda p: None,
    }
    suffix = ".npz" if case in ("empty_array", "nan", "inf", "out_of_range_float", "out_of_range_int") else ""
    path = _bad(tmp, case + suffix, makers[case])
    code = run(["memorization", "--train", str(tmp / "train.zip"), "--generated", str(path)])
    assert code == 2
    _one_error_line(capsys, "--generated", case)


def test_bad_input_leaves_no_output_folder(sets, capsys):
    _, _, tmp = sets
    assert run(["memorization", "--train", str(tmp / "train.zip"), "--generated", str(tmp / "nope.npz"),
                "--out", str(tmp / "audit")]) == 2
    _one_error_line(capsys, "--generated", "nope.npz")
    assert not (tmp / "audit").exists()


def test_shape_mismatch_threshold_and_out_errors(sets, capsys):
    _, _, tmp = sets
    np.savez(tmp / "rgb.npz", images=np.zeros((4, 3, 8, 8), np.uint8))
    base = ["memorization", "--train", str(tmp / "train.zip")]
    assert run(base + ["--generated", str(tmp / "rgb.npz")]) == 2
    _one_error_line(capsys, "rgb.npz", "shape")
    for bad in ["0", "1.5", "-1", "abc"]:
        assert run(base + ["--generated", str(tmp / "gen.npz"), "--threshold", bad]) == 2
        _one_error_line(capsys, "--threshold")
    (tmp / "afile").write_text("x")
    assert run(base + ["--generated", str(tmp / "gen.npz"), "--out", str(tmp / "afile" / "sub")]) == 2
    _one_error_line(capsys, "--out")


def test_out_is_never_overwritten(sets, capsys):
    _, _, tmp = sets
    out = tmp / "audit"
    out.mkdir()
    (out / "summary.json").write_text("precious")
    args = ["memorization", "--train", str(tmp / "train.zip"), "--generated", str(tmp / "gen.npz"), "--out", str(out)]
    assert run(args) == 2
    _one_error_line(capsys, "--out", "summary.json")
    assert (out / "summary.json").read_text() == "precious"
    assert not (out / "neighbors.npz").exists()


def test_zip_with_corrupt_member_names_the_member(sets, capsys):
    _, _, tmp = sets
    with zipfile.ZipFile(tmp / "broken.zip", "w") as zf:
        zf.writestr("00000/img00000000.png", b"not a png")
    assert run(["memorization", "--train", str(tmp / "broken.zip"), "--generated", str(tmp / "gen.npz")]) == 2
    _one_error_line(capsys, "--train", "broken.zip")


def test_float_generated_measured_as_given_unless_quantize(sets, capsys):
    """A float sample half a grey level from a training image: as given it is measured in float;
    --quantize rounds it onto the training image first (d1 = 0)."""
    train, _, tmp = sets
    step = np.where(train[:4] < 255, 0.4, -0.4) / 127.5  # stays inside [-1, 1]
    gen = (train[:4].astype(np.float32) / 127.5 - 1 + step).astype(np.float32)
    np.savez(tmp / "float.npz", images=gen)
    base = ["memorization", "--train", str(tmp / "train.zip"), "--generated", str(tmp / "float.npz"), "--out"]
    assert run(base + [str(tmp / "a")]) == 0
    assert run(base + [str(tmp / "b"), "--quantize"]) == 0
    d1_given = np.load(tmp / "a" / "neighbors.npz")["d1"]
    d1_quantized = np.load(tmp / "b" / "neighbors.npz")["d1"]
    np.testing.assert_allclose(d1_given, np.sqrt(64) * 0.4 / 127.5, rtol=1e-5)
    assert (d1_quantized == 0).all()


def test_mixed_uint8_and_float_sets_match_float64_brute_force(sets):
    train, gen, _ = sets
    rng = np.random.default_rng(9)
    g = np.clip(gen / 127.5 - 1 + rng.normal(0, 0.01, gen.shape), -1, 1)  # float64, model space
    result = memorization(train, g)
    t = train.reshape(len(train), -1) / 127.5 - 1
    d = np.sqrt(((g.reshape(len(g), -1)[:, None] - t[None]) ** 2).sum(-1))
    d.sort(axis=1)
    np.testing.assert_allclose(result.d1, d[:, 0], rtol=1e-12)
    np.testing.assert_allclose(result.d2, d[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(result.memorized, d[:, 0] < d[:, 1] / 3)


def test_no_bootstrap_gives_null_interval_and_strict_json(sets, capsys):
    """--bootstrap 0: ci95 and stderr are null (not NaN, which is not JSON), stdout and summary.json
    parse strictly."""
    _, _, tmp = sets

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    args = ["memorization", "--train", str(tmp / "train.zip"), "--generated", str(tmp / "gen.npz"), "--bootstrap", "0"]
    assert run(args + ["--json", "--out", str(tmp / "o")]) == 0
    summary = strict(capsys.readouterr().out)
    assert summary["ci95"] is None and summary["stderr"] is None and summary["bootstrap"] == 0
    assert strict((tmp / "o" / "summary.json").read_text()) == summary
    assert run(args) == 0
    line = capsys.readouterr().out
    assert "nan" not in line.lower() and "CI" not in line and line.startswith("memorization ratio ")
    result = memorization(np.load(tmp / "gen.npz")["images"][:10], np.load(tmp / "gen.npz")["images"], bootstrap=0)
    assert result.ci95 is None and result.stderr is None
