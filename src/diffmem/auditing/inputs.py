"""What an audit is given: generated samples, or a model to draw them from.

:func:`resolve_generated` turns ``MODEL-or-SAMPLES`` into (M, C, H, W) generated images and, for a
model, the denoiser they came from:

- a loaded :class:`~diffmem.denoisers.protocol.Denoiser` (or any module with ``shape``), or a model
  path: a folder with ``config.json`` (a diffmem run, a diffusers ``UNet2DModel``), ``model_index.json``
  or ``unet/config.json`` (a diffusers pipeline), a diffmem snapshot ``snapshot-epoch*.safetensors``
  (or a folder of them), or a TorchScript file (``.pt``, ``.pth``, ``.ts``),
  loaded by :func:`diffmem.runs.load_denoiser`. ``num`` samples are drawn with
  :func:`diffmem.sampling.sample` (Heun, 18 steps, seed ``seed``; a class-conditional model gets
  labels ``i mod num_classes``) and quantized to uint8, as saving them to PNG would (seed 001);
- anything else is an image set (a path any reader accepts, an ImageSet, an array or tensor).

A folder of weights without ``config.json``, or a bare weights file, is refused (param ``model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.data.stream import StreamedSet, open_streamed
from diffmem.errors import InputError

MODEL_FILES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
WEIGHT_FILES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


@dataclass
class Generated:
    images: np.ndarray  # (M, C, H, W) uint8, or float32 in [-1, 1] when given so
    denoiser: object | None  # the model sampled, or None for a sample set


def in_memory_set(x, what: str) -> StreamedSet:
    """An ImageSet, array or tensor (N, C, H, W) as a (not streamed) set; values are checked as
    :class:`~diffmem.data.imageset.ImageSet` checks them, errors naming ``what``."""
    if not isinstance(x, ImageSet):
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        try:
            x = ImageSet(np.asarray(x), source=what)
        except InputError as err:
            raise InputError(err.detail, param=what) from None
    return StreamedSet(x.images, x.labels, x.source, streamed=False)


def is_model_path(path: Path) -> bool:
    """Whether ``path`` names a model (see the module docstring); a folder of weights without
    ``config.json`` raises InputError naming ``model``."""
    if path.is_dir():
        if any((path / name).is_file() for name in ("config.json", "model_index.json", "unet/config.json")):
            return True
        if any(path.glob("snapshot-epoch*.safetensors")):  # a diffmem run (its config travels in the snapshot)
            return True
        weights = [p.name for p in path.iterdir() if p.suffix.lower() in WEIGHT_FILES]
        if weights and not any(path.rglob("*.png")):
            raise InputError(f"{path}: a model folder needs its config.json (found {weights[0]} but no "
                             f"config.json); give a diffmem run folder or a diffusers UNet2DModel folder",
                             param="model")
        return False
    suffix = path.suffix.lower()
    if suffix == ".safetensors" and path.name.startswith("snapshot-epoch"):
        return True  # one snapshot of a diffmem run
    if suffix in (".safetensors", ".bin", ".ckpt"):
        raise InputError(f"{path}: a weights file alone has no config; give the model folder that holds "
                         f"it beside its config.json", param="model")
    return suffix in MODEL_FILES


def load_model(path: Path, *, device: str, allow_pickle: bool = False):
    """The denoiser at ``path``: a diffmem run or snapshot, a diffusers folder or a TorchScript file
    (:func:`~diffmem.runs.load_denoiser`)."""
    from diffmem.runs import load_denoiser

    return load_denoiser(path, device=device, allow_pickle=allow_pickle)


def draw(D, num: int, *, seed: int, steps: int, device: str, progress: bool) -> np.ndarray:
    """``num`` samples of ``D`` (Heun, ``steps`` steps) as uint8 (M, C, H, W)."""
    from diffmem.sampling import sample

    classes = getattr(D, "num_classes", None)
    labels = np.arange(num) % classes if classes else None
    x = sample(D, num, labels=labels, steps=steps, seed=seed, device=device, progress=progress)
    return to_uint8(x.numpy())


def resolve_generated(source, train: StreamedSet, *, num: int, seed: int, device: str, progress: bool, steps: int = 18,
                      allow_pickle: bool = False) -> Generated:
    """Generated images for the audit (drawn from a model when ``source`` is one); their per-image
    shape must be the training set's."""
    D = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not str(source).strip() or not path.exists():
            raise InputError(f"{source}: no such model or image set", param="model_or_samples")
        if is_model_path(path):
            D = load_model(path, device=device, allow_pickle=allow_pickle)
        else:
            with open_streamed(path, what="model_or_samples") as found:  # every format the training set may have
                images = np.array(found.images)
    elif hasattr(source, "shape") and callable(source) and not isinstance(source, np.ndarray):
        D = source
    else:
        images = in_memory_set(source, "model_or_samples").images
    if D is not None:
        shape = tuple(D.shape) if getattr(D, "shape", None) is not None else None
        if shape != train.shape:
            raise InputError(f"the model makes images of shape {shape} but training images have {train.shape}",
                             param="model")
        images = draw(D, num, seed=seed, steps=steps, device=device, progress=progress)
    if tuple(images.shape[1:]) != train.shape:
        raise InputError(f"generated images have shape {tuple(images.shape[1:])} but training images have "
                         f"{train.shape}", param="model_or_samples")
    return Generated(images, D)
