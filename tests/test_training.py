"""`diffmem train`: flags, dry run, run folder, schedules, divergence, and memorization on tiny data."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
import diffmem

from diffmem.runs import load_run, read_snapshot
from diffmem.cli import run
from diffmem.denoisers.networks import build_network, count_parameters
from diffmem.denoisers.precond import EDMPrecond
from diffmem.errors import InputError
from diffmem.config import parse_duration_images, parse_snapshots
from diffmem.schedules import ema_beta, global_batch_indices, halflife_from_rate, learning_rate

TINY = ["--preset", "tiny", "--channels", "8", "--precond", "edm"]


@pytest.fixture(scope="module")
def digits16(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d16.zip"
    assert run(["data", "--source", "digits", "--size", "16", "--labels", "none", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def digits20_labeled(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d20.zip"
    assert run(["data", "--source", "digits", "--size", "20", "--labels", "true", "--out", str(path)]) == 0
    return path


@pytest.fixture
def one_thread():
    """The tiny nets train ~10x faster on one thread when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dry(capsys, *args):
    assert run(["train", *args, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_prints_resolved_config(digits16, digits20_labeled, tmp_path, capsys):
    out = tmp_path / "run"
    c = _dry(capsys, "--data", str(digits16), "--out", str(out), *TINY, "--epochs", "10", "--batch", "6",
             "--snapshots", "2,log:3", "--lr", "1e-3", "--lr-scaling", "3", "--lr-warmup", "2ep", "--ema-rate", "0.9")
    assert not out.exists()  # trains and writes nothing
    assert c["num_images"] == 16 and c["resolution"] == 8 and c["in_channels"] == 1 and c["num_classes"] == 0
    assert c["total_steps"] == math.ceil(10 * 16 / 6) == 27
    assert c["lr_effective"] == pytest.approx(1e-3 * 6 / 3)
    assert c["lr_warmup_images"] == 32
    assert c["snapshot_epochs"] == [1, 2, 3, 10]
    assert c["ema_halflife_images"] == pytest.approx(6 * math.log(0.5) / math.log(0.9))
    net = build_network("ddpmpp", img_resolution=8, in_channels=1, preset="tiny", channels=8)
    assert c["parameters"] == count_parameters(net)
    # labels in the data set make the net conditional, with num_classes = max label + 1
    c = _dry(capsys, "--data", str(digits20_labeled), "--out", str(out), *TINY, "--steps", "5")
    assert c["num_classes"] == 10 and c["total_steps"] == 5
    cond = build_network("ddpmpp", img_resolution=8, in_channels=1, num_classes=10, preset="tiny", channels=8)
    assert c["parameters"] == count_parameters(cond) > count_parameters(net)
    # an EMA half-life in epochs scales with |D|; one in images does not
    c = _dry(capsys, "--data", str(digits16), "--out", str(out), *TINY, "--steps", "5", "--ema", "0.5ep")
    assert c["ema_halflife_images"] == 8
    c = _dry(capsys, "--data", str(digits16), "--out", str(out), *TINY, "--steps", "5", "--ema", "1000")
    assert c["ema_halflife_images"] == 1000
    # an MLP preset picks its architecture
    c = _dry(capsys, "--data", str(digits16), "--out", str(out), "--preset", "mlp-toy", "--steps", "5")
    assert c["arch"] == "mlp"


BAD = [
    (["--batch", "0"], "--batch"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--epochs", "3"], "--epochs/--steps"),  # together with --steps below
    (["--preset", "nonesuch"], "--preset"),
    (["--skips", "1,1,0"], "--skips"),  # tiny has 2 levels x (1 block + 1) = 4 skips
    (["--skips", "1,2,1,1"], "--skips"),
    (["--channel-mult", "1,x"], "--channel-mult"),
    (["--dropout", "1.5"], "--dropout"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--ema", "1000", "--ema-rate", "0.9"], "--ema/--ema-rate"),
    (["--ema-rate", "1"], "--ema-rate"),
    (["--ema", "-5"], "--ema"),
    (["--ema", "soon"], "--ema"),
    (["--snapshots", "9999"], "--snapshots"),
    (["--snapshots", "log:x"], "--snapshots"),
    (["--lr-warmup", "soon"], "--lr-warmup"),
    (["--amp", "--device", "cpu"], "--amp"),
    (["--optimizer", "lion"], "--optimizer"),
    (["--track-samples", "0"], "--track-samples"),
]


@pytest.mark.parametrize("extra,flag", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_flags_name_the_flag(digits16, tmp_path, capsys, extra, flag):
    out = tmp_path / "run"
    rc = run(["train", "--data", str(digits16), "--out", str(out), *TINY, "--steps", "4", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_bad_inputs_outside_the_flags(digits16, tmp_path, capsys):
    base = [*TINY, "--steps", "4"]
    assert run(["train", "--data", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "r"), *base]) == 2
    assert "--data" in capsys.readouterr().err
    assert run(["train", "--out", str(tmp_path / "r"), *base]) == 2
    assert "--data" in capsys.readouterr().err
    assert run(["train", "--data", str(digits16), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "--epochs/--steps" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert run(["train", "--data", str(digits16), "--out", str(full), *base]) == 2
    assert "--out" in capsys.readouterr().err and (full / "keep.txt").read_text() == "mine"
    if not torch.cuda.is_available():
        assert run(["train", "--data", str(digits16), "--out", str(tmp_path / "r"), *base, "--device", "cuda"]) == 2
        assert "--device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_schedules_follow_edm():
    assert learning_rate(0, 1e-3, 1000) == 0.0
    assert learning_rate(250, 1e-3, 1000) == pytest.approx(2.5e-4)
    assert learning_rate(5000, 1e-3, 1000) == 1e-3
    assert learning_rate(0, 1e-3, 0) == 1e-3
    # β = 0.5^(batch / min(halflife, rampup·nimg)); at nimg = 0 the EMA copies the net
    assert ema_beta(0, 64, 1e4, 0.05) == 0.0
    assert ema_beta(64_000, 64, 1e4, 0.05) == pytest.approx(0.5 ** (64 / 3200))
    assert ema_beta(10**7, 64, 1e4, 0.05) == pytest.approx(0.5 ** (64 / 1e4))
    assert ema_beta(0, 64, 1e4, 0.0) == pytest.approx(0.5 ** (64 / 1e4))
    # an EMA warm-up in images: the half-life grows linearly to its value, then the rate holds exactly
    assert ema_beta(0, 64, 1e4, rate=0.99, warmup_images=8000) == 0.0
    assert ema_beta(2000, 64, 1e4, rate=0.99, warmup_images=8000) == pytest.approx(0.5 ** (64 / 2500))
    assert ema_beta(8000, 64, 1e4, rate=0.99, warmup_images=8000) == 0.99
    assert ema_beta(64, 64, 1e4, rate=0.99) == 0.99  # no warm-up: the rate from the first step
    assert ema_beta(64_000, 64, 1e4, 0.05, rate=0.99) == pytest.approx(0.5 ** (64 / 3200))  # EDM's ramp, asked for
    # a rate r per step is the half-life h with r = 0.5^(batch/h)
    h = halflife_from_rate(0.99929, 512)
    assert 0.5 ** (512 / h) == pytest.approx(0.99929) and h == pytest.approx(5.0e5, rel=2e-3)
    assert parse_duration_images("1000", 50, "--x") == 1000 and parse_duration_images("3ep", 50, "--x") == 150
    assert parse_snapshots("log:4", 1000) == [1, 10, 100, 1000]
    assert parse_snapshots("7,3", 10) == [3, 7]


def test_global_batches_are_epoch_permutations():
    n, batch = 10, 4
    stream = torch.cat([global_batch_indices(5, s, batch, n) for s in range(10)])  # 40 images = 4 epochs
    for e in range(4):
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n:2 * n])
    # a pure function of (seed, step): batch 20 at step 1 is the same images as steps 5..9 at batch 4
    torch.testing.assert_close(global_batch_indices(5, 1, 20, n), stream[20:40])
    assert not torch.equal(global_batch_indices(6, 0, 40, n), stream)


def test_run_folder_snapshots_and_load_denoiser(digits16, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert run(["train", "--data", str(digits16), "--out", str(out), *TINY, "--epochs", "12", "--batch", "8",
                "--lr", "1e-3", "--snapshots", "2,5", "--log-every", "4", "--checkpoint-every", "10", "--seed", "7"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "snapshot-epoch000002.safetensors", "snapshot-epoch000005.safetensors",
                     "snapshot-epoch000012.safetensors", "state.pt", "stats.jsonl", "summary.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["total_steps"] == 24 and config["seed"] == 7
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [4, 8, 12, 16, 20, 24]
    assert all(np.isfinite(s["loss"]) and s["lr"] == 1e-3 and s["images_per_s"] > 0 for s in stats)
    assert stats[-1]["epoch"] == 12.0
    # the final snapshot holds the EMA weights of the final state
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 24
    final = load_file(out / "snapshot-epoch000012.safetensors")
    assert final.keys() == state["ema"].keys()
    assert all(torch.equal(final[k], state["ema"][k]) for k in final)
    assert not all(torch.equal(final[k], state["net"][k]) for k in final)
    tensors, meta = read_snapshot(out / "snapshot-epoch000005.safetensors")
    assert meta["epoch"] == 5 and meta["step"] == 10 and meta["config"]["total_steps"] == 24

    # load_run: a run folder gives its latest snapshot; a file gives that one
    loaded = load_run(out)
    D = loaded.denoiser
    assert (D.shape, D.num_classes, loaded.epoch, loaded.step) == ((1, 8, 8), 0, 12, 24)
    assert (D.sigma_min, D.sigma_max) == (0.0, math.inf)  # EDM: any noise level
    assert loaded.config.seed == 7 and loaded.record["total_steps"] == 24
    assert not D.training and not any(p.requires_grad for p in D.parameters())
    loaded5 = load_run(out / "snapshot-epoch000005.safetensors")
    D5 = loaded5.denoiser
    assert loaded5.epoch == 5
    net = build_network("ddpmpp", img_resolution=8, in_channels=1, preset="tiny", channels=8)
    net.load_state_dict(tensors)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 1.0, 50.0])
    with torch.no_grad():
        torch.testing.assert_close(D5(x, sigma), EDMPrecond(net.eval())(x, sigma))
        assert not torch.allclose(D(x, sigma), D5(x, sigma))

    # the sample command's entry: RUN folders without snapshots are an error naming the flag
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="network") as err:
        load_run(empty)
    assert err.value.param == "network"


def test_conditional_run_trains(digits20_labeled, tmp_path, one_thread):
    out = tmp_path / "cond"
    assert run(["train", "--data", str(digits20_labeled), "--out", str(out), *TINY, "--steps", "6", "--batch", "10"]) == 0
    D = load_run(out).denoiser
    assert D.num_classes == 10
    x = torch.zeros(2, 1, 8, 8)
    with torch.no_grad():
        a, b = D(x, 1.0, torch.tensor([0, 0])), D(x, 1.0, torch.tensor([0, 9]))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_divergence_stops_with_message_and_keeps_last_state(digits16, tmp_path, capsys, one_thread):
    out = tmp_path / "nan"
    rc = run(["train", "--data", str(digits16), "--out", str(out), *TINY, "--steps", "50", "--batch", "16",
              "--optimizer", "sgd", "--lr", "1e6", "--checkpoint-every", "2", "--log-every", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "NaN or Inf" in err and "state.pt" in err, err
    state = torch.load(out / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["net"].values())
    assert f"(step {state['step']})" in err
    assert not list(out.glob("snapshot-*"))  # nothing written from the diverged weights


def test_resume_refuses_a_changed_config(digits16, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    args = ["train", "--data", str(digits16), "--out", str(out), *TINY, "--steps", "4", "--batch", "8"]
    assert run(args) == 0
    assert run([*args, "--lr", "5e-3", "--resume"]) == 2
    assert "--lr" in capsys.readouterr().err
    # a finished run resumes to a no-op and keeps its result
    before = (out / "snapshot-epoch000002.safetensors").read_bytes()
    assert run([*args, "--resume"]) == 0
    assert (out / "snapshot-epoch000002.safetensors").read_bytes() == before


@pytest.mark.slow
def test_memorization_rises_on_16_digits(digits16, tmp_path, one_thread):
    """16 digits, a 0.18 M-parameter U-Net: the tracked ratio goes from 0 to >= 0.9 (seed 001's
    small-|D| regime; experiments/digits_memorization.py measured 0.04 / 0.61 / 0.88 / 0.945 at
    300 / 600 / 900 / 1100 epochs)."""
    out = tmp_path / "mem"
    assert run(["train", "--data", str(digits16), "--out", str(out), "--preset", "tiny", "--channels", "16",
                "--precond", "edm", "--epochs", "1100", "--batch", "16", "--lr", "2e-3", "--ema-rate", "0.99",
                "--track-every", "300", "--track-samples", "200", "--log-every", "100",
                "--checkpoint-every", "1000"]) == 0
    curve = [json.loads(line) for line in (out / "memorization.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in curve] == [300, 600, 900, 1100]
    assert curve[0]["ratio"] < 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_memorization_ratio"] == max(r["ratio"] for r in curve) >= 0.9
    lo, hi = curve[-1]["ci95"]
    assert lo <= curve[-1]["ratio"] <= hi


def test_ema_update_moves_the_average_a_step_toward_the_net():
    """θ_ema ← β·θ_ema + (1-β)·θ_net: with β = 0.9 an EMA at 1 and a net at 0 give 0.9 (not 0.1)."""
    from diffmem.schedules import update_ema

    ema, net = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(1.0)
        for p in net.parameters():
            p.fill_(0.0)
    update_ema(ema, net, 0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.9)) for p in ema.parameters())
    assert all((p == 0).all() for p in net.parameters())
    update_ema(ema, net, 0.0)  # β = 0: the EMA is the net
    assert all((p == 0).all() for p in ema.parameters())


def test_train_from_python_with_an_image_set(digits, tmp_path, one_thread):
    """The library entry point takes an in-memory ImageSet; the record names its source and hash."""
    import diffmem

    subset = diffmem.class_balanced_subset(digits, 10)
    config = diffmem.TrainConfig(preset="tiny", channels=8, precond="edm", steps=3, batch=5, ema_rate=0.0)
    summary = diffmem.train(config, subset, tmp_path / "run")
    assert summary["steps"] == 3 and summary["num_images"] == 10
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["num_classes"] == 10 and len(record["data_sha256"]) == 64
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    final = load_file(tmp_path / "run" / "snapshot-epoch000001.safetensors")
    assert all(torch.equal(final[k], state["net"][k]) for k in final)  # EMA rate 0: the EMA is the net
    with pytest.raises(InputError) as err:
        diffmem.TrainConfig(preset="tiny", steps=3, lr=float("nan"))
    assert err.value.param == "lr"
    with pytest.raises(InputError) as err:
        diffmem.train(config.replace(lr=1e-3), subset, tmp_path / "run", resume=True)
    assert err.value.param == "lr"


def test_ema_rate_is_the_rate_after_a_warmup_in_epochs(digits16, capsys, tmp_path):
    """Gu et al.: the EMA rate is warmed up over the first epochs, then held at the rate given."""
    out = tmp_path / "run"
    c = _dry(capsys, "--data", str(digits16), "--out", str(out), *TINY, "--steps", "5", "--batch", "4",
             "--ema-rate", "0.99", "--ema-warmup", "3ep")
    assert c["ema_warmup_images"] == 48 and c["ema_ramp"] == 0.0 and c["ema_rate"] == 0.99
    c = _dry(capsys, "--data", str(digits16), "--out", str(out), *TINY, "--steps", "5", "--ema-rate", "0.99")
    assert c["ema_warmup_images"] == 0 and c["ema_ramp"] == 0.0  # a rate is the rate: no hidden ramp
    c = _dry(capsys, "--data", str(digits16), "--out", str(out), *TINY, "--steps", "5", "--ema", "1000")
    assert c["ema_ramp"] == 0.05  # a half-life keeps EDM's ramp


def test_ema_warmup_reaches_the_rate_in_training(digits16, tmp_path):
    config = diffmem.TrainConfig(preset="tiny", channels=8, precond="edm", epochs=2, batch=4, lr=1e-3,
                                 ema_rate=0.9, ema_warmup="1ep", log_every=1)
    diffmem.train(config, digits16, tmp_path / "run")
    betas = [json.loads(line)["ema_beta"] for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    h = 4 * math.log(0.5) / math.log(0.9)
    # step k (from 0) averages after k·batch images: the half-life is h·k/4 over the first epoch (4 steps)
    assert betas[:4] == pytest.approx([0.0] + [0.5 ** (4 / (h * k / 4)) for k in (1, 2, 3)])
    assert betas[4:] == [0.9] * 4


@pytest.mark.parametrize("kwargs, param", [(dict(ema_warmup="2ep", ema_rampup=0.05), "ema_warmup/ema_rampup"),
                                           (dict(ema_warmup="soon"), "ema_warmup"),
                                           (dict(ema_rampup=-1.0), "ema_rampup")])
def test_ema_warmup_refuses(kwargs, param):
    with pytest.raises(InputError) as e:
        diffmem.TrainConfig(preset="tiny", steps=3, ema_rate=0.9, **kwargs)
    assert e.value.param == param
