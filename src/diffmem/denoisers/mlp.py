"""MLP denoiser backbone for low-dimensional data (seed 002's toy: width 256, depth 2)."""

from __future__ import annotations

import math

import torch
from torch.nn.functional import silu

from diffmem.denoisers.unet import FourierEmbedding, Linear, PositionalEmbedding


class MLPNet(torch.nn.Module):
    """``F(x; c_noise, c)`` for x of shape (N, d) (or any (N, ...) with d = prod(...)).

    The noise label is embedded (positional or Fourier, ``hidden`` channels) and mapped through
    one SiLU layer to a vector ``e``; ``depth`` hidden layers ``h_i = SiLU(W_i h_{i-1} + b_i + e)``
    (``h_0 = x``) of width ``hidden`` are followed by a linear read-out to d. ``class_labels`` is a
    float (N, label_dim) one-hot matrix added to the embedding through a linear map.
    """

    def __init__(self, dim, hidden=256, depth=2, label_dim=0, embedding_type="positional"):
        super().__init__()
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be positional or fourier, got {embedding_type!r}")
        if dim < 1 or hidden < 2 or depth < 1:
            raise ValueError(f"MLPNet: need dim >= 1, hidden >= 2, depth >= 1; got {dim}, {hidden}, {depth}")
        self.config = dict(dim=dim, hidden=hidden, depth=depth, label_dim=label_dim, embedding_type=embedding_type)
        self.dim = dim
        self.label_dim = label_dim
        init = dict(init_mode="xavier_uniform")
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(hidden, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(hidden)
        self.map_label = Linear(label_dim, hidden, **init) if label_dim else None
        self.map_layer = Linear(hidden, hidden, **init)
        self.layers = torch.nn.ModuleList(
            [Linear(dim if i == 0 else hidden, hidden, **init) for i in range(depth)])
        self.out = Linear(hidden, dim, init_mode="xavier_uniform", init_weight=1e-5)

    def forward(self, x, noise_labels, class_labels=None):
        shape = x.shape
        h = x.reshape(shape[0], -1)
        if h.shape[1] != self.dim:
            raise ValueError(f"MLPNet: expected {self.dim} features per sample, got {h.shape[1]}")
        noise_labels = torch.as_tensor(noise_labels, dtype=x.dtype, device=x.device).reshape(-1)
        if noise_labels.numel() == 1:
            noise_labels = noise_labels.expand(shape[0])
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"MLPNet: class_labels (N, {self.label_dim}) required, network is conditional")
            emb = emb + self.map_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim))
        emb = silu(self.map_layer(emb))
        for layer in self.layers:
            h = silu(layer(h) + emb)
        return self.out(h).reshape(shape)
