"""Weight decay switches memorization off (Gu et al. 2025, Fig. 6: |D| = 1k, 92 % -> 1.3 %), at CPU scale.

The run of ``digits_memorization.py`` (16 digits, 0.18 M-parameter DDPM++ U-Net, EDM, Adam lr 2e-3,
1500 epochs, memorization tracked every 100 epochs with 200 samples) repeated with Adam's L2 weight
decay in {0, 1e-3, 1e-2, 1e-1}, two runs at a time on one thread each. Writes
``results/weight_decay/``: ``summary.json`` (per decay: the curve and its maximum) and ``curves.png``.

    python experiments/weight_decay.py     # about 5 minutes on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import train_runs  # noqa: E402
from digits_memorization import TRAIN  # noqa: E402  (the same run, only the decay changes)

from diffmem.atomic import write_json  # noqa: E402
from diffmem.cli import run  # noqa: E402
from diffmem.plots import save_curves  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "weight_decay"
DECAYS = ["0", "1e-3", "1e-2", "1e-1"]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d16.zip"
        if run(["data", "--source", "digits", "--size", "16", "--labels", "none", "--out", str(data)]):
            return 1
        jobs = {wd: ["--data", str(data), *TRAIN, "--weight-decay", wd] for wd in DECAYS}
        summaries = train_runs(jobs, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = {wd: {"max_memorization_ratio": s["max_memorization_ratio"], "final_loss": s["final_loss"],
                  "curve": s["memorization_curve"]} for wd, s in summaries.items()}
    write_json(RESULTS / "summary.json", {"train_flags": TRAIN, "weight_decay": table})
    save_curves(RESULTS / "curves.png",
                {f"wd {wd}": ([r["epoch"] for r in s["curve"]], [r["ratio"] for r in s["curve"]])
                 for wd, s in table.items()},
                xlabel="epoch", ylabel="memorization ratio", title="16 digits, Adam L2 weight decay")
    for wd, s in table.items():
        print(f"weight decay {wd:>5}: max memorization {s['max_memorization_ratio']:.3f}, final loss {s['final_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
