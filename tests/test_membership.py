"""Membership inference: the per-image loss against a direct loop; AUC and TPR at 1 % FPR on planted
scores against direct counts; the optimum's own training set is recognised at small σ."""

import numpy as np
import pytest
import torch

from diffmem.losses import per_image_loss
from diffmem.rng import MEMBERSHIP, derive_seed


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
