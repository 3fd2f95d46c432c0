"""Closed-form optimum sampling throughput vs a bare GEMM.

Each evaluation of D*(x; σ) over n training images of d dims for a batch of b is two GEMMs
(distances b×n×d, weighted sum b×n×d: 4·b·n·d FLOP) plus O(b·n) exponentials. The benchmark runs
EDM's Heun sampler (18 steps = 35 evaluations) with the optimum on random CIFAR-shaped data and
reports achieved FLOP/s as a fraction of a bare GEMM of the same dtype and shape, in one run.

    python benchmarks/bench_optimal.py            # n = 10000 train, 3x32x32, 256 samples
    python benchmarks/bench_optimal.py --quick    # n = 4096, 128 samples
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from diffmem.denoisers.optimal import OptimalDenoiser
from diffmem.sampling import sample


def bare_gemm_flops(b: int, n: int, d: int, chunk: int, dtype, repeats: int = 3) -> float:
    """FLOP/s of the same GEMMs (b×d @ d×chunk and b×chunk @ chunk×d) with no softmax around them."""
    x = torch.randn(b, d, dtype=dtype)
    y = torch.randn(chunk, d, dtype=dtype)
    w = torch.randn(b, chunk, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(0, n, chunk):
            torch.mm(x, y.T)
            torch.mm(w, y)
        best = min(best, time.perf_counter() - t0)
    return 4.0 * b * n * d / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n, num = (4096, 128) if args.quick else (10000, 256)
    shape, steps = (3, 32, 32), 18
    d = int(np.prod(shape))
    train = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    report = {"train": n, "dims": d, "samples": num, "steps": steps, "threads": torch.get_num_threads()}
    for dtype in (torch.float64, torch.float32):
        D = OptimalDenoiser(train, dtype=dtype)
        evaluations = 2 * steps - 1
        gemm = bare_gemm_flops(num, n, d, D.chunk, dtype)
        t0 = time.perf_counter()
        sample(D, num, shape, steps=steps, batch_size=num, dtype=dtype)
        elapsed = time.perf_counter() - t0
        achieved = 4.0 * num * n * d * evaluations / elapsed
        gemm_after = bare_gemm_flops(num, n, d, D.chunk, dtype)  # bracket the run: machines drift
        gemm = max(gemm, gemm_after)
        name = str(dtype).replace("torch.", "")
        report[name] = {"seconds": elapsed, "achieved_gflops": achieved / 1e9, "gemm_gflops": gemm / 1e9,
                        "fraction_of_gemm": achieved / gemm}
        print(f"{name}: {evaluations} evaluations in {elapsed:.2f} s: {achieved / 1e9:.1f} GFLOP/s, "
              f"bare GEMM {gemm / 1e9:.1f} GFLOP/s -> {achieved / gemm:.1%} of GEMM (goal >= 70%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
