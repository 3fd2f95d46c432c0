# PYTHONPATH=src python experiments/specs/toy_tikhonov/closed_form_check.py experiments/results/toy_long_width/hidden-256 experiments/results/toy_tikhonov/tikhonov-0.001 experiments/results/toy_tikhonov/tikhonov-0.01 experiments/results/toy_tikhonov/tikhonov-0.1 > experiments/results/toy_tikhonov/closed_form_check.txt
# (needs the runs' snapshots, which are not committed: run the two sweeps first)
# How close is each trained toy network to the closed-form Tikhonov optimum of its own c (and to D*)?
import sys, torch, numpy as np
from diffmem.runs import load_run
from diffmem.data.points import make_points
from diffmem.denoisers.optimal import OptimalDenoiser
y = make_points("toy2d", 20).points.astype(np.float64)
g = torch.Generator().manual_seed(0)
for folder, c in [(f, float(f.rsplit("-", 1)[1]) if "tikhonov" in f else 0.0) for f in sys.argv[1:]]:
    D = load_run(folder).denoiser
    for s in (0.02, 0.05, 0.1, 0.3):
        x = torch.from_numpy(y).repeat(50, 1) + s * torch.randn(1000, 2, generator=g, dtype=torch.float64)
        sig = torch.full((1000,), s, dtype=torch.float64)
        net = D(x.float(), sig.float()).double()
        dc = OptimalDenoiser(y, regularize=("tikhonov", c))(x, sig) if c > 0 else None
        d0 = OptimalDenoiser(y)(x, sig)
        rms = lambda a: float(((net - a) ** 2).sum(1).mean().sqrt())
        print(f"{folder.split('/')[-1]:>16} sigma {s:<5} rms(net - D*) {rms(d0):.4f}" + (f"  rms(net - D_c) {rms(dc):.4f}  rms(D_c - D*) {float(((dc - d0) ** 2).sum(1).mean().sqrt()):.4f}" if c else ""))
