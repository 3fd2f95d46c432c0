"""The two-split test (diffmem.studies.twosplit): halves, measures, shared latents, a tiny end-to-end run,
resuming, and bad specs/flags."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import one_line
from diffmem.studies.twosplit import cosine, model_space, pair_measures, split_order

TINY_SPEC = """
name = "tiny"
mode = "twosplit"
[data]
source = "digits"
labels = "none"
[train]
preset = "tiny"
channels = 8
precond = "edm"
steps = 2
batch = 32
lr = 2e-3
ema_rate = 0.99
[twosplit]
sizes = [2, 4]
samples = 4
sample_steps = 2
"""


# ---------------------------------------------------------------------------------------------
# The halves.


def test_halves_are_disjoint_nested_balanced_and_seeded(digits):
    seq_a, seq_b = split_order(digits.labels, len(digits), seed=0)
    assert len(np.intersect1d(seq_a, seq_b)) == 0 and len(set(seq_a)) == len(seq_a) and len(set(seq_b)) == len(seq_b)
    assert len(seq_a) + len(seq_b) == len(digits)  # every image is dealt to exactly one half
    counts = np.bincount(digits.labels, minlength=10)
    assert len(seq_a) == sum(math.ceil(c / 2) for c in counts) and len(seq_b) == sum(c // 2 for c in counts)
    for n in (10, 50, 870):  # round robin over 10 classes: n = 10k holds k of each class
        for seq in (seq_a, seq_b):
            assert (np.bincount(digits.labels[seq[:n]], minlength=10) == n // 10).all()
    # nested: the half of size n is the first n of its sequence, so a smaller half is a subset of a larger one
    assert set(seq_a[:16]) <= set(seq_a[:64])
    again = split_order(digits.labels, len(digits), seed=0)
    other = split_order(digits.labels, len(digits), seed=1)
    assert all((x == y).all() for x, y in zip(again, (seq_a, seq_b)))
    assert not (other[0][:64] == seq_a[:64]).all()


def test_halves_known_answer():
    # two images per class: one goes to each half; a class of three gives A two; rounds take classes in turn
    labels = np.array([0, 0, 1, 1, 1])
    seq_a, seq_b = split_order(labels, 5, seed=3)
    assert sorted(labels[seq_a]) == [0, 1, 1] and sorted(labels[seq_b]) == [0, 1]
    assert list(labels[seq_a]) == [0, 1, 1] and list(labels[seq_b]) == [0, 1]
    assert sorted([*seq_a, *seq_b]) == [0, 1, 2, 3, 4]
    unlabeled = split_order(None, 7, seed=0)
    assert (len(unlabeled[0]), len(unlabeled[1])) == (4, 3)


# ---------------------------------------------------------------------------------------------
# The measures.


def test_cosine_known_answers():
    u = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    v = np.array([[0.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(cosine(u, v), [0.0, 1.0, -1.0, 0.0])  # 0 where a vector is zero
    # centred at mu = (1, 1): (0,-1)·(-1,0) = 0; (1,1)-(1,1) = 0 → 0; (1,1)·(-2,-2)/(√2·√8) = -1;
    # (-1,-1)·(0,-1)/(√2·1) = 1/√2
    assert np.allclose(cosine(u, v, np.array([1.0, 1.0])), [0.0, 0.0, -1.0, 1 / math.sqrt(2)])


def _independent(x_a, x_b, t_a, t_b, mu):
    """The measures computed pair by pair with plain loops."""
    d = x_a[0].size
    rows = []
    for xa, xb in zip(x_a, x_b):
        gap = np.sqrt(((xa - xb) ** 2).sum())
        da = sorted(np.sqrt(((xa - t) ** 2).sum()) for t in t_a)
        na = t_a[int(np.argmin([((xa - t) ** 2).sum() for t in t_a]))]
        db_other = min(np.sqrt(((xa - t) ** 2).sum()) for t in t_b)
        any_a = min(da[0], db_other)
        any_b = min(np.sqrt(((xb - t) ** 2).sum()) for t in np.concatenate([t_a, t_b]))
        c = ((xa - mu) * (xb - mu)).sum() / np.sqrt(((xa - mu) ** 2).sum() * ((xb - mu) ** 2).sum())
        c_own = ((xa - mu) * (na - mu)).sum() / np.sqrt(((xa - mu) ** 2).sum() * ((na - mu) ** 2).sum())
        rows.append((c, gap / math.sqrt(d), gap < min(any_a, any_b), c_own, da[0] / math.sqrt(d),
                     db_other / math.sqrt(d), da[0] < da[1] / 3))
    return np.array(rows, dtype=float).mean(0)


def test_pair_measures_match_an_independent_computation(rng):
    t_a = rng.integers(0, 256, (5, 1, 3, 3), dtype=np.uint8)
    t_b = rng.integers(0, 256, (6, 1, 3, 3), dtype=np.uint8)
    x_a = rng.integers(0, 256, (7, 1, 3, 3), dtype=np.uint8)
    x_b = x_a.copy()
    x_b[:3] = rng.integers(0, 256, (3, 1, 3, 3), dtype=np.uint8)
    x_a[0] = t_a[2]  # one exact copy
    x_b[4] = np.clip(x_a[4].astype(int) + 3, 0, 255)  # one near-identical pair
    mu = model_space(np.concatenate([t_a, t_b])).mean(0)
    row = pair_measures(x_a, x_b, t_a, t_b, mu)
    want = _independent(*(model_space(v) for v in (x_a, x_b, t_a, t_b)), mu)
    got = [row[k] for k in ("cos_ab", "rms_ab", "pair_closer", "cos_own_a", "rms_own_a", "rms_other_a", "mem_own_a")]
    assert np.allclose(got, want, atol=1e-12), (got, want)
    assert row["mem_own_a"] >= 1 / 7 and 0 < row["pair_closer"] < 1
    assert row["cos_own"] == pytest.approx((row["cos_own_a"] + row["cos_own_b"]) / 2)


def test_pair_measures_extremes(rng):
    """Copies of the own half: memorized, distance 0, cosine 1, never closer to each other; two
    models that agree on images no training set holds: cosine 1, distance 0, always closer."""
    t_a = rng.integers(0, 256, (4, 1, 4, 4), dtype=np.uint8)
    t_b = rng.integers(0, 256, (4, 1, 4, 4), dtype=np.uint8)
    mu = np.zeros((1, 4, 4))
    copies = pair_measures(t_a, t_b, t_a, t_b, mu)
    assert copies["mem_own"] == 1 and copies["rms_own"] == 0 and copies["cos_own"] == pytest.approx(1)
    assert copies["pair_closer"] == 0 and copies["mem_other"] < 1
    shared = rng.integers(0, 256, (4, 1, 4, 4), dtype=np.uint8)
    agree = pair_measures(shared, shared, t_a, t_b, mu)
    assert agree["cos_ab"] == pytest.approx(1) and agree["rms_ab"] == 0 and agree["pair_closer"] == 1


def test_pair_closer_counts_every_training_image_of_both_halves():
    """x_A sits next to an image z of the *other* half, x_B twice as far along the same line: the
    pair is no closer to each other (‖x_A - x_B‖ = ‖x_A - z‖) than x_A is to a training image, though
    both are far from half A and x_B is farther from z than from x_A."""
    t_a = np.ones((3, 1, 4, 4)) * np.array([0.9, 0.95, 1.0])[:, None, None, None]
    t_b = np.ones((3, 1, 4, 4)) * np.array([-0.5, -0.2, 0.1])[:, None, None, None]
    e = 0.01 * np.ones((1, 1, 4, 4))
    x_a, x_b = t_b[:1] + e, t_b[:1] + 2 * e
    row = pair_measures(x_a, x_b, t_a, t_b, np.zeros((1, 4, 4)))
    assert row["pair_closer"] == 0
    assert pair_measures(x_b, x_a, t_b, t_a, np.zeros((1, 4, 4)))["pair_closer"] == 0  # roles swapped
    assert row["rms_other_a"] == pytest.approx(0.01) and row["rms_own_b"] == pytest.approx(0.02)
    apart = pair_measures(x_a + 0.25, x_a + 0.255, t_a, t_b, np.zeros((1, 4, 4)))
    assert apart["pair_closer"] == 1  # (-0.24, -0.235): 0.005 apart, 0.035 from -0.2


def test_model_space_known_answer():
    assert np.allclose(model_space(np.array([0, 255, 51], dtype=np.uint8)), [-1.0, 1.0, 51 / 127.5 - 1])
    assert model_space(np.array([0.25], dtype=np.float32))[0] == 0.25


def test_same_seed_gives_both_models_the_same_latents():
    """sample() starts sample i from the stream (seed, i): two different denoisers sampled with one
    seed see the same x_0 (here: the first input each receives)."""
    from diffmem.denoisers.protocol import denoiser_from_function
    from diffmem.sampling import sample

    seen = {}

    def recorder(name, scale):
        def D(x, sigma, labels=None):
            seen.setdefault(name, x.clone())
            return scale * x / (1 + sigma.view(-1, 1, 1, 1) ** 2)
        return denoiser_from_function(D, (1, 4, 4))

    sample(recorder("a", 1.0), 6, seed=5, steps=3, batch_size=4)
    sample(recorder("b", 0.3), 6, seed=5, steps=3, batch_size=6)
    sample(recorder("c", 1.0), 6, seed=6, steps=3)
    assert torch.equal(seen["a"], seen["b"][:4])  # same seed, other denoiser and batching: same x_0
    assert not torch.allclose(seen["a"], seen["c"][:4])


# ---------------------------------------------------------------------------------------------
# End to end (tiny settings), resuming.


def test_two_split_end_to_end_and_resume(tmp_path, run_cli, monkeypatch):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["two-split", spec, "--out", out, "--threads", "1"])
    assert code == 0, stderr
    rows = json.loads((out / "results.json").read_text())
    assert [r["n"] for r in rows] == [2, 4] and all(r["samples"] == 4 for r in rows)
    for name in ("results.csv", "similarity.png", "distance.png", "pairs.png", "n-000002/a/summary.json",
                 "n-000004/b/summary.json", "n-000004/samples-a.npz"):
        assert (out / name).exists(), name
    config_b = json.loads((out / "n-000002/b/config.json").read_text())
    assert config_b["batch"] == 2 and config_b["seed"] == 1  # batch ≤ n; B's seed is A's + 1
    # re-run, one size added: nothing finished is trained again
    import diffmem.training

    calls = []
    real = diffmem.training.train
    monkeypatch.setattr(diffmem.training, "train", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    spec.write_text(TINY_SPEC.replace("sizes = [2, 4]", "sizes = [2, 3, 4]"))
    code, _, stderr = run_cli(["two-split", spec, "--out", out, "--threads", "1"])
    assert code == 0, stderr
    assert calls == [3, 3]
    assert [r["n"] for r in json.loads((out / "results.json").read_text())] == [2, 3, 4]
    # a changed training config is refused, naming the output folder
    spec.write_text(TINY_SPEC.replace("lr = 2e-3", "lr = 1e-3"))
    one_line(*run_cli(["two-split", spec, "--out", out]), "--out", "[train] lr")
    # a folder written before a knob existed (absent = its default) is this spec's
    record = json.loads((out / "twosplit.json").read_text())
    del record["train"]["ema_rampup"], record["settings"]["same_init"], record["data"]["root"]
    (out / "twosplit.json").write_text(json.dumps(record))
    spec.write_text(TINY_SPEC)
    code, _, stderr = run_cli(["two-split", spec, "--out", out, "--threads", "1"])
    assert code == 0 and calls == [3, 3], stderr


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("old, new, needle", [
    ('mode = "twosplit"', 'mode = "runs"', "mode"),
    ("sizes = [2, 4]", "sizes = []", "[twosplit] sizes"),
    ("sizes = [2, 4]", "sizes = [1, 4]", "[twosplit] sizes"),
    ("sizes = [2, 4]", "sizes = [2, 2]", "[twosplit] sizes"),
    ("sizes = [2, 4]", "sizes = [2, 1000]", "[twosplit] sizes: 1000"),
    ("sizes = [2, 4]", "sizes = [2, 4]\nwidth = 3", "[twosplit] width"),
    ("samples = 4", "samples = 0", "[twosplit] samples"),
    ("samples = 4", 'samples = 4\nsampler = "sde"', "[twosplit] sampler"),
    ("samples = 4", "samples = 4\nsample_seed = -1", "[twosplit] sample_seed"),
    ("samples = 4", 'samples = 4\nclip_batch = "yes"', "[twosplit] clip_batch"),
    ('labels = "none"', 'labels = "true"', "[data] labels"),
    ('labels = "none"', 'labels = "none"\nsize = 64', "[data] size"),
    ("[twosplit]", "[axes]\nlr = [1e-3, 2e-3]\n[twosplit]", "[axes] lr"),
    ("steps = 2", "steps = 0", "[train] steps"),
])
def test_bad_spec_one_line(tmp_path, run_cli, old, new, needle):
    spec = tmp_path / "bad.toml"
    assert old in TINY_SPEC
    spec.write_text(TINY_SPEC.replace(old, new))
    one_line(*run_cli(["two-split", spec, "--out", tmp_path / "out"]), needle)
    assert not (tmp_path / "out").exists()


def test_bad_flags_one_line(tmp_path, run_cli):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.csv").write_text("x")
    one_line(*run_cli(["two-split", spec, "--out", tmp_path / "o", "--workers", "0"]), "--workers")
    one_line(*run_cli(["two-split", spec, "--out", tmp_path / "o", "--threads", "0"]), "--threads")
    one_line(*run_cli(["two-split", spec, "--out", ""]), "--out")
    one_line(*run_cli(["two-split", spec, "--out", tmp_path / "file"]), "--out")
    one_line(*run_cli(["two-split", spec, "--out", tmp_path / "other"]), "--out", "twosplit.json")
    one_line(*run_cli(["two-split", spec]), "--out")
    one_line(*run_cli(["two-split", tmp_path / "missing.toml", "--out", tmp_path / "o"]), "missing.toml")
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "o").exists()
