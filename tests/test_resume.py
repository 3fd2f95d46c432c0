"""Exact resume: a run killed with SIGKILL at random moments and resumed ends bit-identical to an
uninterrupted run (every step is a pure function of (state, step, seed); writes are atomic)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from diffmem.cli import run

CLI = "import sys; from diffmem.cli import run; sys.exit(run(sys.argv[1:]))"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process


def _train(args, out, resume=False):
    return subprocess.Popen([sys.executable, "-c", CLI, "train", *args, "--out", str(out), *(["--resume"] if resume else [])],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _state_step(out):
    try:
        return torch.load(out / "state.pt", weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(tmp_path):
    data = tmp_path / "d16.zip"
    assert run(["data", "--source", "digits", "--size", "16", "--labels", "none", "--out", str(data)]) == 0
    args = ["--data", str(data), "--preset", "tiny", "--channels", "8", "--precond", "edm", "--steps", "300",
            "--batch", "8", "--lr", "1e-3", "--ema-rate", "0.99", "--dropout", "0.1", "--snapshots", "log:4",
            "--log-every", "10", "--checkpoint-every", "7", "--seed", "1"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    proc = _train(args, ref)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    rng = random.Random(0)
    kills = 0
    for i, target in enumerate((40, 130, 220)):
        proc = _train(args, killed, resume=i > 0)  # a resume needs a run to resume
        deadline = time.time() + 120
        while _state_step(killed) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.25))  # somewhere inside a step, a snapshot or a state write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    assert 0 < _state_step(killed) < 300
    proc = _train(args, killed, resume=True)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    snaps = sorted(p.name for p in ref.glob("snapshot-*.safetensors"))
    assert snaps == sorted(p.name for p in killed.glob("snapshot-*.safetensors")) and len(snaps) == 4
    for name in snaps:
        a, b = load_file(ref / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = (torch.load(d / "state.pt", weights_only=True) for d in (ref, killed))
    assert sa["step"] == sb["step"] == 300
    for part in ("net", "ema"):
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part])
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)

    def losses(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, (d / "stats.jsonl").read_text().splitlines())]

    assert losses(ref) == losses(killed) and len(losses(ref)) == 30
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]
