"""Intervals over training seeds (diffmem.studies.seeds): the Student-t interval against its formula, the
per-configuration tables of runs and EMMs, and a sweep with a seed axis writing seeds.csv."""

import json
import math

import numpy as np
import pytest

from diffmem.studies.emm import SizePoint, estimate_emm
from diffmem.studies.seeds import aggregate_emm, aggregate_runs, mean_points, seed_interval
from diffmem.studies.specs import parse_spec
from diffmem.studies.sweep import run_sweep


def test_seed_interval_is_the_student_t_interval_of_the_mean():
    r = [0.53, 0.395, 0.655]  # the demo's |D| = 64 over training seeds 0, 1, 2
    mean = sum(r) / 3
    s = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    half = 4.302652729911275 * s / math.sqrt(3)  # t_{0.975, 2}
    got = seed_interval(r)
    assert got == pytest.approx((mean, mean - half, mean + half))
    assert seed_interval([0.97, 0.99, 1.0])[2] == 1.0  # clipped to a ratio
    assert seed_interval([0.4]) == (0.4, None, None)  # one seed: no seed interval


def test_aggregate_runs_groups_every_knob_but_the_seed():
    rows = [dict(weight_decay=wd, seed=s, max_ratio=r, ci_lo=r - 0.05, ci_hi=r + 0.07)
            for wd, rs in ((0.0, (0.9, 0.8, 0.7)), (0.1, (0.2, 0.3, 0.1))) for s, r in zip((0, 1, 2), rs)]
    table = aggregate_runs(rows, ["weight_decay", "seed"])
    assert [t["weight_decay"] for t in table] == [0.0, 0.1] and all(t["seeds"] == 3 for t in table)
    assert table[0]["max_ratio"] == pytest.approx(0.8) and table[1]["max_ratio"] == pytest.approx(0.2)
    assert (table[0]["seed_min"], table[0]["seed_max"]) == (0.7, 0.9)
    assert table[0]["sampling_ci_width"] == pytest.approx(0.12)
    mean, lo, hi = seed_interval([0.9, 0.8, 0.7])
    assert (table[0]["ci_lo"], table[0]["ci_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert table[0]["seed_ci_width"] == pytest.approx(hi - lo)


def test_emm_over_seeds_interpolates_the_seed_mean_curve():
    ratios = {0: (1.0, 0.95, 0.6), 1: (1.0, 0.85, 0.5), 2: (0.98, 0.93, 0.4)}
    per_seed = [[SizePoint(n, r, (r - 0.03, min(r + 0.03, 1.0)), 200) for n, r in zip((8, 16, 32), rs)]
                for rs in ratios.values()]
    points = mean_points(per_seed)
    assert [p.size for p in points] == [8, 16, 32] and points[0].n_generated == 600
    means = [np.mean([rs[i] for rs in ratios.values()]) for i in range(3)]
    assert [p.ratio for p in points] == pytest.approx(means)
    assert points[1].ci95 == pytest.approx(seed_interval([0.95, 0.85, 0.93])[1:])
    own = [estimate_emm(ps, 0.1).emm for ps in per_seed]
    (row,) = aggregate_emm({(): per_seed}, [], 0.1, {(): own})
    expected = math.exp(math.log(16) + (means[1] - 0.9) / (means[1] - means[2]) * math.log(2))
    assert row["emm"] == pytest.approx(expected)
    assert (row["emm_seed_min"], row["emm_seed_max"]) == (min(own), max(own))
    assert row["emm_lo"] is None or row["emm_lo"] <= row["emm"] <= row["emm_hi"]


SPEC = """
name = "seeded"
[data]
source = "digits"
labels = "none"
size = 8
[train]
preset = "tiny"
channels = 8
precond = "edm"
epochs = 20
batch = 8
lr = 2e-3
ema_rate = 0.9
track_every = 10
track_samples = 20
[axes]
"train.seed" = [0, 1]
"""


def test_a_sweep_with_a_seed_axis_writes_the_table_over_seeds(tmp_path):
    spec = tmp_path / "seeded.toml"
    spec.write_text(SPEC)
    result = run_sweep(parse_spec(spec), tmp_path / "out", workers=1, threads=1)
    (row,) = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert row == result.by_seed[0] and row["seeds"] == 2
    assert row["max_ratio"] == pytest.approx(np.mean([r["max_ratio"] for r in result.rows]))
    assert (tmp_path / "out" / "seeds.csv").read_text().splitlines()[0].startswith("seeds,max_ratio")
