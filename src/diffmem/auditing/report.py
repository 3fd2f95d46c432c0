"""The audit's files: the per-sample table (CSV and npz), ``audit.json``, the samples drawn from a
model, and the HTML page (through :func:`diffmem.pages.render_html`, the page ``diffmem report``
writes: self-contained, figures embedded).

Per-sample columns (one row per generated sample ``sample``): for each criterion that ran,
``<criterion>_nn1`` (index of the nearest training image in that criterion's sense), its distances
or scores, and ``<criterion>_flag``; then ``flagged_any`` and ``gate_flag``. Distances are in
model-space units (one grey level = 1/127.5).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from diffmem.atomic import write_json, write_npz, write_text
from diffmem.plots import neighbor_grid, save_figure
from diffmem.pages import MARKER, Report, render_html

TOP_ROWS = 20  # samples listed on the page (the CSV has them all)


def table_csv(table: dict[str, np.ndarray]) -> str:
    """The per-sample table as CSV text: a header, then one row per sample (floats to 6 significant
    digits, booleans as 0/1)."""
    names = list(table)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    columns = [np.asarray(table[n]) for n in names]
    for i in range(len(columns[0])):
        writer.writerow([_cell(c[i]) for c in columns])
    return buf.getvalue()


def _cell(v):
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return int(v) if isinstance(v, np.integer) else v


def write_audit(result, ctx, out: Path, samples: np.ndarray | None = None) -> dict[str, Path]:
    """Write every output of ``result`` into the folder ``out`` (checked by the caller); returns
    ``{name: path}``."""
    from diffmem.data.io import save_npz

    files = {}
    if samples is not None:
        files["samples"] = save_npz(out / "samples.npz", samples)
    table = result.table()
    write_npz(out / "per_sample.npz", **table)
    write_text(out / "per_sample.csv", table_csv(table))
    files["per_sample_npz"], files["per_sample_csv"] = out / "per_sample.npz", out / "per_sample.csv"
    report_dir = out / "report"
    report_dir.mkdir()
    (report_dir / MARKER).touch()
    files["report"] = report_dir / "index.html"
    write_text(files["report"], render_html(build_page(result, ctx, report_dir)))
    files["summary"] = out / "audit.json"
    result.files = files
    write_json(out / "audit.json", result.summary(), allow_nan=False)
    return files


def ratio_histogram(ratio: np.ndarray, threshold: float) -> Figure:
    """Histogram of the (M,) pixel d1/d2 ratios with the threshold line."""
    fig = Figure(figsize=(5.2, 3.2))
    ax = fig.subplots()
    ax.hist(ratio, bins=np.linspace(0, 1, 41), color="#4a7ab5")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set_xlabel("d1 / d2 (pixel space)")
    ax.set_ylabel("generated samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _criteria_rows(result) -> list[dict]:
    return [{"criterion": c.name, "ran": "yes" if c.ran else "no", "flagged": None if c.flags is None else
             int(c.flags.sum()), "rate": c.rate, "ci_lo": None if c.ci95 is None else c.ci95[0],
             "ci_hi": None if c.ci95 is None else c.ci95[1], "gate": "yes" if c.name == result.gate else "",
             "explanation": c.explanation} for c in result.criteria]


def _top_rows(result) -> list[dict]:
    """The TOP_ROWS samples with the lowest pixel d1/d2, with every criterion's nearest and flag."""
    table = result.table()
    order = np.argsort(table["pixel_nn_ratio"], kind="stable")[:TOP_ROWS]
    keep = [k for k in table if k == "sample" or k.endswith(("_nn1", "_nn_ratio", "_flag", "_similarity", "_score"))]
    return [{k: (table[k][i].item() if hasattr(table[k][i], "item") else table[k][i]) for k in keep} for i in order]


def build_page(result, ctx, folder: Path) -> Report:
    """The report: the verdict, each criterion's line, figures (nearest-neighbour grid, ratio
    histogram, each criterion's own), the criteria table and the most suspicious samples."""
    report = Report(f"Memorization audit ({result.n_generated} samples, {result.n_train} training images)")
    report.lines.append(result.verdict)
    report.lines += [c.explanation for c in result.criteria]
    pixel = result.criterion("pixel")
    grid = neighbor_grid(ctx.generated, ctx.train.images, ctx._found["pixel"], rows=4)
    report.figures.append(("Generated samples beside their nearest training images (pixel space)",
                           save_figure(grid, folder / "neighbors.png", dpi=110)))
    report.figures.append(("Pixel-space d1/d2 of every generated sample",
                           save_figure(ratio_histogram(pixel.columns["nn_ratio"], pixel.summary["threshold"]),
                                       folder / "ratio_histogram.png")))
    for c in result.ran:
        for i, (caption, draw) in enumerate(c.figures):
            report.figures.append((caption, save_figure(draw(), folder / f"{c.name}-{i}.png")))
    report.table = _criteria_rows(result)
    report.tables.append((f"The {TOP_ROWS} samples closest to a training image (pixel d1/d2)", _top_rows(result)))
    return report
