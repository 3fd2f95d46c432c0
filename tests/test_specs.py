"""Sweep / EMM specs: cells from axes (product and zip), folder names, and every malformed spec
refused with one line naming the file and the key (exit 2)."""

import pytest

from diffmem.config import TrainConfig
from diffmem.studies.specs import cell_name, parse_spec

BASE = """
[data]
source = "digits"
labels = "none"
size = 16
[train]
preset = "tiny"
channels = 8
precond = "edm"
steps = 2
batch = 8
"""


def _write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_product_and_zip_cells(tmp_path):
    spec = parse_spec(_write(tmp_path, BASE + '[axes]\nweight_decay = [0.0, 0.01]\nlabels = ["none", "true"]\n'))
    cells = spec.cells()
    assert [c.name for c in cells] == ["weight_decay-0_labels-none", "weight_decay-0_labels-true",
                                       "weight_decay-0.01_labels-none", "weight_decay-0.01_labels-true"]
    assert cells[3].train.weight_decay == 0.01 and cells[3].data.labels == "true" and cells[3].data.size == 16
    assert cells[0].train == TrainConfig(preset="tiny", channels=8, precond="edm", steps=2, batch=8)
    zipped = parse_spec(_write(tmp_path, 'combine = "zip"\n' + BASE +
                               '[axes]\nbatch = [8, 16]\nlr_scaling = [8, 8]\nsize = [32, 64]\n'))
    assert [(c.train.batch, c.data.size) for c in zipped.cells()] == [(8, 32), (16, 64)]
    skips = parse_spec(_write(tmp_path, BASE + '[axes]\nskips = [[1, 1, 1, 1], [1, 0, 0, 0]]\n'))
    assert [c.name for c in skips.cells()] == ["skips-1,1,1,1", "skips-1,0,0,0"]
    assert skips.cells()[1].train.skips == (1, 0, 0, 0)
    assert cell_name({}) == "base"
    emm = parse_spec(_write(tmp_path, BASE + "[emm]\nsizes = [8, 16]\n"), mode="emm")
    assert emm.mode == "emm" and emm.emm.sizes == (8, 16) and len(emm.cells()) == 1


BAD = [
    (BASE + "[axes]\nwidth = [1, 2]\n", "[axes] width: unknown knob"),
    (BASE + "[axes]\nweight_decay = []\n", "[axes] weight_decay: must be a non-empty list"),
    (BASE + "[axes]\nweight_decay = 0.1\n", "[axes] weight_decay: must be a non-empty list"),
    (BASE + "[axes]\nweight_decay = [0.1, 0.1]\n", "[axes] two cells"),
    (BASE + "[axes]\nweight_decay = [0.1, -1.0]\n", "[axes] weight_decay: must be >= 0"),
    (BASE + "[axes]\nlr = [0.1, nan]\n", "[axes] lr: must be a finite number"),
    (BASE + "[axes]\nseed = [1, 2]\n", "[axes] seed: both a data and a train knob"),
    (BASE + "[axes]\ntrain.nonesuch = [1, 2]\n", "[axes] train.nonesuch: unknown knob"),
    (BASE.replace('precond = "edm"', 'precond = "ve"'), "[train] precond: expected one of"),
    (BASE.replace('channels = 8', 'chanels = 8'), "[train] chanels: unknown key"),
    (BASE.replace('size = 16', 'size = -4'), "[data] size: must be >= 1"),
    (BASE + "[axes]\nsize = [8, 0]\n", "[axes] size: must be >= 1"),
    ('combine = "zip"\n' + BASE + "[axes]\nbatch = [8, 16]\nlr = [0.1]\n", "combine = \"zip\" needs axes of equal length"),
    ('mode = "sometimes"\n' + BASE, "mode: expected one of runs, emm"),
    ('nonesuch = 1\n' + BASE, "nonesuch: unknown key"),
    (BASE + "[axes\n", "not valid TOML"),
    ('mode = "emm"\n' + BASE, "[emm] sizes: a grid needs at least two sizes"),
    ('mode = "emm"\n' + BASE + "[emm]\nsizes = [8, 8]\n", "[emm] sizes: duplicate size"),
    ('mode = "emm"\n' + BASE + "[emm]\nstrategy = \"adaptive\"\n", "[emm] min_size: the adaptive strategy needs"),
    ('mode = "emm"\n' + BASE + "[emm]\nsizes = [8, 16]\nepsilon = 1.5\n", "[emm] epsilon: must be < 1"),
    ('mode = "emm"\n' + BASE + "[emm]\nsizes = [8, 16]\n[axes]\nsize = [8, 16]\n", "[axes] size: in mode emm"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_malformed_specs_name_the_key(tmp_path, run_cli, text, message):
    path = _write(tmp_path, text)
    code, out, err = run_cli(["sweep", path, "--out", tmp_path / "out"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and str(path) in err, err
    assert not (tmp_path / "out").exists()


def test_unreadable_and_missing_spec_files(tmp_path, run_cli):
    for argv in (["sweep", tmp_path / "missing.toml"], ["emm", tmp_path], ["sweep", ""]):
        code, _, err = run_cli(argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    path = _write(tmp_path, BASE)
    path.chmod(0)
    import os

    if os.geteuid() != 0:  # root reads anything
        code, _, err = run_cli(["sweep", path])
        assert code == 2 and "cannot read" in err


def test_emm_refuses_axes(tmp_path, run_cli):
    path = _write(tmp_path, BASE + "[emm]\nsizes = [8, 16]\n[axes]\nlr = [0.1, 0.2]\n")
    code, _, err = run_cli(["emm", path, "--out", tmp_path / "o"])
    assert code == 2 and "diffmem sweep" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,flag", [(["--workers", "0"], "--workers"), (["--threads", "-1"], "--threads"),
                                        (["--gpus", "nan"], "--gpus"), (["--engine", "dask"], "--engine")])
def test_bad_engine_flags(tmp_path, run_cli, flags, flag):
    path = _write(tmp_path, BASE)
    code, _, err = run_cli(["sweep", path, "--out", tmp_path / "o", *flags])
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("mode,command", [("timescales", "diffmem timescales"), ("twosplit", "diffmem two-split")])
def test_sweep_refuses_the_study_modes_before_writing(tmp_path, run_cli, mode, command):
    """A study spec given to `diffmem sweep` is one line naming its own command; nothing is written."""
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\nmode = "{mode}"\n[data]\nsource = "digits"\nlabels = "none"\n'
                    '[train]\npreset = "tiny"\nepochs = 1\nbatch = 4\n')
    code, out, err = run_cli(["sweep", spec, "--out", tmp_path / "o"])
    assert code == 2 and command in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
