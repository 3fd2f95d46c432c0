"""Run-folder files: EMA snapshots (safetensors), the training state (``state.pt``), and loading a
trained denoiser back.

Every write is atomic (:mod:`diffmem.atomic`): a process killed at any moment leaves either the
old file or the new one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffmem.atomic import atomic_path
from diffmem.errors import InputError

SNAPSHOT_FORMAT = "diffmem-snapshot/1"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
_SNAPSHOT_RE = re.compile(r"^snapshot-epoch(\d+)\.safetensors$")


def snapshot_name(epoch: int) -> str:
    return f"snapshot-epoch{epoch:06d}.safetensors"


def save_snapshot(path: Path, net: torch.nn.Module, *, config: dict, step: int, epoch: int) -> None:
    """Save the (EMA) raw network's weights with the run config as safetensors metadata."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": SNAPSHOT_FORMAT, "config": json.dumps(config), "step": str(step), "epoch": str(epoch)}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, device="cpu") -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise InputError(f"{path}: not a readable training state ({type(err).__name__}: {err})") from None


def list_snapshots(run: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every snapshot in a run folder, in epoch order."""
    found = [(int(m.group(1)), p) for p in Path(run).iterdir() if (m := _SNAPSHOT_RE.match(p.name))]
    return sorted(found)


def read_snapshot(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a snapshot file; metadata["config"] decoded."""
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as err:
        raise InputError(f"{path}: not a readable snapshot ({type(err).__name__}: {err})") from None
    if metadata.get("format") != SNAPSHOT_FORMAT:
        raise InputError(f"{path}: not a diffmem snapshot (metadata format {metadata.get('format')!r})")
    metadata["config"] = json.loads(metadata["config"])
    metadata["step"] = int(metadata["step"])
    metadata["epoch"] = int(metadata["epoch"])
    return tensors, metadata


def load_denoiser(path, device="cpu", *, what: str = "--network"):
    """Load a trained denoiser: ``path`` is a run folder (its latest snapshot) or a snapshot file.

    Returns ``(D, info)``: ``D`` the preconditioned EMA network in eval mode, callable as
    ``D(x, sigma, labels)``; ``info`` a dict with ``resolution``, ``channels``, ``label_dim``,
    ``epoch``, ``step``, ``arch``, ``precond``, ``snapshot`` (the file) and ``config``.
    """
    from diffmem.training import build_denoiser  # the network recipe lives with the training loop

    path = Path(path)
    if path.is_dir():
        snaps = list_snapshots(path)
        if not snaps:
            raise InputError(f"{what} {path}: run folder holds no snapshot-epoch*.safetensors")
        path = snaps[-1][1]
    elif not path.is_file():
        raise InputError(f"{what} {path}: no such run folder or snapshot file")
    tensors, meta = read_snapshot(path)
    config = meta["config"]
    D = build_denoiser(config)
    try:
        D.net.load_state_dict(tensors)
    except RuntimeError as err:
        raise InputError(f"{what} {path}: weights do not fit the network in its config ({err})") from None
    D = D.to(device).eval().requires_grad_(False)
    info = dict(resolution=config["resolution"], channels=config["in_channels"], label_dim=config["label_dim"],
                epoch=meta["epoch"], step=meta["step"], arch=config["arch"], precond=config["precond"],
                snapshot=str(path), config=config)
    return D, info
