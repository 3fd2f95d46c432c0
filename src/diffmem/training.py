"""The training loop: EDM-style denoiser training with EMA, snapshots, exact resume, multi-process
data parallelism and memorization tracking.

    run = train(TrainConfig(preset="tiny", precond="edm", epochs=500), data, "runs/d16")

reads like EDM's ``training_loop``: :func:`_set_up` (data, network, EMA, optimizer, resume), then
:func:`_step` (one optimizer step on the global batch) and :func:`_maintain` (log, snapshot, track,
checkpoint) until the planned number of steps is done.

Every step is a pure function of (state, step, seed): the global batch is a slice of per-epoch
permutations seeded by (seed, epoch), the noise levels and noise of the whole global batch come from
a generator seeded by (seed, step), and dropout masks are drawn for the whole global batch from one
seeded by (seed, step) (:mod:`diffmem.denoisers.dropout`). Hence

- ``resume=True`` after a crash (``kill -9`` included) reproduces an uninterrupted run bit for bit;
- with ``torchrun`` each of W processes takes its slice of the same global batch and noise, so W
  processes give the single-process result up to the floating-point order of the gradient sum.

The loss is ``Σ_pixels λ(σ)·(D(y+σn; σ) - y)² / batch`` (summed over pixels, mean over images);
schedules are in :mod:`diffmem.schedules`. A NaN/Inf is looked for whenever the loop logs, saves or
measures (every ``log_every`` steps at the latest), not every step: the diverged weights are never
saved, and the last good snapshot and state stay as they were.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffmem.atomic import prepare_output, remove_stale_temporaries
from diffmem.config import RunPlan, TrainConfig, plan_run
from diffmem.data.imageset import ImageSet
from diffmem.data.points import PointCloud
from diffmem.denoisers.build import build_denoiser, precond_options
from diffmem.denoisers.dropout import global_batch_dropout
from diffmem.denoisers.networks import count_parameters
from diffmem.errors import InputError
from diffmem.losses import LOSSES
from diffmem.rng import DROPOUT, INIT, NOISE, derive_seed, generator
from diffmem.runs import (CONFIG_FILE, STATE_FILE, STATS_FILE, TRACK_FILE, append_jsonl, load_state, read_record,
                          read_stop, save_snapshot, save_state, snapshot_name, truncate_jsonl, write_record,
                          write_summary)
from diffmem.schedules import ema_beta, global_batch_indices, learning_rate, update_ema
from diffmem.tracking import guard_check, track_memorization


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN/Inf; the last good snapshot and state are kept."""


@dataclass
class _Loop:
    """Everything the loop reads and updates (one object instead of closures over locals)."""

    config: TrainConfig
    plan: RunPlan  # what the config means on this data: steps, lr, EMA warm-up, snapshot epochs...
    record: dict  # config.json as written (config, plan and data): the run folder's record, not read here
    out: Path
    data: ImageSet
    rank: int
    world_size: int
    device: torch.device
    images: torch.Tensor
    labels: torch.Tensor | None
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    forward: torch.nn.Module  # the model, wrapped for DDP / torch.compile
    loss_fn: object  # diffmem.losses.EDMLoss | VPLoss
    step: int = 0
    loss_acc: torch.Tensor | None = None  # Σ of per-step mean losses since the last stats line
    steps_acc: int = 0
    stopped: dict | None = None  # the guard's stop record once it stopped the loop
    last_saved: int | None = None  # step of the last state.pt written
    lr: float = 0.0
    beta: float = 0.0
    tick: tuple[float, int] = (0.0, 0)  # (time, step) of the last stats line


# ---------------------------------------------------------------------------------------------
# Public entry points.


def train(config: TrainConfig, data, out, *, resume: bool = False, progress: bool = False, log=None) -> dict:
    """Train the denoiser ``config`` describes on ``data`` into the run folder ``out``.

    Args:
        config: a :class:`~diffmem.config.TrainConfig`.
        data: an :class:`~diffmem.data.ImageSet` (uint8 or model-space images, optional labels, which
            make the network class-conditional), a :class:`~diffmem.data.points.PointCloud` (float
            (N, d) points, never quantized; an MLP), or a path any reader accepts (EDM zip, PNG
            folder, .npz of images or of ``points``, ...).
        out: the run folder: new or empty, unless ``resume``.
        resume: continue the run in ``out`` from its last ``state.pt`` (bit-identical to an
            uninterrupted run); refuses another config (runtime fields aside) or other data.
        progress: a tqdm bar on stderr. ``log``: a function taking one-line messages, or None.

    Returns the run's summary (``summary.json``: memorization curve and its maximum, last loss).
    Raises :class:`~diffmem.errors.InputError` naming the parameter, :class:`TrainingDiverged`.
    """
    if out is None or not str(out).strip():
        raise InputError("an empty path is not a run folder", param="out")
    started_dist = False
    try:
        loop, started_dist = _set_up(config, data, Path(out), resume)
        loop.stopped = read_stop(loop.out) if resume else None  # a guard-stopped run trains no further
        _run(loop, progress, log)
        summary = write_summary(loop.out) if loop.rank == 0 else None
        _barrier(loop.world_size)
        return summary
    finally:
        if started_dist and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def dry_run(config: TrainConfig, data, out=None) -> dict:
    """The record ``train`` would write to ``config.json`` (config, plan, parameter count, data),
    computed without training or writing anything."""
    data = _load_data(data)
    _, world_size, _ = _dist_env()
    _, record, _ = _record_and_model(config, data, out, world_size)
    return record


# ---------------------------------------------------------------------------------------------
# Set-up.


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _barrier(world_size: int):
    if world_size > 1:
        torch.distributed.barrier()


def _load_data(data) -> ImageSet | PointCloud:
    from diffmem.data.points import load_data

    if isinstance(data, (ImageSet, PointCloud)):
        return data
    if data is None or str(data) == "":
        raise InputError("required (an ImageSet, a PointCloud or a path)", param="data")
    try:
        return load_data(data, what=str(data))
    except InputError as err:
        raise InputError(err.detail, param="data") from None


def _record_and_model(config: TrainConfig, data: ImageSet, out,
                      world_size: int) -> tuple[RunPlan, dict, torch.nn.Module]:
    """Plan the run, build its network once (initial weights seeded by (seed, INIT)), count it."""
    plan = plan_run(config, data, world_size=world_size)
    torch.manual_seed(derive_seed(config.seed, INIT))
    model = build_denoiser(config, resolution=plan.resolution, in_channels=plan.in_channels,
                           num_classes=plan.num_classes, dim=plan.dim)
    plan = dataclasses.replace(plan, parameters=count_parameters(model))
    source = str(Path(data.source).resolve()) if Path(data.source).exists() else data.source
    record = {**config.to_dict(), **dataclasses.asdict(plan), "data": source,
              "out": None if out is None else str(Path(out).resolve())}
    return plan, record, model


def _check_out(config: TrainConfig, plan: RunPlan, record: dict, out: Path, resume: bool) -> bool:
    """Validate the run folder for a new run or a resume; return whether a state.pt is there."""
    if not resume:
        if out.is_dir() and any(out.iterdir()):
            raise InputError(f"{out}: folder exists and is not empty; pass resume (--resume) to continue that run",
                             param="out")
        prepare_output(out, kind="folder", param="out", create=False)
        return False
    if not (out / CONFIG_FILE).is_file():
        raise InputError(f"{out}: no run to resume (no {CONFIG_FILE} there)", param="out")
    stored = read_record(out)
    try:
        stored_config = TrainConfig.from_dict(stored)
    except InputError as err:
        raise InputError(f"{out / CONFIG_FILE}: holds an invalid config ({err})", param="out") from None
    changed = config.differences(stored_config)
    if changed:
        key = changed[0]
        raise InputError(f"{getattr(config, key)!r} differs from {getattr(stored_config, key)!r} in {out / CONFIG_FILE}; "
                         "a resumed run keeps its config", param=key)
    if stored.get("data_sha256") != plan.data_sha256:
        raise InputError(f"{record['data']}: not the images this run trained on (content hash "
                         f"{plan.data_sha256[:12]}… vs {str(stored.get('data_sha256'))[:12]}… in "
                         f"{out / CONFIG_FILE}); a resumed run keeps its data", param="data")
    return (out / STATE_FILE).exists()


def _resolve_device(config: TrainConfig, local_rank: int) -> torch.device:
    kind = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError("cuda requested but no CUDA device is available", param="device")
    if config.amp and kind != "cuda":
        raise InputError("bf16 autocast needs device cuda", param="amp")
    return torch.device("cpu" if kind == "cpu" else f"cuda:{local_rank}")


def _set_up(config: TrainConfig, data, out: Path, resume: bool) -> tuple[_Loop, bool]:
    """Check every input, then create the run folder, the network, EMA and optimizer (and resume)."""
    rank, world_size, local_rank = _dist_env()
    device = _resolve_device(config, local_rank)
    data = _load_data(data)
    plan, record, model = _record_and_model(config, data, out, world_size)
    has_state = _check_out(config, plan, record, out, resume)
    started_dist = world_size > 1 and not torch.distributed.is_initialized()
    if started_dist:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":  # exact float32, as EDM: no TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    memory_format = torch.channels_last if config.channels_last and len(data.shape) == 3 else torch.preserve_format
    images = torch.from_numpy(data.to_model()).to(device).contiguous(memory_format=memory_format)
    labels = torch.from_numpy(data.labels).to(device) if plan.num_classes else None
    model = model.to(device, memory_format=memory_format).train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = _make_optimizer(config, plan.lr_effective, model.parameters())
    forward = model
    if world_size > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        forward = torch.compile(forward)
    loop = _Loop(config, plan, record, out, data, rank, world_size, device, images, labels, model, ema, optimizer, forward,
                 LOSSES[config.precond](**precond_options(config), tikhonov=config.tikhonov), loss_acc=torch.zeros((), device=device, dtype=torch.float64))
    if has_state:
        _load_state(loop)
    _open_run_folder(loop, resume)
    loop.tick = (time.time(), loop.step)
    return loop, started_dist


def _make_optimizer(config: TrainConfig, lr: float, params):
    wd = config.weight_decay
    if config.optimizer == "adam":  # weight decay as plain L2 on the gradient (seed 001)
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


def _load_state(loop: _Loop) -> None:
    path = loop.out / STATE_FILE
    state = load_state(path, loop.device)
    try:
        loop.model.net.load_state_dict(state["net"])
        loop.ema.net.load_state_dict(state["ema"])
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.step = int(state["step"])
        loop.loss_acc, loop.steps_acc = state["loss_acc"].to(loop.device), int(state["steps_acc"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise InputError(f"{path}: does not fit this run's network ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]})", param="out") from None
    loop.last_saved = loop.step


def _open_run_folder(loop: _Loop, resume: bool) -> None:
    """Create the folder, drop what a killed run wrote after its last state, write config.json."""
    if loop.rank == 0:
        try:
            loop.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{loop.out}: cannot create the run folder ({err.strerror or err})", param="out") from None
        remove_stale_temporaries(loop.out)
        for name in (STATS_FILE, TRACK_FILE):
            if resume:
                truncate_jsonl(loop.out / name, loop.step)
            else:
                (loop.out / name).unlink(missing_ok=True)
        write_record(loop.out, loop.record)
    _barrier(loop.world_size)


# ---------------------------------------------------------------------------------------------
# The loop: step and maintenance.


def _run(loop: _Loop, progress: bool, log) -> None:
    total = loop.plan.total_steps
    bar = None
    if progress and loop.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=loop.step, unit="step", dynamic_ncols=True)
    try:
        while loop.step < total and loop.stopped is None:
            before = loop.step * loop.config.batch
            _step(loop)
            _maintain(loop, before, None if bar is not None else log)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _step(loop: _Loop) -> None:
    """One optimizer step on this process's slice of the global batch, then the EMA update."""
    config, plan, step = loop.config, loop.plan, loop.step
    B, seed = config.batch, config.seed
    b = B // loop.world_size
    # The global batch, its noise levels and noise: pure functions of (seed, step).
    idx = global_batch_indices(seed, step, B, plan.num_images)
    sigma, noise = loop.loss_fn.draw((B, *loop.images.shape[1:]), generator(derive_seed(seed, NOISE, step), loop.device),
                                loop.device)
    mine = slice(loop.rank * b, (loop.rank + 1) * b)
    idx = idx[mine].to(loop.device)
    y_labels = loop.labels[idx] if loop.labels is not None else None
    torch.manual_seed(derive_seed(seed, DROPOUT, step, loop.rank))  # any other randomness in the net

    loop.optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(loop.device.type, dtype=torch.bfloat16, enabled=config.amp)
    # Dropout masks of the whole global batch, this process's rows: W processes = one process.
    with autocast, global_batch_dropout(derive_seed(seed, DROPOUT, step), B, loop.rank * b):
        loss_sum = loop.loss_fn.weighted(loop.forward, loop.images[idx], y_labels, sigma[mine], noise[mine]).sum()
    (loss_sum / b).backward()  # DDP averages over processes: the mean over the global batch

    nimg = step * B
    loop.lr = learning_rate(nimg, plan.lr_effective, plan.lr_warmup_images)
    for group in loop.optimizer.param_groups:
        group["lr"] = loop.lr
    loop.optimizer.step()
    loop.beta = ema_beta(nimg, B, plan.ema_halflife_images, plan.ema_ramp, rate=config.ema_rate,
                         warmup_images=plan.ema_warmup_images)
    update_ema(loop.ema, loop.model, loop.beta)

    mean_loss = loss_sum.detach().double() / b
    if loop.world_size > 1:  # the mean over the global batch, the same on every process
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= loop.world_size
    loop.loss_acc += mean_loss  # stays on the device: no host sync per step
    loop.steps_acc += 1
    loop.step += 1


def _crossed(multiples_of_images: list[int], before: int, after: int) -> bool:
    return any(before < m <= after for m in multiples_of_images)


def _maintain(loop: _Loop, before: int, log) -> None:
    """After a step: the stats line, snapshot, memorization measurement and state that fall due."""
    config, plan = loop.config, loop.plan
    n, nimg = plan.num_images, loop.step * config.batch
    done = loop.step == plan.total_steps
    epoch = nimg // n
    every = config.track_every * n  # images between measurements (0: never)
    due_log = loop.step % config.log_every == 0 or done
    due_snapshot = _crossed([e * n for e in plan.snapshot_epochs], before, nimg) or done
    due_track = bool(every) and (nimg // every > before // every or done)
    due_snapshot = due_snapshot or (due_track and config.guard is not None)  # the guard keeps every measured net
    due_state = loop.step % config.checkpoint_every == 0 or done
    if not (due_log or due_snapshot or due_track or due_state):
        return
    _check_finite(loop)
    if due_log:
        _log_stats(loop, done)
    if due_snapshot and loop.rank == 0:
        save_snapshot(loop.out / snapshot_name(epoch), loop.ema.net, record=loop.record, step=loop.step, epoch=epoch)
    if due_track:
        result = None
        if loop.rank == 0:
            result = track_memorization(loop.ema, loop.data, loop.record, loop.device)
            append_jsonl(loop.out / TRACK_FILE, dict(epoch=epoch, step=loop.step, **result))
            if log is not None:
                log(f"epoch {epoch} step {loop.step}: memorization ratio {result['ratio']:.3f}")
        _barrier(loop.world_size)
        # None unless the guard tripped: then save the state and stop
        loop.stopped = guard_check(config.guard, result, step=loop.step, epoch=epoch, out=loop.out, rank=loop.rank,
                                   world_size=loop.world_size, device=loop.device)
    if due_state or loop.stopped is not None:
        _save_state(loop)


def _check_finite(loop: _Loop) -> None:
    """Stop, keeping the last good files, if the loss or any weight became NaN/Inf since the last check."""
    loss_ok = bool(torch.isfinite(loop.loss_acc))
    weights_ok = loss_ok and bool(torch.stack([p.isfinite().all() for p in loop.model.parameters()]).all())
    if not weights_ok:
        last = f"{loop.out / STATE_FILE} (step {loop.last_saved})" if loop.last_saved is not None else "none yet"
        raise TrainingDiverged(f"by step {loop.step}: the {'loss' if not loss_ok else 'weights'} became NaN or Inf; "
                               f"training stopped, nothing saved from it. Last good state: {last}")


def _log_stats(loop: _Loop, done: bool) -> None:
    now, (tick_time, tick_step) = time.time(), loop.tick
    pixels = math.prod(loop.images.shape[1:])
    nimg = loop.step * loop.config.batch
    if loop.rank == 0:
        append_jsonl(loop.out / STATS_FILE, dict(
            step=loop.step, epoch=nimg / loop.plan.num_images, nimg=nimg,
            loss=float(loop.loss_acc) / loop.steps_acc / pixels, lr=loop.lr, ema_beta=loop.beta,
            images_per_s=(loop.step - tick_step) * loop.config.batch / max(now - tick_time, 1e-9), time=now))
    loop.loss_acc.zero_()
    loop.steps_acc, loop.tick = 0, (now, loop.step)


def _save_state(loop: _Loop) -> None:
    if loop.rank == 0:
        save_state(loop.out / STATE_FILE, dict(
            net=loop.model.net.state_dict(), ema=loop.ema.net.state_dict(), optimizer=loop.optimizer.state_dict(),
            step=loop.step, loss_acc=loop.loss_acc.cpu(), steps_acc=loop.steps_acc))
    loop.last_saved = loop.step
    _barrier(loop.world_size)
