"""DDPM++ / NCSN++ U-Net (Song et al. 2021) as re-implemented in EDM (Karras et al. 2022).

Layer for layer the architecture of EDM's ``training/networks.py::SongUNet``: same modules, same
parameter names (an EDM ``SongUNet`` state dict loads into :class:`SongUNet` unchanged), same
initialisation and the same order of random draws, so one seed gives the same weights. Two
additions for the memorization study (Gu et al. 2025, §4.3):

* ``skip_mask``: one 0/1 entry per encoder->decoder skip tensor, in the order the encoder pushes
  them (per level: the first conv or the downsampling block, then one per block; ``L·(B+1)`` in
  all). A masked skip feeds zeros of the same shape, so channel and parameter counts are unchanged.
* ``embedding_type`` is independent of the rest, so DDPM++ can use Fourier features.

Speed-ups that leave the function unchanged: the ``[1, 1]`` resampling filter runs as
average pooling / nearest upsampling instead of a depthwise (transposed) convolution, a 1x1
projection before nearest upsampling runs at the low resolution, attention uses
``scaled_dot_product_attention``, biases are fused into the convolution and linear calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from torch.nn.functional import silu

from diffmem.denoisers.dropout import dropout

# ---------------------------------------------------------------------------------------------
# Initialisation and primitive layers.


def weight_init(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor for ``mode`` in xavier_uniform | xavier_normal | kaiming_uniform | kaiming_normal."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


def _as(t, dtype):
    """``t`` in ``dtype``; skips the (dispatched) no-op cast, which costs time on small CPU nets."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


class Linear(torch.nn.Module):
    """Fully connected layer ``x W^T + b``; the bias is drawn then scaled by ``init_bias``."""

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal",
                 init_weight=1.0, init_bias=0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        return F.linear(x, _as(self.weight, x.dtype), _as(self.bias, x.dtype))


class Conv2d(torch.nn.Module):
    """``kernel`` x ``kernel`` convolution (none if ``kernel == 0``) with optional 2x resampling.

    Resampling uses the separable FIR ``resample_filter`` (normalised to unit gain). Downsampling
    happens before the convolution, upsampling before it too; ``fused_resample`` (down only)
    convolves at full resolution and then filters with stride 2, as NCSN++'s residual encoder does.
    """

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=(1, 1), fused_resample=False, init_mode="kaiming_normal",
                 init_weight=1.0, init_bias=0.0):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        if fused_resample and up:
            raise ValueError("Conv2d: fused_resample is implemented for down only")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(
            weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)
        self.box = tuple(resample_filter) == (1, 1)  # [1,1] = 2x2 box: avg-pool / nearest.

    def _down(self, x, pad):
        if self.box:
            return F.avg_pool2d(x, 2)
        f = _as(self.resample_filter, x.dtype)
        c = x.shape[1]
        return F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=pad)

    def _up(self, x, pad):
        if self.box:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        f = _as(self.resample_filter, x.dtype)
        c = x.shape[1]
        return F.conv_transpose2d(x, f.mul(4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=pad)

    def forward(self, x):
        w = _as(self.weight, x.dtype)
        b = _as(self.bias, x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if self.resample_filter is None else (self.resample_filter.shape[-1] - 1) // 2
        if self.fused_resample and self.down and w is not None:
            return self._down(F.conv2d(x, w, b, padding=w_pad + f_pad), 0)
        if self.up and self.box and w is not None and w.shape[-1] == 1:
            return self._up(F.conv2d(x, w, b), 0)  # 1x1 conv commutes with nearest upsampling.
        if self.up:
            x = self._up(x, f_pad)
        if self.down:
            x = self._down(x, f_pad)
        if w is not None:
            x = F.conv2d(x, w, b, padding=w_pad)
        return x


class GroupNorm(torch.nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_channels = num_channels
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, _as(self.weight, x.dtype), _as(self.bias, x.dtype), self.eps)


# ---------------------------------------------------------------------------------------------
# Noise-level embeddings.


class PositionalEmbedding(torch.nn.Module):
    """Transformer sinusoids: ``[cos(x f_j), sin(x f_j)]``, ``f_j = (1/max_positions)^(j/(n/2 - endpoint))``.

    ``sin_first`` returns ``[sin, cos]`` (SongUNet's order).
    """

    def __init__(self, num_channels, max_positions=10000, endpoint=False, sin_first=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint
        self.sin_first = sin_first

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.sin(), x.cos()] if self.sin_first else [x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features: ``[cos(2π x f_j), sin(2π x f_j)]``, ``f_j ~ N(0, scale²)`` fixed."""

    def __init__(self, num_channels, scale=16, sin_first=False):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)
        self.sin_first = sin_first

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.sin(), x.cos()] if self.sin_first else [x.cos(), x.sin()], dim=1)


# ---------------------------------------------------------------------------------------------
# Residual block.


class UNetBlock(torch.nn.Module):
    """SongUNet residual block: GN-SiLU-conv, + affine(emb), GN-SiLU-dropout-conv, residual,
    optional 2x up/down and optional single-head self-attention; outputs scaled by ``skip_scale``.

    This is EDM's ``UNetBlock`` with SongUNet's settings fixed (``adaptive_scale=False``,
    ``resample_proj=True``).
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=1, dropout=0.0, skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=(1, 1),
                 init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        init_attn = init_attn if init_attn is not None else init
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = num_heads if attention else 0
        self.dropout = dropout
        self.skip_scale = skip_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        h = silu(self.norm1(h.add_(_as(self.affine(emb), h.dtype).view(-1, self.out_channels, 1, 1))))
        if self.dropout and self.training:
            h = dropout(h, p=self.dropout, training=True)  # global-batch masks under DDP (see dropout.py)
        h = self.conv1(h)
        h = h.add_(x if self.skip is None else self.skip(x)).mul_(self.skip_scale)

        if self.num_heads:
            n, c, height, width = h.shape
            # qkv channels are laid out (head, channel, {q,k,v}) as in EDM.
            qkv = self.qkv(self.norm2(h)).reshape(n, self.num_heads, c // self.num_heads, 3, height * width)
            q, k, v = qkv.permute(3, 0, 1, 4, 2).unbind(0)  # each (n, heads, hw, c/heads)
            a = F.scaled_dot_product_attention(q, k, v)
            a = a.transpose(-1, -2).reshape(n, c, height, width)
            h = self.proj(a).add_(h).mul_(self.skip_scale)
        return h


# ---------------------------------------------------------------------------------------------
# The U-Net.

# What each encoder / decoder entry does in forward (kept parallel to the ModuleDicts).
_CONV, _BLOCK, _AUX_DOWN, _AUX_SKIP, _AUX_RESIDUAL, _CAT_BLOCK, _AUX_UP, _AUX_NORM, _AUX_CONV = range(9)


def num_skips(channel_mult: Sequence[int], num_blocks: int) -> int:
    """Number of encoder->decoder skip tensors: per level the conv/down output plus one per block."""
    return len(channel_mult) * (num_blocks + 1)


class SongUNet(torch.nn.Module):
    """DDPM++ (``embedding_type="positional"``, standard encoder/decoder, ``[1,1]`` filter,
    ``channel_mult_noise=1``) or NCSN++ (``"fourier"``, ``"residual"`` encoder, ``"skip"`` decoder,
    ``[1,3,3,1]`` filter, ``channel_mult_noise=2``) U-Net.

    ``forward(x, noise_labels, class_labels=None, augment_labels=None)``: ``x`` (N, C, H, W),
    ``noise_labels`` (N,) (the preconditioner's ``c_noise``), ``class_labels`` float (N, label_dim)
    — one-hot rows for class conditioning (see :func:`diffmem.denoisers.networks.one_hot`); a zero
    row is the "no label" input that ``label_dropout`` trains. Returns (N, out_channels, H, W).
    """

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), dropout=0.10, label_dropout=0.0,
                 embedding_type="positional", channel_mult_noise=1,
                 encoder_type="standard", decoder_type="standard", resample_filter=(1, 1),
                 skip_mask=None):
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be positional or fourier, got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be standard, skip or residual, got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be standard or skip, got {decoder_type!r}")
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"resolution {img_resolution} cannot be halved {len(channel_mult) - 1} times")
        n_skips = num_skips(channel_mult, num_blocks)
        if skip_mask is None:
            skip_mask = (1,) * n_skips
        skip_mask = tuple(int(bool(m)) for m in skip_mask)
        if len(skip_mask) != n_skips:
            raise ValueError(f"skip_mask needs {n_skips} entries, got {len(skip_mask)}")
        super().__init__()
        self.config = dict(img_resolution=img_resolution, in_channels=in_channels, out_channels=out_channels,
                           label_dim=label_dim, augment_dim=augment_dim, model_channels=model_channels,
                           channel_mult=tuple(channel_mult), channel_mult_emb=channel_mult_emb,
                           num_blocks=num_blocks, attn_resolutions=tuple(attn_resolutions), dropout=dropout,
                           label_dropout=label_dropout, embedding_type=embedding_type,
                           channel_mult_noise=channel_mult_noise, encoder_type=encoder_type,
                           decoder_type=decoder_type, resample_filter=tuple(resample_filter),
                           skip_mask=skip_mask)  # constructor arguments: SongUNet(**config) rebuilds it
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        self.skip_mask = skip_mask

        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, init=init, init_zero=init_zero,
                            init_attn=init_attn)

        # Mapping network: noise level (+ class, + augmentation) -> embedding vector.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True, sin_first=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels, sin_first=True)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        enc_ops = []
        skip_channels = []
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init)
                enc_ops.append(_CONV)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                enc_ops.append(_BLOCK)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                    enc_ops += [_AUX_DOWN, _AUX_SKIP]
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    enc_ops.append(_AUX_RESIDUAL)
                    caux = cout
            skip_channels.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
                enc_ops.append(_BLOCK)
                skip_channels.append(cout)
        self._enc_ops = tuple(enc_ops)

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        dec_ops = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
                dec_ops += [_BLOCK, _BLOCK]
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
                dec_ops.append(_BLOCK)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
                dec_ops.append(_CAT_BLOCK)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                    dec_ops.append(_AUX_UP)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)
                dec_ops += [_AUX_NORM, _AUX_CONV]
        self._dec_ops = tuple(dec_ops)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        noise_labels = torch.as_tensor(noise_labels, dtype=x.dtype, device=x.device).reshape(-1)
        if noise_labels.numel() == 1:
            noise_labels = noise_labels.expand(x.shape[0])

        # Mapping.
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"SongUNet: class_labels (N, {self.label_dim}) required, network is conditional")
            y = class_labels.to(emb.dtype)
            if self.training and self.label_dropout:
                y = y * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(y.dtype)
            emb = emb + self.map_label(y * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        # Encoder: every conv/block output is pushed as a skip; aux paths (NCSN++) update it.
        skips = []
        aux = x
        for op, block in zip(self._enc_ops, self.enc.values()):
            if op == _BLOCK:
                x = block(x, emb)
                skips.append(x)
            elif op == _CONV:
                x = block(x)
                skips.append(x)
            elif op == _AUX_DOWN:
                aux = block(aux)
            elif op == _AUX_SKIP:
                x = skips[-1] = x + block(aux)
            else:  # _AUX_RESIDUAL
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
        if 0 in self.skip_mask:
            skips = [s if keep else torch.zeros_like(s) for s, keep in zip(skips, self.skip_mask)]

        # Decoder: blocks after the first of each level consume the skips in reverse order.
        aux = None
        tmp = None
        for op, block in zip(self._dec_ops, self.dec.values()):
            if op == _CAT_BLOCK:
                x = block(torch.cat([x, skips.pop()], dim=1), emb)
            elif op == _BLOCK:
                x = block(x, emb)
            elif op == _AUX_UP:
                aux = block(aux)
            elif op == _AUX_NORM:
                tmp = block(x)
            else:  # _AUX_CONV
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
        return aux
