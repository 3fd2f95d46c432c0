"""Closed-form optimal denoisers of the empirical denoising loss, and their regularized variants.

For a training set ``{y_i}``, the minimizer of ``E‖D(y + σn; σ) - y‖²`` over all functions is the
posterior mean under the empirical distribution (Gu et al. 2025, Eq. 2):

    D*(x; σ) = Σ_i softmax_i(-‖x - y_i‖² / 2σ²) · y_i .

Sampling with it returns training images. Regularized variants (Baptista et al. 2025), with
``x̄_w = D*(x; σ)`` the softmax average above:

* Tikhonov ``c``, constant in time (``tikhonov``): the minimizer of ``E‖σ·s + ξ‖² + c‖s‖²`` is
  ``s_c = (x̄_w - x)/(σ² + c)``, i.e. ``D_c(x; σ) = x + σ²·s_c = (c·x + σ²·x̄_w) / (σ² + c)``;
  ``c = 0`` is ``D*``. (The form of the authors' latest ``GMM_score_TikhonovRegularized``.)
* Tikhonov in time (``tikhonov_time``), the form of the authors' earlier code and of seed 002's
  text: the strength ``c·g(t)²`` grows with the noise, ``g`` the forward SDE's diffusion
  coefficient, so ``s = (x̄_w - x)/(σ² + c·g²)`` and ``D = (c·g²·x + σ²·x̄_w)/(σ² + c·g²)``. For a
  variance-exploding SDE ``dx = g(t) dw`` the marginal variance is ``σ(t)² = ∫₀ᵗ g(u)² du``, so
  ``g(t)² = dσ²/dt``. EDM's sampler (the one diffmem samples with) runs ``σ(t) = t``, hence
  ``g(t)² = 2t = 2σ`` (:func:`edm_diffusion_sq`) and ``D = (2cσ·x + σ²·x̄_w)/(σ² + 2cσ)``. ``g``
  depends on the time variable: on the authors' toy schedule (VE, ``σ(t)² = (b^(2t) - 1)/(2 ln b)``,
  ``b = 10``) ``g² = b^(2t) = 1 + 2 ln(b)·σ²``, so there the same ``c`` is a constant ``c`` plus a
  ``(1 + 4.6c)`` inflation of ``σ²`` — a number ``c`` is tied to its schedule.
* Empirical-Bayes floor ``τ``, as the authors' ``GMM_score_EmpiricalBayes``
  (``baptistar/DiffusionModelDynamics``): weights ``w_i = exp(ℓ_i) / max(Σ_j exp(ℓ_j), τ)`` with the
  *unnormalized* log-kernels ``ℓ_i = -‖x - y_i‖²/2σ²`` (no ``-(d/2)·ln(2πσ²)``), score
  ``Σ_i w_i (y_i - x)/σ²``, so ``D(x; σ) = x + σ²·score = (1 - W)·x + W·x̄_w`` with
  ``W = Σ_i w_i = S / max(S, τ)``, ``S = Σ_j exp(ℓ_j)``. ``τ → 0`` recovers ``D*``. ``S`` is at most
  ``n`` (the number of training samples) whatever ``σ``, so one ``τ`` means the same at every noise
  level: ``τ ≥ n`` damps every step, ``τ`` near ``e^(-r²/2)`` stops the denoising of a sample whose
  nearest training point is ``r`` standard deviations of noise away. The authors run ``τ`` from
  1e-2 to 10 on their 2-D toy. (The sampler's EDM schedule has no mean scaling, ``a = 1`` in the
  authors' ``‖x - a·y_i‖²``.) A normalized Gaussian kernel, as diffmem used before, adds
  ``-(d/2)·ln(2πσ²)`` to ``ln S`` — hundreds of nats across the schedule in 64 dimensions — so a
  fixed ``τ`` either never bites or never lets a sample be denoised.
Everything is streamed over the training set in chunks with a running log-sum-exp, so the softmax
never materializes (n_train × batch) and never underflows, even at σ = 0.002 in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffmem.data.imageset import ImageSet
from diffmem.data.points import PointCloud
from diffmem.errors import InputError


class OptimalDenoiser:
    """``D(x, sigma, labels=None)`` for the empirical optimum of a training set.

    Args:
        train: ImageSet, or array/tensor (n, ...) in model space [-1, 1] (uint8 is converted).
        labels: training labels (n,) for the class-conditional optimum (Eq. 60: the same sum over
            the images of the requested class only). Taken from ``train`` when it is an ImageSet.
        conditional: use labels passed to ``__call__`` to restrict the sum to that class.
        regularize: ``None``, ``("tikhonov", c)`` (constant strength), ``("tikhonov_time", c)``
            (strength ``c·g(σ)²`` on EDM's schedule), ``("eb", tau)`` or ``("log_eb", ln_tau)`` (the
            floor given by its logarithm, for floors below float64's smallest number, e^-745).
        chunk: training images per streamed block.
        dtype: computation dtype (float64 by default: the ODE at small σ is sensitive).
    """

    sigma_min = 0.0  # valid at every noise level (the Denoiser protocol)
    sigma_max = math.inf

    def __init__(
        self,
        train,
        labels=None,
        *,
        conditional: bool = False,
        regularize: tuple[str, float] | None = None,
        chunk: int = 4096,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        if isinstance(train, (ImageSet, PointCloud)):
            labels = train.labels if labels is None else labels
            train = train.images
        y = torch.as_tensor(train)
        if y.dtype == torch.uint8:  # pixels -> model space, converted once straight into `dtype`
            y = y.to(device=device, dtype=dtype).div_(127.5).sub_(1.0)
        else:
            y = y.to(device=device, dtype=dtype)
        self.shape = tuple(y.shape[1:])
        y = y.reshape(len(y), -1)  # (n, d)
        self.conditional = conditional
        self.class_slice: dict[int, slice] = {}
        if conditional:
            if labels is None:
                raise InputError("the class-conditional optimum needs a labelled training set", param="train")
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
            # Store the images grouped by class, so each class is a contiguous slice (a view).
            order = torch.argsort(labels, stable=True)
            y, labels = y[order.to(y.device)], labels[order]
            classes, counts = torch.unique_consecutive(labels, return_counts=True)
            ends = torch.cumsum(counts, 0).tolist()
            self.class_slice = {int(c): slice(e - k, e) for c, k, e in zip(classes.tolist(), counts.tolist(), ends)}
        self.y = y
        self.y_sq = torch.linalg.vector_norm(y, dim=1).square()  # ‖y_i‖², without a (n, d) temporary
        self.kind, value = _parse_regularizer(regularize)
        self.c = value if self.kind in ("tikhonov", "tikhonov_time") else None  # Tikhonov strength
        self.log_tau = None  # the EB floor as ln τ (floors below e^-745 underflow as floats)
        if self.kind in ("eb", "log_eb"):
            self.kind, self.log_tau = "eb", value if self.kind == "log_eb" else math.log(value)
        self.chunk = chunk
        self.device, self.dtype = torch.device(device), dtype
        self.cutoff = math.log(torch.finfo(dtype).tiny) + 20.0  # see _denoise

    @property
    def num_classes(self) -> int:
        return 1 + max(self.class_slice) if self.conditional else 0

    def __call__(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        in_dtype = x.dtype
        x = x.to(device=self.device, dtype=self.dtype)
        flat = x.reshape(len(x), -1)
        sigma = torch.as_tensor(sigma, device=self.device, dtype=self.dtype).reshape(-1)
        sigma = sigma.expand(len(x)) if sigma.numel() == 1 else sigma
        if not self.conditional:
            out = self._denoise(flat, sigma, self.y, self.y_sq)
        else:
            if labels is None:
                raise InputError("the class-conditional optimum needs a label for every sample", param="labels")
            labels = torch.as_tensor(labels, device=self.device).reshape(-1)
            out = torch.empty_like(flat)
            for c in torch.unique(labels).tolist():
                if c not in self.class_slice:
                    raise InputError(f"class {c} has no training images", param="labels")
                rows, members = labels == c, self.class_slice[c]
                out[rows] = self._denoise(flat[rows], sigma[rows], self.y[members], self.y_sq[members])
        return out.reshape(x.shape).to(in_dtype)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
        """One pass over ``y`` accumulating the softmax average x̄_w and log S = logsumexp(ℓ)."""
        two_var = 2 * sigma[:, None] ** 2  # 2σ², (b, 1)
        x_sq = (x * x).sum(1, keepdim=True)  # ‖x‖²
        run_max = torch.full((len(x), 1), -math.inf, device=x.device, dtype=x.dtype)
        run_sum = torch.zeros((len(x), 1), device=x.device, dtype=x.dtype)
        acc = torch.zeros_like(x)  # Σ exp(ℓ_i - run_max) · y_i
        for j in range(0, len(y), self.chunk):
            yc = y[j : j + self.chunk]
            # ℓ_i up to the σ-only constant: -‖x - y_i‖² / 2σ²
            sq_dist = torch.addmm(x_sq + y_sq[j : j + self.chunk][None], x, yc.T, alpha=-2.0).clamp_(min=0)
            logits = -sq_dist / two_var
            new_max = torch.maximum(run_max, logits.max(1, keepdim=True).values)
            rescale = torch.exp(run_max - new_max)
            # exp(ℓ - max); weights below e^cutoff are set to exactly 0 rather than left as
            # subnormals, which change nothing (< 1e-25 relative) but slow a GEMM down severalfold.
            weights = torch.nn.functional.threshold_(logits.sub_(new_max), self.cutoff, -math.inf).exp_()
            run_sum = run_sum * rescale + weights.sum(1, keepdim=True)
            acc = torch.addmm(acc * rescale, weights, yc)
            run_max = new_max
        x_bar = acc / run_sum  # D*(x; σ)
        if self.kind in ("tikhonov", "tikhonov_time"):
            var = sigma[:, None] ** 2
            c = self.c if self.kind == "tikhonov" else self.c * edm_diffusion_sq(sigma[:, None])  # c or c·g²
            return (c * x + var * x_bar) / (var + c)
        if self.kind == "eb":
            log_s = run_max + torch.log(run_sum)  # ln S = ln Σ_j exp(-‖x - y_j‖²/2σ²), unnormalized kernels
            W = torch.exp(log_s - torch.clamp(log_s, min=self.log_tau))  # S / max(S, τ), in log space
            return (1 - W) * x + W * x_bar
        return x_bar


def edm_diffusion_sq(sigma):
    """``g(t)²`` of the variance-exploding SDE that EDM's sampler integrates, at ``σ = t``: with
    ``σ(t)² = ∫₀ᵗ g² du`` and ``σ(t) = t``, ``g(t)² = d(t²)/dt = 2t = 2σ``."""
    return 2 * sigma


REGULARIZERS = ("tikhonov", "tikhonov_time", "eb", "log_eb")
_FLAG_FORMS = "tikhonov:C, tikhonov_time:C, eb:TAU or log_eb:LN_TAU"


def _parse_regularizer(regularize) -> tuple[str | None, float]:
    if regularize is None:
        return None, 0.0
    kind, value = regularize
    if kind not in REGULARIZERS:
        raise InputError(f"unknown regularizer {kind!r} (use {_FLAG_FORMS})", param="regularize")
    value = float(value)
    if kind == "log_eb":
        if not math.isfinite(value):
            raise InputError(f"log_eb (ln τ) must be a finite number, got {value}", param="regularize")
        return kind, value
    if not math.isfinite(value) or value < 0 or (kind == "eb" and value == 0):
        raise InputError(f"{kind} strength must be {'> 0' if kind == 'eb' else '>= 0'}, got {value}", param="regularize")
    return kind, value


def parse_regularize_flag(text: str | None) -> tuple[str, float] | None:
    """``tikhonov:C``, ``tikhonov_time:C``, ``eb:TAU`` or ``log_eb:LN_TAU`` → (kind, value);
    ``None``/``none`` → None."""
    if text is None or text.lower() == "none":
        return None
    kind, sep, value = text.partition(":")
    try:
        parsed = (kind.lower(), float(value))
    except ValueError:
        raise InputError(f"expected {_FLAG_FORMS}, got {text!r}", param="regularize") from None
    if not sep:
        raise InputError(f"expected {_FLAG_FORMS}, got {text!r}", param="regularize")
    return _parse_regularizer(parsed)
