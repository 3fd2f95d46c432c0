"""Networks: EDM-identical parameter counts, shapes, skip masks, knob validation, MLP, determinism."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffmem.denoisers.mlp import MLPNet
from diffmem.denoisers.networks import PRESETS, build_network, count_parameters, one_hot
from diffmem.denoisers.unet import Conv2d, PositionalEmbedding, SongUNet, UNetBlock
from diffmem.errors import InputError, flag_name

# Reference parameter counts of NVlabs/edm's training/networks.py::SongUNet (repository HEAD
# 008a4e5316c8e3bfe61a62f874bddba254295afb; the file last changed in b2a26c9, 2022-11-21), obtained
# once, outside this repository, by importing that file
# with torch_utils.persistence replaced by a no-op decorator and evaluating
# sum(p.numel() for p in SongUNet(**kwargs).parameters()) with the kwargs below, where DDPM++ =
# dict(embedding_type='positional', encoder_type='standard', decoder_type='standard',
#      channel_mult_noise=1, resample_filter=[1,1]) and NCSN++ = dict(embedding_type='fourier',
#      encoder_type='residual', decoder_type='standard', channel_mult_noise=2, resample_filter=[1,3,3,1])
# (EDM's train.py settings; the NCSN++ counts were recomputed with the real EDM code, torch_utils
# included, when the decoder changed from 'skip' (56410377 and 323779) to 'standard').
# (Same command: benchmarks/bench_train_step.py --edm prints both counts for a configuration.)
EDM_COUNTS = [
    # (label, build_network args, EDM SongUNet kwargs summary, count)
    ("paper 32x32x3", dict(arch="ddpmpp", img_resolution=32, in_channels=3, preset="paper"),
     "DDPM++ res 32 in/out 3, 128 ch, mult [2,2,2], 2 blocks, attn [16]", 35125251),
    ("paper fourier", dict(arch="ddpmpp", img_resolution=32, in_channels=3, preset="paper", embed="fourier"),
     "as paper with embedding_type='fourier' (frequencies are a buffer)", 35125251),
    ("paper label_dim 10", dict(arch="ddpmpp", img_resolution=32, in_channels=3, preset="paper", num_classes=10),
     "as paper with label_dim=10", 35126659),
    ("ddpmpp default", dict(arch="ddpmpp", img_resolution=32, in_channels=3),
     "DDPM++ res 32 in/out 3, 128 ch, mult [2,2,2], 4 blocks, attn [16]", 55732739),
    ("ncsnpp default", dict(arch="ncsnpp", img_resolution=32, in_channels=3),
     "NCSN++ res 32 in/out 3, 128 ch, mult [2,2,2], 4 blocks, attn [16]", 56395523),
    ("tiny 8x8x1", dict(arch="ddpmpp", img_resolution=8, in_channels=1, preset="tiny"),
     "DDPM++ res 8 in/out 1, 32 ch, mult [1,2], 1 block, attn []", 715201),
    ("small 16x16x1", dict(arch="ddpmpp", img_resolution=16, in_channels=1, preset="small"),
     "DDPM++ res 16 in/out 1, 32 ch, mult [1,2,2], 2 blocks, attn []", 1702689),
    ("ncsnpp 28x28x1 cond", dict(arch="ncsnpp", img_resolution=28, in_channels=1, num_classes=3, channels=16,
                                 channel_mult=(1, 2, 2), blocks=1, attn=(14,)),
     "NCSN++ res 28 in/out 1, label_dim 3, 16 ch, mult [1,2,2], 1 block, attn [14]", 323073),
]


@pytest.mark.parametrize("label,kwargs,summary,count", EDM_COUNTS, ids=[c[0] for c in EDM_COUNTS])
def test_parameter_count_equals_edm(label, kwargs, summary, count):
    kwargs = dict(kwargs)
    with torch.device("meta"):  # shapes only: no time spent drawing 50 M random numbers
        net = build_network(kwargs.pop("arch"), **kwargs)
    assert count_parameters(net) == count


def test_skip_mask_keeps_parameter_count():
    mask = (1, 0, 1) * 3  # paper: 3 levels x (2 blocks + 1)
    with torch.device("meta"):
        net = build_network("ddpmpp", img_resolution=32, in_channels=3, preset="paper", skips=mask)
    assert net.skip_mask == mask
    assert count_parameters(net) == 35125251


def _perturbed(net, seed=0, scale=0.05):
    """Move zero-initialised layers away from zero so every path influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net.eval()


def _inputs(n, c, res, label_dim=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, res, res, generator=g)
    noise = torch.randn(n, generator=g)
    labels = one_hot(torch.randint(0, label_dim, (n,), generator=g), label_dim) if label_dim else None
    return x, noise, labels


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp"])
@pytest.mark.parametrize("res,channels,mult,label_dim", [(8, 1, (1, 2), 0), (16, 3, (1, 2, 2), 4),
                                                         (28, 1, (1, 2, 2), 10), (32, 3, (1, 2, 2, 2), 0)])
def test_output_shape(arch, res, channels, mult, label_dim):
    torch.manual_seed(0)
    net = build_network(arch, img_resolution=res, in_channels=channels, num_classes=label_dim, channels=8,
                        channel_mult=mult, blocks=1, attn=(res // 2,))
    x, noise, labels = _inputs(3, channels, res, label_dim)
    y = net(x, noise, labels)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def _cat_block_inputs(net, x, noise):
    """Inputs of the decoder blocks that concatenate a skip, in decoder order."""
    seen = []
    hooks = [block.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
             for name, block in net.dec.items() if "_block" in name]
    with torch.no_grad():
        out = net(x, noise)
    for h in hooks:
        h.remove()
    return out, seen


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp"])
def test_skip_mask_feeds_zeros(arch):
    kw = dict(img_resolution=16, in_channels=1, channels=8, channel_mult=(1, 2, 2), blocks=1, attn=())
    n_skips = 3 * (1 + 1)
    masked = 1  # the first block's output at 16x16 (push order: conv, block0, down, block0, ...)
    mask = tuple(int(i != masked) for i in range(n_skips))
    torch.manual_seed(0)
    full = _perturbed(build_network(arch, **kw))
    cut = build_network(arch, skips=mask, **kw).eval()
    assert count_parameters(cut) == count_parameters(full)
    cut.load_state_dict(full.state_dict())  # identical shapes and names

    x, noise, _ = _inputs(2, 1, 16)
    out_full, in_full = _cat_block_inputs(full, x, noise)
    out_cut, in_cut = _cat_block_inputs(cut, x, noise)
    assert len(in_full) == n_skips
    # The decoder pops skips in reverse push order: skip j feeds the (n-1-j)-th concatenating block.
    k = n_skips - 1 - masked
    skip_width = 8  # block0 at level 0 outputs channels * mult[0]
    assert torch.count_nonzero(in_cut[k][:, -skip_width:]) == 0
    assert torch.count_nonzero(in_full[k][:, -skip_width:]) > 0
    # Everything upstream of the masked skip is unchanged.
    for j in range(k):
        torch.testing.assert_close(in_cut[j], in_full[j])
    assert (out_cut - out_full).abs().max() > 1e-4

    none = build_network(arch, skips=(0,) * n_skips, **kw)
    none.load_state_dict(full.state_dict())
    y = none.eval()(x, noise)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - out_full).abs().max() > 1e-4


def test_skips_accepts_cli_string():
    net = build_network("ddpmpp", img_resolution=8, in_channels=1, preset="tiny", skips="1,0,1,1")
    assert net.skip_mask == (1, 0, 1, 1)
    net = build_network("ddpmpp", img_resolution=8, in_channels=1, preset="tiny", skips="0110")
    assert net.skip_mask == (0, 1, 1, 0)


BAD_KNOBS = [
    (dict(arch="resnet"), "--arch"),
    (dict(preset="huge"), "--preset"),
    (dict(preset="mlp-toy"), "--preset"),
    (dict(channels=0), "--channels"),
    (dict(channels="wide"), "--channels"),
    (dict(channels=36, channel_mult=(1, 2, 3)), "--channels"),  # 216 channels: not 32 equal groups
    (dict(channel_mult=(1, 2, 2, 2, 2)), "--channel-mult"),      # 28 cannot be halved 4 times
    (dict(channel_mult=()), "--channel-mult"),
    (dict(channel_mult=(1, 0)), "--channel-mult"),
    (dict(blocks=0), "--blocks"),
    (dict(attn=(8,)), "--attn"),                                 # 28 px net has 28/14/7
    (dict(dropout=1.0), "--dropout"),
    (dict(dropout="lots"), "--dropout"),
    (dict(embed="rotary"), "--embed"),
    (dict(skips=(1, 1, 1)), "--skips"),
    (dict(skips=(2,) * 15), "--skips"),
    (dict(skips="11x1"), "--skips"),
    (dict(skips=(0.5,) * 15), "--skips"),
    (dict(hidden=64), "--hidden"),                               # an MLP knob on a U-Net
    (dict(width=64), "--width"),
]


@pytest.mark.parametrize("kwargs,flag", BAD_KNOBS, ids=[f for _, f in BAD_KNOBS])
def test_bad_knobs_raise_input_error_naming_flag(kwargs, flag):
    kwargs = dict(kwargs)
    arch = kwargs.pop("arch", "ddpmpp")
    with torch.device("meta"), pytest.raises(InputError) as err:
        build_network(arch, img_resolution=28, in_channels=1, **kwargs)
    assert _names_flag(err.value, flag), str(err.value)


def _names_flag(err: InputError, flag: str) -> bool:
    """The error names ``flag``: as its parameter (``InputError(..., param=)``) or as a ``--flag:`` prefix."""
    return (err.param is not None and flag_name(err.param) == flag) or str(err).startswith(flag + ":")


def test_bad_mlp_knobs():
    with pytest.raises(InputError) as err:
        build_network("mlp", img_resolution=1, in_channels=1, dim=2, depth=0)
    assert _names_flag(err.value, "--depth"), str(err.value)
    with pytest.raises(InputError) as err:
        build_network("mlp", img_resolution=4, in_channels=1, channels=32)
    assert _names_flag(err.value, "--channels"), str(err.value)


def test_none_knobs_mean_default():
    a = build_network("ddpmpp", img_resolution=8, in_channels=1, preset="tiny", channels=None, skips=None,
                      hidden=None)
    assert a.config["model_channels"] == PRESETS["tiny"]["channels"]


def test_preset_attention_outside_resolutions_is_ignored():
    # paper preset at 8 px: levels 8/4/2, its attention at 16 does not apply (explicit --attn would fail).
    with torch.device("meta"):
        net = build_network("ddpmpp", img_resolution=8, in_channels=3, preset="paper")
    attn_blocks = [n for n, m in net.named_modules() if isinstance(m, UNetBlock) and m.num_heads]
    assert attn_blocks == ["dec.2x2_in0"]  # SongUNet always attends in the bottleneck


def test_explicit_attention_adds_blocks_at_that_resolution():
    net = build_network("ddpmpp", img_resolution=16, in_channels=1, channels=8, channel_mult=(1, 2), blocks=2,
                        attn=(16,))
    attn_blocks = sorted(n for n, m in net.named_modules() if isinstance(m, UNetBlock) and m.num_heads)
    assert attn_blocks == ["dec.16x16_block2", "dec.8x8_in0", "enc.16x16_block0", "enc.16x16_block1"]


def test_conditioning_changes_output_and_requires_labels():
    torch.manual_seed(0)
    net = _perturbed(build_network("ddpmpp", img_resolution=8, in_channels=1, num_classes=5, preset="tiny"))
    x, noise, _ = _inputs(2, 1, 8)
    y0 = net(x, noise, one_hot(torch.tensor([0, 0]), 5))
    y1 = net(x, noise, one_hot(torch.tensor([3, 3]), 5))
    assert (y0 - y1).abs().max() > 1e-4
    with pytest.raises(ValueError):
        net(x, noise)


def test_one_hot():
    y = one_hot(torch.tensor([2, 0, 2]), 4)
    assert y.dtype == torch.float32
    assert y.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]]
    with pytest.raises(ValueError):
        one_hot(torch.tensor([4]), 4)
    with pytest.raises(ValueError):
        one_hot(torch.tensor([0.5]), 4)


def test_same_seed_same_init_and_different_seed_differs():
    def make(seed):
        torch.manual_seed(seed)
        return build_network("ncsnpp", img_resolution=8, in_channels=1, preset="tiny").state_dict()

    a, b, c = make(3), make(3), make(4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    net = _perturbed(build_network("ncsnpp", img_resolution=16, in_channels=3, channels=8,
                                   channel_mult=(1, 2), blocks=1, attn=(8,)))
    x, noise, _ = _inputs(2, 3, 16)
    y = net(x, noise)
    y_cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), noise)
    torch.testing.assert_close(y_cl, y, atol=1e-5, rtol=1e-4)


def test_eval_is_deterministic_and_train_applies_dropout():
    torch.manual_seed(0)
    net = _perturbed(build_network("ddpmpp", img_resolution=8, in_channels=1, preset="tiny", dropout=0.5))
    x, noise, _ = _inputs(2, 1, 8)
    torch.testing.assert_close(net(x, noise), net(x, noise), atol=0, rtol=0)
    net.train()
    assert (net(x, noise) - net(x, noise)).abs().max() > 1e-5


# --- The fast paths equal EDM's definitions (independent formulas) ------------------------------

def _resampler(c, **kwargs):
    """A 1x1 Conv2d with identity weight and zero bias: only its resampling remains."""
    conv = Conv2d(c, c, 1, **kwargs)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(c).reshape(c, c, 1, 1))
        conv.bias.zero_()
    return conv


def test_box_resampling_equals_depthwise_filter():
    x = torch.randn(2, 3, 8, 8)
    f = torch.full((3, 1, 2, 2), 0.25)  # outer([1,1]) / 4 per channel
    down = _resampler(3, down=True, resample_filter=(1, 1))
    up = _resampler(3, up=True, resample_filter=(1, 1))
    torch.testing.assert_close(down(x), F.conv2d(x, f, groups=3, stride=2))
    torch.testing.assert_close(up(x), F.conv_transpose2d(x, 4 * f, groups=3, stride=2))


def test_fir_resampling_equals_depthwise_filter():
    """EDM's [1,3,3,1] resampling: depthwise (transposed) conv with outer(f, f)/64, padding 1."""
    x = torch.randn(2, 3, 8, 8)
    f1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = (torch.outer(f1, f1) / 64).expand(3, 1, 4, 4)
    down = _resampler(3, down=True, resample_filter=(1, 3, 3, 1))
    up = _resampler(3, up=True, resample_filter=(1, 3, 3, 1))
    torch.testing.assert_close(down(x), F.conv2d(x, f, groups=3, stride=2, padding=1))
    torch.testing.assert_close(up(x), F.conv_transpose2d(x, 4 * f, groups=3, stride=2, padding=1))


def test_upsampling_1x1_projection_order():
    torch.manual_seed(0)
    proj = Conv2d(3, 5, 1, up=True, resample_filter=(1, 1), init_bias=1.0)
    x = torch.randn(2, 3, 4, 4)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), proj.weight, proj.bias)
    torch.testing.assert_close(proj(x), expected)


def test_fir_resampling_shapes_and_gain():
    x = torch.ones(1, 2, 8, 8)
    down = _resampler(2, down=True, resample_filter=(1, 3, 3, 1))
    up = _resampler(2, up=True, resample_filter=(1, 3, 3, 1))
    assert down(x).shape == (1, 2, 4, 4) and up(x).shape == (1, 2, 16, 16)
    torch.testing.assert_close(down(x)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))  # unit DC gain inside
    torch.testing.assert_close(up(x)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))


def test_attention_equals_softmax_formula():
    torch.manual_seed(0)
    block = _perturbed(UNetBlock(16, 16, emb_channels=8, attention=True))
    x, emb = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    seen = {}
    block.norm2.register_forward_hook(lambda m, a, out: seen.setdefault("res", a[0]))
    y = block(x, emb)
    h = seen["res"]
    qkv = block.qkv(block.norm2(h)).reshape(2, 16, 3, 16)  # channels laid out (c, {q,k,v})
    q, k, v = qkv.unbind(2)
    w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(16), dim=2)
    a = torch.einsum("nqk,nck->ncq", w, v).reshape(2, 16, 4, 4)
    torch.testing.assert_close(y, (block.proj(a) + h) * math.sqrt(0.5), atol=1e-5, rtol=1e-5)


def test_positional_embedding_formula():
    emb = PositionalEmbedding(8, endpoint=True, sin_first=True)
    t = torch.tensor([0.3, -1.2])
    freqs = torch.tensor([10000 ** (-j / 3) for j in range(4)])
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb(t), expected)


def test_scalar_noise_label_broadcasts():
    torch.manual_seed(0)
    net = _perturbed(build_network("ddpmpp", img_resolution=8, in_channels=1, preset="tiny"))
    x, _, _ = _inputs(3, 1, 8)
    torch.testing.assert_close(net(x, torch.tensor(0.2)), net(x, torch.full((3,), 0.2)))


def test_features_no_architecture_uses_are_refused():
    kw = dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=(1, 2), num_blocks=1)
    with pytest.raises(ValueError, match="decoder_type"):
        SongUNet(decoder_type="skip", **kw)
    with pytest.raises(ValueError, match="encoder_type"):
        SongUNet(encoder_type="skip", **kw)
    with pytest.raises(TypeError):
        SongUNet(augment_dim=9, **kw)
    with pytest.raises(ValueError, match="init_mode"):
        Conv2d(2, 2, 3, init_mode="kaiming_normal")


def test_config_rebuilds_network():
    torch.manual_seed(0)
    net = build_network("ncsnpp", img_resolution=8, in_channels=1, preset="tiny", skips=(1, 1, 0, 1))
    copy = SongUNet(**net.config)
    copy.load_state_dict(net.state_dict())
    assert copy.config == net.config


# --- MLP ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("embed", ["positional", "fourier"])
def test_mlp_shapes_and_conditioning(embed):
    torch.manual_seed(0)
    net = build_network("mlp", img_resolution=1, in_channels=1, preset="mlp-toy", dim=2, embed=embed)
    assert isinstance(net, MLPNet)
    # hidden 256, depth 2: embed map 256*256+256, layers 2*256+256 and 256*256+256, out 256*2+2.
    assert count_parameters(net) == (256 * 256 + 256) + (2 * 256 + 256) + (256 * 256 + 256) + (256 * 2 + 2)
    x = torch.randn(5, 2)
    y = net(x, torch.randn(5))
    assert y.shape == (5, 2) and torch.isfinite(y).all()

    cond = _perturbed(MLPNet(dim=16, hidden=32, depth=3, label_dim=4, embedding_type=embed))
    x = torch.randn(5, 1, 4, 4)
    y0 = cond(x, torch.zeros(5), one_hot(torch.zeros(5, dtype=torch.long), 4))
    y1 = cond(x, torch.zeros(5), one_hot(torch.ones(5, dtype=torch.long), 4))
    assert y0.shape == x.shape and (y0 - y1).abs().max() > 1e-4
    y2 = cond(x, torch.ones(5), one_hot(torch.zeros(5, dtype=torch.long), 4))
    assert (y0 - y2).abs().max() > 1e-4


def test_mlp_dimension_from_image_shape():
    net = build_network("mlp", img_resolution=4, in_channels=3, hidden=16, depth=1)
    assert net.dim == 48
    assert net(torch.randn(2, 3, 4, 4), torch.zeros(2)).shape == (2, 3, 4, 4)
