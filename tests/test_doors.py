"""Every door of the newer commands (issue 16): bad input is one line naming the flag, spec key or
file, exit status 2, and the output folder unchanged byte for byte; broken models, mismatched sets
and degenerate feature extractors are refused; a folder belongs to one spec; the Python API names
the parameter; long work reports progress, quiet with --no-progress and in CI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import one_line
from diffmem.data import save_npz, write_dataset_zip
from diffmem.denoisers.adapters import save_torchscript
from diffmem.runs import load_denoiser
from diffmem.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ('[train]\npreset = "tiny"\nchannels = 8\nsteps = 2\nbatch = 4\ncheckpoint_every = 1000\n'
         'log_every = 1000\ndevice = "cpu"\n')
SWEEP = 'name = "A"\n[data]\nsource = "digits"\nsize = 8\nlabels = "none"\n' + TRAIN + \
    '[axes]\nweight_decay = [0.0, 0.001]\n'


def tree(root) -> dict:
    """Every file and folder under ``root`` with its bytes: compared before and after a refusal."""
    root = str(root)
    found = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            found[os.path.relpath(os.path.join(folder, d), root)] = None
        for f in files:
            with open(os.path.join(folder, f), "rb") as handle:
                found[os.path.relpath(os.path.join(folder, f), root)] = handle.read()
    return found


def refused(run_cli, argv, folder, *needles):
    """``argv`` is refused (one line, exit 2, the needles named) and ``folder`` is unchanged."""
    before = tree(folder)
    err = one_line(*run_cli(argv), *needles)
    assert tree(folder) == before, "the refusal changed the folder"
    return err


class Nan(torch.nn.Module):
    def forward(self, x, sigma):
        return x * float("nan")


class NanAtHighNoise(torch.nn.Module):
    def forward(self, x, sigma):
        return torch.where(sigma.reshape(-1, 1, 1, 1) > 10, x * float("inf"), x * 0.5)


class Shrink(torch.nn.Module):
    def forward(self, x, sigma):
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


class Constant(torch.nn.Module):
    def forward(self, x):
        return torch.ones(x.shape[0], 16)


class Zero(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """8x8 sets (train, held-out, generated), a 16x16 set, good and broken TorchScript models and
    feature extractors, a tiny trained run and a snapshot of it with NaN weights."""
    from diffmem.cli import run

    root = tmp_path_factory.mktemp("doors")
    rng = np.random.default_rng(0)
    write_dataset_zip(root / "train.zip", rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8))
    write_dataset_zip(root / "held.zip", rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8))
    write_dataset_zip(root / "held16.zip", rng.integers(0, 256, (16, 1, 16, 16), dtype=np.uint8))
    save_npz(root / "gen.npz", rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8))
    for name, module in (("nan", Nan()), ("nanhigh", NanAtHighNoise()), ("good", Shrink())):
        save_torchscript(module, root / f"{name}.pt", shape=(1, 8, 8))
    for name, module in (("const", Constant()), ("zero", Zero())):
        torch.jit.script(module).save(str(root / f"{name}.pt"))
    assert run(["train", "--data", str(root / "train.zip"), "--preset", "tiny", "--channels", "8", "--steps", "2",
                "--batch", "4", "--device", "cpu", "--out", str(root / "run")]) == 0
    snap = sorted((root / "run").glob("snapshot-*.safetensors"))[-1]
    with safe_open(str(snap), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    (root / "nanrun").mkdir()
    save_file({k: v * float("nan") if v.is_floating_point() else v for k, v in tensors.items()},
              str(root / "nanrun" / snap.name), metadata=meta)
    (root / "out").mkdir()
    return root


# 1. Exit 0 with garbage ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["nan.pt", "nanhigh.pt", "nanrun"])
def test_a_model_with_nan_output_is_refused_by_every_command(files, run_cli, model):
    """It was audited as clean ("0 of N flagged") and sampled into blank images."""
    m = files / model
    refused(run_cli, ["audit", m, "--train", files / "train.zip", "--features", "pixels", "--num", "4",
                      "--no-progress", "--out", files / "out" / "a"], files, "MODEL-or-SAMPLES", "NaN or Inf")
    refused(run_cli, ["sample", "--network", m, "--num", "2", "--out", files / "out" / "s.npz"], files,
            "--network", "NaN or Inf")
    refused(run_cli, ["membership", "--model", m, "--train", files / "train.zip", "--heldout", files / "held.zip",
                      "--out", files / "out" / "m"], files, "--model", "NaN or Inf")
    with pytest.raises(InputError, match="NaN or Inf") as err:
        load_denoiser(m)
    assert err.value.param == "model"


@pytest.mark.parametrize("model", ["good.pt", "run"])
def test_sets_whose_shape_is_not_the_models_are_refused(files, run_cli, model):
    """membership and quality printed an AUC / loss gap on 16x16 images for an 8x8 model."""
    refused(run_cli, ["membership", "--model", files / model, "--train", files / "train.zip", "--heldout",
                      files / "held16.zip"], files, "--heldout", "1x16x16", "1x8x8")
    refused(run_cli, ["membership", "--model", files / model, "--train", files / "held16.zip", "--heldout",
                      files / "held.zip"], files, "--train", "1x16x16")
    if model == "run":
        refused(run_cli, ["quality", "--generated", files / "gen.npz", "--heldout", files / "held16.zip", "--features",
                          "pixels", "--network", files / "run", "--train", files / "train.zip"], files, "--heldout")


@pytest.mark.parametrize("extractor,needle", [("const.pt", "same features"), ("zero.pt", "zero feature vector")])
def test_degenerate_feature_extractors_are_refused(files, run_cli, extractor, needle):
    """A constant extractor made every sample a copy (cosine 1 between zero vectors)."""
    refused(run_cli, ["memorization", "--train", files / "train.zip", "--generated", files / "gen.npz", "--features",
                      files / extractor, "--out", files / "out" / "mem"], files, "--features", needle)
    refused(run_cli, ["audit", files / "gen.npz", "--train", files / "train.zip", "--features", files / extractor,
                      "--no-progress", "--out", files / "out" / "a"], files, "--features", needle)


def test_the_measurement_cache_is_keyed_on_the_sets(files, monkeypatch):
    """`select` answered from RUN/timescales.json after --train / --heldout changed."""
    import diffmem.studies.timescales as ts
    from diffmem.data import load_image_set

    calls = []

    def fake(path, train_set, extractor, heldout_features, settings, device="cpu"):
        calls.append(path)
        return dict(epoch=int(path.name[14:20]), step=1, images=4, n=len(train_set), f_mem=0.0, ci95=[0, 0],
                    stderr=0.0, fd=1.0)

    monkeypatch.setattr(ts, "measure_snapshot", fake)
    settings = ts.TimescaleSettings(samples=4, heldout=4, features="pixels")
    train, held = load_image_set(files / "train.zip"), load_image_set(files / "held.zip")
    run = files / "cache-run"
    import shutil

    shutil.copytree(files / "run", run)
    snapshots = len(list(run.glob("snapshot-*")))
    ts.measure_run(run, train, held, settings, source="digits")
    ts.measure_run(run, train, held, settings, source="digits")
    assert len(calls) == snapshots  # the second call is answered from the cache
    ts.measure_run(run, held, held, settings, source="digits")  # another training set: measured again
    ts.measure_run(run, train, train, settings, source="digits")  # another held-out set: measured again
    assert len(calls) == 3 * snapshots


@pytest.mark.parametrize("line,needle", [("lr = true", "[train] lr: must be a number, got true"),
                                         ('batch = "4"', "[train] batch: must be a number, got the string '4'"),
                                         ('compile = "yes"', "[train] compile: must be true or false")])
def test_spec_values_of_the_wrong_type_are_refused_not_converted(tmp_path, run_cli, line, needle):
    """`lr = true` trained at lr 1.0."""
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP.replace("[train]\n", f"[train]\n{line}\n").replace("batch = 4\n", "" if "batch" in line
                                                                              else "batch = 4\n"))
    refused(run_cli, ["sweep", spec, "--out", tmp_path / "o"], tmp_path, needle)


def test_booleans_are_not_numbers_in_the_library_either():
    from diffmem.config import TrainConfig
    from diffmem.errors import check_number

    for value in (True, False):
        with pytest.raises(InputError, match="must be a number"):
            check_number("lr", value)
    with pytest.raises(InputError) as err:
        TrainConfig(steps=1, lr=True)
    assert err.value.param == "lr"


# 2. Written, then refused -------------------------------------------------------------------------


@pytest.mark.parametrize("command,text,needle", [
    ("sweep", SWEEP.replace("[0.0, 0.001]", "[0.0, 0.001]\nsteps = [2, 1]").replace("steps = 2\n", "snapshots = \"2\"\n"),
     "[train] snapshots: epoch 2 is outside"),
    ("sweep", SWEEP.replace("weight_decay = [0.0, 0.001]", "size = [8, 100000]"), "[axes] size"),
    ("sweep", SWEEP.replace('device = "cpu"', 'device = "cpu"\nattn = "16"'), "attn"),
    ("emm", SWEEP.replace("[axes]\nweight_decay = [0.0, 0.001]\n", "[emm]\nsizes = [8, 100000]\n")
     .replace("log_every = 1000", "log_every = 1000\ntrack_every = 1"), "[emm] sizes"),
    ("emm", SWEEP.replace("[axes]\nweight_decay = [0.0, 0.001]\n", "[emm]\nsizes = [8, 16]\n"), "track_every"),
    ("timescales", SWEEP.replace("weight_decay = [0.0, 0.001]", "size = [8, 16]").replace("size = 8\n", "") +
     '[timescales]\nsamples = 4\nheldout = 8\nfeatures = "CONST"\n', "[timescales] features"),
])
def test_every_cell_size_and_option_is_validated_before_the_first_write(files, tmp_path, run_cli, command, text,
                                                                        needle):
    spec = tmp_path / "s.toml"
    spec.write_text(text.replace("CONST", str(files / "const.pt")))
    refused(run_cli, [command, spec, "--out", tmp_path / "o"], tmp_path, needle)
    assert not (tmp_path / "o").exists()


# 3. Another sweep's folder; names are not paths ---------------------------------------------------


@pytest.fixture(scope="module")
def sweep_a(tmp_path_factory):
    from diffmem.cli import run

    root = tmp_path_factory.mktemp("sweep-a")
    (root / "A.toml").write_text(SWEEP)
    assert run(["sweep", str(root / "A.toml"), "--out", str(root / "A"), "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("change,needle", [
    (lambda t: t.replace('name = "A"', 'name = "B"').replace("0.001]", "0.005]"), "name 'A' there, 'B' now"),
    (lambda t: t.replace("0.001]", "0.001, 0.01]"), "cells"),
    (lambda t: t.replace("steps = 2", "steps = 3"), "steps"),
])
def test_a_folder_belongs_to_one_spec(sweep_a, run_cli, change, needle):
    """Sweep B into A's folder replaced A's sweep.json and tables, even when a refusal followed."""
    spec = sweep_a / "B.toml"
    spec.write_text(change(SWEEP))
    refused(run_cli, ["sweep", spec, "--out", sweep_a / "A"], sweep_a, "--out", "a folder belongs to one spec", needle)


def test_other_commands_do_not_write_into_a_sweep_folder(sweep_a, tmp_path, run_cli):
    emm = tmp_path / "e.toml"
    emm.write_text(SWEEP.replace("[axes]\nweight_decay = [0.0, 0.001]\n", "[emm]\nsizes = [8, 16]\n")
                   .replace("log_every = 1000", "log_every = 1000\ntrack_every = 1"))
    refused(run_cli, ["emm", emm, "--out", sweep_a / "A"], sweep_a, "--out")
    regularization = tmp_path / "r.toml"
    regularization.write_text('mode = "regularization"\n[data]\nsource = "toy2d"\nsize = 20\n'
                              '[regularization]\ntikhonov = [0.0]\nnum = 20\n')
    refused(run_cli, ["regularization", regularization, "--out", sweep_a / "A"], sweep_a, "--out")


def test_re_running_the_same_sweep_is_accepted(sweep_a, run_cli):
    before = {p.name for p in (sweep_a / "A").iterdir()}
    code, out, err = run_cli(["sweep", sweep_a / "A.toml", "--out", sweep_a / "A", "--no-progress"])
    assert code == 0 and err == "", err
    assert {p.name for p in (sweep_a / "A").iterdir()} == before


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "..", "", "x\ny"])
def test_spec_names_are_not_paths(tmp_path, run_cli, name):
    spec = tmp_path / "d" / "s.toml"
    spec.parent.mkdir()
    spec.write_text(SWEEP.replace('name = "A"', f"name = {json.dumps(name)}"))
    refused(run_cli, ["sweep", spec], tmp_path, "name:")


# 4. Tracebacks and messages that name the wrong thing ---------------------------------------------


TORCHSCRIPT_META = {
    "not JSON": ("{oops", "not JSON"), "a list": ("[1, 8, 8]", "JSON object"), "no shape": ("{}", "shape"),
    "string shape": ('{"shape": ["1", "8", "8"]}', "shape must be"), "huge": ('{"shape": [1, 100000, 100000]}', "values per image"),
    "bool shape": ('{"shape": [true, 8, 8]}', "shape must be"), "string classes": ('{"shape": [1, 8, 8], "num_classes": "x"}', "num_classes"),
    "string sigma": ('{"shape": [1, 8, 8], "sigma_min": "x"}', "sigma_min"),
    "sigma order": ('{"shape": [1, 8, 8], "sigma_min": 5, "sigma_max": 1}', "not below sigma_max"),
}


@pytest.mark.parametrize("case", list(TORCHSCRIPT_META))
def test_corrupt_torchscript_metadata_is_one_line(files, tmp_path, run_cli, case):
    text, needle = TORCHSCRIPT_META[case]
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(Shrink()), str(path), _extra_files={"diffmem.json": text})
    refused(run_cli, ["sample", "--network", path, "--num", "2", "--out", tmp_path / "g.npz"], tmp_path,
            "--network", "m.pt", needle)


@pytest.mark.parametrize("change,needle", [
    (lambda m: {**m, "config": "{oops"}, "damaged snapshot metadata"),
    (lambda m: {**m, "config": "[1]"}, "not a JSON object"),
    (lambda m: {**m, "step": "x"}, "damaged snapshot metadata"),
    (lambda m: {k: v for k, v in m.items() if k != "epoch"}, "damaged snapshot metadata"),
    (lambda m: {**m, "config": json.dumps({**json.loads(m["config"]), "resolution": "8"})}, "shape must be"),
    (lambda m: {**m, "config": json.dumps({**json.loads(m["config"]), "resolution": 10**6})}, "values per image"),
    (lambda m: {**m, "config": json.dumps({k: v for k, v in json.loads(m["config"]).items() if k != "in_channels"})},
     "in_channels"),
])
def test_corrupt_snapshot_metadata_is_one_line(files, tmp_path, run_cli, change, needle):
    snap = sorted((files / "run").glob("snapshot-*.safetensors"))[-1]
    with safe_open(str(snap), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    (tmp_path / "r").mkdir()
    save_file(tensors, str(tmp_path / "r" / snap.name), metadata=change(meta))
    refused(run_cli, ["sample", "--network", tmp_path / "r", "--num", "2", "--out", tmp_path / "g.npz"], tmp_path,
            "--network", needle)


@pytest.mark.parametrize("text", ["{", "", "[]", '{"cells": 5}', '{"cells": [{"knobs": {}}]}'])
def test_report_of_a_corrupt_sweep_json(sweep_a, tmp_path, run_cli, text):
    import shutil

    shutil.copytree(sweep_a / "A", tmp_path / "A")
    (tmp_path / "A" / "sweep.json").write_text(text)
    refused(run_cli, ["report", tmp_path / "A"], tmp_path, "sweep.json", "not a diffmem sweep record")


@pytest.mark.parametrize("command", ["sweep", "emm", "timescales", "two-split", "regularization"])
def test_spec_doors_shared_by_every_spec_command(tmp_path, run_cli, command):
    """mode = ["runs"], /dev/zero as the spec (read without bound), --out an existing file."""
    spec = tmp_path / "s.toml"
    spec.write_text('mode = ["runs"]\n' + SWEEP)
    refused(run_cli, [command, spec, "--out", tmp_path / "o"], tmp_path, "mode")
    if os.path.exists("/dev/zero"):
        refused(run_cli, [command, "/dev/zero", "--out", tmp_path / "o"], tmp_path, "/dev/zero", "bytes")
    (tmp_path / "file").write_text("x")
    good = {"sweep": SWEEP, "emm": SWEEP.replace("[axes]\nweight_decay = [0.0, 0.001]\n", "[emm]\nsizes = [8, 16]\n")
            .replace("log_every = 1000", "log_every = 1000\ntrack_every = 1"),
            "timescales": SWEEP.replace("weight_decay = [0.0, 0.001]", "size = [8, 16]").replace("size = 8\n", "")
            .replace('name = "A"', 'name = "A"\nmode = "timescales"') + '[timescales]\nsamples = 4\nheldout = 8\nfeatures = "pixels"\n',
            "two-split": SWEEP.replace("[axes]\nweight_decay = [0.0, 0.001]\n", "[twosplit]\nsizes = [4]\nsamples = 4\n")
            .replace("size = 8\n", "").replace('name = "A"', 'name = "A"\nmode = "twosplit"'),
            "regularization": 'mode = "regularization"\n[data]\nsource = "toy2d"\nsize = 20\n[regularization]\n'
                              'tikhonov = [0.0]\nnum = 20\n'}[command]
    spec.write_text(good)
    refused(run_cli, [command, spec, "--out", tmp_path / "file"], tmp_path, "--out", "not a folder")


def test_a_pickled_diffusers_model_names_the_flag_the_command_has(tmp_path, run_cli):
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    unet.save_pretrained(tmp_path / "m", safe_serialization=False)
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "m")
    err = refused(run_cli, ["sample", "--network", tmp_path / "m", "--num", "2", "--out", tmp_path / "g.npz"],
                  tmp_path, "--allow-pickle")
    assert "allow_pickle=True if" not in err
    # an unexpected config key makes diffusers log a line of its own: it stays off stderr
    unet.save_pretrained(tmp_path / "n")
    config = json.loads((tmp_path / "n" / "config.json").read_text())
    (tmp_path / "n" / "config.json").write_text(json.dumps({**config, "not_a_unet_option": 1}))
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "n")
    code, out, err = run_cli(["sample", "--network", tmp_path / "n", "--num", "2", "--steps", "2", "--out",
                              tmp_path / "g.npz"])
    assert code == 0 and err == "", err


# 5. The Python API names the parameter ------------------------------------------------------------


def _api_cases(root):
    from diffmem.config import TrainConfig
    from diffmem.data.spec import DataSpec
    from diffmem.metrics.memorization import memorization
    from diffmem.studies.specs import EMMSettings
    from diffmem.studies.sweep import emm, run_sweep

    images = np.arange(4 * 64, dtype=np.uint8).reshape(4, 1, 8, 8)
    settings = EMMSettings(sizes=(8, 16))
    return [
        (lambda: emm(5), "spec"), (lambda: emm(), "spec"),
        (lambda: emm(data="digits", train=TrainConfig(steps=1), settings=settings), "data"),
        (lambda: emm(data=DataSpec("digits"), train={"steps": 1}, settings=settings), "train"),
        (lambda: emm(data=DataSpec("digits"), train=TrainConfig(steps=1), settings={}), "settings"),
        (lambda: emm(data=DataSpec("digits"), train=TrainConfig(steps=1, track_every=1), settings=settings,
                     out=5), "out"),
        (lambda: run_sweep(5), "spec"), (lambda: run_sweep({"name": "x"}), "spec"),
        (lambda: run_sweep(root / "A.toml", root / "new", workers=0), "workers"),
        (lambda: run_sweep(root / "A.toml", root / "new", progress="yes"), "progress"),
        (lambda: memorization(None, images), "train"), (lambda: memorization(images, "missing.npz"), "generated"),
        (lambda: memorization(images, images, memory_limit="x"), "memory_limit"),
        (lambda: memorization(images, images, device="tpu"), "device"),
        (lambda: memorization(images, images, threshold=True), "threshold"),
        (lambda: load_denoiser(5), "model"), (lambda: load_denoiser(root / "missing"), "model"),
        (lambda: load_denoiser(root / "A.toml", timestep="x"), "timestep"),
        (lambda: load_denoiser(root / "A.toml", device="tpu"), "device"),
    ]


def test_the_python_api_raises_input_error_naming_the_parameter(sweep_a):
    for i, (call, param) in enumerate(_api_cases(sweep_a)):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.param == param, (i, err.value)
    assert not (sweep_a / "new").exists()


# Progress ---------------------------------------------------------------------------------------------


def test_progress_counts_and_estimates_the_time_left():
    from diffmem.progress import Progress, duration

    now = [0.0]
    lines = []
    p = Progress(4, echo=lines.append, clock=lambda: now[0])
    now[0] = 30.0
    p.done("a")
    now[0] = 60.0
    p.done("b")
    assert lines == ["[1/4] a (30s elapsed, ETA 1m30s)", "[2/4] b (1m00s elapsed, ETA 1m00s)"]
    assert Progress(None, echo=lines.append, clock=lambda: 5.0).done("c") == "[1] c (0s elapsed)"
    quiet = []
    Progress(2, enabled=False, echo=quiet.append).done("d")
    assert quiet == [] and duration(3700) == "1h01m"


def test_sweep_cells_are_reported_as_they_finish_and_quiet_on_request(tmp_path, run_cli, monkeypatch):
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP)
    monkeypatch.delenv("CI", raising=False)
    code, _, err = run_cli(["sweep", spec, "--out", tmp_path / "a"])
    lines = err.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].startswith("[1/2] weight_decay-0: ") and "ETA" in lines[0]
    assert lines[1].startswith("[2/2] weight_decay-0.001: ") and "elapsed)" in lines[1]
    code, _, err = run_cli(["sweep", spec, "--out", tmp_path / "b", "--no-progress"])
    assert code == 0 and err == ""
    monkeypatch.setenv("CI", "1")
    code, _, err = run_cli(["sweep", spec, "--out", tmp_path / "c"])
    assert code == 0 and err == ""


def test_adaptive_emm_reports_each_size_from_its_worker(tmp_path, monkeypatch, capsys):
    import diffmem.studies.sweep as sweep
    from diffmem.studies.emm import SizePoint
    from diffmem.studies.specs import EMMSettings, parse_spec

    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP.replace("[axes]\nweight_decay = [0.0, 0.001]\n", "[emm]\nstrategy = \"adaptive\"\n"
                                  "min_size = 4\nmax_size = 64\n").replace("log_every = 1000", "log_every = 1000\ntrack_every = 1"))
    cell = parse_spec(spec, mode="emm").cells()[0]
    ratio = lambda n: min(1.0, max(0.0, 2.0 - np.log2(n) / 3))  # noqa: E731: 1 up to |D| = 8, 0 from 64
    monkeypatch.setattr(sweep, "measure_size", lambda c, n, s, f: SizePoint(n, ratio(n), (ratio(n), ratio(n)), 100))
    settings = EMMSettings(strategy="adaptive", min_size=4, max_size=64)
    estimate = sweep.job_adaptive(cell, settings, str(tmp_path / "cell"), True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(estimate.points) >= 3
    assert lines[0].startswith("[1] base |D| = 4: ratio 1.000") and lines[1].startswith("[2] base |D| = 8")
    sweep.job_adaptive(cell, settings, str(tmp_path / "cell"), False)
    assert capsys.readouterr().err == ""


def test_timescales_snapshots_and_audit_criteria_are_reported(files, tmp_path, monkeypatch, capsys, run_cli):
    import shutil

    import diffmem.studies.timescales as ts
    from diffmem.data import load_image_set

    monkeypatch.setattr(ts, "measure_snapshot", lambda path, *a, **k: dict(
        epoch=int(path.name[14:20]), step=1, images=4, n=16, f_mem=0.0, ci95=[0, 0], stderr=0.0, fd=1.0))
    shutil.copytree(files / "run", tmp_path / "run")
    lines = []
    settings = ts.TimescaleSettings(samples=4, heldout=4, features="pixels")
    train = load_image_set(files / "train.zip")
    points = ts.measure_run(tmp_path / "run", train, load_image_set(files / "held.zip"), settings, log=lines.append)
    assert len(lines) == len(points) >= 1 and lines[0].startswith(f"[1/{len(points)}] run epoch ")
    monkeypatch.delenv("CI", raising=False)
    args = ["audit", files / "gen.npz", "--train", files / "train.zip", "--features", "pixels"]
    code, _, err = run_cli(args + ["--out", tmp_path / "a1"])
    assert code == 0 and err.startswith("[1/") and "audit pixel: " in err and "ETA" in err
    code, _, err = run_cli(args + ["--out", tmp_path / "a2", "--no-progress"])
    assert code == 0 and err == ""
