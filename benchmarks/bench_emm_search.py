"""Adaptive EMM search vs a fixed grid: training compute (Σ epochs × |D|) to reach the grid's precision.

Synthetic ratio curves with a known EMM: ``E[ratio](|D|) = 1 / (1 + exp(k·(ln|D| - ln m)))``, with
``m`` set so that ``E[ratio](EMM) = 1 - ε``; each measurement is a Binomial(n, E[ratio]) draw over
``n`` samples with its bootstrap CI (as the audit reports it), and costs ``epochs × |D|``.

- grid: |D| = 8, 16, ..., 4096 (factor 2), every size trained;
- adaptive, same precision: climb from 8 by ×2 and stop at the first bracket (resolution 2, the
  grid's spacing): it measures exactly the grid's sizes up to the bracket, so its EMM and interval
  are the grid's, bit for bit;
- adaptive, finer: resolution 1.25, and CIs straddling 1 - ε re-measured with up to 4n samples.

    python benchmarks/bench_emm_search.py            # < 1 s; prints a table, writes emm_search.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from diffmem.studies.emm import SizePoint, adaptive_search, grid_search
from diffmem.metrics.memorization import bootstrap_ci

EPS, EPOCHS, N = 0.1, 1000, 200
GRID = [8 * 2**k for k in range(10)]  # 8 .. 4096


def curve(emm: float, k: float = 2.5):
    """Logistic in ln|D| through (emm, 1 - ε)."""
    ln_m = math.log(emm) - math.log((1 - (1 - EPS)) / (1 - EPS)) / k  # ratio(emm) = 1 - ε
    return lambda size: 1.0 / (1.0 + math.exp(k * (math.log(size) - ln_m)))


def measurer(emm: float, seed: int):
    p = curve(emm)

    def draw(size: int, n: int) -> SizePoint:
        rng = np.random.default_rng([seed, size, n])
        flags = rng.random(n) < p(size)
        ci, _ = bootstrap_ci(flags, 1000, seed)
        return SizePoint(size, float(flags.mean()), ci, n, EPOCHS * size)

    return (lambda size: draw(size, N)), (lambda point, n: draw(point.size, n))


def main() -> int:
    rows = []
    for emm in [12, 20, 35, 60, 100, 180, 300, 500, 900, 1600, 2800]:
        for seed in range(5):
            measure, remeasure = measurer(emm, seed)
            grid = grid_search(measure, GRID, EPS)
            same = adaptive_search(measure, min_size=GRID[0], max_size=GRID[-1], epsilon=EPS, factor=2, resolution=2)
            fine = adaptive_search(measure, min_size=GRID[0], max_size=GRID[-1], epsilon=EPS, factor=2,
                                   resolution=1.25, remeasure=remeasure, max_samples=4 * N)

            def err(e):
                return abs(math.log(e.emm / emm)) if e.emm else math.inf

            rows.append(dict(emm=emm, seed=seed, grid_compute=grid.compute, grid_err=err(grid),
                             same_compute=same.compute / grid.compute, same_equal=same.emm == grid.emm,
                             fine_compute=fine.compute / grid.compute, fine_err=err(fine)))
    print(f"{'EMM':>6} {'grid |ln err|':>14} {'adaptive@grid-precision':>24} {'adaptive fine':>14} {'fine |ln err|':>14}")
    for emm in sorted({r["emm"] for r in rows}):
        rs = [r for r in rows if r["emm"] == emm]
        print(f"{emm:>6} {np.median([r['grid_err'] for r in rs]):>14.3f} "
              f"{np.median([r['same_compute'] for r in rs]):>23.1%}{'' if all(r['same_equal'] for r in rs) else '!'} "
              f"{np.median([r['fine_compute'] for r in rs]):>14.1%} {np.median([r['fine_err'] for r in rs]):>14.3f}")
    same = [r["same_compute"] for r in rows]
    print(f"adaptive at the grid's precision: median {np.median(same):.1%} of the grid's compute, "
          f"{np.mean(np.array(same) <= 0.5):.0%} of cases <= 50 %; identical EMM in "
          f"{np.mean([r['same_equal'] for r in rows]):.0%} of cases")
    Path(__file__).with_name("emm_search.json").write_text(json.dumps(rows, indent=1))
    replay_digits()
    return 0


def replay_digits(path: Path = Path(__file__).resolve().parents[1] / "experiments/results/emm_digits/base/emm.json"):
    """The adaptive search replayed on the real grid measurements of experiments/specs/emm_digits.toml
    (|D| = 8, 16, 32, 64): at the grid's resolution it trains only the sizes it needs."""
    est = json.loads(path.read_text())
    points = {p["size"]: SizePoint(p["size"], p["ratio"], tuple(p["ci95"]), p["n_generated"], p["compute"])
              for p in est["points"]}
    grid = grid_search(lambda s: points[s], sorted(points), EPS)
    adaptive = adaptive_search(lambda s: points[s], min_size=8, max_size=64, epsilon=EPS, factor=2, resolution=2)
    print(f"digits (real runs): grid EMM {grid.emm:.1f} {tuple(round(v, 1) for v in grid.interval)}, "
          f"adaptive EMM {adaptive.emm:.1f}, sizes trained {[p.size for p in adaptive.points]}, "
          f"compute {adaptive.compute / grid.compute:.0%} of the grid's")


if __name__ == "__main__":
    sys.exit(main())
