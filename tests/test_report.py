"""`diffmem report` on a run, an EMM and a sweep folder: the figures exist, and a real browser
(headless Chromium) decodes every figure of the self-contained page."""

import json
import re

import pytest

from conftest import browser_dom
from diffmem.cli import run

BASE = """
name = "{name}"
mode = "{mode}"
[data]
source = "digits"
labels = "none"
size = 8
[train]
preset = "tiny"
channels = 8
precond = "edm"
epochs = 6
batch = 8
lr = 2e-3
ema_rate = 0.9
track_every = 3
track_samples = 20
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "emm.toml").write_text(BASE.format(name="e", mode="emm") + "[emm]\nsizes = [8, 16]\n")
    (root / "sweep.toml").write_text(BASE.format(name="s", mode="runs") + "[axes]\nweight_decay = [0.0, 0.1]\n")
    assert run(["emm", str(root / "emm.toml"), "--out", str(root / "emm"), "--no-progress"]) == 0
    assert run(["sweep", str(root / "sweep.toml"), "--out", str(root / "sweep"), "--no-progress"]) == 0
    return root


def _decoded(index):
    """(figures on the page, figures the browser decoded), read back from the rendered DOM."""
    dom = browser_dom(index)
    total = re.search(r'data-figures="(\d+)"', dom)
    decoded = re.search(r'data-figures-decoded="(\d+)"', dom)
    assert total and decoded, dom[:500]
    return int(total.group(1)), int(decoded.group(1))


@pytest.mark.parametrize("what,figures", [
    ("emm", {"base-ratio_vs_size.png", "base-ratio_vs_epoch.png", "base-neighbors.png"}),
    ("sweep", {"ratio_vs_epoch.png", "max_ratio_vs_factor.png"}),
    ("sweep/weight_decay-0.1", {"ratio_vs_epoch.png", "neighbors.png"}),
    ("emm/base", {"base-ratio_vs_size.png", "base-ratio_vs_epoch.png", "base-neighbors.png"}),
])
def test_report_pages_decode_in_a_browser(folders, run_cli, what, figures):
    code, out, err = run_cli(["report", folders / what])
    assert code == 0, err
    report = folders / what / "report"
    assert figures <= {p.name for p in report.glob("*.png")}
    page = (report / "index.html").read_text()
    assert "src=\"data:image/png;base64," in page and "file:" not in page  # self-contained
    total, decoded = _decoded(report / "index.html")
    assert total == decoded == page.count("<img")
    assert total >= len(figures)


def test_report_table_and_refusals(folders, run_cli):
    assert run_cli(["report", folders / "sweep"])[0] == 0
    page = (folders / "sweep" / "report" / "index.html").read_text()
    rows = json.loads((folders / "sweep" / "results.json").read_text())
    assert page.count("<tr>") == len(rows) + 1 and "weight_decay-0.1" in page
    assert run_cli(["report", folders / "sweep"])[0] == 0  # a report replaces a report
    other = folders / "sweep" / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    code, _, err = run_cli(["report", folders / "sweep", "--out", other])
    assert code == 2 and "--out" in err and (other / "notes.txt").read_text() == "keep"
    for bad in ("", folders / "nothing", folders / "emm.toml", folders / "sweep" / "report"):
        code, _, err = run_cli(["report", bad])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (bad, err)
    assert run_cli(["report", folders])[0] == 0  # a folder of sweeps is a factor study (diffmem.factors)
    assert (folders / "report" / "factors.png").exists()


def test_a_study_folder_is_reported_with_its_figures_and_short_tables(tmp_path, run_cli):
    """A study command's folder (results.json, CSV tables, PNGs: timescales, two-split, ...) gets a
    page with every figure and every table of at most STUDY_ROWS rows, decoded in a browser."""
    from matplotlib.figure import Figure

    from diffmem.plots import save_figure
    from diffmem.studies.report import STUDY_ROWS

    study = tmp_path / "study"
    study.mkdir()
    (study / "results.json").write_text("{}")
    (study / "results.csv").write_text("n,tau_mem\n8,1504\n16,4154\n")
    (study / "curves.csv").write_text("t\n" + "".join(f"{i}\n" for i in range(STUDY_ROWS + 1)))
    for name in ("curves", "tau_vs_n"):
        fig = Figure()
        fig.subplots().plot([1, 2], [3, 4])
        save_figure(fig, study / f"{name}.png")
    code, out, err = run_cli(["report", study])
    assert code == 0, err
    page = (study / "report" / "index.html").read_text()
    assert page.count("<img") == 2 and "<td>4154</td>" in page and page.count("<table>") == 1
    assert f"curves.csv: {STUDY_ROWS + 1} rows (not shown)" in page
    assert _decoded(study / "report" / "index.html") == (2, 2)
    (study / "results.json").unlink()
    assert run_cli(["report", study])[0] == 2  # without results.json it is no study folder
