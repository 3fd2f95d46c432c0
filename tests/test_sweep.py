"""Sweeps end to end on tiny cells: the table, resume after `kill -9` of the driver and of a worker
(nothing finished recomputed, the same table as an uninterrupted sweep), a changed spec refused,
and the Ray engine on a local instance giving the local engine's results."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from diffmem.studies.specs import parse_spec
from diffmem.studies.sweep import run_sweep

SPEC = """
name = "tiny-sweep"
[data]
source = "digits"
labels = "none"
size = 8
[train]
preset = "tiny"
channels = 8
precond = "edm"
epochs = 40
batch = 8
lr = 2e-3
ema_rate = 0.9
track_every = 20
track_samples = 20
checkpoint_every = 4
log_every = 10
[axes]
weight_decay = [0.0, 0.001, 0.01, 0.1]
"""
CLI = "import sys; from diffmem.cli import run; sys.exit(run(sys.argv[1:]))"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _table(out):
    rows = json.loads((out / "results.json").read_text())
    return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]


def _sweep(spec, out):
    return subprocess.Popen([sys.executable, "-c", CLI, "sweep", str(spec), "--out", str(out), "--workers", "2",
                             "--threads", "1", "--no-progress"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _children(pid):
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _progress(out):
    return sum(1 for _ in out.glob("*/state.pt")) if out.exists() else 0


@pytest.mark.slow
def test_sweep_survives_kills_and_gives_the_uninterrupted_table(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    proc = _sweep(spec, ref)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    reference = _table(ref)
    assert [r["cell"] for r in reference] == [f"weight_decay-{v}" for v in ("0", "0.001", "0.01", "0.1")]
    assert all(r["max_ratio"] is not None and r["final_loss"] > 0 and r["epochs"] == 40 for r in reference)

    rng = random.Random(1)
    # 1: kill -9 the driver mid-sweep (its workers die with it)
    proc = _sweep(spec, killed)
    deadline = time.time() + 120
    while _progress(killed) < 1 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 1.0))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # 2: kill -9 one worker: the driver starts a new pool and finishes
    proc = _sweep(spec, killed)
    deadline = time.time() + 120
    while not _children(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(2.0, 4.0))
    workers = [p for p in _children(proc.pid) if p != proc.pid]
    if workers and proc.poll() is None:
        os.kill(workers[-1], signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    assert _table(killed) == reference

    # 3: re-running a finished sweep recomputes nothing and keeps the table
    stamps = {p: p.stat().st_mtime_ns for p in killed.glob("*/*.safetensors")}
    proc = _sweep(spec, killed)
    assert proc.wait(timeout=600) == 0
    assert {p: p.stat().st_mtime_ns for p in killed.glob("*/*.safetensors")} == stamps
    assert _table(killed) == reference
    rows = json.loads((killed / "results.json").read_text())
    assert len(rows) == 4 and len({r["cell"] for r in rows}) == 4  # no row lost or duplicated
    csv_lines = (killed / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("cell,weight_decay,max_ratio")

    # 4: a changed spec on the same folder is a clear error, not a silent mix
    spec.write_text(SPEC.replace("lr = 2e-3", "lr = 1e-3"))
    proc = _sweep(spec, killed)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 2 and "lr" in err and len(err.strip().splitlines()) == 1, err


def test_ray_engine_matches_the_local_engine(tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("epochs = 40", "epochs = 4").replace("track_every = 20", "track_every = 2")
                    .replace("[0.0, 0.001, 0.01, 0.1]", "[0.0, 0.1]"))
    parsed = parse_spec(spec)
    local = run_sweep(parsed, tmp_path / "local", workers=2, threads=1)
    ray = run_sweep(parsed, tmp_path / "ray", engine="ray", workers=2, threads=1)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]  # noqa: E731
    assert strip(ray.rows) == strip(local.rows) and len(ray.rows) == 2
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
