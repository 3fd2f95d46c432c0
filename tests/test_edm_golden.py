"""Golden values from NVlabs/edm's own ``SongUNet``: our DDPM++ / NCSN++ must reproduce them.

EDM's code is not part of this repository (nor of CI); the numbers below were computed ONCE from
``training/networks.py`` of NVlabs/edm at commit 008a4e5316c8e3bfe61a62f874bddba254295afb
(torch 2.13.0, CPU, float64) with::

    mkdir -p /tmp/edm && git -C EDM_CHECKOUT archive 008a4e5 training torch_utils dnnlib | tar -x -C /tmp/edm
    cd /tmp/edm && python /tmp/edm_golden.py

where ``/tmp/edm_golden.py`` is this script (kept here, not as a file)::

    import sys, torch
    sys.path.insert(0, '.')  # run in the scratch export of NVlabs/edm
    from training.networks import SongUNet
    COMMON = dict(img_resolution=16, in_channels=3, out_channels=3, model_channels=16,
                  channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
    CONFIGS = dict(
        ddpmpp=dict(COMMON, label_dim=4, embedding_type='positional', channel_mult_noise=1,
                    encoder_type='standard', decoder_type='standard', resample_filter=[1, 1]),
        ncsnpp=dict(COMMON, label_dim=0, embedding_type='fourier', channel_mult_noise=2,
                    encoder_type='residual', decoder_type='standard', resample_filter=[1, 3, 3, 1]),
    )
    N, IDX = 2, [5 + 191 * k for k in range(8)]
    i = torch.arange(N * 3 * 16 * 16, dtype=torch.float64)
    x = (torch.sin(0.37 * i) + 0.5 * torch.cos(1.3 * i + 0.2)).reshape(N, 3, 16, 16)
    noise = torch.linspace(-1.5, 1.0, N, dtype=torch.float64)
    for name, kw in CONFIGS.items():
        ld = kw['label_dim']
        labels = torch.eye(ld, dtype=torch.float64)[torch.arange(N) % ld] if ld else None
        torch.manual_seed(7)
        net = SongUNet(**kw).double().eval()
        sd = net.state_dict()
        init = [len(sd), sum(p.numel() for p in net.parameters()),
                sum(v.sum() for v in sd.values()).item(),
                sum(v.square().sum() for v in sd.values()).item(),
                sum((v.flatten() * torch.arange(v.numel(), dtype=torch.float64).sin()).sum()
                    for v in sd.values()).item()]
        rows = {}
        for phase in ('init', 'perturbed'):
            if phase == 'perturbed':
                g = torch.Generator().manual_seed(2)
                with torch.no_grad():
                    for _, p in sorted(net.named_parameters()):
                        p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            with torch.no_grad():
                y = net(x, noise, labels)
            rows[phase] = [y.sum().item(), y.square().sum().item()] + y.flatten()[IDX].tolist()
        print(f'{name!r}: dict(state={init},')
        print(f'    init={rows["init"]},')
        print(f'    perturbed={rows["perturbed"]}),')

``state`` = [state-dict entries, parameters, Σv, Σv², Σ_j v_j·sin(j) per tensor] of the freshly
seeded network (pins EDM's initialisation: module set, draw order, init scales); ``init`` = [Σy,
Σy², y.flatten()[IDX]] of its output (zero-initialised output layers make it tiny); ``perturbed`` =
the same after moving every parameter by 0.05·N(0, 1), so every path (attention, residual branches,
resampling filters, the NCSN++ residual encoder) shows in the output. Each value must match to
1e-5 relative.
"""

import math

import pytest
import torch

from diffmem.denoisers.networks import build_network, count_parameters

GOLDEN = {
    "ddpmpp": dict(state=[210, 317779, 1151.1470061881769, 2604.684631543512, -17.189167749096857],
        init=[0.0012146713696999133, 9.848969426040313e-08, -5.64736524393528e-06, -2.367458062089074e-06,
              -1.014607285627638e-05, 1.1370384489172256e-05, -3.965907683698074e-06, 3.888824763155872e-06,
              -6.3213398947141665e-06, 7.789950715576739e-06],
        perturbed=[-161.77226900396144, 100.75849659151237, 0.12284506035272445, -0.17466734493695474,
                   0.04133937798950777, -0.08510999595447573, -0.0781044705095307, -0.0060784121947349175,
                   0.33453939191267956, -0.0025274232349196506]),
    "ncsnpp": dict(state=[215, 323811, 1138.2485549436472, 5279.794173311221, 67.71403051312281],
        init=[0.00027894534325537335, 5.4592388193294905e-08, 8.757180273652182e-07, 3.1688645014534563e-06,
              1.028284871933601e-06, -5.455499738864219e-06, -1.6204666407653714e-06, 4.103229417986055e-06,
              -2.9622849631022074e-06, -1.9450697233133384e-06],
        perturbed=[-155.52817785216575, 98.88431477761925, -0.11261413335924389, -0.12393533244847924,
                   0.1843846602880367, -0.4371914584542697, 0.2536100310750665, -0.030405749829616937,
                   0.19571955458218826, -0.23555500322780948]),
}
LABEL_DIM = {"ddpmpp": 4, "ncsnpp": 0}
N, IDX = 2, [5 + 191 * k for k in range(8)]


def _inputs(label_dim):
    i = torch.arange(N * 3 * 16 * 16, dtype=torch.float64)
    x = (torch.sin(0.37 * i) + 0.5 * torch.cos(1.3 * i + 0.2)).reshape(N, 3, 16, 16)
    noise = torch.linspace(-1.5, 1.0, N, dtype=torch.float64)
    labels = torch.eye(label_dim, dtype=torch.float64)[torch.arange(N) % label_dim] if label_dim else None
    return x, noise, labels


def _close(actual, expected, scale):
    """Each value within 1e-5 relative (entries near zero: 1e-5 of the output's RMS)."""
    for a, e in zip(actual, expected):
        assert abs(a - e) <= 1e-5 * abs(e) + 1e-5 * scale, (actual, expected)


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp"])
def test_song_unet_matches_edm_golden_values(arch):
    golden = GOLDEN[arch]
    torch.manual_seed(7)
    net = build_network(arch, img_resolution=16, in_channels=3, num_classes=LABEL_DIM[arch], channels=16,
                        channel_mult=(1, 2, 2), blocks=1, attn=(8,), dropout=0.0).double().eval()
    sd = net.state_dict()
    state = [len(sd), count_parameters(net), sum(v.sum() for v in sd.values()).item(),
             sum(v.square().sum() for v in sd.values()).item(),
             sum((v.flatten() * torch.arange(v.numel(), dtype=torch.float64).sin()).sum()
                 for v in sd.values()).item()]
    assert state[:2] == golden["state"][:2]
    _close(state[2:], golden["state"][2:], 0.0)

    x, noise, labels = _inputs(LABEL_DIM[arch])
    for phase in ("init", "perturbed"):
        if phase == "perturbed":
            g = torch.Generator().manual_seed(2)
            with torch.no_grad():
                for _, p in sorted(net.named_parameters()):
                    p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        with torch.no_grad():
            y = net(x, noise, labels)
        row = [y.sum().item(), y.square().sum().item()] + y.flatten()[IDX].tolist()
        rms = math.sqrt(golden[phase][1] / y.numel())
        _close(row, golden[phase], rms)
