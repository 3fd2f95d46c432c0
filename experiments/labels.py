"""Labels and memorization (Gu et al. 2025, Sec. 4.4): conditioning on labels raises memorization,
and unique labels (one class per image) make the model copy almost everything.

40 digits (4 per class), the network and optimizer of ``digits_memorization.py`` (0.18 M-parameter
DDPM++, EDM, Adam lr 2e-3, EMA rate 0.99), 800 epochs at batch 40, memorization tracked every 100
epochs with 200 samples whose labels cycle through the training labels. Three label settings from
``diffmem data --labels``: ``none`` (unconditional), ``true`` (10 digit classes), ``unique`` (40
classes). Writes ``results/labels/``: ``summary.json`` and ``curves.png``.

    python experiments/labels.py     # about 4 minutes on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import train_runs  # noqa: E402
from digits_memorization import TRAIN  # noqa: E402

from diffmem.atomic import write_json  # noqa: E402
from diffmem.cli import run  # noqa: E402
from diffmem.plots import save_curves  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "labels"
SETTINGS = ["none", "true", "unique"]
LONGER = ["--epochs", "800", "--batch", "40"]  # later flags override TRAIN's


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {}
        for labels in SETTINGS:
            data = Path(tmp) / f"d40-{labels}.zip"
            if run(["data", "--source", "digits", "--size", "40", "--labels", labels, "--out", str(data)]):
                return 1
            jobs[labels] = ["--data", str(data), *TRAIN, *LONGER]
        summaries = train_runs(jobs, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = {labels: {"max_memorization_ratio": s["max_memorization_ratio"], "final_loss": s["final_loss"],
                      "parameters": s["parameters"], "curve": s["memorization_curve"]} for labels, s in summaries.items()}
    write_json(RESULTS / "summary.json", {"train_flags": TRAIN + LONGER, "labels": table})
    save_curves(RESULTS / "curves.png",
                {f"labels {k}": ([r["epoch"] for r in s["curve"]], [r["ratio"] for r in s["curve"]])
                 for k, s in table.items()},
                xlabel="epoch", ylabel="memorization ratio", title="40 digits: unconditional vs labels")
    for labels, s in table.items():
        print(f"labels {labels:>6}: max memorization {s['max_memorization_ratio']:.3f}, "
              f"{s['parameters']} parameters, final loss {s['final_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
