"""The run folder: everything a training run writes, and loading a trained denoiser back
(:func:`load_run`; :func:`load_denoiser` opens a run folder or any other model).

    RUN/config.json                      the run's record: TrainConfig fields + RunPlan fields + data
    RUN/stats.jsonl                      one line every log_every steps (loss, lr, EMA β, speed)
    RUN/memorization.jsonl               one line per tracked measurement (ratio, CI)
    RUN/snapshot-epochNNNNNN.safetensors EMA weights, the record in the metadata
    RUN/state.pt                         network, EMA, optimizer, step: exact resume
    RUN/summary.json                     the memorization curve, its maximum, the last loss

Every write is atomic (:mod:`diffmem.atomic`): a process killed at any moment leaves either the
old file or the new one. JSONL files are appended line by line; a kill during an append can leave
a torn last line, which readers skip and a resume cuts away.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffmem.atomic import atomic_path, write_json, write_text
from diffmem.config import TrainConfig
from diffmem.denoisers.adapters import is_run, load_diffusers, load_torchscript
from diffmem.denoisers.probe import check_denoiser
from diffmem.errors import InputError

SNAPSHOT_FORMAT = "diffmem-snapshot/1"
CONFIG_FILE, STATE_FILE, SUMMARY_FILE = "config.json", "state.pt", "summary.json"
STATS_FILE, TRACK_FILE = "stats.jsonl", "memorization.jsonl"
GUARD_FILE = "guard.json"  # why and when the memorization guard stopped the run (diffmem.studies.guard)
_SNAPSHOT_RE = re.compile(r"^snapshot-epoch(\d+)\.safetensors$")


# ---------------------------------------------------------------------------------------------
# The record (config.json) and the line logs.


def read_record(run: Path, param: str = "out") -> dict:
    """``RUN/config.json`` as a dict; InputError naming the file when it is missing or corrupt."""
    path = Path(run) / CONFIG_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (not a diffmem run folder)", param=param) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable run record ({type(err).__name__}: {err})", param=param) from None
    if not isinstance(record, dict) or "total_steps" not in record:
        raise InputError(f"{path}: not a diffmem run record", param=param)
    return record


def write_record(run: Path, record: dict) -> None:
    write_json(Path(run) / CONFIG_FILE, record)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (a kill mid-write leaves a torn last line, see :func:`read_jsonl`)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL log (none if it is missing); a torn last line is skipped."""
    if not Path(path).exists():
        return []
    records = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and any(rest.strip() for rest in lines[i + 1:]):
                raise InputError(f"{path}: line {i + 1} is not JSON (the log is corrupt)") from None
    return records


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the complete lines up to ``last_step`` (drop what a killed run wrote after its last state)."""
    if Path(path).exists():
        keep = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# ---------------------------------------------------------------------------------------------
# Snapshots and state.


def snapshot_name(epoch: int) -> str:
    return f"snapshot-epoch{epoch:06d}.safetensors"


def save_snapshot(path: Path, net: torch.nn.Module, *, record: dict, step: int, epoch: int) -> None:
    """Save the (EMA) raw network's weights with the run record as safetensors metadata."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": SNAPSHOT_FORMAT, "config": json.dumps(record), "step": str(step), "epoch": str(epoch)}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def list_snapshots(run: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every snapshot in a run folder, in epoch order."""
    found = [(int(m.group(1)), p) for p in Path(run).iterdir() if (m := _SNAPSHOT_RE.match(p.name))]
    return sorted(found)


def read_snapshot(path: Path, param: str = "network") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a snapshot file; ``metadata["config"]`` is the run record."""
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as err:
        raise InputError(f"{path}: not a readable snapshot ({type(err).__name__}: {err})", param=param) from None
    if metadata.get("format") != SNAPSHOT_FORMAT:
        raise InputError(f"{path}: not a diffmem snapshot (metadata format {metadata.get('format')!r})", param=param)
    try:
        metadata["config"] = json.loads(metadata["config"])
        metadata["step"], metadata["epoch"] = int(metadata["step"]), int(metadata["epoch"])
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(f"{path}: damaged snapshot metadata ({type(err).__name__}: {err})", param=param) from None
    if not isinstance(metadata["config"], dict):
        raise InputError(f"{path}: damaged snapshot metadata (its config is not a JSON object)", param=param)
    return tensors, metadata


def _network_of(record: dict, path: Path, param: str):
    """(TrainConfig, network keywords) of a snapshot's record; a damaged record names the file."""
    from diffmem.denoisers.probe import check_model_shape

    try:
        config = TrainConfig.from_dict(record)
        shape = [record["in_channels"], record["resolution"], record["resolution"]]
        dim = record.get("dim", 0)
        check_model_shape([dim] if dim else shape, "dim" if dim else "in_channels/resolution", param)
        num_classes = record["num_classes"]
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 0 <= num_classes <= 1 << 20:
            raise InputError(f"num_classes {num_classes!r} is not a whole number of classes", param="num_classes")
    except (InputError, KeyError, TypeError) as err:
        detail = f"{err.param}: {err.detail}" if isinstance(err, InputError) and err.param != param else \
            err.detail if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
        raise InputError(f"{path}: damaged run record in the snapshot ({detail})", param=param) from None
    return config, dict(resolution=record["resolution"], in_channels=record["in_channels"],
                        num_classes=num_classes, dim=dim)


def save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, device="cpu") -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise InputError(f"{path}: not a readable training state ({type(err).__name__}: {err})", param="out") from None


# ---------------------------------------------------------------------------------------------
# Summary and loading.


def read_stop(run) -> dict | None:
    """The memorization guard's stop record of a run folder (None: it was not stopped)."""
    try:
        return json.loads((Path(run) / GUARD_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_summary(run: Path) -> dict:
    """``summary.json``: the steps and epochs trained (fewer than planned when the guard stopped the
    run: ``stopped`` holds its record), the memorization curve, its maximum, the snapshots and the
    last loss."""
    run = Path(run)
    record = read_record(run)
    curve, stats = read_jsonl(run / TRACK_FILE), read_jsonl(run / STATS_FILE)
    best = max(curve, key=lambda r: r["ratio"]) if curve else None
    stop = read_stop(run)
    steps = stop["step"] if stop else record["total_steps"]
    summary = dict(
        steps=steps, epochs=steps * record["batch"] / record["num_images"] if stop else record["total_epochs"],
        num_images=record["num_images"],
        parameters=record.get("parameters"), final_loss=stats[-1]["loss"] if stats else None,
        snapshots=[p.name for _, p in list_snapshots(run)],
        memorization_curve=[dict(epoch=r["epoch"], step=r["step"], ratio=r["ratio"], ci95=r["ci95"]) for r in curve],
        max_memorization_ratio=best["ratio"] if best else None,
        max_memorization_epoch=best["epoch"] if best else None,
        final_memorization_ratio=curve[-1]["ratio"] if curve else None,
        stopped=stop,
    )
    write_json(run / SUMMARY_FILE, summary)
    return summary


@dataclass
class LoadedRun:
    """A trained denoiser and where it came from."""

    denoiser: torch.nn.Module  # the preconditioned EMA network, eval mode, a Denoiser (see protocol)
    config: TrainConfig
    record: dict  # config.json of the run: config, plan (num_images, num_classes, ...) and data
    epoch: int
    step: int
    snapshot: Path


def load_run(path, *, device="cpu", param: str = "network") -> LoadedRun:
    """Load a trained denoiser: ``path`` is a run folder (its latest snapshot) or one snapshot file.

    ``run.denoiser(x, sigma, labels)`` is the EMA network with its preconditioning, in eval mode
    and without gradients; it knows its ``shape``, ``num_classes`` and noise range.
    """
    from diffmem.denoisers.build import build_denoiser

    path = Path(path)
    if path.is_dir():
        snaps = list_snapshots(path)
        if not snaps:
            raise InputError(f"{path}: run folder holds no snapshot-epoch*.safetensors", param=param)
        path = snaps[-1][1]
    elif not path.is_file():
        raise InputError(f"{path}: no such run folder or snapshot file", param=param)
    tensors, meta = read_snapshot(path, param)
    record = meta["config"]
    config, shape = _network_of(record, path, param)
    try:
        D = build_denoiser(config, **shape)
        D.net.load_state_dict(tensors)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        text = " ".join(str(err).split())[:300]
        raise InputError(f"{path}: weights do not fit the network in its config ({type(err).__name__}: {text})",
                         param=param) from None
    D = D.to(device).eval().requires_grad_(False)
    check_denoiser(D, path, param, device)  # finite output of the right shape, or refused now
    return LoadedRun(D, config, record, meta["epoch"], meta["step"], path)


def load_denoiser(path, *, device="cpu", allow_pickle: bool = False, timestep: str = "interpolate",
                  param: str = "model"):
    """Any model as a :class:`~diffmem.denoisers.protocol.Denoiser`: a diffmem run folder or snapshot
    (:func:`load_run`), a diffusers folder (:func:`~diffmem.denoisers.adapters.load_diffusers`) or a
    TorchScript file (:func:`~diffmem.denoisers.adapters.load_torchscript`). Checked on one test
    input; anything else is an InputError naming ``param``."""
    import os

    from diffmem.denoisers.adapters import TIMESTEP_MODES

    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InputError(f"expected a model folder or file path, got {path!r}", param=param)
    if timestep not in TIMESTEP_MODES:
        raise InputError(f"expected one of {', '.join(TIMESTEP_MODES)}, got {timestep!r}", param="timestep")
    if not isinstance(allow_pickle, bool):
        raise InputError(f"expected True or False, got {allow_pickle!r}", param="allow_pickle")
    if not (isinstance(device, torch.device) or isinstance(device, str) and device.split(":")[0] in ("cpu", "cuda")):
        raise InputError(f"expected cpu or cuda[:N], got {device!r}", param="device")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such model folder or file", param=param)
    if is_run(path):
        return load_run(path, device=device, param=param).denoiser  # checked by load_run
    elif path.is_dir():
        if not ((path / "config.json").is_file() or (path / "model_index.json").is_file()):
            raise InputError(f"{path}: model folder without config.json (neither a diffmem run nor a diffusers "
                             f"model)", param=param)
        D = load_diffusers(path, device=device, allow_pickle=allow_pickle, timestep=timestep, param=param)
    else:
        D = load_torchscript(path, device=device, param=param)
    return check_denoiser(D, path, param, device)
