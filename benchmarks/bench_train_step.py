"""Time one training step of diffmem's SongUNet against EDM's reference SongUNet.

Both networks are built in the same process from the same configuration and seed (so they hold
identical weights), then timed in interleaved rounds: forward + backward + Adam on a plain MSE
denoising loss at a random log-normal sigma. Prints per-step medians and the ratio diffmem / EDM
(< 1 means diffmem is faster).

    python benchmarks/bench_train_step.py --edm /tmp/edmref --threads 2 \
        --arch ddpmpp --preset tiny --resolution 8 --img-channels 1 --batch 64

``--edm`` is a checkout (or ``git archive``) of NVlabs/edm that holds ``training/networks.py``;
it is only read at benchmark time and never part of diffmem.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from diffmem.denoisers.networks import build_network, count_parameters


def load_edm(path: Path):
    """Import EDM's training/networks.py with its pickling decorator replaced by a no-op."""
    source = path / "training" / "networks.py"
    if not source.is_file():
        sys.exit(f"--edm: {source} not found")
    persistence = types.ModuleType("torch_utils.persistence")
    persistence.persistent_class = lambda cls: cls
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    sys.modules["torch_utils"] = torch_utils
    sys.modules["torch_utils.persistence"] = persistence
    spec = importlib.util.spec_from_file_location("edm_reference_networks", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edm_kwargs(net) -> dict:
    """EDM SongUNet keyword arguments that rebuild ``net`` (a diffmem SongUNet without skip mask)."""
    return {k: v for k, v in net.config.items() if k != "skip_mask"}


def make_step(net, x0, labels, lr=1e-3):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)

    def step():
        sigma = (torch.randn(x0.shape[0], generator=gen) * 1.2 - 1.2).exp()
        noise = torch.randn(x0.shape, generator=gen)
        x = (x0 + sigma[:, None, None, None] * noise) / (sigma[:, None, None, None] ** 2 + 0.25).sqrt()
        if x0.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        out = net(x, sigma.log() / 4, labels)
        loss = (out - x0).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def time_steps(step, n):
    """(wall, process CPU) seconds per step; CPU time is less sensitive to other load on the machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edm", type=Path, required=True, help="NVlabs/edm checkout holding training/networks.py")
    p.add_argument("--arch", default="ddpmpp", choices=["ddpmpp", "ncsnpp"])
    p.add_argument("--preset", default=None)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--channel-mult", default=None, help="e.g. 1,2,2")
    p.add_argument("--blocks", type=int, default=None)
    p.add_argument("--attn", default=None, help="e.g. 16 or none")
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--label-dim", type=int, default=0)
    p.add_argument("--resolution", type=int, default=8)
    p.add_argument("--img-channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=10, help="timed steps per network per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="append the report to this file")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    edm = load_edm(args.edm)
    knobs = dict(channels=args.channels, channel_mult=args.channel_mult, blocks=args.blocks, attn=args.attn,
                 dropout=args.dropout)
    torch.manual_seed(0)
    ours = build_network(args.arch, img_resolution=args.resolution, in_channels=args.img_channels,
                         num_classes=args.label_dim, preset=args.preset, **knobs)
    torch.manual_seed(0)
    ref = edm.SongUNet(**edm_kwargs(ours))
    same = ours.state_dict().keys() == ref.state_dict().keys() and all(
        torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))

    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(args.batch, args.img_channels, args.resolution, args.resolution, generator=gen) * 2 - 1
    labels = None
    if args.label_dim:
        labels = torch.nn.functional.one_hot(torch.randint(0, args.label_dim, (args.batch,), generator=gen),
                                             args.label_dim).float()
    if args.channels_last:
        ours, ref = ours.to(memory_format=torch.channels_last), ref.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)

    # Same function: compare outputs in eval mode before training.
    with torch.no_grad():
        ours.eval(), ref.eval()
        sig = torch.full((args.batch,), 0.5)
        diff = (ours(x0, sig.log() / 4, labels) - ref(x0, sig.log() / 4, labels)).abs().max().item()
    ours.train(), ref.train()

    steps = {"diffmem": make_step(ours, x0, labels), "edm": make_step(ref, x0, labels)}
    for step in steps.values():
        time_steps(step, args.warmup)
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for k in order:
            w, c = time_steps(steps[k], args.steps)
            wall[k].append(w)
            cpu[k].append(c)
    med = statistics.median
    # Each round times both networks back to back, so its ratio sees (nearly) the same machine load.
    wall_ratio = med([a / b for a, b in zip(wall["diffmem"], wall["edm"])])
    cpu_ratio = med([a / b for a, b in zip(cpu["diffmem"], cpu["edm"])])

    lines = [
        "$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, channels_last {args.channels_last}",
        f"config: arch {args.arch} preset {args.preset} {ours.config}",
        f"batch {args.batch}, image {args.img_channels}x{args.resolution}x{args.resolution}, "
        f"parameters diffmem {count_parameters(ours)} / edm {count_parameters(ref)}, "
        f"identical init {same}, max |output diff| {diff:.2e}",
        f"{args.rounds} interleaved rounds x {args.steps} steps; median s/step wall: diffmem "
        f"{med(wall['diffmem']):.4f} edm {med(wall['edm']):.4f}; process CPU: diffmem {med(cpu['diffmem']):.4f} "
        f"edm {med(cpu['edm']):.4f}",
        f"ratio diffmem/edm (median over rounds): wall {wall_ratio:.3f}, CPU {cpu_ratio:.3f}",
        f"per-round wall s/step diffmem {[round(t, 4) for t in wall['diffmem']]}",
        f"per-round wall s/step edm     {[round(t, 4) for t in wall['edm']]}",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
