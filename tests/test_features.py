"""Feature extractors for sample quality: pixels and PCA against numpy, a user's TorchScript file
(good and bad ones), and the cached default classifier (in a temporary DIFFMEM_CACHE)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffmem.data import ImageSet, save_npz
from diffmem.errors import InputError
from diffmem.metrics import features as F
from diffmem.metrics.features import cache_dir, load_features, parse_features

from conftest import one_line


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (30, 1, 4, 4), dtype=np.uint8)


def test_parse_features(tmp_path):
    assert parse_features("pixels") == ("pixels", None)
    assert parse_features("classifier") == ("classifier", None)
    assert parse_features("pca:7") == ("pca", 7)
    (tmp_path / "f.pt").write_bytes(b"x")
    assert parse_features(str(tmp_path / "f.pt")) == ("file", str(tmp_path / "f.pt"))
    for bad in ("", "pca:0", "pca:x", "pca", "inception", str(tmp_path)):
        with pytest.raises(InputError) as err:
            parse_features(bad)
        assert err.value.param == "features"


def test_pixels_are_model_space_flattened(images):
    f = load_features("pixels", reference=images)
    assert f.dim == 16 and f.name == "pixels"
    expected = images.reshape(30, -1).astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(f.embed(images, batch=7), expected, atol=1e-6)
    floats = ImageSet(images).to_model()
    np.testing.assert_array_equal(f.embed(floats), f.embed(ImageSet(images)))


def test_pca_projects_on_the_top_eigenvectors_of_the_reference_covariance(images, rng):
    ref = images
    f = load_features("pca:3", reference=ref)
    assert (f.dim, f.name) == (3, "pca:3")
    y = ref.reshape(30, -1).astype(np.float64) / 127.5 - 1
    evals, evecs = np.linalg.eigh(np.cov(y, rowvar=False))  # ascending
    top = evecs[:, ::-1][:, :3]
    other = rng.integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    x = other.reshape(5, -1) / 127.5 - 1
    expected = (x - y.mean(0)) @ top
    got = f.embed(other)
    signs = np.sign((got * expected).sum(0))  # each axis is defined up to its sign
    np.testing.assert_allclose(got * signs, expected, atol=1e-5)
    with pytest.raises(InputError, match="needs reference"):
        load_features("pca:3")
    with pytest.raises(InputError, match="K <="):
        load_features("pca:31", reference=ref)


class _Tiny(torch.nn.Module):
    def forward(self, x):
        return 2.0 * x.flatten(1)[:, :5]


def _script(module, path):
    torch.jit.script(module).save(str(path))
    return path


def test_torchscript_extractor(tmp_path, images):
    path = _script(_Tiny(), tmp_path / "tiny.pt")
    f = load_features(str(path), reference=images)
    assert f.dim == 5 and "tiny.pt" in f.name
    expected = 2 * (images.reshape(30, -1)[:, :5] / 127.5 - 1)
    np.testing.assert_allclose(f.embed(images, batch=4), expected, atol=1e-6)


class _Flat(torch.nn.Module):
    def forward(self, x):
        return x  # (N, C, H, W): not (N, k)


class _Raises(torch.nn.Module):
    def forward(self, x):
        if x.shape[1] == 1:
            raise RuntimeError("boom inside the extractor")
        return x.flatten(1)


class _Short(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:1]  # one row, whatever N


@pytest.mark.parametrize("module, needle", [(_Flat(), "must return a (N, k) tensor"), (_Raises(), "boom"),
                                            (_Short(), "must return a (N, k) tensor"), (None, "not a TorchScript")])
def test_bad_torchscript_files_are_one_line(tmp_path, images, run_cli, module, needle):
    path = tmp_path / "bad.pt"
    if module is None:
        path.write_text("not a model\n")
    else:
        _script(module, path)
    with pytest.raises(InputError) as err:
        load_features(str(path), reference=images)
    assert err.value.param == "features" and needle in str(err.value) and "bad.pt" in str(err.value)
    save_npz(tmp_path / "g.npz", images)
    one_line(*run_cli(["quality", "--generated", tmp_path / "g.npz", "--heldout", tmp_path / "g.npz",
                       "--features", path]), "--features:", "bad.pt", needle)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFMEM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "diffmem"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "diffmem"
    monkeypatch.setenv("DIFFMEM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_classifier_is_trained_once_and_cached(monkeypatch, tmp_path, digits):
    monkeypatch.setenv("DIFFMEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(F._EPOCHS, "digits", 2)  # a quick, poor classifier: this tests the cache
    x = digits.images[:40, :, ::2, ::2]  # 4x4 digits: the network for shape (1, 4, 4)
    f = load_features("classifier", source="digits", reference=x)
    path = tmp_path / "cache" / f"classifier-digits-1x4x4-v{F.CLASSIFIER_VERSION}.safetensors"
    assert path.is_file() and F.classifier_path("digits", (1, 4, 4)) == path
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["source"] == "digits" and record["n_train"] + record["n_test"] == 1797
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["epochs"] == 2
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporaries left
    first = f.embed(x)
    assert first.shape == (40, 128) and f.dim == 128
    monkeypatch.setattr(F, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
    again = load_features("classifier", source="digits").embed(x)
    np.testing.assert_array_equal(first, again)
    path.write_bytes(b"damaged")
    with pytest.raises(InputError, match="damaged classifier cache") as err:
        load_features("classifier", source="digits").embed(x)
    assert err.value.param == "features" and path.name in str(err.value)


def test_classifier_needs_a_known_source(images):
    for source, needle in ((None, "need the built-in source"), ("cifar10", "only for digits")):
        with pytest.raises(InputError, match=needle) as err:
            load_features("classifier", source=source)
        assert err.value.param == "source"
    rgb = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(InputError, match="1xRxR"):
        load_features("classifier", source="digits").embed(rgb)
