"""Adapters: models people already have, as diffmem denoisers ``D(x, sigma, labels) -> x̂``.

Two kinds of file, plus diffmem's own run folders, all opened by :func:`diffmem.runs.load_denoiser`:

**A diffusers ``UNet2DModel`` folder** (:func:`load_diffusers`), saved with ``save_pretrained``
(``config.json`` + ``diffusion_pytorch_model.safetensors``) next to its scheduler's
``scheduler_config.json`` (DDPM or DDIM: ``betas`` → ``ᾱ_t = Π_{s≤t}(1 - β_s)``, ``prediction_type``);
a pipeline folder (``model_index.json`` + ``unet/`` + ``scheduler/``) is accepted too. The mapping
to EDM's convention (Karras et al. 2022, Table 1 "VP"/"iDDPM" column):

    x_t = √ᾱ_t·y + √(1-ᾱ_t)·ε   ⇔   x = x_t/√ᾱ_t = y + σ·ε,   σ_t = √((1 - ᾱ_t)/ᾱ_t),

so for an EDM input ``x`` at noise ``σ`` the network sees ``x_t = x/√(1+σ²)`` (``ᾱ = 1/(1+σ²)``), and

- ε-prediction: ``D(x; σ) = x - σ·ε̂``;
- v-prediction (Salimans & Ho 2022, ``v = √ᾱ·ε - √(1-ᾱ)·y``): ``y = √ᾱ·x_t - √(1-ᾱ)·v``, i.e.
  ``D(x; σ) = x/(1+σ²) - σ/√(1+σ²)·v̂`` (equivalently ``ε̂ = √(1-ᾱ)·x_t + √ᾱ·v̂``, then as above);
- ``sample`` prediction: ``D = ŷ``.

The timestep for a σ between table entries: ``timestep="interpolate"`` (default) passes the
fractional ``t`` interpolated linearly in ``ln σ`` between the two bracketing entries (the time
embedding is a continuous function of ``t``); ``"nearest"`` rounds to the entry nearest in σ, as EDM's
iDDPM preconditioner does. σ outside ``[σ_0, σ_{T-1}]`` uses the end entry; ``sigma_min``/``sigma_max``
are those ends, so :func:`~diffmem.sampling.sample` clamps its schedule to them. Weights load from
safetensors only unless ``allow_pickle=True`` (``.bin`` files are pickles); nothing is downloaded
(``local_files_only``).

**A TorchScript file** (:func:`load_torchscript`), whose ``forward(x, sigma)`` or
``forward(x, sigma, labels)`` returns x̂ in EDM's convention: ``x`` float32 (N, C, H, W) in model
space, ``sigma`` float32 (N,), ``labels`` int64 (N,) or None. Its metadata comes from the extra
file ``diffmem.json`` stored in the archive (``{"shape": [C, H, W], "num_classes": K, "sigma_min":
a, "sigma_max": b}``, ``sigma_max`` null = ∞; :func:`save_torchscript` writes it), else from module
attributes of the same names. TorchScript archives hold code and tensors, not pickled Python
objects; still, load only models you trust.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from diffmem.denoisers.probe import check_denoiser, check_model_shape
from diffmem.errors import InputError, check_number

TORCHSCRIPT_META = "diffmem.json"
TIMESTEP_MODES = ("interpolate", "nearest")


def sigma_table(alphas_cumprod) -> np.ndarray:
    """σ_t = √((1 - ᾱ_t)/ᾱ_t) for t = 0 .. T-1: float64 (T,), increasing for a decreasing ᾱ."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - a) / a)


def timestep_for_sigma(sigma, table: np.ndarray, mode: str = "interpolate") -> np.ndarray:
    """The (fractional or whole) timestep of each σ: float64 array of σ's shape.

    ``interpolate``: t = interp(ln σ; ln σ_t, t), clamped to [0, T-1]. ``nearest``: argmin_t |σ - σ_t|.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    if mode == "nearest":
        return np.abs(sigma[..., None] - table).argmin(-1).astype(np.float64)
    if mode != "interpolate":
        raise InputError(f"unknown timestep mode {mode!r} (use one of {', '.join(TIMESTEP_MODES)})", param="timestep")
    return np.interp(np.log(np.maximum(sigma, 1e-300)), np.log(table), np.arange(len(table), dtype=np.float64))


class DiffusersDenoiser:
    """A diffusers ``UNet2DModel`` and its scheduler's ᾱ table as ``D(x, sigma, labels)`` (see module doc)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon", timestep: str = "interpolate"):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise InputError(f"unsupported prediction_type {prediction_type!r} (epsilon, v_prediction or sample)",
                             param="model")
        if timestep not in TIMESTEP_MODES:
            raise InputError(f"unknown timestep mode {timestep!r}", param="timestep")
        table = sigma_table(alphas_cumprod)
        keep = np.isfinite(table) & (table > 0)  # a zero-SNR last step (ᾱ = 0) has σ = ∞; ᾱ = 1 has σ = 0
        table, self.timesteps = table[keep], np.flatnonzero(keep).astype(np.float64)
        if len(table) < 2 or not np.all(np.diff(table) > 0):
            raise InputError("the scheduler's ᾱ_t must fall strictly from t = 0 on", param="model")
        self.unet, self.table = unet.eval().requires_grad_(False), table
        self.prediction_type, self.timestep = prediction_type, timestep
        cfg = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size,) * 2
        self.shape = (int(cfg.in_channels), int(size[0]), int(size[1]))
        self.num_classes = int(cfg.num_class_embeds or 0)
        self.sigma_min, self.sigma_max = float(table[0]), float(table[-1])

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> "DiffusersDenoiser":
        self.unet.to(device)
        return self

    def __call__(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(len(x)).cpu()
        index = timestep_for_sigma(sigma.numpy(), self.table, self.timestep)  # into the kept entries
        t = torch.from_numpy(np.interp(index, np.arange(len(self.timesteps)), self.timesteps))
        dtype, dev = self.unet.dtype, self.device
        s = sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1)
        x_t = x / (1 + s**2).sqrt()  # x_t = √ᾱ·x with ᾱ = 1/(1+σ²)
        cls = labels.to(dev).long() if (self.num_classes and labels is not None) else None
        with torch.no_grad():
            out = self.unet(x_t.to(dev, dtype), t.to(dev, torch.float32), class_labels=cls).sample
        out = out[:, : x.shape[1]].to(x.device, x.dtype)  # a learned-variance head doubles the channels
        if self.prediction_type == "epsilon":
            return x - s * out  # D = x - σ·ε̂
        if self.prediction_type == "v_prediction":
            return x / (1 + s**2) - s / (1 + s**2).sqrt() * out  # D = x/(1+σ²) - σ/√(1+σ²)·v̂
        return out

    def __repr__(self) -> str:
        return (f"DiffusersDenoiser(shape={self.shape}, num_classes={self.num_classes}, "
                f"prediction_type={self.prediction_type!r}, timestep={self.timestep!r}, "
                f"sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}])")


def _read_json(path: Path, param: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON file ({err})", param=param) from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object", param=param)
    return data


def _diffusers_parts(folder: Path, subfolder, param: str) -> tuple[Path, Path]:
    """(UNet folder, scheduler_config.json) of a UNet folder or a pipeline folder."""
    if subfolder is None and (folder / "model_index.json").is_file():
        subfolder = "unet"
    unet_dir = folder / subfolder if subfolder else folder
    if not (unet_dir / "config.json").is_file():
        raise InputError(f"{unet_dir}: model folder without config.json", param=param)
    cls = _read_json(unet_dir / "config.json", param).get("_class_name")
    if cls != "UNet2DModel":
        raise InputError(f"{unet_dir}: a {cls or 'non-diffusers'} config; only UNet2DModel is supported", param=param)
    for cand in (unet_dir / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                 unet_dir.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            return unet_dir, cand
    raise InputError(f"{unet_dir}: no scheduler_config.json beside it or in ../scheduler/ (its ᾱ_t are needed)",
                     param=param)


def _check_weights(unet_dir: Path, allow_pickle: bool, param: str) -> None:
    if any(unet_dir.glob("*.safetensors")):
        return
    if any(unet_dir.glob("*.bin")):
        if allow_pickle:
            return
        raise InputError(f"{unet_dir}: weights only as a pickled .bin (a pickle can run code); allow pickles "
                         f"(--allow-pickle; allow_pickle=True in Python) only for files you trust",
                         param=param)
    raise InputError(f"{unet_dir}: no weights (diffusion_pytorch_model.safetensors)", param=param)


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' logger at ERROR (restored after) and Python warnings suppressed while loading."""
    from diffusers.utils import logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(before)


def load_diffusers(folder, *, device="cpu", subfolder: str | None = None, allow_pickle: bool = False,
                   timestep: str = "interpolate", param: str = "model") -> DiffusersDenoiser:
    """A local diffusers ``UNet2DModel`` folder (or pipeline folder) as a :class:`DiffusersDenoiser`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder", param=param)
    unet_dir, sched_path = _diffusers_parts(folder, subfolder, param)
    _check_weights(unet_dir, allow_pickle, param)
    sched_cfg = _read_json(sched_path, param)
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise InputError("reading a diffusers model needs the extra: pip install 'diffmem[diffusers]'",
                         param=param) from None
    try:
        with _quiet_diffusers():  # its own log lines and warnings stay off stderr: errors are ours to report
            unet = UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=None if allow_pickle else True,
                                               local_files_only=True, low_cpu_mem_usage=False)
            keys = DDPMScheduler.__init__.__code__.co_varnames
            sched = DDPMScheduler.from_config({k: v for k, v in sched_cfg.items() if k in keys})
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError) as err:
        raise InputError(f"{unet_dir}: cannot load the model ({str(err).splitlines()[0]})", param=param) from None
    D = DiffusersDenoiser(unet.to(device), sched.alphas_cumprod.numpy(),
                          sched_cfg.get("prediction_type", "epsilon"), timestep)
    return D


class TorchScriptDenoiser:
    """A TorchScript module ``forward(x, sigma[, labels]) -> x̂`` (EDM convention) as a denoiser."""

    def __init__(self, module, shape, num_classes: int = 0, sigma_min: float = 0.0, sigma_max: float = math.inf):
        self.module = module.eval()
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = int(num_classes or 0)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        args = module.forward.schema.arguments if hasattr(module.forward, "schema") else None
        self.takes_labels = args is None or len(args) - 1 >= 3  # the schema lists self first

    def __call__(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(len(x))
        xf = x.to(torch.float32)
        with torch.no_grad():
            if self.takes_labels:
                out = self.module(xf, sigma, None if labels is None else labels.to(x.device).long())
            else:
                out = self.module(xf, sigma)
        return out.to(x.dtype)

    def __repr__(self) -> str:
        return f"TorchScriptDenoiser(shape={self.shape}, num_classes={self.num_classes})"


def _torchscript_meta(module, extra: str, path: Path, param: str) -> dict:
    meta = {}
    if extra:
        try:
            meta = json.loads(extra)
        except ValueError as err:
            raise InputError(f"{path}: {TORCHSCRIPT_META} is not JSON ({err})", param=param) from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: {TORCHSCRIPT_META} must be a JSON object, got {type(meta).__name__}", param=param)
    for key in ("shape", "num_classes", "sigma_min", "sigma_max"):
        if key not in meta and hasattr(module, key):
            meta[key] = getattr(module, key)
    shape = meta.get("shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise InputError(f"{path}: needs its image shape [C, H, W] in {TORCHSCRIPT_META} or a `shape` attribute",
                         param=param)
    where = f"{path}: {TORCHSCRIPT_META}"
    shape = check_model_shape(list(shape), where, param)
    fields = {}
    for key, default, kw in (("num_classes", 0, dict(lo=0, hi=1 << 20, integer=True)),
                             ("sigma_min", 0.0, dict(lo=0)), ("sigma_max", None, dict(lo=0, lo_open=True))):
        value = meta.get(key, default)
        try:
            fields[key] = default if value is None else check_number(key, value, **kw)
        except InputError as err:
            raise InputError(f"{where} {key}: {err.detail}", param=param) from None
    smax = math.inf if fields["sigma_max"] is None else fields["sigma_max"]
    if fields["sigma_min"] >= smax:
        raise InputError(f"{where}: sigma_min {fields['sigma_min']:g} is not below sigma_max {smax:g}", param=param)
    return {"shape": shape, "num_classes": fields["num_classes"], "sigma_min": float(fields["sigma_min"]),
            "sigma_max": float(smax)}


def load_torchscript(path, *, device="cpu", param: str = "model") -> TorchScriptDenoiser:
    """A TorchScript denoiser file (see module doc for its forward and metadata)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such TorchScript file", param=param)
    extra = {TORCHSCRIPT_META: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a TorchScript file ({first.split('. This is')[0]})", param=param) from None
    text = extra[TORCHSCRIPT_META]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: {TORCHSCRIPT_META} is not UTF-8 text", param=param) from None
    meta = _torchscript_meta(module, text, path, param)
    return TorchScriptDenoiser(module, **meta)


def save_torchscript(module, path, *, shape, num_classes: int = 0, sigma_min: float = 0.0,
                     sigma_max: float = math.inf) -> Path:
    """Script ``module`` (unless it already is) and save it with its ``diffmem.json`` metadata."""
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    meta = {"shape": [int(s) for s in shape], "num_classes": int(num_classes), "sigma_min": float(sigma_min),
            "sigma_max": None if math.isinf(sigma_max) else float(sigma_max)}
    torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    return Path(path)


def is_run(path) -> bool:
    """True for a diffmem run folder (snapshots or its config.json record) or a snapshot file."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    if not path.is_dir():
        return False
    if any(path.glob("snapshot-epoch*.safetensors")):
        return True
    cfg = path / "config.json"
    return cfg.is_file() and not (path / "model_index.json").is_file() and '"_class_name"' not in cfg.read_text(
        errors="replace")
