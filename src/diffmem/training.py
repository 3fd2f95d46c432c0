"""The training loop: EDM-style denoiser training with EMA, schedules, snapshots, exact resume,
multi-process data parallelism and memorization tracking.

Every step is a pure function of (state, step, seed): the global batch is a slice of per-epoch
permutations seeded by (seed, epoch), the noise levels and noise of the whole global batch come from
a generator seeded by (seed, step), and dropout masks are drawn for the whole global batch from one
seeded by (seed, step) (:mod:`diffmem.denoisers.dropout`). Hence

- ``--resume`` after a crash (``kill -9`` included) reproduces an uninterrupted run bit for bit;
- with ``torchrun`` each of W processes takes its slice of the same global batch and noise, so W
  processes give the single-process result up to the floating-point order of the gradient sum.

Schedules follow EDM (Karras et al. 2022), counted in training images ``nimg = step · batch``:

    lr(nimg)   = lr · min(nimg / warmup_images, 1)
    β_ema(nimg) = 0.5 ^ (batch / max(min(halflife, rampup · nimg), 1e-8))
    loss        = Σ_elements λ(σ)·(D(y+σn; σ) - y)² / batch      (summed over pixels, mean over images)

Duration is counted in epochs (``steps = ceil(epochs · |D| / batch)``), so a fixed number of epochs
shows each image equally often whatever |D| (seed 001's protocol).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from diffmem.atomic import remove_stale_temporaries, write_json, write_text
from diffmem.checkpoints import CONFIG_FILE, STATE_FILE, list_snapshots, load_state, save_snapshot, save_state, snapshot_name
from diffmem.denoisers.dropout import global_batch_dropout
from diffmem.denoisers.networks import ARCHS, PRESETS, build_network, count_parameters, parse_int_tuple
from diffmem.denoisers.precond import PRECONDS
from diffmem.errors import InputError
from diffmem.losses import LOSSES

# Random streams: every draw is seeded by (seed, stream, ...).
_INIT, _PERMUTATION, _NOISE, _DROPOUT, _TRACK = range(5)

# Flags whose values may change between a run and its --resume (they do not change the result).
RUNTIME_KEYS = ("data", "out", "device", "compile", "channels_last", "log_every", "progress")
NETWORK_KNOBS = ("channels", "channel_mult", "blocks", "attn", "dropout", "embed", "skips", "hidden", "depth")

DEFAULTS = dict(
    data=None, out=None, arch=None, preset=None, channels=None, channel_mult=None, blocks=None, attn=None,
    embed=None, skips=None, dropout=None, hidden=None, depth=None, precond="vp", epochs=None, steps=None,
    batch=512, lr=2e-4, weight_decay=0.0, optimizer="adam", lr_warmup="0", lr_scaling=None, ema=None,
    ema_rate=None, ema_rampup=0.05, seed=0, device=None, snapshots="", track_every=0, track_samples=1000,
    checkpoint_every=500, log_every=100, compile=False, channels_last=False, amp=False,
)
DEFAULT_EMA_HALFLIFE = 500_000  # images (EDM: 500 kimg, i.e. rate 0.99929 at batch 512)


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/Inf; the last good snapshot and state are kept."""


# ---------------------------------------------------------------------------------------------
# Randomness.


def derive_seed(seed: int, stream: int, *keys: int) -> int:
    """A 63-bit seed for one random stream, a pure function of (seed, stream, keys)."""
    state = np.random.SeedSequence([int(seed), int(stream), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def generator(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(derive_seed(seed, _PERMUTATION, epoch)))


def global_batch_indices(seed: int, step: int, batch: int, n: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: images ``step·batch ..`` of the stream formed by
    concatenating one random permutation of 0..n-1 per epoch."""
    start, end = step * batch, (step + 1) * batch
    parts = []
    for epoch in range(start // n, (end - 1) // n + 1):
        perm = _epoch_permutation(seed, epoch, n)
        parts.append(perm[max(start - epoch * n, 0):min(end - epoch * n, n)])
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# Schedules.


def learning_rate(nimg: int, lr: float, warmup_images: int) -> float:
    """EDM's linear warm-up: ``lr · min(nimg / warmup_images, 1)``; no warm-up when it is 0."""
    return lr * min(nimg / warmup_images, 1.0) if warmup_images > 0 else lr


def ema_beta(nimg: int, batch: int, halflife_images: float, rampup: float | None) -> float:
    """EMA decay per step for a half-life in images, ramped up as ``rampup · nimg`` (EDM)."""
    halflife = halflife_images
    if rampup:
        halflife = min(halflife, nimg * rampup)
    return 0.5 ** (batch / max(halflife, 1e-8))


def halflife_from_rate(rate: float, batch: int) -> float:
    """The half-life in images of a constant per-step EMA rate: ``rate ^ (h / batch) = 1/2``."""
    return 0.0 if rate == 0 else batch * math.log(0.5) / math.log(rate)


# ---------------------------------------------------------------------------------------------
# Configuration.


def _positive(name: str, value, allow_zero: bool = False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise InputError(f"--{name.replace('_', '-')}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def parse_duration_images(text: str, num_images: int, flag: str) -> int:
    """``N`` or ``Nimg`` (training images) or ``Nep`` (epochs of the data set, i.e. scaled by |D|) → images."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(img|ep|epochs?)?\s*", str(text))
    if not m:
        raise InputError(f"{flag}: expected a number of images (e.g. 10000) or epochs (e.g. 20ep), got {text!r}")
    value = float(m.group(1))
    return int(round(value * num_images if m.group(2) and m.group(2).startswith("ep") else value))


def parse_snapshots(text: str, total_epochs: int) -> list[int]:
    """``"10,50,log:8"`` → sorted epochs; ``log:K`` adds K log-spaced epochs in 1..total_epochs."""
    epochs: set[int] = set()
    for item in [s.strip() for s in str(text or "").split(",") if s.strip()]:
        if item.startswith("log:"):
            try:
                k = int(item[4:])
            except ValueError:
                raise InputError(f"--snapshots: expected log:K with an integer K, got {item!r}") from None
            if k < 1:
                raise InputError(f"--snapshots: log:K needs K >= 1, got {item!r}")
            epochs.update(int(round(e)) for e in np.geomspace(1, max(total_epochs, 1), k))
        else:
            try:
                e = int(item)
            except ValueError:
                raise InputError(f"--snapshots: expected epochs or log:K, got {item!r}") from None
            if not 1 <= e <= total_epochs:
                raise InputError(f"--snapshots: epoch {e} is outside 1..{total_epochs} (the run's length)")
            epochs.add(e)
    return sorted(epochs)


def _network_kwargs(config: dict) -> dict:
    return {k: config[k] for k in NETWORK_KNOBS if config.get(k) is not None}


def build_network_from_config(config: dict) -> torch.nn.Module:
    return build_network(config["arch"], img_resolution=config["resolution"], in_channels=config["in_channels"],
                         label_dim=config["label_dim"], preset=config["preset"], **_network_kwargs(config))


def build_denoiser(config: dict) -> torch.nn.Module:
    """The preconditioned network a config describes (fresh weights)."""
    net = build_network_from_config(config)
    return PRECONDS[config["precond"]](net, label_dim=config["label_dim"])


def make_loss(config: dict):
    return LOSSES[config["precond"]]()


def resolve_config(flags: dict, *, explicit=(), resume: bool = False, world_size: int = 1) -> dict:
    """Validate the flags and resolve them into a full run config (data shape, steps, schedules).

    With ``resume`` and an existing ``RUN/config.json``, the stored config fills every flag not in
    ``explicit``; an explicit flag that would change the training raises InputError.
    """
    flags = {**DEFAULTS, **{k: v for k, v in flags.items() if k in DEFAULTS}}
    out = flags.get("out")
    if out is None:
        raise InputError("--out: required")
    stored_path = Path(out) / CONFIG_FILE
    for key, lo in (("channel_mult", 1), ("skips", 0), ("attn", 1)):  # "2,2,2" -> [2, 2, 2]; attn "none" -> []
        if flags[key] is not None:
            flags[key] = list(parse_int_tuple(key, flags[key], lo, allow_empty=key == "attn"))
    if resume and stored_path.is_file():
        stored = json.loads(stored_path.read_text())
        for key in DEFAULTS:
            if key in explicit and key not in RUNTIME_KEYS and key in stored and _norm(flags[key]) != _norm(stored[key]):
                raise InputError(f"--{key.replace('_', '-')}: {flags[key]!r} differs from {stored[key]!r} in "
                                 f"{stored_path}; a resumed run keeps its config")
            if key not in explicit and key in stored:
                flags[key] = stored[key]
    c = dict(flags)

    # Flags that need no data.
    if c["precond"] not in PRECONDS:
        raise InputError(f"--precond: expected edm or vp, got {c['precond']!r}")
    if c["optimizer"] not in ("adam", "adamw", "sgd"):
        raise InputError(f"--optimizer: expected adam, adamw or sgd, got {c['optimizer']!r}")
    if c["preset"] is not None and c["preset"] not in PRESETS:
        raise InputError(f"--preset: unknown preset {c['preset']!r}; choose from {', '.join(PRESETS)}")
    if c["arch"] is None:
        c["arch"] = PRESETS[c["preset"]]["arch"] if c["preset"] is not None else "ddpmpp"
    if c["arch"] not in ARCHS:
        raise InputError(f"--arch: expected one of {', '.join(ARCHS)}, got {c['arch']!r}")
    for key in ("batch", "lr", "epochs", "steps", "lr_scaling", "track_samples", "checkpoint_every", "log_every"):
        _positive(key, c[key])
    for key in ("weight_decay", "track_every", "ema_rampup"):
        _positive(key, c[key], allow_zero=True)
    if (c["epochs"] is None) == (c["steps"] is None):
        raise InputError("--epochs/--steps: give exactly one of them" if c["epochs"] is not None
                         else "--epochs/--steps: give the training duration with one of them")
    if c["ema"] is not None and c["ema_rate"] is not None:
        raise InputError("--ema/--ema-rate: give at most one of them")
    if c["ema_rate"] is not None and not 0 <= c["ema_rate"] < 1:
        raise InputError(f"--ema-rate: must lie in [0, 1), got {c['ema_rate']}")
    if c["batch"] % world_size:
        raise InputError(f"--batch: {c['batch']} is not divisible by the {world_size} processes")
    if c["device"] is None:
        c["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if c["device"] not in ("cpu", "cuda"):
        raise InputError(f"--device: expected cpu or cuda, got {c['device']!r}")
    if c["device"] == "cuda" and not torch.cuda.is_available():
        raise InputError("--device: cuda requested but no CUDA device is available")
    if c["amp"] and c["device"] != "cuda":
        raise InputError("--amp: bf16 autocast needs --device cuda")

    # The data set fixes the network's shape and the run's length.
    if c["data"] is None:
        raise InputError("--data: required")
    from diffmem.data.io import load_image_set

    data = load_image_set(c["data"], what="--data")
    c["data"] = str(Path(c["data"]).resolve())
    n = len(data)
    c["num_images"] = n
    c["in_channels"], height, width = data.shape
    if height != width:
        raise InputError(f"--data {c['data']}: images must be square, got {height}x{width}")
    c["resolution"] = height
    c["label_dim"] = data.num_classes
    c["total_steps"] = c["steps"] if c["steps"] is not None else math.ceil(c["epochs"] * n / c["batch"])
    c["total_epochs"] = c["total_steps"] * c["batch"] / n
    c["lr_effective"] = c["lr"] * (c["batch"] / c["lr_scaling"] if c["lr_scaling"] else 1.0)
    c["lr_warmup_images"] = parse_duration_images(c["lr_warmup"], n, "--lr-warmup")
    if c["ema_rate"] is not None:
        c["ema_halflife_images"] = halflife_from_rate(c["ema_rate"], c["batch"])
    else:
        c["ema_halflife_images"] = float(DEFAULT_EMA_HALFLIFE if c["ema"] is None
                                         else parse_duration_images(c["ema"], n, "--ema"))
    c["snapshot_epochs"] = parse_snapshots(c["snapshots"], max(int(c["total_epochs"]), 1))
    c["world_size"] = world_size
    return c


def _norm(value):
    """Compare flag values across JSON round trips (tuples become lists, ints may be floats)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------
# Distributed plumbing (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK).


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _barrier(world_size: int):
    if world_size > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------
# The loop.


def _make_optimizer(config: dict, params):
    lr, wd = config["lr_effective"], config["weight_decay"]
    if config["optimizer"] == "adam":  # weight decay as plain L2 on the gradient (seed 001)
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the lines a killed run wrote after its last saved state."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
        write_text(path, "".join(line + "\n" for line in keep))


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _crossed(multiples_of_images: list[int], before: int, after: int) -> bool:
    return any(before < m <= after for m in multiples_of_images)


def prepare_run(flags: dict, *, explicit=(), resume: bool = False) -> dict:
    """Validate flags and the output folder; return the resolved config (with ``parameters``)."""
    rank, world_size, _ = _dist_env()
    out = flags.get("out")
    if out is not None:
        out_path = Path(out)
        if out_path.exists() and not out_path.is_dir():
            raise InputError(f"--out {out}: exists and is not a folder")
        if out_path.is_dir() and any(out_path.iterdir()) and not resume:
            raise InputError(f"--out {out}: folder exists and is not empty; pass --resume to continue that run")
    config = resolve_config(flags, explicit=explicit, resume=resume, world_size=world_size)
    torch.manual_seed(derive_seed(config["seed"], _INIT))
    net = build_denoiser(config)  # the network validates its knobs (InputError naming the flag)
    config["parameters"] = count_parameters(net)
    return config


def train(config: dict, *, resume: bool = False, progress: bool = False, log=print) -> dict:
    """Train the run a resolved config describes (see :func:`prepare_run`); return the summary."""
    rank, world_size, local_rank = _dist_env()
    out = Path(config["out"])
    device = torch.device(config["device"] if config["device"] == "cpu" else f"cuda:{local_rank}")
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":  # exact float32, as EDM: no TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    from diffmem.data.io import load_image_set

    data = load_image_set(config["data"], what="--data")
    if len(data) != config["num_images"] or data.shape != (config["in_channels"], config["resolution"], config["resolution"]):
        raise InputError(f"--data {config['data']}: no longer matches the run's config (size or shape changed)")
    images = torch.from_numpy(data.to_model()).to(device)
    labels = torch.from_numpy(data.labels).to(device) if config["label_dim"] else None
    memory_format = torch.channels_last if config["channels_last"] and images.ndim == 4 else torch.preserve_format
    images = images.contiguous(memory_format=memory_format)

    # Model, EMA, optimizer (same initial weights on every rank: seeded by (seed, init)).
    torch.manual_seed(derive_seed(config["seed"], _INIT))
    model = build_denoiser(config).to(device, memory_format=memory_format).train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = _make_optimizer(config, model.parameters())
    loss_fn = make_loss(config)

    step = 0
    resumed_acc = torch.zeros((), device=device, dtype=torch.float64), 0
    state_path = out / STATE_FILE
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
    _barrier(world_size)
    if resume and state_path.exists():
        state = load_state(state_path, device)
        model.net.load_state_dict(state["net"])
        ema.net.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        resumed_acc = state["loss_acc"].to(device), int(state["steps_acc"])  # the open stats.jsonl window
        del state
    _barrier(world_size)
    if rank == 0:
        for name in ("stats.jsonl", "memorization.jsonl"):
            if resume:
                _truncate_jsonl(out / name, step)
            else:
                (out / name).unlink(missing_ok=True)
        write_json(out / CONFIG_FILE, {k: v for k, v in config.items()})
    _barrier(world_size)

    ddp = model
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(ddp) if config["compile"] else ddp

    B, n, seed = config["batch"], config["num_images"], config["seed"]
    b = B // world_size
    total = config["total_steps"]
    snap_images = [e * n for e in config["snapshot_epochs"]]
    tracking = bool(config["track_every"])
    track_images = ([k * config["track_every"] * n for k in range(1, int(config["total_epochs"] // config["track_every"]) + 1)]
                    if tracking else [])
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if config["amp"] else torch.autocast("cpu", enabled=False))

    last_saved = step if state_path.exists() and resume else None

    def save_all_states(at_step: int):
        nonlocal last_saved
        last_saved = at_step
        if rank == 0:
            save_state(state_path, dict(net=model.net.state_dict(), ema=ema.net.state_dict(),
                                        optimizer=optimizer.state_dict(), step=at_step, nimg=at_step * B,
                                        loss_acc=loss_acc.cpu(), steps_acc=steps_acc,
                                        seed=seed, torch_rng=torch.get_rng_state()))
        _barrier(world_size)

    loss_acc, steps_acc = resumed_acc
    tick_time, tick_step = time.time(), step
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)
    while step < total:
        nimg = step * B
        # The global batch, its noise levels and noise: pure functions of (seed, step).
        idx = global_batch_indices(seed, step, B, n)
        sigma, noise = loss_fn.draw((B, *images.shape[1:]), generator(derive_seed(seed, _NOISE, step), device), device)
        mine = slice(rank * b, (rank + 1) * b)
        idx = idx[mine].to(device)
        y = images[idx]
        y_labels = labels[idx] if labels is not None else None
        torch.manual_seed(derive_seed(seed, _DROPOUT, step, rank))  # any other randomness in the net

        optimizer.zero_grad(set_to_none=True)
        # Dropout masks of the whole global batch, this rank's rows: W processes = one process.
        with autocast, global_batch_dropout(derive_seed(seed, _DROPOUT, step), B, rank * b):
            loss = loss_fn.weighted(forward, y, y_labels, sigma[mine], noise[mine])
        loss_sum = loss.sum()
        (loss_sum / b).backward()  # DDP averages over ranks: the mean over the global batch

        lr = learning_rate(nimg, config["lr_effective"], config["lr_warmup_images"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = torch.isfinite(loss_sum) & torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if not bool(finite):
            last = f"{state_path} (step {last_saved})" if last_saved is not None else "none yet"
            raise TrainingDiverged(f"step {step}: {'loss' if not torch.isfinite(loss_sum) else 'gradient'} is NaN "
                                   f"or Inf; training stopped. Last good state: {last}")
        optimizer.step()

        beta = ema_beta(nimg, B, config["ema_halflife_images"], config["ema_rampup"])
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), model.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, beta))
            for b_ema, b_net in zip(ema.buffers(), model.buffers()):
                b_ema.copy_(b_net)

        step += 1
        before, nimg = nimg, step * B
        mean_loss = loss_sum.detach().double() / b
        if world_size > 1:  # the mean over the global batch, the same on every rank
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= world_size
        loss_acc += mean_loss
        steps_acc += 1
        if bar is not None:
            bar.update(1)
        done = step == total
        epoch = nimg // n

        if step % config["log_every"] == 0 or done:
            now = time.time()
            record = dict(step=step, epoch=nimg / n, nimg=nimg, loss=float(loss_acc) / steps_acc / math.prod(images.shape[1:]),
                          lr=lr, ema_beta=beta, images_per_s=(step - tick_step) * B / max(now - tick_time, 1e-9),
                          time=now)
            if rank == 0:
                _append_jsonl(out / "stats.jsonl", record)
            loss_acc.zero_()
            steps_acc, tick_time, tick_step = 0, now, step
        if rank == 0 and (_crossed(snap_images, before, nimg) or done):
            save_snapshot(out / snapshot_name(epoch), ema.net, config=config, step=step, epoch=epoch)
        if tracking and (_crossed(track_images, before, nimg) or done):
            if rank == 0:
                record = track_memorization(ema, data, config, device)
                _append_jsonl(out / "memorization.jsonl", dict(epoch=epoch, step=step, **record))
                if bar is None:
                    log(f"epoch {epoch} step {step}: memorization ratio {record['ratio']:.3f}")
            _barrier(world_size)
        if step % config["checkpoint_every"] == 0 or done:
            save_all_states(step)
    if bar is not None:
        bar.close()

    summary = None
    if rank == 0:
        summary = write_summary(out, config)
    _barrier(world_size)
    return summary


def track_memorization(D, data, config: dict, device) -> dict:
    """Sample ``track_samples`` images with the EMA denoiser (Heun, 18 steps), quantize them to
    uint8 and audit them against the training set."""
    from diffmem.data.imageset import to_uint8
    from diffmem.metrics.memorization import audit
    from diffmem.sampling import sample

    num = config["track_samples"]
    labels = None
    if config["label_dim"]:  # the training label distribution, cycled
        labels = torch.from_numpy(data.labels[np.arange(num) % len(data)])
    shape = (config["in_channels"], config["resolution"], config["resolution"])
    generated = sample(D, num, shape, labels=labels, sampler="heun", steps=18, seed=derive_seed(config["seed"], _TRACK) % (1 << 31),
                       device=device)
    result = audit(data, to_uint8(generated.numpy()), device=str(device))  # as saved PNGs (seed 001)
    return dict(ratio=result.ratio, ci95=[result.ci95[0], result.ci95[1]], stderr=result.stderr, n_generated=num)


def write_summary(out: Path, config: dict) -> dict:
    """``summary.json``: the memorization curve, its maximum, the snapshots and the last loss."""
    curve = [json.loads(line) for line in (out / "memorization.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "memorization.jsonl").exists() else []
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "stats.jsonl").exists() else []
    best = max(curve, key=lambda r: r["ratio"]) if curve else None
    summary = dict(
        steps=config["total_steps"], epochs=config["total_epochs"], num_images=config["num_images"],
        parameters=config.get("parameters"), final_loss=stats[-1]["loss"] if stats else None,
        snapshots=[p.name for _, p in list_snapshots(out)],
        memorization_curve=[dict(epoch=r["epoch"], step=r["step"], ratio=r["ratio"], ci95=r["ci95"]) for r in curve],
        max_memorization_ratio=best["ratio"] if best else None,
        max_memorization_epoch=best["epoch"] if best else None,
        final_memorization_ratio=curve[-1]["ratio"] if curve else None,
    )
    write_json(out / "summary.json", summary)
    return summary


def run_training(flags: dict, *, explicit=(), resume: bool = False, dry_run: bool = False,
                 progress: bool = False, log=print) -> dict:
    """Resolve and validate, then train (or, with ``dry_run``, only return the resolved config)."""
    config = prepare_run(flags, explicit=explicit, resume=resume)
    if dry_run:
        return config
    try:
        train(config, resume=resume, progress=progress, log=log)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return config


__all__ = ["EDMPrecond", "VPPrecond", "train", "run_training", "prepare_run", "resolve_config", "load_denoiser",
           "global_batch_indices", "learning_rate", "ema_beta", "derive_seed", "TrainingDiverged"]

from diffmem.checkpoints import load_denoiser  # noqa: E402  (re-exported: diffmem.training.load_denoiser)
from diffmem.denoisers.precond import EDMPrecond, VPPrecond  # noqa: E402,F401
