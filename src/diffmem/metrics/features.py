"""Feature spaces for sample quality, none of which downloads anything.

A feature extractor maps images to vectors, ``embed(images) -> (N, k)`` float32; the Fréchet
distance of :mod:`diffmem.metrics.quality` compares two sets there. The spec strings
(``--features``) are:

=================  ================================================================================
``classifier``     the default: a small CNN diffmem trains once per built-in source and resolution
                   (digits, mnist, fashion-mnist), cached as safetensors under :func:`cache_dir`;
                   its penultimate layer (128 units: global average pooling of the conv stack,
                   then one dense layer; the analogue of Inception's pool3) is the feature. Its held-out test
                   accuracy is recorded in a JSON file beside the weights.
``pixels``         the images themselves, flattened, in model space ``[-1, 1]`` (k = C·H·W).
``pca:K``          the first K principal components of a ``reference`` set (model space, centred on
                   the reference mean): ``f(x) = V_K (x - μ_ref)``.
a file path        a TorchScript module (``torch.jit.save``) taking float32 NCHW images in model
                   space and returning (N, k); an exported Inception or DINOv2 gives the standard
                   FID / FD-DINOv2 numbers.
=================  ================================================================================

Every problem with the spec or the file is an :class:`~diffmem.errors.InputError` naming
``features``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffmem.data.imageset import ImageSet
from diffmem.errors import InputError

__all__ = ["FeatureExtractor", "load_features", "parse_features", "cache_dir", "classifier_path",
           "train_classifier", "CLASSIFIER_SOURCES", "CLASSIFIER_VERSION"]

CLASSIFIER_SOURCES = ("digits", "mnist", "fashion-mnist")
CLASSIFIER_VERSION = 2  # bump when the network or its training changes: old cache files are then ignored
_FEATURE_DIM = 128


def cache_dir() -> Path:
    """Where trained classifiers live: ``$DIFFMEM_CACHE``, else ``$XDG_CACHE_HOME/diffmem``, else
    ``~/.cache/diffmem``."""
    if os.environ.get("DIFFMEM_CACHE"):
        return Path(os.environ["DIFFMEM_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "diffmem"
    return Path.home() / ".cache" / "diffmem"


def parse_features(text) -> tuple[str, int | str | None]:
    """``(kind, arg)`` for a feature spec: ``("classifier", None)``, ``("pixels", None)``,
    ``("pca", K)`` or ``("file", path)``; else InputError naming ``features``."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("expected classifier, pixels, pca:K or a TorchScript file, got an empty value",
                         param="features")
    text = text.strip()
    if text in ("classifier", "pixels"):
        return text, None
    if text.startswith("pca:") or text == "pca":
        k = text.partition(":")[2]
        if not k.isdigit() or int(k) < 1:
            raise InputError(f"{text}: expected pca:K with K a positive whole number", param="features")
        return "pca", int(k)
    path = Path(text)
    if not path.exists():
        raise InputError(f"{text}: not classifier, pixels or pca:K, and no such TorchScript file", param="features")
    if not path.is_file():
        raise InputError(f"{text}: a folder, not a TorchScript file", param="features")
    return "file", text


def _model_space(images) -> np.ndarray:
    """Images (an ImageSet, uint8 NCHW pixels or float NCHW in [-1, 1]) as float32 NCHW in [-1, 1]."""
    if not isinstance(images, ImageSet):
        images = ImageSet(np.asarray(images), source="images")
    return images.to_model()


class FeatureExtractor:
    """``embed(images) -> float32 (N, dim)``. ``name`` says which space; ``dim`` is the feature size
    (0 until the first ``embed`` for ``pixels`` and TorchScript files loaded without a reference)."""

    name: str = "features"
    dim: int = 0

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Features of a float32 (B, C, H, W) batch in model space."""
        raise NotImplementedError

    def embed(self, images, *, batch: int = 256, progress: bool = False) -> np.ndarray:
        """Features of ``images`` (ImageSet, uint8 or model-space float NCHW), float32 (N, dim)."""
        x = _model_space(images)
        chunks = []
        for start in range(0, len(x), batch):
            chunks.append(np.asarray(self._forward(x[start:start + batch]), dtype=np.float32))
            if progress:
                print(f"\r{self.name}: {min(start + batch, len(x))}/{len(x)} images", end="", flush=True,
                      file=sys.stderr)
        if progress:
            print(file=sys.stderr)
        out = np.concatenate(chunks)
        self.dim = out.shape[1]
        return out


class PixelFeatures(FeatureExtractor):
    """Flattened model-space pixels, ``f(x) = x`` (k = C·H·W)."""

    name = "pixels"

    def _forward(self, x):
        return x.reshape(len(x), -1)


class PCAFeatures(FeatureExtractor):
    """Projection on the first K principal axes of a reference set: ``f(x) = V_K (x - μ_ref)``,
    with ``V_K`` the top right-singular vectors of the centred (N, C·H·W) reference matrix."""

    def __init__(self, reference, k: int):
        ref = _model_space(reference)
        y = ref.reshape(len(ref), -1).astype(np.float64)  # (N, C·H·W)
        if k > min(y.shape):
            raise InputError(f"pca:{k}: needs K <= min(reference images {y.shape[0]}, pixels {y.shape[1]})",
                             param="features")
        self.mean = y.mean(axis=0)
        _, _, vt = np.linalg.svd(y - self.mean, full_matrices=False)
        self.components = vt[:k]  # (K, C·H·W), orthonormal rows
        self.shape = ref.shape[1:]
        self.name, self.dim = f"pca:{k}", k

    def _forward(self, x):
        if x.shape[1:] != self.shape:
            raise InputError(f"pca: images of shape {x.shape[1:]}, but the reference is {self.shape}",
                             param="features")
        return (x.reshape(len(x), -1) - self.mean) @ self.components.T


class TorchScriptFeatures(FeatureExtractor):
    """A user's TorchScript module: float32 NCHW model-space batch in, (B, k) features out."""

    def __init__(self, path: str, device="cpu"):
        self.path, self.device, self.name = str(path), torch.device(device), f"file:{Path(path).name}"
        try:
            with warnings.catch_warnings():  # torch 2.x flags torch.jit.load as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(self.path, map_location=self.device)
        except Exception as err:  # noqa: BLE001 (any failure to load is the user's file)
            raise InputError(f"{self.path}: not a TorchScript file torch.jit.load can read "
                             f"({type(err).__name__}: {_last_line(err)})", param="features") from None
        self.module.eval()

    def _forward(self, x):
        try:
            with torch.no_grad():
                out = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        except Exception as err:  # noqa: BLE001
            raise InputError(f"{self.path}: failed on a batch of shape {tuple(x.shape)} "
                             f"({type(err).__name__}: {_last_line(err)})", param="features") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"{self.path}: must return a (N, k) tensor for N = {len(x)} images, returned {got}",
                             param="features")
        out = out.detach().float().cpu().numpy()
        if not np.isfinite(out).all():
            raise InputError(f"{self.path}: returned NaN or Inf features", param="features")
        return out


def _last_line(err: Exception) -> str:
    """One line of an exception's message: its last line (TorchScript puts the original error there)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


# The default classifier -------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """A 3x3 conv (16 channels), then stride-2 3x3 convs (32, 64, 64, ... channels) until the map is
    at most 2x2 (at least two of them: 8 px -> 4 -> 2, 28 px -> 14 -> 7 -> 4 -> 2), each with ReLU;
    global average pooling, a dense layer of 128 units (the features) and a linear classifier.
    Input (B, C, R, R) in [-1, 1]."""

    def __init__(self, channels: int, num_classes: int, resolution: int = 8):
        super().__init__()
        layers, width, size = [nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU()], 16, resolution
        while size > 2 or len(layers) < 6:
            out, size = min(2 * width, 64), (size + 1) // 2
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.ReLU()]
            width = out
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Linear(width, _FEATURE_DIM)
        self.head = nn.Linear(_FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 128) penultimate activations."""
        return torch.relu(self.dense(self.convs(x).mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def classifier_path(source: str, shape) -> Path:
    """The cache file of the classifier for ``source`` at image shape (C, R, R)."""
    c, h, w = shape
    return cache_dir() / f"classifier-{source}-{c}x{h}x{w}-v{CLASSIFIER_VERSION}.safetensors"


def _classifier_data(source: str, resolution: int | None):
    """(train, test) ImageSets of ``source`` at ``resolution``: the test split, or for digits (which
    has only a train split) every fifth image held out."""
    from diffmem.data.sources import load_source
    from diffmem.data.subsets import resize, take

    train = load_source(source)
    if source == "digits":
        held = np.arange(len(train)) % 5 == 4
        train, test = take(train, np.flatnonzero(~held)), take(train, np.flatnonzero(held))
    else:
        test = load_source(source, split="test")
    if resolution is not None:
        train, test = resize(train, resolution), resize(test, resolution)
    return train, test


_EPOCHS = {"digits": 20, "mnist": 2, "fashion-mnist": 2}


def train_classifier(source: str, resolution: int | None = None, *, epochs: int | None = None,
                     seed: int = 0, device="cpu") -> tuple[SmallCNN, dict]:
    """Train :class:`SmallCNN` on ``source`` (labels, Adam lr 3e-3, batch 128, seeded) and return it
    with its record: test accuracy, training seconds, image counts, epochs."""
    train, test = _classifier_data(source, resolution)
    epochs = epochs or _EPOCHS.get(source, 5)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's global RNG untouched
        torch.manual_seed(seed)
        net = SmallCNN(train.shape[0], int(train.labels.max()) + 1, train.shape[1]).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(train.to_model()), torch.from_numpy(train.labels)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(128):
            loss = nn.functional.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        xt = torch.from_numpy(test.to_model())
        pred = torch.cat([net(xt[i:i + 1024].to(device)).argmax(1).cpu() for i in range(0, len(xt), 1024)])
    accuracy = float((pred.numpy() == test.labels).mean())
    record = {"source": source, "shape": list(train.shape), "version": CLASSIFIER_VERSION, "epochs": epochs,
              "seed": seed, "n_train": len(train), "n_test": len(test), "test_accuracy": accuracy,
              "train_seconds": round(seconds, 2), "feature_dim": _FEATURE_DIM,
              "torch_threads": torch.get_num_threads()}
    return net, record


def _cached_classifier(source: str, shape, device) -> tuple[SmallCNN, dict]:
    """The classifier for ``source`` at ``shape`` from the cache, trained and written there first if
    missing (weights and JSON record written atomically)."""
    from safetensors.torch import load_file, save_file

    from diffmem.atomic import atomic_path, write_json

    path = classifier_path(source, shape)
    record_path = path.with_suffix(".json")
    if path.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            net = SmallCNN(shape[0], record["num_classes"], shape[1])
            net.load_state_dict(load_file(str(path)))
        except Exception as err:  # noqa: BLE001 (a damaged cache file)
            raise InputError(f"{path}: a damaged classifier cache file ({type(err).__name__}: {_last_line(err)}); "
                             f"delete it and {record_path.name} to train the classifier again",
                             param="features") from None
        return net.to(device).eval(), record
    net, record = train_classifier(source, shape[1], device=device)
    record["num_classes"] = net.head.out_features
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, tmp)
        write_json(record_path, record)
    except OSError as err:
        raise InputError(f"cannot write the classifier cache {path} ({err.strerror or err}); "
                         f"set DIFFMEM_CACHE to a writable folder", param="features") from None
    return net.eval(), record


class ClassifierFeatures(FeatureExtractor):
    """Penultimate features of the cached :class:`SmallCNN` for a built-in ``source``; the network
    for each image shape is loaded (or trained) on first use."""

    def __init__(self, source: str | None, device="cpu"):
        if source is None:
            raise InputError("the classifier features need the built-in source the images come from "
                             f"(source: one of {', '.join(CLASSIFIER_SOURCES)}); or use pixels, pca:K or a "
                             f"TorchScript file", param="source")
        if source not in CLASSIFIER_SOURCES:
            raise InputError(f"{source}: diffmem trains classifiers only for {', '.join(CLASSIFIER_SOURCES)}; "
                             f"for other data give --features pixels, pca:K or a TorchScript file", param="source")
        self.source, self.device, self.name, self.dim = source, torch.device(device), f"classifier:{source}", _FEATURE_DIM
        self.nets: dict[tuple, SmallCNN] = {}
        self.records: dict[tuple, dict] = {}

    def prepare(self, shape) -> dict:
        """Load or train the network for image shape (C, R, R); its record (accuracy, time)."""
        shape = tuple(int(s) for s in shape)
        if shape not in self.nets:
            if shape[0] != 1 or shape[1] != shape[2]:
                raise InputError(f"{self.source} classifier: images must be 1xRxR (grey, square), got "
                                 f"{'x'.join(map(str, shape))}", param="features")
            self.nets[shape], self.records[shape] = _cached_classifier(self.source, shape, self.device)
        return self.records[shape]

    def _forward(self, x):
        self.prepare(x.shape[1:])
        with torch.no_grad():
            return self.nets[tuple(x.shape[1:])].features(torch.from_numpy(x).to(self.device)).cpu().numpy()


def load_features(spec, *, reference=None, source: str | None = None, device="cpu") -> FeatureExtractor:
    """The feature extractor ``spec`` names (see the module docstring).

    ``reference`` (images) is required by ``pca:K``; for ``classifier`` it fixes the resolution so
    the network is loaded or trained now. ``source`` is the built-in source of the classifier.
    """
    if isinstance(spec, FeatureExtractor):
        return spec
    kind, arg = parse_features(spec)
    if kind == "pixels":
        extractor = PixelFeatures()
        if reference is not None:
            extractor.dim = int(np.prod(_model_space(reference).shape[1:]))
        return extractor
    if kind == "pca":
        if reference is None:
            raise InputError(f"pca:{arg}: needs reference images to fit the components on", param="features")
        return PCAFeatures(reference, arg)
    if kind == "classifier":
        extractor = ClassifierFeatures(source, device)
        if reference is not None:
            extractor.prepare(_model_space(reference).shape[1:])
        return extractor
    extractor = TorchScriptFeatures(arg, device)
    if reference is not None:
        check_extractor(extractor, reference)
    return extractor


PROBE_IMAGES = 32  # reference images a TorchScript extractor is tried on before it is used


def check_extractor(extractor: FeatureExtractor, reference) -> FeatureExtractor:
    """Try ``extractor`` on up to :data:`PROBE_IMAGES` reference images, now, before any work:
    refused (InputError naming ``features``) when it fails, returns NaN or a wrong shape (see
    ``_forward``), gives the same vector to different images (a constant extractor makes every
    sample a copy), or a zero vector (its cosine to anything is undefined)."""
    x = _model_space(reference)[:PROBE_IMAGES]
    f = extractor.embed(x)
    name = getattr(extractor, "path", extractor.name)
    if np.any(np.linalg.norm(f, axis=1) == 0):
        raise InputError(f"{name}: returns a zero feature vector (cosine similarity is undefined for it); "
                         "a feature extractor must tell images apart", param="features")
    distinct_images = len(np.unique(x.reshape(len(x), -1), axis=0))
    if distinct_images > 1 and len(np.unique(f, axis=0)) == 1:
        raise InputError(f"{name}: returns the same features for {distinct_images} different images (a constant "
                         "extractor would call every sample a copy)", param="features")
    return extractor


def checked_embedding(extractor, images, *, what: str = "", batch: int = 256, k: int | None = None,
                      progress: bool = False, dtype=np.float32) -> np.ndarray:
    """(N, k) features of ``images`` by ``extractor`` as ``dtype``, checked: 2-D, one non-empty row per
    image (``k`` columns when given), numeric and finite. Any failure of the extractor itself (a
    user's TorchScript file may fail any way) is one InputError naming ``features``."""
    name = getattr(extractor, "name", "the feature extractor")
    try:
        out = extractor.embed(images, batch=batch, progress=progress)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 -- one line naming the extractor
        raise InputError(f"{name}: the feature extractor failed ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no message'})",
                         param="features") from None
    out = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out)
    images_of = f"{len(images)} {what + ' ' if what else ''}images"
    if out.ndim != 2 or len(out) != len(images) or (k is not None and out.shape[1] != k) or out.shape[1] == 0:
        raise InputError(f"{name}: returned features of shape {tuple(out.shape)} for {images_of}; expected "
                         f"({len(images)}, {k if k is not None else 'k'})", param="features")
    if not np.issubdtype(out.dtype, np.number) or not np.isfinite(out).all():
        raise InputError(f"{name}: returned NaN, Inf or non-numeric features for {images_of}", param="features")
    return out.astype(dtype, copy=False)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in ``x``'s dtype (zero rows stay zero): on unit rows the cosine
    similarity is ``1 - ‖u - v‖² / 2``, so cosine top-k = L2 top-k."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
