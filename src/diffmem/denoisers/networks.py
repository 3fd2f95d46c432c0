"""Build denoiser backbones from an architecture name, a preset and the study's knobs.

``build_network(arch, img_resolution=..., in_channels=..., num_classes=..., preset=..., **knobs)``
returns the raw network ``F(x, noise_labels, class_labels=None)``; the preconditioner wraps it.
Knobs (``None`` = preset, else architecture default), spelled as on the command line with ``-``:

===============  =========================================  =====================================
knob             meaning                                    architectures
===============  =========================================  =====================================
channels         base width (``model_channels``)            ddpmpp, ncsnpp
channel_mult     per-level multipliers, e.g. (2, 2, 2)      ddpmpp, ncsnpp
blocks           residual blocks per level                  ddpmpp, ncsnpp
attn             resolutions with self-attention            ddpmpp, ncsnpp
dropout          dropout probability                        ddpmpp, ncsnpp
embed            noise embedding positional | fourier       all
skips            0/1 mask over the L·(blocks+1) skips       ddpmpp, ncsnpp
hidden, depth    MLP width and number of hidden layers      mlp
dim              data dimension d (else res²·channels)      mlp
===============  =========================================  =====================================

Architecture defaults are EDM's CIFAR-10 configurations (``ddpmpp``: 128 channels, (2, 2, 2),
4 blocks, attention at 16, dropout 0.13, positional; ``ncsnpp`` the same with Fourier features,
residual encoder, standard decoder, [1, 3, 3, 1] filter: what NVlabs/edm's ``train.py`` passes
for ``--arch ncsnpp``, not the "skip" decoder of Song et al.'s NCSN++). Attention resolutions that
come from a preset or default and do not occur in the network are ignored; given explicitly they
are an error.

Class conditioning: networks take float one-hot labels (N, label_dim); :func:`one_hot` makes them
from int64 class indices. "Unique" labels (one class per training image) use label_dim = |D|.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffmem.denoisers.mlp import MLPNet
from diffmem.denoisers.unet import SongUNet, num_skips
from diffmem.errors import InputError

# The TrainConfig fields that describe the network (diffmem.denoisers.build reads them).
NETWORK_FIELDS = ("arch", "preset", "channels", "channel_mult", "blocks", "attn", "embed", "skips", "dropout",
                  "hidden", "depth")

ARCHS = ("ddpmpp", "ncsnpp", "mlp")

_UNET_KNOBS = ("channels", "channel_mult", "blocks", "attn", "dropout", "embed", "skips")
_MLP_KNOBS = ("hidden", "depth", "embed", "dim")
_KNOBS = {"ddpmpp": _UNET_KNOBS, "ncsnpp": _UNET_KNOBS, "mlp": _MLP_KNOBS}

ARCH_DEFAULTS: dict[str, dict] = {
    "ddpmpp": dict(channels=128, channel_mult=(2, 2, 2), blocks=4, attn=(16,), dropout=0.13, embed="positional"),
    "ncsnpp": dict(channels=128, channel_mult=(2, 2, 2), blocks=4, attn=(16,), dropout=0.13, embed="fourier"),
    "mlp": dict(hidden=256, depth=2, embed="positional"),
}

# Fixed (non-knob) SongUNet arguments per architecture, as NVlabs/edm's train.py sets them for
# --arch ddpmpp / ncsnpp (both use the standard decoder).
_SONG_FIXED = {
    "ddpmpp": dict(encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=(1, 1)),
    "ncsnpp": dict(encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
                   resample_filter=(1, 3, 3, 1)),
}

PRESETS: dict[str, dict] = {
    # Gu et al. (seed 001) basic model, for 32x32x3: DDPM++ 128 ch, (2,2,2), 2 blocks, attn 16.
    "paper": dict(arch="ddpmpp", channels=128, channel_mult=(2, 2, 2), blocks=2, attn=(16,), dropout=0.13,
                  embed="positional"),
    # DESIGN.md calibration net (0.72 M parameters on 8x8x1): CPU minutes to memorize |D| = 64.
    # Small presets leave the embedding to the architecture (--arch ncsnpp --preset tiny is Fourier).
    "tiny": dict(arch="ddpmpp", channels=32, channel_mult=(1, 2), blocks=1, attn=(), dropout=0.0),
    # Three levels, two blocks: the paper's shape at 1/4 width (for 16-32 px on CPU).
    "small": dict(arch="ddpmpp", channels=32, channel_mult=(1, 2, 2), blocks=2, attn=(), dropout=0.0),
    # Seed 002's toy MLP.
    "mlp-toy": dict(arch="mlp", hidden=256, depth=2, embed="positional"),
}


def one_hot(labels: torch.Tensor, label_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int64 class indices (N,) -> float one-hot (N, label_dim), the networks' label input."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dim() != 1:
        raise ValueError(f"one_hot: labels must be int (N,), got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= label_dim):
        raise ValueError(f"one_hot: labels must lie in [0, {label_dim}), got [{int(labels.min())}, {int(labels.max())}]")
    return torch.nn.functional.one_hot(labels.long(), label_dim).to(dtype)


def count_parameters(net: torch.nn.Module) -> int:
    """Number of scalar parameters (buffers such as Fourier frequencies not counted)."""
    return sum(p.numel() for p in net.parameters())


def _int(name, value, lo):
    """An int >= lo from an int or a decimal string; InputError naming the flag otherwise."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"must be an integer, got {value!r}", param=name)
    if value < lo:
        raise InputError(f"must be >= {lo}, got {value}", param=name)
    return value


def parse_int_tuple(name, value, lo, allow_empty=False) -> tuple[int, ...]:
    """Parse a sequence of ints or a string like "2,2,2" / "(2, 2, 2)" / "none" (with ``allow_empty``),
    each >= ``lo``; errors name the flag ``--name``."""
    if isinstance(value, str):
        text = value.strip().strip("()[]").replace(",", " ").split()
        if allow_empty and len(text) == 1 and text[0].lower() == "none":
            text = []
        value = text
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence):
        raise InputError(f"must be a list of integers, got {value!r}", param=name)
    out = tuple(_int(name, v, lo) for v in value)
    if not out and not allow_empty:
        raise InputError("must not be empty", param=name)
    return out


def _mask(value, n: int, channel_mult, blocks) -> tuple[int, ...]:
    if isinstance(value, str):
        text = value.replace(",", "").replace(" ", "").strip("()[]")
        value = list(text)
    try:
        items = list(value)
    except TypeError:
        raise InputError(f"must be a sequence of 0/1, got {value!r}", param="skips") from None
    if any(v not in (0, 1, "0", "1") for v in items):
        raise InputError(f"entries must be 0 or 1, got {value!r}", param="skips")
    mask = tuple(int(v) for v in items)
    if len(mask) != n:
        raise InputError(f"needs {n} entries (levels {len(channel_mult)} x (blocks {blocks} + 1)), "
                         f"got {len(mask)}", param="skips")
    return mask


def _settings(arch, preset, knobs) -> dict:
    """Merge arch defaults < preset < explicit knobs; validate names. Returns knob dict + 'explicit' set."""
    if arch is None and preset is not None and preset in PRESETS:
        arch = PRESETS[preset]["arch"]
    if arch not in ARCHS:
        raise InputError(f"must be one of {', '.join(ARCHS)}, got {arch!r}", param="arch")
    allowed = _KNOBS[arch]
    for name, value in knobs.items():
        if value is None:
            continue
        if name not in allowed:
            where = [a for a, k in _KNOBS.items() if name in k]
            if where:
                raise InputError(f"not used by arch {arch} (only by {', '.join(where)})", param=name)
            raise InputError("unknown network option", param=name)
    settings = dict(ARCH_DEFAULTS[arch])
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"must be one of {', '.join(PRESETS)}, got {preset!r}", param="preset")
        values = {k: v for k, v in PRESETS[preset].items() if k != "arch"}
        bad = [k for k in values if k not in allowed]
        if bad:
            raise InputError(f"{preset!r} is for arch {PRESETS[preset]['arch']}, not {arch}", param="preset")
        settings.update(values)
    explicit = {k for k, v in knobs.items() if v is not None}
    settings.update({k: v for k, v in knobs.items() if v is not None})
    settings["arch"] = arch
    settings["explicit"] = explicit
    return settings


def build_network(arch: str, *, img_resolution: int, in_channels: int, num_classes: int = 0,
                  preset: str | None = None, **knobs) -> torch.nn.Module:
    """The backbone for ``arch`` in ddpmpp | ncsnpp | mlp; see the module docstring for knobs.

    Raises :class:`~diffmem.errors.InputError` naming the command-line flag for any bad value.
    """
    s = _settings(arch, preset, knobs)
    arch = s["arch"]
    label_dim = _int("num_classes", num_classes, 0)  # EDM's SongUNet calls it label_dim
    embed = s["embed"]
    if embed not in ("positional", "fourier"):
        raise InputError(f"must be positional or fourier, got {embed!r}", param="embed")

    if arch == "mlp":
        if "dim" in s:
            dim = _int("dim", s["dim"], 1)
        else:
            dim = _int("resolution", img_resolution, 1) ** 2 * _int("channels", in_channels, 1)
        return MLPNet(dim=dim, hidden=_int("hidden", s["hidden"], 2), depth=_int("depth", s["depth"], 1),
                      label_dim=label_dim, embedding_type=embed)

    res = _int("resolution", img_resolution, 1)
    in_channels = _int("in_channels", in_channels, 1)
    channels = _int("channels", s["channels"], 4)
    channel_mult = parse_int_tuple("channel_mult", s["channel_mult"], 1)
    blocks = _int("blocks", s["blocks"], 1)
    if res % (1 << (len(channel_mult) - 1)):
        raise InputError(f"{len(channel_mult)} levels halve the resolution {len(channel_mult) - 1} "
                         f"times, but {res} is not divisible by {1 << (len(channel_mult) - 1)}", param="channel_mult")
    resolutions = [res >> level for level in range(len(channel_mult))]
    attn = parse_int_tuple("attn", s["attn"], 1, allow_empty=True)
    if "attn" in s["explicit"]:
        missing = [r for r in attn if r not in resolutions]
        if missing:
            raise InputError(f"{missing} not among this network's resolutions {resolutions}", param="attn")
    try:
        dropout = float(s["dropout"])
    except (TypeError, ValueError):
        raise InputError(f"must be a number, got {s['dropout']!r}", param="dropout") from None
    if not 0.0 <= dropout < 1.0:
        raise InputError(f"must be in [0, 1), got {dropout}", param="dropout")
    n = num_skips(channel_mult, blocks)
    skip_mask = _mask(s["skips"], n, channel_mult, blocks) if s.get("skips") is not None else None

    net = SongUNet(img_resolution=res, in_channels=in_channels, out_channels=in_channels, label_dim=label_dim,
                   model_channels=channels, channel_mult=channel_mult, num_blocks=blocks, attn_resolutions=attn,
                   dropout=dropout, embedding_type=embed, skip_mask=skip_mask, **_SONG_FIXED[arch])
    for module in net.modules():  # decoder inputs concatenate two widths; check those too
        if hasattr(module, "num_groups") and (module.num_groups < 1 or module.num_channels % module.num_groups):
            raise InputError(f"{channels} with channel_mult {channel_mult} gives a "
                             f"{module.num_channels}-channel layer that GroupNorm cannot split into "
                             f"{module.num_groups} groups", param="channels")
    return net
