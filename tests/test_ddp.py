"""Data parallelism: `torchrun` with 2 CPU processes (gloo) reproduces single-process training at the
same global batch and seed (dropout included), up to the floating-point order of the gradient all-reduce."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diffmem.cli import run

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    data = tmp_path / "d20.zip"
    assert run(["data", "--source", "digits", "--size", "20", "--labels", "true", "--out", str(data)]) == 0
    script = tmp_path / "diffmem_cli.py"
    script.write_text("import sys\nfrom diffmem.cli import run\nsys.exit(run(sys.argv[1:]))\n")
    args = ["train", "--data", str(data), "--preset", "tiny", "--channels", "8", "--precond", "vp", "--steps", "20",
            "--batch", "8", "--lr", "1e-3", "--ema-rate", "0.9", "--log-every", "5", "--checkpoint-every", "10",
            "--dropout", "0.2", "--seed", "3"]
    one = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "one")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("trained 20 steps") == 1  # only rank 0 reports

    snap = "snapshot-epoch000008.safetensors"
    a, b = load_file(tmp_path / "one" / snap), load_file(tmp_path / "two" / snap)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    # the tolerance discriminates: another seed gives other weights
    other = subprocess.run([sys.executable, str(script), *args[:-1], "4", "--out", str(tmp_path / "other")], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr
    c = load_file(tmp_path / "other" / snap)
    assert not all(torch.allclose(c[k], a[k], rtol=1e-3, atol=1e-4) for k in a)
    sa = (tmp_path / "one" / "stats.jsonl").read_text().splitlines()
    sb = (tmp_path / "two" / "stats.jsonl").read_text().splitlines()
    assert len(sa) == len(sb) == 4
    for la, lb in zip(map(json.loads, sa), map(json.loads, sb)):
        assert la["step"] == lb["step"] and la["loss"] == pytest.approx(lb["loss"], rel=1e-4)
