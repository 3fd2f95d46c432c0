"""The memorization guard on tiny settings: training stops (snapshot and state kept) once the tracked
ratio exceeds the guard, a resume trains no further; select picks the best-quality snapshot within
the limit; bad flags named in one line."""

import json

import pytest

import diffmem.training as training
from conftest import one_line
from diffmem.config import TrainConfig
from diffmem.studies.guard import answer_line, choose, select_snapshot
from diffmem.runs import list_snapshots, load_state, read_jsonl

RATIOS = [0.0, 0.05, 0.3, 0.9, 1.0]  # what the fake tracker reports at epochs 10, 20, 30, 40, 50


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def scripted_tracking(monkeypatch):
    """The tracker reports RATIOS in turn (the guard's logic, not the sampler, is under test)."""
    calls = []

    def fake(D, data, record, device, num=None):
        ratio = RATIOS[len(calls)]
        calls.append(ratio)
        return dict(ratio=ratio, ci95=[ratio, ratio], stderr=0.0, n_generated=4)

    monkeypatch.setattr(training, "track_memorization", fake)
    return calls


def _config(**changes):
    base = dict(preset="tiny", channels=8, precond="edm", epochs=50, batch=4, lr=2e-3, ema_rate=0.9,
                track_every=10, track_samples=4, checkpoint_every=1000, log_every=10, device="cpu")
    return TrainConfig(**{**base, **changes})


def test_guard_stops_after_the_first_ratio_above_it(tmp_path, digits, scripted_tracking):
    from diffmem.data import class_balanced_subset

    data = class_balanced_subset(digits, 4, exact=False)
    run = tmp_path / "run"
    summary = training.train(_config(guard=0.2), data, run)
    # ratios 0.0, 0.05 pass; 0.3 > 0.2 at epoch 30 stops the loop there
    assert scripted_tracking == [0.0, 0.05, 0.3]
    assert summary["stopped"]["epoch"] == 30 and summary["stopped"]["ratio"] == 0.3
    assert "stopped by the guard at epoch 30" in summary["stopped"]["message"]
    assert [e for e, _ in list_snapshots(run)] == [10, 20, 30]  # every measured net kept, none later
    assert load_state(run / "state.pt")["step"] == 30
    assert json.loads((run / "summary.json").read_text())["stopped"]["step"] == 30
    from diffmem.studies.sweep import run_row

    row = run_row(run)  # a sweep's table lists what the run trained, not what it planned
    assert row["stopped_by_guard"] and row["steps"] == 30 and row["epochs"] == 30
    # a resume of the stopped run trains no further
    again = training.train(_config(guard=0.2), data, run, resume=True)
    assert again["stopped"]["epoch"] == 30 and scripted_tracking == [0.0, 0.05, 0.3]
    assert load_state(run / "state.pt")["step"] == 30 and read_jsonl(run / "memorization.jsonl")[-1]["epoch"] == 30


def test_guard_at_the_edge_and_unguarded(tmp_path, digits, scripted_tracking):
    """A ratio equal to the guard does not stop (it must exceed it); no guard trains to the end."""
    from diffmem.data import class_balanced_subset

    data = class_balanced_subset(digits, 4, exact=False)
    summary = training.train(_config(guard=0.3, epochs=30), data, tmp_path / "edge")
    assert summary["stopped"] is None and scripted_tracking == [0.0, 0.05, 0.3]
    scripted_tracking.clear()
    summary = training.train(_config(epochs=30, snapshots="30"), data, tmp_path / "free")
    assert summary["stopped"] is None and [e for e, _ in list_snapshots(tmp_path / "free")] == [30]
    from diffmem.studies.sweep import run_row

    assert not run_row(tmp_path / "free")["stopped_by_guard"] and run_row(tmp_path / "free")["epochs"] == 30


def test_train_cli_guard(tmp_path, digits64_zip, run_cli, scripted_tracking):
    code, out, err = run_cli(["train", "--data", digits64_zip, "--out", tmp_path / "r", "--preset", "tiny",
                              "--channels", "8", "--precond", "edm", "--epochs", "0.75", "--batch", "4",
                              "--track-every", "0", "--device", "cpu"])
    assert code == 0, err
    code, out, err = run_cli(["train", "--data", digits64_zip, "--out", tmp_path / "s", "--preset", "tiny",
                              "--channels", "8", "--precond", "edm", "--epochs", "5", "--batch", "32",
                              "--track-every", "1", "--guard", "0.2", "--device", "cpu"])
    assert code == 0 and out.startswith("stopped by the guard at epoch 3 (step 6): memorization ratio 0.300 > 0.2")
    assert [e for e, _ in list_snapshots(tmp_path / "s")] == [1, 2, 3]
    one_line(*run_cli(["train", "--data", digits64_zip, "--out", tmp_path / "g", "--epochs", "1", "--guard", "1.5",
                       "--track-every", "1"]), "--guard")
    one_line(*run_cli(["train", "--data", digits64_zip, "--out", tmp_path / "g", "--epochs", "1", "--guard", "0.5"]),
             "--guard", "track")
    one_line(*run_cli(["train", "--data", digits64_zip, "--out", tmp_path / "g", "--epochs", "1", "--guard", "nan",
                       "--track-every", "1"]), "--guard")
    assert not (tmp_path / "g").exists()


POINTS = [dict(epoch=e, step=e, f_mem=f, ci95=[max(f - 0.05, 0), min(f + 0.05, 1)], fd=fd)
          for e, f, fd in [(1, 0.0, 90.0), (2, 0.0, 20.0), (4, 0.02, 8.0), (8, 0.04, 5.0), (16, 0.3, 3.0),
                           (32, 0.9, 4.0)]]


def test_choose_best_quality_within_the_limit():
    assert choose(POINTS, 0.05)["epoch"] == 8  # FD 5 is the best among f_mem ≤ 0.05 (epoch 16 has FD 3 but 0.3)
    assert choose(POINTS, 0.02)["epoch"] == 4  # the limit is inclusive
    assert choose(POINTS, 0.5)["epoch"] == 16
    assert choose(POINTS, 1.0)["epoch"] == 16
    tie = [dict(POINTS[0], fd=1.0), dict(POINTS[1], fd=1.0)]
    assert choose(tie, 0.1)["epoch"] == 1  # ties: the earliest
    assert choose([p for p in POINTS if p["f_mem"] > 0.1], 0.05) is None
    line = answer_line("RUN", POINTS, choose(POINTS, 0.05), 0.05)
    assert line.startswith("use RUN/snapshot-epoch000008.safetensors (epoch 8, step 8): f_mem 0.040")
    assert "4 of 6 snapshots" in line and "exceeds 0.05 near epoch" in line
    none = answer_line("RUN", POINTS[4:], None, 0.05)
    assert none.startswith("no snapshot of RUN has f_mem ≤ 0.05 (lowest 0.300 at epoch 16)")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 4-digit run made as sweeps make them (so RUN/data.json holds its data recipe)."""
    from diffmem.data.spec import DataSpec
    from diffmem.studies.sweep import train_run

    run = tmp_path_factory.mktemp("guard") / "run"
    train_run(DataSpec(source="digits", size=4, labels="none"), _config(epochs=8, track_every=0, snapshots="1,3"), run)
    return run


def test_select_measures_and_caches(tiny_run, run_cli, monkeypatch):
    sel = select_snapshot(tiny_run, 1.0, features="pixels", samples=12, num_heldout=20, bootstrap=50)
    assert [p["epoch"] for p in sel.points] == [1, 3, 8]
    assert sel.epoch == min(sel.points, key=lambda p: p["fd"])["epoch"]  # limit 1: the best FD overall
    assert sel.answer.startswith(f"use {tiny_run}/snapshot-epoch")
    # cached: the CLI re-uses the measurements; make every snapshot exceed the limit to see exit 1
    import diffmem.studies.timescales as ts

    monkeypatch.setattr(ts, "measure_snapshot", lambda *a, **k: pytest.fail("re-measured a cached snapshot"))
    cache = json.loads((tiny_run / "timescales.json").read_text())
    measured = {k: cache["settings"][k] for k in ("samples", "heldout", "features", "bootstrap")}
    assert measured == dict(samples=12, heldout=20, features="pixels", bootstrap=50)
    assert {"train_sha256", "heldout_sha256"} <= set(cache["settings"])  # keyed on the sets too
    flags = ["--features", "pixels", "--samples", "12", "--num-heldout", "20"]
    cache["settings"]["bootstrap"] = 1000  # the CLI's default
    for p in cache["points"]:
        p["f_mem"] = 0.5
    (tiny_run / "timescales.json").write_text(json.dumps(cache))
    code, out, err = run_cli(["select", tiny_run, "--max-memorization", "0.1", *flags])
    assert code == 1 and out.startswith(f"no snapshot of {tiny_run} has f_mem ≤ 0.1"), (code, out, err)
    code, out, err = run_cli(["select", tiny_run, "--max-memorization", "0.5", "--json", *flags])
    assert code == 0 and json.loads(out)["f_mem"] == 0.5


def test_select_bad_input(tiny_run, tmp_path, run_cli):
    one_line(*run_cli(["select", tiny_run, "--max-memorization", "1.5"]), "--max-memorization")
    one_line(*run_cli(["select", tiny_run, "--max-memorization", "nan"]), "--max-memorization")
    one_line(*run_cli(["select", tmp_path / "nope", "--max-memorization", "0.1"]), "nope")
    one_line(*run_cli(["select", tiny_run, "--max-memorization", "0.1", "--samples", "1"]), "--samples")
    one_line(*run_cli(["select", tiny_run, "--max-memorization", "0.1", "--num-heldout", "0"]), "--num-heldout")
    one_line(*run_cli(["select", tiny_run, "--max-memorization", "0.1", "--features", "bogus:3"]), "--features")
    one_line(*run_cli(["select", tiny_run, "--max-memorization", "0.1", "--heldout", tmp_path / "h.zip"]),
             "--heldout")
    one_line(*run_cli(["select", tiny_run]), "--max-memorization")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(*run_cli(["select", empty, "--max-memorization", "0.1"]), "empty")


def test_select_with_explicit_sets(tiny_run, tmp_path, run_cli):
    """A run without data.json (trained from a file) needs --train and --heldout; with them it answers."""
    import shutil

    from diffmem.data import save_npz
    from diffmem.data.spec import DataSpec, heldout_set, make_dataset

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("data.json", "timescales.json"))
    spec = DataSpec(source="digits", size=4, labels="none")
    save_npz(tmp_path / "train.npz", make_dataset(spec).images)
    save_npz(tmp_path / "held.npz", heldout_set(spec, 20).images)
    flags = ["--max-memorization", "1", "--features", "pixels", "--samples", "12"]
    one_line(*run_cli(["select", run, *flags]), "--train")
    one_line(*run_cli(["select", run, *flags, "--train", tmp_path / "train.npz"]), "--heldout")
    code, out, err = run_cli(["select", run, *flags, "--train", tmp_path / "train.npz", "--heldout", tmp_path / "held.npz"])
    assert code == 0 and out.startswith(f"use {run}/snapshot-epoch"), (code, out, err)


def test_select_classifier_needs_a_source(tiny_run, tmp_path, run_cli, monkeypatch):
    """Without data.json the classifier's source is unknown: one line naming --features that points at
    --source; with --source it reaches the measurement."""
    import shutil

    import diffmem.studies.timescales
    from diffmem.data import save_npz
    from diffmem.data.spec import DataSpec, heldout_set, make_dataset

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("data.json", "timescales.json"))
    spec = DataSpec(source="digits", size=4, labels="none")
    save_npz(tmp_path / "train.npz", make_dataset(spec).images)
    save_npz(tmp_path / "held.npz", heldout_set(spec, 20).images)
    flags = ["--max-memorization", "1", "--train", tmp_path / "train.npz", "--heldout", tmp_path / "held.npz"]
    code, out, err = run_cli(["select", run, *flags])
    one_line(code, out, err, "--features")
    assert "--source" in err
    seen = {}

    def fake_measure(run, train, heldout, settings, *, source, **kw):
        seen["source"] = source
        return [dict(epoch=1, step=1, f_mem=0.0, ci95=[0.0, 0.0], fd=1.0)]

    monkeypatch.setattr(diffmem.studies.timescales, "measure_run", fake_measure)
    code, out, err = run_cli(["select", run, *flags, "--source", "digits"])
    assert code == 0 and seen["source"] == "digits", (code, out, err)
