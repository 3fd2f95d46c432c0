"""The network recipe: a :class:`~diffmem.config.TrainConfig` (and the data's shape) → a
preconditioned denoiser with fresh weights, or with the weights of a snapshot. It reads the config's
fields by name (:data:`~diffmem.denoisers.networks.NETWORK_FIELDS`, ``precond``, ``sigma_data``), so
the denoisers stay below the training layer that defines the config."""

from __future__ import annotations

import torch

from diffmem.denoisers.networks import NETWORK_FIELDS, build_network
from diffmem.denoisers.precond import PRECONDS


def build_denoiser(config, *, resolution: int, in_channels: int, num_classes: int = 0,
                   dim: int = 0) -> torch.nn.Module:
    """The preconditioned network ``config`` describes for images of shape (in_channels, resolution,
    resolution) and ``num_classes`` classes (0 = unconditional), with freshly initialized weights
    (seed them with ``torch.manual_seed`` first for reproducible initial weights). ``dim > 0``: a
    network for points of shape (dim,) instead (an MLP)."""
    knobs = {k: getattr(config, k) for k in NETWORK_FIELDS if k not in ("arch", "preset")}
    if dim:
        knobs["dim"] = dim
    net = build_network(config.arch, preset=config.preset,
                        img_resolution=resolution, in_channels=in_channels, num_classes=num_classes,
                        **{k: v for k, v in knobs.items() if v is not None})
    shape = (dim,) if dim else (in_channels, resolution, resolution)
    return PRECONDS[config.precond](net, shape=shape, num_classes=num_classes, **precond_options(config))


def precond_options(config) -> dict:
    """Keyword arguments of the preconditioner and its loss: EDM's ``sigma_data``; none for VP."""
    return {"sigma_data": config.sigma_data} if config.precond == "edm" else {}
