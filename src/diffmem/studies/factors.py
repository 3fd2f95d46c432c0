"""The factor study at a glance: every finding's effect on EMM or on the ratio, with intervals, on
one page.

A factor study (seed 001, Gu et al. 2025) is a folder of sweeps, one per finding (the base EMM, the
labels, weight decay, width, ...), each made by ``diffmem sweep`` from its spec. This module reads
each sweep's table — ``seeds.json`` (intervals that include the training-seed spread,
:mod:`diffmem.studies.seeds`) where the sweep has a seed axis, else ``results.json`` (sampling CIs of one
seed) — and draws one figure: EMM findings on a log |D| axis, ratio findings on a [0, 1] axis, a row
per factor value, grouped by finding, the base's EMM as a band. ``diffmem report STUDY`` writes it
with the table beside it; each sweep keeps its own report (``diffmem report STUDY/NAME``).
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

def _sweeps(folder: Path) -> list[Path]:
    """The sweep folders directly inside ``folder``: the base's first, then in name order."""
    return sorted((p for p in Path(folder).iterdir() if p.is_dir() and (p / "sweep.json").exists()),
                  key=lambda p: (p.name != "base", p.name))


def is_factor_study(folder: Path) -> bool:
    """A folder of sweep folders (and no sweep of its own)."""
    return not (Path(folder) / "sweep.json").exists() and bool(_sweeps(folder))


def _setting(row: dict, knobs: list[str]) -> str:
    shown = [k for k in knobs if k != "seed" and not (k == "batch" and "size" in knobs)]  # batch follows |D|
    return ", ".join(f"{k}={row[k]}" for k in shown if k in row) or "base"


def finding_rows(folder: Path) -> list[dict]:
    """One summary row per configuration of the sweep in ``folder`` (see the module docstring)."""
    folder = Path(folder)
    sweep = json.loads((folder / "sweep.json").read_text())
    knobs = list(sweep["cells"][0]["knobs"]) if sweep["cells"] else []
    seeded = (folder / "seeds.json").exists()
    rows = json.loads((folder / ("seeds.json" if seeded else "results.json")).read_text())
    out = []
    for row in rows:
        emm = sweep["mode"] == "emm"
        value, lo, hi = (row.get("emm"), row.get("emm_lo"), row.get("emm_hi")) if emm else \
            (row.get("max_ratio"), row.get("ci_lo"), row.get("ci_hi"))
        if value is None:
            continue
        lo_key, hi_key = ("emm_seed_min", "emm_seed_max") if emm else ("seed_min", "seed_max")
        out.append(dict(finding=sweep["name"], setting=_setting(row, knobs), measure="EMM" if emm else "ratio",
                        value=value, lo=lo, hi=hi, seeds=row.get("seeds", 1),
                        seed_min=row.get(lo_key), seed_max=row.get(hi_key)))
    return out


def study_rows(folder: Path) -> list[dict]:
    """Every finding's rows, the base's first, then the sweeps in name order."""
    return [row for sweep in _sweeps(folder) for row in finding_rows(sweep)]


def summary_figure(rows: list[dict]) -> Figure:
    """EMM rows (log axis) and ratio rows ([0, 1]) as points with interval bars, a row per setting."""
    panels = [("EMM", "EMM_0.1 (|D|, log scale)"), ("ratio", "highest memorization ratio")]
    panels = [(m, label) for m, label in panels if any(r["measure"] == m for r in rows)]
    heights = [sum(r["measure"] == m for r in rows) for m, _ in panels]
    fig = Figure(figsize=(7.5, 1.2 + 0.28 * sum(heights)))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights or [1]})[:, 0]
    base = next((r for r in rows if r["finding"] == "base" and r["measure"] == "EMM"), None)
    for ax, (measure, label) in zip(axes, panels):
        mine = [r for r in rows if r["measure"] == measure]
        findings = list(dict.fromkeys(r["finding"] for r in mine))
        colors = {f: f"C{i % 10}" for i, f in enumerate(findings)}
        for y, r in enumerate(mine):
            lo = r["lo"] if r["lo"] is not None else r["value"]
            hi = r["hi"] if r["hi"] is not None else r["value"]
            ax.errorbar([r["value"]], [y], xerr=[[r["value"] - lo], [hi - r["value"]]], fmt="o",
                        color=colors[r["finding"]], capsize=3, ms=4)
        ax.set_yticks(range(len(mine)), [f"{r['finding']}: {r['setting']}" for r in mine], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        if measure == "EMM":
            ax.set_xscale("log")
            if base is not None and base["lo"] is not None:
                ax.axvspan(base["lo"], base["hi"], color="0.85", zorder=0, label="base EMM, 95 % interval")
                ax.legend(fontsize=7, loc="lower right")
        else:
            ax.set_xlim(-0.02, 1.02)
            ax.axvline(0.9, color="0.5", ls="--", lw=0.8)
    fig.suptitle("Each factor's effect (bars: 95 % intervals, with the training-seed spread where seeds > 1)",
                 fontsize=9)
    fig.tight_layout()
    return fig
