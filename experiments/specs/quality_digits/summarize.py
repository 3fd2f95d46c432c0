"""Table (quality.csv) and figure (quality.png) of quality.jsonl, written by commands.sh."""

import csv
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
out = Path(sys.argv[1]).parent
table = []
for r in rows:
    loss = r["classifier"].get("loss", {})
    table.append({"name": r["name"], "epoch": r["epoch"], "fd_classifier": r["classifier"]["fd"],
                  "fd_pca16": r["pca:16"]["fd"], "fd_pixels": r["pixels"]["fd"],
                  "memorization_ratio": r["memorization"]["memorization_ratio"],
                  "train_loss": loss.get("train_loss"), "heldout_loss": loss.get("heldout_loss"),
                  "loss_gap": loss.get("gap")})
with open(out / "quality.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in t.items()} for t in table)
net = [t for t in table if t["name"] == "net"]
refs = {t["name"]: t for t in table if t["name"] != "net"}
fig = Figure(figsize=(11, 3.4), layout="constrained")
axes = fig.subplots(1, 3)
epochs = [t["epoch"] for t in net]
for ax, key, label in ((axes[0], "fd_classifier", "FD, classifier features"), (axes[1], "fd_pca16", "FD, pca:16")):
    ax.plot(epochs, [t[key] for t in net], "o-", label="trained net, |D| = 64")
    for (name, t), style in zip(refs.items(), ("--", ":", "-.")):
        ax.axhline(t[key], ls=style, color="gray", label=name)
    ax.set(xscale="log", yscale="log", xlabel="epoch", title=label)
axes[0].legend(fontsize=7)
axes[2].plot(epochs, [t["memorization_ratio"] for t in net], "o-", label="memorization ratio")
axes[2].plot(epochs, [t["loss_gap"] / max(t["loss_gap"] for t in net) for t in net], "s-",
             label="loss gap / its max")
axes[2].set(xscale="log", xlabel="epoch", title="memorization and held-out loss gap")
axes[2].legend(fontsize=7)
fig.savefig(out / "quality.png", dpi=110)
for t in table:
    print(t)
