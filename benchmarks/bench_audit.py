"""Audit speed: diffmem's exact top-2 search vs (a) a bare GEMM of the same shape and (b) the
``torch.cdist`` + ``topk`` method over the full training set per batch of 512 generated images.

All three run in one process on the same data, interleaved, so their ratios are comparable on a
noisy machine; each peak memory is measured in a fresh child process (ru_maxrss high-water mark
above the data's own footprint).

    python benchmarks/bench_audit.py            # 10k generated x 50k train x 3072 dims (CIFAR shape)
    python benchmarks/bench_audit.py --quick    # 2k x 10k x 3072
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import threading
import time

import numpy as np
import torch

from diffmem.metrics.memorization import memorization


def make_data(m: int, n: int, d: int, seed: int = 0):
    """uint8 images: random training set, generated set = 20 % exact copies, 20 % near copies, rest new."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n, d), dtype=np.uint8)
    gen = rng.integers(0, 256, (m, d), dtype=np.uint8)
    k = m // 5
    gen[:k] = train[rng.integers(0, n, k)]
    near = train[rng.integers(0, n, k)].astype(np.int16) + rng.integers(-20, 21, (k, d), dtype=np.int16)
    gen[k : 2 * k] = np.clip(near, 0, 255).astype(np.uint8)
    return train, gen


def run_audit(train, gen):
    return memorization(train, gen, bootstrap=0)


def run_gemm(train, gen, block=1024):
    """The bare GEMM of the same shape: float32 (m x d) @ (d x n), in row blocks into one buffer."""
    t = torch.from_numpy(train).float()
    g = torch.from_numpy(gen).float()
    out = torch.empty(min(block, len(g)), len(t))
    for i in range(0, len(g), block):
        q = g[i : i + block]
        torch.mm(q, t.T, out=out[: len(q)])
    return out


def run_cdist(train, gen, batch=512):
    """How the seed's code measures: cdist to the whole training set per batch, then top-2."""
    t = torch.from_numpy(train).float() / 127.5 - 1
    d1, d2 = [], []
    for i in range(0, len(gen), batch):
        g = torch.from_numpy(gen[i : i + batch]).float() / 127.5 - 1
        dist = torch.cdist(g, t)
        top = torch.topk(dist, 2, dim=1, largest=False).values
        d1.append(top[:, 0])
        d2.append(top[:, 1])
    d1, d2 = torch.cat(d1).double().numpy(), torch.cat(d2).double().numpy()
    return (d1 < d2 / 3) | (d1 == 0)


METHODS = {"audit": run_audit, "gemm": run_gemm, "cdist": run_cdist}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_child(name, m, n, d, queue):
    """Run one method; report its peak resident memory above the data's own (polled every 2 ms)."""
    train, gen = make_data(m, n, d)
    base, peak, done = _rss(), [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    METHODS[name](train, gen)
    done.set()
    thread.join()
    queue.put(max(peak[0], _rss()) - base)


def peak_memory(name, m, n, d) -> int:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(name, m, n, d, q))
    p.start()
    value = q.get()
    p.join()
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    m, n, d = (2000, 10000, 3072) if args.quick else (10000, 50000, 3072)
    train, gen = make_data(m, n, d)
    flop = 2.0 * m * n * d
    times = {k: [] for k in METHODS}
    results = {}
    for _ in range(args.repeats):  # interleaved
        for name, fn in METHODS.items():
            t0 = time.perf_counter()
            results[name] = fn(train, gen)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    equal = bool(np.array_equal(results["audit"].memorized, results["cdist"]))
    peaks = {k: peak_memory(k, m, n, d) for k in ("audit", "cdist")}
    report = {
        "shape": {"generated": m, "train": n, "dims": d}, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "seconds": best, "gemm_gflops": flop / best["gemm"] / 1e9,
        "audit_over_gemm": best["audit"] / best["gemm"], "cdist_over_audit": best["cdist"] / best["audit"],
        "audit_peak_memory_gib": peaks["audit"] / 2**30, "cdist_peak_memory_gib": peaks["cdist"] / 2**30,
        "memorized_equal_to_cdist": equal, "memorization_ratio": results["audit"].ratio,
        "exact_rechecks": results["audit"].extra["n_exact_rechecks"],
    }
    print(f"shape {m} x {n} x {d}, {torch.get_num_threads()} threads, GEMM {report['gemm_gflops']:.1f} GFLOP/s")
    for k, v in best.items():
        print(f"  {k:6s} {v:8.2f} s")
    print(f"  audit / GEMM      = {report['audit_over_gemm']:.3f}   (goal <= 1.25)")
    print(f"  cdist / audit     = {report['cdist_over_audit']:.3f}   (goal >= 1.5)")
    print(f"  audit peak memory = {report['audit_peak_memory_gib']:.2f} GiB (goal <= 2), "
          f"cdist {report['cdist_peak_memory_gib']:.2f} GiB")
    print(f"  memorized flags equal to cdist's: {equal}; ratio {report['memorization_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
