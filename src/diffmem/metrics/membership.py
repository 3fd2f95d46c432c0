"""Membership inference for diffusion models: is an image in the model's training set?

Two attack statistics per image ``y`` (lower = more likely a member), both at chosen noise levels σ:

- ``loss`` (Matsumoto et al. 2023; Carlini et al. 2023, Sec. 6): the unweighted denoising loss
  ``mean_pixels (D(y + σn; σ) - y)²`` with seeded noise (:func:`diffmem.losses.per_image_loss`).
- ``secmi`` (Duan et al. 2023, "Are Diffusion Models Vulnerable to Membership Inference Attacks?",
  SecMI_stat): the t-error. SecMI inverts ``x_0 = y`` deterministically with DDIM up to ``t``
  (``x̃_t = Φ(x_0, t)``), takes one more DDIM inversion step ``φ`` to ``t + k``, one DDIM denoising
  step ``ψ`` back to ``t``, and scores ``‖ψ(φ(x̃_t, t), t + k) - x̃_t‖²`` (paper: ``t = 100``, ``k = 10``
  on DDPM's linear 1000-step schedule). The released code (``jinhaoduan/SecMI``,
  ``mia_evals/secmia.py``, ``get_intermediate_results``) inverts ``y`` from timestep 0 over
  ``range(0, t_sec, k)[1:]`` — 10, 20, …, 90 for ``t_sec = 100, k = 10`` — and scores the step
  90 → 100 → 90: the round trip ends at ``t_sec``, one step of ``k`` above the inverted point. We
  follow the code. In EDM terms DDIM is Euler on the probability-flow ODE
  ``dx/dσ = (x - D(x; σ))/σ`` in ``x = x_t/√ᾱ_t`` at ``σ_t = √((1-ᾱ_t)/ᾱ_t)`` (one DDIM step from
  t to t' is exactly one Euler step from σ_t to σ_t'). So here, with ``σ`` standing for SecMI's
  ``t_sec`` on DDPM's linear schedule (``β`` from 1e-4 to 0.02 over 1000 steps; fractional t
  interpolated in ln σ): ``t_σ`` = the timestep of σ, ``k = t_σ/steps``, Euler steps over σ(0), σ(k),
  …, σ(t_σ - k) starting from ``x = y/√ᾱ_0`` (the code takes ``y`` as the timestep-0 sample), one step up to σ(t_σ) = σ, one back down to σ(t_σ - k), and
  the mean over pixels of the squared difference at σ(t_σ - k). (In x_t-space the code's error is
  ``ᾱ_(t_σ-k)·(pixels)`` times this, the same factor for every image: the ranking, the AUC and the
  TPR do not change.) SecMI's ``t_sec = 100, k = 10`` are σ = σ(100) ≈ 0.342 and ``steps = 10``:
  the defaults.

With several σ the per-image score is the mean over σ of ``ln(statistic + 1e-12)`` (scale-free, so
no σ dominates); the AUC at each σ alone is reported too. AUC is the Mann–Whitney probability that a
member scores lower than a non-member (ties count ½); the ROC treats "member" as positive and flags
images whose score is below a threshold. TPR at 1 % FPR is read off the ROC as a piecewise-linear
curve: the interpolated TPR at FPR = 0.01 (the highest TPR where a vertical step sits exactly at
0.01). With fewer than 100 held-out images that point lies below the ROC's resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from diffmem.denoisers.probe import check_shape
from diffmem.errors import InputError, check_number
from diffmem.losses import as_model_images, check_sigmas, per_image_loss
from diffmem.rng import BOOTSTRAP, check_seed, numpy_rng

METHODS = ("loss", "secmi")
_DDPM_ALPHA_BAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # DDPM's linear schedule, T = 1000
_DDPM_LOG_SIGMA = 0.5 * np.log((1 - _DDPM_ALPHA_BAR) / _DDPM_ALPHA_BAR)  # ln σ_t, t = 0 .. 999


def ddpm_sigma(t):
    """σ(t) of DDPM's linear schedule, fractional t in [0, 999] interpolated in ln σ."""
    return np.exp(np.interp(t, np.arange(1000), _DDPM_LOG_SIGMA))


def ddpm_timestep(sigma):
    """The fractional timestep t of σ on DDPM's linear schedule (inverse of :func:`ddpm_sigma`)."""
    return np.interp(np.log(sigma), _DDPM_LOG_SIGMA, np.arange(1000.0))


SECMI_STEPS = 10
DEFAULT_SIGMAS = {"loss": (0.05, 0.1, 0.2), "secmi": (float(ddpm_sigma(100)),)}
FLOOR = 1e-12  # added before the log of a statistic (the optimum's training loss can be exactly 0)


@dataclass
class MembershipResult:
    """Scores and ROC of a membership attack. Statistics (lower = member): ``train_stats`` (N_t, S),
    ``heldout_stats`` (N_h, S) at ``sigmas`` (S,); ``train_scores`` (N_t,) and ``heldout_scores``
    (N_h,) combine them (mean of ln over σ). ``fpr``, ``tpr``: the ROC (members positive)."""

    method: str
    sigmas: np.ndarray
    train_stats: np.ndarray
    heldout_stats: np.ndarray
    train_scores: np.ndarray
    heldout_scores: np.ndarray
    auc: float
    tpr_at_1fpr: float
    fpr: np.ndarray
    tpr: np.ndarray
    auc_per_sigma: list = field(default_factory=list)
    auc_ci95: tuple | None = None

    def summary(self) -> dict:
        """A JSON-ready dict."""
        return {"method": self.method, "sigmas": [float(s) for s in self.sigmas], "auc": self.auc,
                "tpr_at_1pct_fpr": self.tpr_at_1fpr, "auc_per_sigma": self.auc_per_sigma,
                "auc_ci95": None if self.auc_ci95 is None else [float(v) for v in self.auc_ci95],
                "n_train": int(len(self.train_scores)), "n_heldout": int(len(self.heldout_scores)),
                "mean_stat_train": [float(v) for v in self.train_stats.mean(0)],
                "mean_stat_heldout": [float(v) for v in self.heldout_stats.mean(0)]}

    def explain(self) -> str:
        """One line: how well the statistic tells training from held-out images."""
        what = "denoising loss" if self.method == "loss" else "SecMI t-error"
        verdict = ("members are recognised" if self.auc >= 0.6 else
                   "members are barely distinguishable" if self.auc > 0.52 else "no membership signal")
        ci = "" if self.auc_ci95 is None else f" (95 % CI {self.auc_ci95[0]:.3f}-{self.auc_ci95[1]:.3f})"
        return (f"membership AUC = {self.auc:.3f}{ci}, TPR at 1 % FPR = {self.tpr_at_1fpr:.3f} from the per-image "
                f"{what} ({len(self.train_scores)} training vs {len(self.heldout_scores)} held-out images; 0.5 = "
                f"chance): {verdict}")


def auc_score(member_scores, nonmember_scores) -> float:
    """P(member score < non-member score) + ½·P(equal): the Mann–Whitney AUC, lower = member."""
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(y, -np.r_[member_scores, nonmember_scores]))


def bootstrap_auc(member_scores, nonmember_scores, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of :func:`auc_score`: each resample draws the members and
    the non-members with replacement, separately (stream ``(seed, BOOTSTRAP, 1)`` of diffmem.rng)."""
    resamples = check_number("bootstrap", resamples, lo=1, hi=100_000, integer=True)
    rng = numpy_rng(check_seed(seed), BOOTSTRAP, 1)
    a, b = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    aucs = np.empty(resamples)
    for r in range(resamples):
        ra, rb = a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]
        ranks = rankdata(np.r_[rb, ra])  # Mann–Whitney: U of the non-members = rank sum - m(m+1)/2
        aucs[r] = (ranks[: len(rb)].sum() - len(rb) * (len(rb) + 1) / 2) / (len(ra) * len(rb))
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


def roc(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over every threshold: flag an image as member when its score ≤ the threshold."""
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    fpr, tpr, _ = roc_curve(y, -np.r_[member_scores, nonmember_scores], drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float = 0.01) -> float:
    """TPR at FPR = ``target`` on the piecewise-linear ROC (fpr non-decreasing from 0 to 1)."""
    i = int(np.flatnonzero(fpr <= target)[-1])  # the last ROC point at or left of the target
    if fpr[i] == target or i == len(fpr) - 1:
        return float(tpr[i])
    w = (target - fpr[i]) / (fpr[i + 1] - fpr[i])
    return float(tpr[i] + w * (tpr[i + 1] - tpr[i]))


def _euler(D, x, s_from: float, s_to: float, labels) -> torch.Tensor:
    """One Euler step of dx/dσ = (x - D(x; σ))/σ from σ = s_from to s_to (≡ one DDIM step)."""
    sigma = torch.full((len(x),), s_from, dtype=x.dtype, device=x.device)
    return x + (s_to - s_from) * (x - D(x, sigma, labels).to(x.dtype)) / s_from


def secmi_grid(sigma: float, steps: int = SECMI_STEPS) -> tuple[np.ndarray, float]:
    """(σ(0), σ(k), …, σ(t_σ - k)) with k = t_σ/steps on DDPM's linear schedule — the inversion, as
    SecMI's ``range(0, t_sec, k)`` — and σ(t_σ) = σ, the top of the scored round trip."""
    t = float(ddpm_timestep(sigma))  # clamped to [0, 999] outside the schedule: check σ itself
    if not (ddpm_sigma(0) < sigma <= ddpm_sigma(999) * (1 + 1e-12)):
        raise InputError(f"SecMI needs σ in ({ddpm_sigma(0):.4g}, {ddpm_sigma(999):.4g}] "
                         f"(DDPM's linear schedule), got {sigma:g}", param="sigmas")
    return ddpm_sigma(np.linspace(0.0, t, steps + 1)[:-1]), float(ddpm_sigma(t))


def t_error(D, images, sigma: float, *, steps: int = SECMI_STEPS, labels=None, batch: int = 256,
            device="cpu") -> np.ndarray:
    """SecMI's t-error of each image at σ = σ(t_sec) (see module doc): float64 (N,), in (model space)².

    Deterministic inversion from x = y at σ(0) to σ(t_sec - k) in ``steps - 1`` Euler (≡ DDIM) steps
    of :func:`secmi_grid`, then ``x̃ = ψ(φ(x))``: one step up to σ(t_sec) and one back; returns
    ``mean_pixels (x̃ - x)²``. ``images``: ImageSet, uint8 pixels or model-space floats."""
    y_all, set_labels = as_model_images(images)
    sigma = check_number("sigma", sigma, lo=0, lo_open=True)
    steps = check_number("steps", steps, lo=1, integer=True)
    labels = set_labels if labels is None and getattr(D, "num_classes", None) else labels
    grid, up = secmi_grid(sigma, steps)
    base = float(grid[-1])  # σ(t_sec - k), where the round trip starts and ends
    out = np.empty(len(y_all))
    for start in range(0, len(y_all), batch):
        # The code takes y as the sample at timestep 0 (x_0 = y in x_t-space): x = y/√ᾱ_0 = y·√(1 + σ(0)²).
        x = y_all[start:start + batch].to(device, torch.float64) * math.sqrt(1 + grid[0] ** 2)
        lab = None if labels is None else torch.as_tensor(np.asarray(labels)[start:start + batch]).long().to(device)
        with torch.no_grad():
            for s0, s1 in zip(grid[:-1], grid[1:]):
                x = _euler(D, x, float(s0), float(s1), lab)  # x̃ = Φ(y, t_sec - k)
            back = _euler(D, _euler(D, x, base, up, lab), up, base, lab)  # ψ(φ(x̃, t_sec - k), t_sec)
        out[start:start + len(x)] = ((back - x) ** 2).flatten(1).mean(1).cpu().numpy()
    return out


def _stats(D, images, sigmas, method, seed, batch, device) -> np.ndarray:
    if method == "loss":
        return per_image_loss(D, images, sigmas, seed=seed, batch=batch, device=device)
    return np.stack([t_error(D, images, s, batch=batch, device=device) for s in sigmas], axis=1)


def membership(D, train, heldout, *, sigmas=None, method: str = "loss", seed: int = 0, batch: int = 256,
               device="cpu", bootstrap: int = 1000) -> MembershipResult:
    """Membership attack on denoiser ``D`` with its training images ``train`` (members) against
    ``heldout`` images of the same distribution (non-members); ImageSets (labels used when D is
    conditional), uint8 pixels or model-space floats, (N, C, H, W). ``sigmas``: noise levels
    (default ``DEFAULT_SIGMAS[method]``). ``bootstrap``: resamples of the AUC's 95 % interval (0: none).
    Returns a :class:`MembershipResult`."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r} (use one of {', '.join(METHODS)})", param="method")
    bootstrap = check_number("bootstrap", bootstrap, lo=0, hi=100_000, integer=True)
    sig = check_sigmas(DEFAULT_SIGMAS[method] if sigmas is None else sigmas)
    for images, param in ((train, "train"), (heldout, "heldout")):
        check_shape(D, images, param, "training images" if param == "train" else "held-out images")
        if getattr(D, "num_classes", None) and getattr(images, "labels", None) is None:
            raise InputError(f"the model is class-conditional ({D.num_classes} classes): the images need labels",
                             param=param)
    st_train = _stats(D, train, sig, method, seed, batch, device)
    st_held = _stats(D, heldout, sig, method, seed, batch, device)
    sc_train = np.log(st_train + FLOOR).mean(1)
    sc_held = np.log(st_held + FLOOR).mean(1)
    fpr, tpr = roc(sc_train, sc_held)
    ci = bootstrap_auc(sc_train, sc_held, bootstrap, seed) if bootstrap else None
    return MembershipResult(method, sig, st_train, st_held, sc_train, sc_held, auc_score(sc_train, sc_held),
                            tpr_at_fpr(fpr, tpr, 0.01), fpr, tpr,
                            [auc_score(st_train[:, j], st_held[:, j]) for j in range(len(sig))], ci)


def roc_figure(result: MembershipResult) -> Figure:
    """Log-log ROC of a membership attack (as in Carlini et al. 2022/2023), chance diagonal dashed."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot()
    lo = 1.0 / max(len(result.heldout_scores), 1)
    keep = (result.fpr > 0) & (result.tpr > 0)
    label = f"{result.method}: AUC {result.auc:.3f}, TPR@1%FPR {result.tpr_at_1fpr:.3f}"
    ax.plot(result.fpr[keep], result.tpr[keep], label=label)  # the ROC's own corners (ties: diagonals)
    ax.plot([lo / 10, 1], [lo / 10, 1], "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo / 2, 1)
    ax.set_ylim(lo / 2, 1.05)
    ax.axvline(0.01, color="0.7", lw=0.6)
    ax.set_xlabel("false positive rate (held-out flagged)")
    ax.set_ylabel("true positive rate (members flagged)")
    ax.set_title("Membership inference ROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
