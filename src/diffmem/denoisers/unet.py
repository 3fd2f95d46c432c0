"""DDPM++ / NCSN++ U-Net (Song et al. 2021) as re-implemented in EDM (Karras et al. 2022).

Layer for layer EDM's ``training/networks.py::SongUNet`` as EDM's ``train.py`` builds it
(``--arch ddpmpp``: standard encoder; ``--arch ncsnpp``: residual encoder; both the standard
decoder): same modules, parameter names (an EDM state dict loads unchanged), initialisation and
order of random draws, so one seed gives the same weights (``tests/test_edm_golden.py``). EDM
features no diffmem architecture uses are left out: augmentation conditioning, label dropout, the
"skip" encoder and decoder, init modes other than Xavier-uniform, kernel-less resampling layers.
Two additions for the memorization study (Gu et al. 2025, §4.3):

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

# --- Initialisation and primitive layers ------------------------------------------------------

def weight_init(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """EDM's ``weight_init`` in the only mode SongUNet uses, ``xavier_uniform``."""
    if mode != "xavier_uniform":
        raise ValueError(f"init_mode: only 'xavier_uniform' is implemented, got {mode!r}")
    return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)


def _as(t, dtype):
    """``t`` in ``dtype``; skips the (dispatched) no-op cast, which costs time on small CPU nets."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


class Linear(torch.nn.Module):
    """Fully connected layer ``x W^T + b``; the bias is drawn then scaled by ``init_bias``."""

    def __init__(self, in_features, out_features, init_mode="xavier_uniform", init_weight=1.0, init_bias=0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias)

    def forward(self, x):
        return F.linear(x, _as(self.weight, x.dtype), _as(self.bias, x.dtype))


class Conv2d(torch.nn.Module):
    """``kernel`` x ``kernel`` convolution with optional 2x resampling.

    Resampling uses the separable FIR ``resample_filter`` (normalised to unit gain) before the
    convolution; ``fused_resample`` (down only) convolves at full resolution and then filters with
    stride 2, as NCSN++'s residual encoder does.
    """

    def __init__(self, in_channels, out_channels, kernel, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode="xavier_uniform", init_weight=1.0, init_bias=0.0):
        super().__init__()
        if kernel < 1 or (up and down) or (fused_resample and not down):
            raise ValueError("Conv2d: needs kernel >= 1, up and down exclusive, fused_resample only with down")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = torch.nn.Parameter(weight_init(shape, **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias)
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)
        self.f_pad = (len(resample_filter) - 1) // 2
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
        w_pad = w.shape[-1] // 2
        if self.fused_resample:
            return self._down(F.conv2d(x, w, b, padding=w_pad + self.f_pad), 0)
        if self.up and self.box and w.shape[-1] == 1:
            return self._up(F.conv2d(x, w, b), 0)  # 1x1 conv commutes with nearest upsampling.
        if self.up:
            x = self._up(x, self.f_pad)
        if self.down:
            x = self._down(x, self.f_pad)
        return F.conv2d(x, w, b, padding=w_pad)


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


# --- Noise-level embeddings --------------------------------------------------------------------

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


# --- Residual block ----------------------------------------------------------------------------
# SongUNet's block settings in EDM: Xavier-uniform init, near-zero output layers, attention qkv
# scaled by sqrt(0.2), outputs scaled by sqrt(0.5), GroupNorm eps 1e-6, one attention head.
_INIT = dict(init_mode="xavier_uniform")
_INIT_ZERO = dict(init_mode="xavier_uniform", init_weight=1e-5)
_INIT_ATTN = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
_SKIP_SCALE = math.sqrt(0.5)
_EPS = 1e-6


class UNetBlock(torch.nn.Module):
    """SongUNet residual block: GN-SiLU-conv, + affine(emb), GN-SiLU-dropout-conv, residual,
    optional 2x up/down and optional single-head self-attention; outputs scaled by ``sqrt(1/2)``.

    This is EDM's ``UNetBlock`` with SongUNet's settings fixed (``adaptive_scale=False``,
    ``resample_proj=True``, ``num_heads=1``, ``skip_scale=sqrt(0.5)``, ``eps=1e-6``, its inits).
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 dropout=0.0, resample_filter=(1, 1)):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = 1 if attention else 0
        self.dropout = dropout

        self.norm0 = GroupNorm(in_channels, eps=_EPS)
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **resample, **_INIT)
        self.affine = Linear(emb_channels, out_channels, **_INIT)
        self.norm1 = GroupNorm(out_channels, eps=_EPS)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **_INIT_ZERO)
        self.skip = Conv2d(in_channels, out_channels, 1, **resample, **_INIT) \
            if out_channels != in_channels or up or down else None
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=_EPS)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **_INIT_ATTN)
            self.proj = Conv2d(out_channels, out_channels, 1, **_INIT_ZERO)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        h = silu(self.norm1(h.add_(_as(self.affine(emb), h.dtype).view(-1, self.out_channels, 1, 1))))
        if self.dropout and self.training:
            h = dropout(h, p=self.dropout, training=True)  # global-batch masks under DDP (see dropout.py)
        h = self.conv1(h)
        h = h.add_(x if self.skip is None else self.skip(x)).mul_(_SKIP_SCALE)

        if self.num_heads:
            n, c, height, width = h.shape
            # qkv channels are laid out (channel, {q,k,v}) as in EDM; one head.
            qkv = self.qkv(self.norm2(h)).reshape(n, 1, c, 3, height * width)
            q, k, v = qkv.permute(3, 0, 1, 4, 2).unbind(0)  # each (n, 1, hw, c)
            a = F.scaled_dot_product_attention(q, k, v)
            a = a.transpose(-1, -2).reshape(n, c, height, width)
            h = self.proj(a).add_(h).mul_(_SKIP_SCALE)
        return h


# --- The U-Net ---------------------------------------------------------------------------------
# What each encoder / decoder entry does in forward (kept parallel to the ModuleDicts).
_CONV, _BLOCK, _AUX_RESIDUAL, _CAT_BLOCK, _OUT_NORM, _OUT_CONV = range(6)


def num_skips(channel_mult: Sequence[int], num_blocks: int) -> int:
    """Number of encoder->decoder skip tensors: per level the conv/down output plus one per block."""
    return len(channel_mult) * (num_blocks + 1)


def _skip_mask(skip_mask, channel_mult, num_blocks) -> tuple[int, ...]:
    n_skips = num_skips(channel_mult, num_blocks)
    skip_mask = (1,) * n_skips if skip_mask is None else tuple(int(bool(m)) for m in skip_mask)
    if len(skip_mask) != n_skips:
        raise ValueError(f"skip_mask needs {n_skips} entries, got {len(skip_mask)}")
    return skip_mask


class SongUNet(torch.nn.Module):
    """DDPM++ (``embedding_type="positional"``, standard encoder, ``[1,1]`` filter,
    ``channel_mult_noise=1``) or NCSN++ (``"fourier"``, ``"residual"`` encoder, ``[1,3,3,1]``
    filter, ``channel_mult_noise=2``) U-Net; both with EDM's standard decoder.

    ``forward(x, noise_labels, class_labels=None)``: ``x`` (N, C, H, W), ``noise_labels`` (N,) (the
    preconditioner's ``c_noise``), ``class_labels`` float (N, label_dim) — one-hot rows for class
    conditioning (see :func:`diffmem.denoisers.networks.one_hot`). Returns (N, out_channels, H, W).

    The constructor follows EDM's module by module (and so its order of random draws), split into
    the mapping network, the encoder and the decoder.
    """

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, model_channels=128,
                 channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,),
                 dropout=0.10, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=(1, 1), skip_mask=None):
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be positional or fourier, got {embedding_type!r}")
        if encoder_type not in ("standard", "residual"):
            raise ValueError(f"encoder_type must be standard or residual, got {encoder_type!r}")
        if decoder_type != "standard":
            raise ValueError(f"decoder_type must be standard (as in EDM's train.py), got {decoder_type!r}")
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"resolution {img_resolution} cannot be halved {len(channel_mult) - 1} times")
        skip_mask = _skip_mask(skip_mask, channel_mult, num_blocks)
        super().__init__()
        self.config = dict(img_resolution=img_resolution, in_channels=in_channels, out_channels=out_channels,
                           label_dim=label_dim, model_channels=model_channels, channel_mult=tuple(channel_mult),
                           channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
                           attn_resolutions=tuple(attn_resolutions), dropout=dropout,
                           embedding_type=embedding_type, channel_mult_noise=channel_mult_noise,
                           encoder_type=encoder_type, decoder_type=decoder_type,
                           resample_filter=tuple(resample_filter),
                           skip_mask=skip_mask)  # constructor arguments: SongUNet(**config) rebuilds it
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.label_dim = label_dim
        self.skip_mask = skip_mask
        emb_channels = model_channels * channel_mult_emb
        block_kwargs = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=resample_filter)

        # Mapping network: noise level (+ class) -> embedding vector.
        noise_channels = model_channels * channel_mult_noise
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True, sin_first=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels, sin_first=True)
        self.map_label = Linear(label_dim, noise_channels, **_INIT) if label_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **_INIT)
        self.map_layer1 = Linear(emb_channels, emb_channels, **_INIT)

        skip_channels, cout = self._build_encoder(model_channels, channel_mult, num_blocks, attn_resolutions,
                                                  encoder_type, resample_filter, block_kwargs)
        self._build_decoder(model_channels, channel_mult, num_blocks, attn_resolutions, skip_channels, cout,
                            block_kwargs)

    def _build_encoder(self, model_channels, channel_mult, num_blocks, attn_resolutions, encoder_type,
                       resample_filter, block_kwargs):
        """``self.enc`` and its op codes; returns the skip widths (push order) and the last width."""
        self.enc = torch.nn.ModuleDict()
        enc_ops = []
        skip_channels = []
        cout = caux = self.in_channels
        for level, mult in enumerate(channel_mult):
            res = self.img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **_INIT)
                enc_ops.append(_CONV)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                enc_ops.append(_BLOCK)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True, **_INIT)
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
        return skip_channels, cout

    def _build_decoder(self, model_channels, channel_mult, num_blocks, attn_resolutions, skip_channels, cout,
                       block_kwargs):
        """``self.dec`` and its op codes (EDM's standard decoder: one output head at full resolution)."""
        self.dec = torch.nn.ModuleDict()
        dec_ops = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = self.img_resolution >> level
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
        res = self.img_resolution
        self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=_EPS)
        self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, self.out_channels, 3, **_INIT_ZERO)
        self._dec_ops = tuple(dec_ops) + (_OUT_NORM, _OUT_CONV)

    def forward(self, x, noise_labels, class_labels=None):
        noise_labels = torch.as_tensor(noise_labels, dtype=x.dtype, device=x.device).reshape(-1)
        if noise_labels.numel() == 1:
            noise_labels = noise_labels.expand(x.shape[0])

        # Mapping.
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"SongUNet: class_labels (N, {self.label_dim}) required, network is conditional")
            emb = emb + self.map_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim))
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        # Encoder: every conv/block output is pushed as a skip; NCSN++'s residual path updates it.
        skips = []
        aux = x
        for op, block in zip(self._enc_ops, self.enc.values()):
            if op == _BLOCK:
                x = block(x, emb)
                skips.append(x)
            elif op == _CONV:
                x = block(x)
                skips.append(x)
            else:  # _AUX_RESIDUAL
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
        if 0 in self.skip_mask:
            skips = [s if keep else torch.zeros_like(s) for s, keep in zip(skips, self.skip_mask)]

        # Decoder: blocks after the first of each level consume the skips in reverse order.
        for op, block in zip(self._dec_ops, self.dec.values()):
            if op == _CAT_BLOCK:
                x = block(torch.cat([x, skips.pop()], dim=1), emb)
            elif op == _BLOCK:
                x = block(x, emb)
            elif op == _OUT_NORM:
                x = block(x)
            else:  # _OUT_CONV
                x = block(silu(x))
        return x
