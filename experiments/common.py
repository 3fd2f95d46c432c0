"""Shared by the experiment scripts: train several runs, two at a time on one thread each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = "import sys; from diffmem.cli import run; sys.exit(run(sys.argv[1:]))"


def train_runs(jobs: dict[str, list[str]], folder: Path, parallel: int = 2) -> dict[str, dict]:
    """Run ``diffmem train ARGS --out folder/NAME`` for each ``NAME: ARGS``, ``parallel`` at a time
    with ``OMP_NUM_THREADS=1``; return each run's ``summary.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    names = list(jobs)
    summaries = {}
    for i in range(0, len(names), parallel):
        procs = {name: subprocess.Popen([sys.executable, "-c", CLI, "train", *jobs[name], "--out", str(folder / name),
                                         "--no-progress"], env=env, stdout=subprocess.DEVNULL)
                 for name in names[i : i + parallel]}
        for name, proc in procs.items():
            if proc.wait():
                raise RuntimeError(f"run {name} failed with exit status {proc.returncode}")
            summaries[name] = json.loads((folder / name / "summary.json").read_text())
    return summaries
