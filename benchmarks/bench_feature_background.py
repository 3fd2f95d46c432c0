"""The feature-space audit's train-to-train background: all N training images against the whole
set (the first version, O(N²)) vs a seeded subset of ``BACKGROUND_ROWS`` (= 2000) of them (now,
O(2000·N)), in one process on the same data, interleaved; the median of ``--repeats`` runs each.

    python benchmarks/bench_feature_background.py              # N = 20 000 training images, 1x16x16
    python benchmarks/bench_feature_background.py --n 5000     # quicker
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time

import numpy as np
import torch

from diffmem.metrics.memorization import feature_memorization

mm = importlib.import_module("diffmem.metrics.memorization")  # the module (the package exports a function by that name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (args.n, 1, 16, 16), dtype=np.uint8)
    gen = train[:200].copy()
    times = {"all rows (O(N^2))": [], f"subset of {mm.BACKGROUND_ROWS} (O(2000 N))": []}
    medians = {}
    for _ in range(args.repeats):
        for (label, rows) in zip(times, (10**12, mm.BACKGROUND_ROWS)):
            mm.BACKGROUND_ROWS = rows
            t0 = time.perf_counter()
            r = feature_memorization(train, gen, features="pixels", metric="cosine", bootstrap=0)
            times[label].append(time.perf_counter() - t0)
            medians[label] = r.background["q0.5"]
    result = {"n_train": args.n, "dims": 256, "n_generated": 200,
              "seconds": {k: statistics.median(v) for k, v in times.items()},
              "background_median_similarity": medians}
    a, b = result["seconds"].values()
    result["ratio_subset_over_all"] = b / a
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
