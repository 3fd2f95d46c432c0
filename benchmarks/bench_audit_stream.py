"""Benchmark: `audit` with the training set streamed from a memory-mapped `.npy` under a small
`--memory-limit`, vs the same audit with the training set loaded whole into memory.

Both run the criteria a sample set allows without a held-out set or a feature space (pixel 1/3,
extraction, authenticity) on the same data: synthetic uint8 CIFAR-sized images (3x32x32: random 4x4
colour layouts upsampled, plus noise), with 10 % of the generated set planted as exact copies. Each run happens in a fresh child process (spawn) that
polls its resident memory every 5 ms; peak memory is reported above the child's baseline after
imports, twice: all resident pages (VmRSS, which counts the memory-mapped file's pages while they
are cached) and anonymous pages only (RssAnon: what the process itself allocated). Methods are
interleaved and the fastest of ``--repeats`` runs is kept (timings on the shared machines drift).
With ``--fixed-mmap-threshold`` the children run with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then
returns every freed block above 128 KiB to the system at once, instead of raising its threshold
after the first large free and keeping later blocks in its heap, so resident memory tracks the live
data (without it the resident peak includes memory malloc keeps after ``free``).
The training file sits in the page cache (just written), so the streamed run reads memory-speed.

    python benchmarks/bench_audit_stream.py                 # 50 000 x 3072 (146 MiB), 200 samples, 64 MiB
    python benchmarks/bench_audit_stream.py --quick --limit-mib 16   # 10 000 x 3072 (29 MiB), 100 samples
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def images(rng, n: int) -> np.ndarray:
    """(n, 3, 32, 32) uint8 with image-like structure: random 4x4 colour layouts upsampled 8x plus
    pixel noise (uniform noise puts every pair at nearly the same distance, which no real set does)."""
    coarse = rng.integers(0, 256, (n, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    return np.clip(coarse + rng.integers(-24, 25, (n, 3, 32, 32)), 0, 255).astype(np.uint8)


def make_data(folder: Path, n: int, m: int, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """train.npy (n, 3, 32, 32) uint8 written in chunks, gen.npz (m, ...) with 10 % planted copies;
    returns the paths and the planted positions."""
    from diffmem.data import save_npz

    rng = np.random.default_rng(seed)
    train = np.lib.format.open_memmap(folder / "train.npy", mode="w+", dtype=np.uint8, shape=(n, 3, 32, 32))
    for i in range(0, n, 10_000):
        train[i:i + 10_000] = images(rng, min(10_000, n - i))
    train.flush()
    gen = images(rng, m)
    planted = rng.choice(m, size=m // 10, replace=False)
    gen[planted] = train[rng.choice(n, size=len(planted), replace=False)]
    del train
    save_npz(folder / "gen.npz", gen)
    return folder / "train.npy", folder / "gen.npz", np.sort(planted)


def _memory() -> tuple[int, int]:
    """(VmRSS, RssAnon) in bytes."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["RssAnon"]


def _child(method: str, train: str, gen: str, limit: int, queue) -> None:
    import torch

    from diffmem.auditing.audit import audit
    from diffmem.data import ImageSet

    torch.set_num_threads(2)
    base, peak, done = _memory(), [0, 0], threading.Event()

    def poll():
        while not done.is_set():
            rss, anon = _memory()
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
            time.sleep(0.005)

    threading.Thread(target=poll, daemon=True).start()
    t0 = time.perf_counter()
    if method == "memory":
        result = audit(gen, ImageSet(np.load(train)), memory_limit=limit)
    else:
        result = audit(gen, train, memory_limit=limit)
    seconds = time.perf_counter() - t0
    done.set()
    rss, anon = _memory()
    table = result.table()
    queue.put({"seconds": seconds, "peak_rss": max(peak[0], rss) - base[0], "peak_anon": max(peak[1], anon) - base[1],
               "flags": {c.name: np.flatnonzero(c.flags).tolist() for c in result.ran if c.flags is not None},
               "pixel_d1": table["pixel_d1"].tolist(), "verdict": result.verdict})


def run(method: str, train: Path, gen: Path, limit: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(method, str(train), str(gen), limit, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit-mib", type=int, default=64, help="--memory-limit of the streamed run")
    ap.add_argument("--fixed-mmap-threshold", action="store_true", help="MALLOC_MMAP_THRESHOLD_=131072 in the children")
    ap.add_argument("--out", default=str(HERE / "results" / "audit_stream.json"))
    args = ap.parse_args()
    n, m = (10_000, 100) if args.quick else (50_000, 200)
    if args.fixed_mmap_threshold:  # read by glibc when each spawned child starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    limits = {"memory": 8 * 2**30, "stream": args.limit_mib * 2**20}
    with tempfile.TemporaryDirectory() as tmp:
        train, gen, planted = make_data(Path(tmp), n, m)
        runs = {"memory": [], "stream": []}
        for _ in range(args.repeats):
            for method in ("memory", "stream"):
                runs[method].append(run(method, train, gen, limits[method]))
                print(method, f"{runs[method][-1]['seconds']:.1f} s", flush=True)
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    same = best["memory"]["flags"] == best["stream"]["flags"] and best["memory"]["pixel_d1"] == best["stream"]["pixel_d1"]
    report = {
        "machine": platform.processor() or platform.machine(), "train": [n, 3, 32, 32], "generated": m,
        "train_bytes": n * 3072, "stream_memory_limit": limits["stream"], "memory_memory_limit": limits["memory"],
        "seconds": {k: [r["seconds"] for r in v] for k, v in runs.items()},
        "stream_over_memory_time": best["stream"]["seconds"] / best["memory"]["seconds"],
        "peak_rss_gib": {k: r["peak_rss"] / 2**30 for k, r in best.items()},
        "peak_anon_gib": {k: r["peak_anon"] / 2**30 for k, r in best.items()},
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"), "same_answer": same, "planted_found": best["stream"]["flags"].get("pixel") == planted.tolist(),
        "verdict": best["stream"]["verdict"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "seconds"}, indent=2))


if __name__ == "__main__":
    main()
