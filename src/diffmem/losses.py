"""Denoising score-matching losses λ(σ)·‖D(y + σn; σ) - y‖² (EDM, Karras et al. 2022).

EDM:  ln σ ~ N(P_mean, P_std²),  λ(σ) = (σ² + σd²)/(σ·σd)².
VP:   t ~ U(ε_t, 1),  σ = σ(t),  λ(σ) = 1/σ².

Tikhonov (Baptista et al. 2025, seed 002; ``tikhonov = c > 0``): the score-matching loss
``‖σ·s + n‖² + c·‖s‖²`` with ``s = (D - x)/σ²``, ``x = y + σn``, is ``(‖D - y‖² + (c/σ²)·‖D - x‖²)/σ²``,
so each loss adds ``(c/σ²)·(D - x)²`` inside its weight λ(σ). Its minimizer at every σ is
``s = (x̄ - x)/(σ² + c)``, ``D = (c·x + σ²·x̄)/(σ² + c)`` with ``x̄`` the posterior mean — the
closed form ``OptimalDenoiser(regularize=("tikhonov", c))`` on the training set. (The constant form,
as the authors' network notebook ``VE_NNTikhonov``; the weighting λ(σ) does not move a per-σ minimizer.)

Each loss splits into :meth:`draw` (the randomness: σ and n for a batch) and :meth:`weighted` (the
deterministic part), so a training loop can draw the randomness for a whole global batch and give
each process its slice. ``loss(D, y, labels, generator)`` does both.
"""

from __future__ import annotations

import numpy as np
import torch

from diffmem.data.imageset import ImageSet
from diffmem.denoisers.precond import vp_sigma
from diffmem.errors import InputError, check_number
from diffmem.rng import MEMBERSHIP, check_seed, derive_seed


class _Loss:
    tikhonov = 0.0  # c of the Tikhonov penalty (module doc); 0 = the plain loss

    def draw_sigma(self, shape, generator, device) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, y_shape, generator=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(σ of shape (N, 1, ..., 1), n ~ N(0, I) of shape ``y_shape``), both float32."""
        sigma = self.draw_sigma([y_shape[0]] + [1] * (len(y_shape) - 1), generator, device)
        n = torch.randn(y_shape, generator=generator, device=device, dtype=torch.float32)
        return sigma, n

    def weighted(self, D, y: torch.Tensor, labels, sigma: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Per-element loss λ(σ)·[(D(x; σ) - y)² + (c/σ²)·(D(x; σ) - x)²], x = y + σn, same shape as y
        (the second term only with a Tikhonov ``c > 0``)."""
        x = y + sigma * n
        D_yn = D(x, sigma.flatten(), labels)
        err = (D_yn - y) ** 2
        if self.tikhonov:
            err = err + (self.tikhonov / sigma ** 2) * (D_yn - x) ** 2
        return self.weight(sigma) * err

    def __call__(self, D, y: torch.Tensor, labels=None, generator=None) -> torch.Tensor:
        sigma, n = self.draw(tuple(y.shape), generator, y.device)
        return self.weighted(D, y, labels, sigma, n)


class EDMLoss(_Loss):
    """EDM loss: log-normal σ, weight (σ² + σd²)/(σ·σd)² (unit effective weight at every σ)."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5, tikhonov: float = 0.0):
        self.tikhonov = float(tikhonov)
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def draw_sigma(self, shape, generator, device):
        rnd_normal = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2


class VPLoss(_Loss):
    """VP loss: t uniform on [ε_t, 1], σ = σ(t), weight 1/σ²."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5, tikhonov: float = 0.0):
        self.tikhonov = float(tikhonov)
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.epsilon_t = float(epsilon_t)

    def draw_sigma(self, shape, generator, device):
        rnd_uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
        return vp_sigma(1 + rnd_uniform * (self.epsilon_t - 1), self.beta_d, self.beta_min)

    def weight(self, sigma):
        return 1 / sigma ** 2


LOSSES = {"edm": EDMLoss, "vp": VPLoss}


def as_model_images(images) -> tuple[torch.Tensor, np.ndarray | None]:
    """(float32 tensor (N, C, H, W) in model space, the set's labels or None) from an ImageSet,
    uint8 pixels (``/127.5 - 1``), or a float model-space array/tensor."""
    if isinstance(images, ImageSet):
        return torch.from_numpy(np.ascontiguousarray(images.to_model())), images.labels
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise InputError(f"expected a non-empty (N, C, H, W) array, got shape {images.shape}", param="images")
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0), None
    if not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all():
        raise InputError(f"images must be uint8 pixels or finite floats in model space, got {images.dtype}",
                         param="images")
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), None


def loss_noise(seed: int, index: int, sigma_index: int, shape) -> torch.Tensor:
    """The noise n ~ N(0, I) of image ``index`` at the ``sigma_index``-th σ: float32 of ``shape``,
    from the stream (seed, MEMBERSHIP, index, sigma_index), so it does not depend on the batch."""
    g = torch.Generator().manual_seed(derive_seed(seed, MEMBERSHIP, index, sigma_index))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


def check_sigmas(sigmas) -> np.ndarray:
    """``sigmas`` as a (S,) float64 array of one or more finite positive noise levels, else an
    InputError naming ``sigmas``."""
    sig = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    if sig.ndim != 1 or len(sig) == 0 or not (np.isfinite(sig).all() and (sig > 0).all()):
        raise InputError(f"must be one or more finite positive noise levels, got {sigmas!r}", param="sigmas")
    return sig


def per_image_loss(D, images, sigmas, *, labels=None, seed: int = 0, batch: int = 256, device="cpu") -> np.ndarray:
    """Unweighted denoising loss of every image at every σ: float64 array (N, S).

    ``L[i, j] = mean over the C·H·W pixels of (D(y_i + σ_j·n_ij; σ_j, c_i) - y_i)²`` in model space
    (``[-1, 1]``, so units of (model space)²), with ``n_ij`` from :func:`loss_noise` (one seeded
    stream per image and σ index: a row depends only on the image, its index and ``seed``).
    ``images``: an ImageSet (its labels are used when ``labels`` is None and D is conditional),
    uint8 pixels (N, C, H, W), or floats already in model space. ``sigmas``: S positive noise
    levels. ``labels``: None or N class indices. Evaluated in batches of ``batch`` on ``device``.
    """
    y_all, set_labels = as_model_images(images)
    sig = check_sigmas(sigmas)
    seed, batch = check_seed(seed), check_number("batch", batch, lo=1, integer=True)
    if labels is None and getattr(D, "num_classes", None):
        labels = set_labels
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if len(labels) != len(y_all):
            raise InputError(f"got {len(labels)} labels for {len(y_all)} images", param="labels")
    out = np.empty((len(y_all), len(sig)), dtype=np.float64)
    for start in range(0, len(y_all), batch):
        y = y_all[start:start + batch].to(device)
        lab = None if labels is None else labels[start:start + batch].to(device)
        for j, s in enumerate(sig):
            n = torch.stack([loss_noise(seed, i, j, y.shape[1:]) for i in range(start, start + len(y))]).to(device)
            sigma = torch.full((len(y),), float(s), dtype=torch.float32, device=device)
            with torch.no_grad():
                err = (D(y + float(s) * n, sigma, lab).float() - y) ** 2
            out[start:start + len(y), j] = err.flatten(1).mean(1).double().cpu().numpy()
    return out

