"""The factor study's summary (diffmem.studies.factors): rows read from each sweep's seed table or, without
seeds, its per-cell table; the report of a folder of sweeps with its one summary figure."""

import json

import pytest

from diffmem.studies.factors import finding_rows, is_factor_study, study_rows, summary_figure
from diffmem.studies.report import make_report


def _sweep(folder, name, mode, knobs, seeds=None, results=None):
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"name": name, "mode": mode, "cells": [{"name": "c", "knobs": knobs}]}))
    (folder / "c").mkdir()
    if seeds is not None:
        (folder / "seeds.json").write_text(json.dumps(seeds))
    (folder / "results.json").write_text(json.dumps(results or []))


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "factors"
    _sweep(root / "weight_decay", "weight_decay", "runs", {"weight_decay": 0.0, "seed": 0}, seeds=[
        dict(weight_decay=0.0, seeds=3, max_ratio=0.9, ci_lo=0.8, ci_hi=1.0, seed_min=0.85, seed_max=0.95),
        dict(weight_decay=0.1, seeds=3, max_ratio=0.3, ci_lo=0.1, ci_hi=0.5, seed_min=0.2, seed_max=0.4)])
    _sweep(root / "base", "base", "emm", {"seed": 0}, seeds=[
        dict(seeds=3, emm=18.0, emm_lo=15.0, emm_hi=22.0, emm_seed_min=17.0, emm_seed_max=19.0)])
    _sweep(root / "conditioning", "conditioning", "runs", {"labels": "none", "size": 16, "batch": 16}, results=[
        dict(labels="unique", size=16, batch=16, max_ratio=1.0, ci_lo=1.0, ci_hi=1.0)])
    return root


def test_rows_come_from_the_seed_table_else_the_cells(study):
    wd = finding_rows(study / "weight_decay")
    assert [(r["setting"], r["value"], r["lo"], r["hi"], r["seeds"]) for r in wd] == [
        ("weight_decay=0.0", 0.9, 0.8, 1.0, 3), ("weight_decay=0.1", 0.3, 0.1, 0.5, 3)]
    assert wd[1]["seed_min"] == 0.2 and wd[1]["measure"] == "ratio"
    (base,) = finding_rows(study / "base")
    assert (base["measure"], base["value"], base["lo"], base["hi"], base["seed_max"]) == ("EMM", 18.0, 15.0, 22.0, 19.0)
    (cond,) = finding_rows(study / "conditioning")
    assert cond["setting"] == "labels=unique, size=16" and cond["seeds"] == 1  # batch follows |D|
    assert [r["finding"] for r in study_rows(study)] == ["base", "conditioning", "weight_decay", "weight_decay"]


def test_the_study_report_draws_one_summary_figure(study):
    assert is_factor_study(study) and not is_factor_study(study / "base")
    fig = summary_figure(study_rows(study))
    emm_ax, ratio_ax = fig.axes
    assert [t.get_text() for t in emm_ax.get_yticklabels()] == ["base: base"]
    assert len(ratio_ax.get_yticklabels()) == 3 and emm_ax.get_xscale() == "log"
    index = make_report(study)
    page = index.read_text()
    assert "factors.png" in {p.name for p in index.parent.iterdir()} and "weight_decay=0.1" in page


def test_a_seeded_sweep_report_plots_the_seed_mean_against_its_factor(study):
    index = make_report(study / "weight_decay")
    assert (index.parent / "seeds_vs_factor.png").exists()
    assert "Over training seeds" in index.read_text()
    assert not (make_report(study / "conditioning").parent / "seeds_vs_factor.png").exists()  # no seed axis
