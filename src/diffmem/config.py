"""Every training knob in one frozen, validated record, and the run plan it resolves to on a data set.

:class:`TrainConfig` holds what a user chooses (network, preconditioning, duration, optimizer,
schedules, seed, what to save and track). It is validated once, in its constructor: a bad value
raises :class:`~diffmem.errors.InputError` naming the field (``lr: must be a finite number, got
nan``), which the command line reports under the flag of the same name (``--lr``).

:func:`plan_run` combines a config with a data set into a :class:`RunPlan`: the image shape and
class count (which fix the network), the number of steps (``ceil(epochs · |D| / batch)``: the same
epochs for every |D|, seed 001's protocol), the effective learning rate, the schedules in images,
the snapshot epochs, the parameter count and a content hash of the data (a resumed run refuses
other data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from diffmem.denoisers.networks import ARCHS, PRESETS, parse_int_tuple
from diffmem.denoisers.precond import PRECONDS
from diffmem.errors import InputError, check_number
from diffmem.rng import check_seed

OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("cpu", "cuda")
DEFAULT_EMA_HALFLIFE = 500_000  # images (EDM: 500 kimg, i.e. rate 0.99929 at batch 512)
EDM_EMA_RAMPUP = 0.05  # EDM's EMA ramp for a half-life: half-life ≤ 0.05 · images seen
MAX_CLASSES = 2**20  # class indices beyond this would make the label embedding absurdly large

# Fields that may differ between a run and its resume: they do not change the numbers it computes.
RUNTIME_FIELDS = ("device", "compile", "channels_last", "log_every")


@dataclass(frozen=True)
class TrainConfig:
    """A training run's knobs. ``None`` for a network knob means: the preset's value, else the
    architecture's default (:mod:`diffmem.denoisers.networks`). Give exactly one of ``epochs`` and
    ``steps``. Durations and half-lives given as strings may be in images (``"10000"``) or in
    epochs of the data set (``"20ep"``, i.e. scaled by |D|)."""

    # Network (raw backbone) and preconditioning.
    arch: str | None = None  # ddpmpp | ncsnpp | mlp (None: the preset's, else ddpmpp)
    preset: str | None = None  # paper | tiny | small | mlp-toy
    channels: int | None = None  # base width
    channel_mult: tuple[int, ...] | None = None  # per-resolution multipliers, e.g. (2, 2, 2)
    blocks: int | None = None  # residual blocks per resolution
    attn: tuple[int, ...] | None = None  # resolutions with self-attention (() = none)
    embed: str | None = None  # noise embedding: positional | fourier
    skips: tuple[int, ...] | None = None  # 0/1 mask over the encoder->decoder skips
    dropout: float | None = None
    hidden: int | None = None  # MLP width
    depth: int | None = None  # MLP hidden layers
    precond: str = "vp"  # edm | vp: preconditioning and its loss
    sigma_data: float = 0.5  # EDM's σ_data: the data's standard deviation (edm only; 1.0 for unit-variance toys)
    tikhonov: float = 0.0  # Tikhonov c ≥ 0 in the loss (seed 002): minimizer (x̄ - x)/(σ² + c) (diffmem.losses)
    # Duration.
    epochs: float | None = None
    steps: int | None = None
    # Optimization.
    batch: int = 512  # global batch (all processes together)
    lr: float = 2e-4
    lr_scaling: int | None = None  # reference batch of the linear scaling rule lr · batch / lr_scaling
    lr_warmup: str = "0"  # linear warm-up length: images or "Nep"
    weight_decay: float = 0.0  # L2 on the gradient for adam/sgd (seed 001), decoupled for adamw
    optimizer: str = "adam"  # adam | adamw | sgd
    ema: str | None = None  # EMA half-life: images or "Nep" (default 500 000 images)
    ema_rate: float | None = None  # or the decay per step in [0, 1), exactly, once the warm-up is over
    ema_warmup: str | None = None  # EMA warm-up: images or "Nep"; the half-life grows linearly to its value
    ema_rampup: float | None = None  # EDM's ramp instead: half-life ≤ ema_rampup · images seen (None: 0.05 for
    #                                  ema, off for ema_rate and with ema_warmup; 0 = off)
    seed: int = 0
    # What to save and measure.
    snapshots: str = ""  # EMA snapshot epochs, e.g. "10,50,log:8" (the final one always)
    track_every: int = 0  # measure the memorization ratio every K epochs (0 = never)
    track_samples: int = 1000  # samples per measurement
    guard: float | None = None  # stop once the tracked ratio exceeds this (diffmem.studies.guard; needs track_every)
    checkpoint_every: int = 500  # save state.pt every K steps
    log_every: int = 100  # append to stats.jsonl (and check for NaN/Inf) every K steps
    # Runtime: may change on resume without changing the result.
    device: str | None = None  # cpu | cuda (default: cuda when available)
    compile: bool = False
    channels_last: bool = False
    amp: bool = False  # bf16 autocast (CUDA only)

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name, lo in (("channel_mult", 1), ("skips", 0), ("attn", 1)):
            if getattr(self, name) is not None:
                fix(name, parse_int_tuple(name, getattr(self, name), lo, allow_empty=name == "attn"))
        _choice("precond", self.precond, tuple(PRECONDS))
        fix("sigma_data", check_number("sigma_data", self.sigma_data, lo=0, lo_open=True, hi=1e6))
        if self.precond != "edm" and self.sigma_data != 0.5:
            raise InputError(f"only EDM preconditioning uses it, not {self.precond}", param="sigma_data")
        fix("tikhonov", check_number("tikhonov", self.tikhonov, lo=0, hi=1e6))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.preset is not None:
            _choice("preset", self.preset, tuple(PRESETS))
        if self.arch is None:  # the preset's architecture, else DDPM++
            fix("arch", PRESETS[self.preset]["arch"] if self.preset is not None else "ddpmpp")
        _choice("arch", self.arch, ARCHS)
        if self.embed is not None:
            _choice("embed", self.embed, ("positional", "fourier"))
        if self.device is not None:
            _choice("device", self.device, DEVICES)
        for name in ("channels", "blocks", "hidden", "depth"):
            if getattr(self, name) is not None:
                fix(name, check_number(name, getattr(self, name), lo=1, integer=True))
        if self.dropout is not None:
            fix("dropout", check_number("dropout", self.dropout, lo=0, hi=1, hi_open=True))
        self._check_duration_and_schedules(fix)
        if self.guard is not None:  # the memorization guard stops on the tracked ratio
            fix("guard", check_number("guard", self.guard, lo=0, hi=1))
            if not self.track_every:
                raise InputError("the guard acts on the tracked ratio: set track_every > 0", param="guard")
        fix("seed", check_seed(self.seed))
        if self.amp and self.device == "cpu":
            raise InputError("bf16 autocast needs device cuda", param="amp")
        parse_snapshots(self.snapshots, 10**9)  # syntax only; the range is checked against the run's length

    def _check_duration_and_schedules(self, fix):
        if (self.epochs is None) == (self.steps is None):
            raise InputError("give exactly one of them" if self.epochs is not None
                             else "give the training duration with one of them", param="epochs/steps")
        if self.epochs is not None:
            fix("epochs", check_number("epochs", self.epochs, lo=0, lo_open=True))
        if self.steps is not None:
            fix("steps", check_number("steps", self.steps, lo=1, integer=True))
        for name in ("batch", "track_samples", "checkpoint_every", "log_every"):
            fix(name, check_number(name, getattr(self, name), lo=1, integer=True))
        if self.lr_scaling is not None:
            fix("lr_scaling", check_number("lr_scaling", self.lr_scaling, lo=1, integer=True))
        fix("track_every", check_number("track_every", self.track_every, lo=0, integer=True))
        fix("lr", check_number("lr", self.lr, lo=0, lo_open=True))
        fix("weight_decay", check_number("weight_decay", self.weight_decay, lo=0))
        if self.ema is not None and self.ema_rate is not None:
            raise InputError("give at most one of them", param="ema/ema_rate")
        if self.ema_warmup is not None:
            if self.ema_rampup:
                raise InputError("give at most one EMA warm-up", param="ema_warmup/ema_rampup")
            fix("ema_warmup", str(self.ema_warmup))
            parse_duration_images(self.ema_warmup, 1, "ema_warmup")
        if self.ema_rampup is not None:
            fix("ema_rampup", check_number("ema_rampup", self.ema_rampup, lo=0))
        if self.ema_rate is not None:
            fix("ema_rate", check_number("ema_rate", self.ema_rate, lo=0, hi=1, hi_open=True))
        fix("lr_warmup", str(self.lr_warmup))
        parse_duration_images(self.lr_warmup, 1, "lr_warmup")
        if self.ema is not None:
            fix("ema", str(self.ema))
            parse_duration_images(self.ema, 1, "ema")

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config in a record (``config.json``, a snapshot's metadata); other keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: TrainConfig, *, ignore=RUNTIME_FIELDS) -> list[str]:
        """Fields (outside ``ignore``) whose values differ."""
        return [f.name for f in dataclasses.fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"expected one of {', '.join(choices)}, got {value!r}", param=name)


def parse_duration_images(text, num_images: int, param: str) -> int:
    """``N`` or ``Nimg`` (training images) or ``Nep`` (epochs of the data set, i.e. scaled by |D|) → images."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(img|ep|epochs?)?\s*", str(text))
    if not m:
        raise InputError(f"expected a number of images (e.g. 10000) or epochs (e.g. 20ep), got {text!r}", param=param)
    value = check_number(param, float(m.group(1)), lo=0, hi=1e15)
    return int(round(value * num_images if m.group(2) and m.group(2).startswith("ep") else value))


def parse_snapshots(text: str, total_epochs: int) -> list[int]:
    """``"10,50,log:8"`` → sorted epochs; ``log:K`` adds K log-spaced epochs in 1..total_epochs."""
    epochs: set[int] = set()
    for item in [s.strip() for s in str(text or "").split(",") if s.strip()]:
        if item.startswith("log:"):
            k = item[4:]
            if not k.isdigit() or not 1 <= int(k) <= 10_000:
                raise InputError(f"expected log:K with a whole K in 1..10000, got {item!r}", param="snapshots")
            epochs.update(int(round(e)) for e in np.geomspace(1, max(total_epochs, 1), int(k)))
        elif not item.isdigit():
            raise InputError(f"expected epochs or log:K, got {item!r}", param="snapshots")
        elif not 1 <= int(item) <= total_epochs:
            raise InputError(f"epoch {item} is outside 1..{total_epochs} (the run's length)", param="snapshots")
        else:
            epochs.add(int(item))
    return sorted(epochs)


def data_fingerprint(images: np.ndarray, labels: np.ndarray | None) -> str:
    """SHA-256 of the images' and labels' bytes (with their dtypes and shapes): what a run trained on."""
    h = hashlib.sha256()
    for array in (images, labels):
        if array is not None:
            array = np.ascontiguousarray(array)
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(memoryview(array).cast("B"))
        h.update(b"|")
    return h.hexdigest()


@dataclass(frozen=True)
class RunPlan:
    """What a :class:`TrainConfig` means on one data set (all derived, nothing to choose)."""

    num_images: int
    in_channels: int
    resolution: int
    num_classes: int  # 0 = unconditional; else the labels' largest value + 1
    data_sha256: str
    total_steps: int
    total_epochs: float
    lr_effective: float
    lr_warmup_images: int
    ema_halflife_images: float  # the EMA's half-life once warmed up (that of ema_rate at this batch)
    ema_warmup_images: int = 0  # linear warm-up of the half-life (0 = none)
    ema_ramp: float = 0.0  # EDM's ramp in force: half-life ≤ ema_ramp · images seen (0 = none)
    snapshot_epochs: list[int] = field(default_factory=list)
    world_size: int = 1
    parameters: int | None = None
    dim: int = 0  # point clouds: the points' dimension d (then in_channels = resolution = 1); 0 for images

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape: (C, H, W) for images, (d,) for point clouds."""
        return (self.dim,) if self.dim else (self.in_channels, self.resolution, self.resolution)


def plan_run(config: TrainConfig, data, *, world_size: int = 1, parameters: int | None = None) -> RunPlan:
    """Resolve ``config`` on ``data`` (an :class:`~diffmem.data.ImageSet`, or a
    :class:`~diffmem.data.points.PointCloud` for an MLP); see the module docstring."""
    from diffmem.schedules import halflife_from_rate

    n = len(data)
    dim = 0
    if len(data.shape) == 1:  # a point cloud (N, d): only the MLP takes vectors
        if config.arch != "mlp":
            raise InputError(f"{data.source}: points of dimension {data.shape[0]} need an MLP (--preset mlp-toy "
                             f"or --arch mlp), not {config.arch}", param="arch")
        dim, channels, height, width = data.shape[0], 1, 1, 1
    else:
        channels, height, width = data.shape
    if height != width:
        raise InputError(f"{data.source}: images must be square, got {height}x{width}", param="data")
    if data.num_classes > MAX_CLASSES:
        raise InputError(f"{data.source}: class index {data.num_classes - 1} is too large (at most {MAX_CLASSES})",
                         param="data")
    if config.batch % world_size:
        raise InputError(f"{config.batch} is not divisible by the {world_size} processes", param="batch")
    total_steps = config.steps if config.steps is not None else math.ceil(config.epochs * n / config.batch)
    if total_steps > 10**12:
        raise InputError(f"{total_steps} steps is more than any run can take", param="epochs")
    total_epochs = total_steps * config.batch / n
    if config.ema_rate is not None:
        halflife = halflife_from_rate(config.ema_rate, config.batch)
    else:
        halflife = float(DEFAULT_EMA_HALFLIFE if config.ema is None else parse_duration_images(config.ema, n, "ema"))
    ema_warmup = 0 if config.ema_warmup is None else parse_duration_images(config.ema_warmup, n, "ema_warmup")
    ema_ramp = config.ema_rampup
    if ema_ramp is None:  # EDM's ramp for a half-life; a rate is the rate (after ema_warmup, if any)
        ema_ramp = EDM_EMA_RAMPUP if config.ema_rate is None and config.ema_warmup is None else 0.0
    return RunPlan(
        num_images=n, in_channels=channels, resolution=height, num_classes=data.num_classes,
        data_sha256=data_fingerprint(data.images, data.labels), total_steps=total_steps, total_epochs=total_epochs,
        lr_effective=config.lr * (config.batch / config.lr_scaling if config.lr_scaling else 1.0),
        lr_warmup_images=parse_duration_images(config.lr_warmup, n, "lr_warmup"), ema_halflife_images=halflife,
        ema_warmup_images=ema_warmup, ema_ramp=ema_ramp,
        snapshot_epochs=parse_snapshots(config.snapshots, max(int(total_epochs), 1)), world_size=world_size,
        parameters=parameters, dim=dim)
