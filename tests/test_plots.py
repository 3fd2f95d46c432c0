"""Figures are built without pyplot and never touch matplotlib's global backend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from diffmem.metrics import memorization
from diffmem.plots import save_curve, save_curves, save_neighbor_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_import_and_saving_leave_the_backend_alone(tmp_path):
    """A Jupyter session's backend (here a non-Agg name set through rcParams) survives importing
    diffmem.plots and saving figures, and pyplot is never imported."""
    script = f"""
import sys, matplotlib
matplotlib.rcParams["backend"] = "svg"
import diffmem.plots as plots
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
plots.save_curve({str(tmp_path / "c.png")!r}, [1, 2, 3], [0.1, 0.5, 0.9], xlabel="x", ylabel="y")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


def test_curves_are_png_of_the_figure_size(tmp_path):
    path = save_curve(tmp_path / "curve.png", [0, 1e-3, 1e-2], [1.0, 0.5, 0.0], xlabel="c", ylabel="ratio",
                      title="t", logx=True)  # a zero on a log axis: symlog
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (round(4.6 * 120), round(3.2 * 120))
    path = save_curves(tmp_path / "two.png", {"a": ([1, 2], [0, 1]), "b": ([1, 2], [1, 0])}, xlabel="x", ylabel="y")
    with Image.open(path) as img:
        assert img.size == (552, 384)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.min() < 100 and pixels.max() == 255  # something was drawn on a white page


def test_neighbor_grid_shows_the_samples(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (10, 3, 6, 6), dtype=np.uint8)
    generated = train[[0, 1, 2]].copy()
    result = memorization(train, generated, bootstrap=0)
    path = save_neighbor_grid(tmp_path / "grid.png", generated, train, result, rows=2)
    with Image.open(path) as img:
        # 2 most + 2 least memorized rows of 3 panels (1.6 x 1.7 inches each) at 110 dpi
        assert img.format == "PNG" and img.size == (round(3 * 1.6 * 110), round(4 * 1.7 * 110))
