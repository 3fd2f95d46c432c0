"""Memorization measured while a model trains: sample the EMA network, quantize, measure.

Seed 001 generates images at each snapshot, saves them as PNG (uint8) and reports the highest ratio
over a run's snapshots; :func:`track_memorization` does the same in memory, with the samples'
random streams fixed by the run's seed, so every measurement of a run uses the same latents.
Point clouds are measured unquantized (:func:`~diffmem.metrics.proximity.proximity`: the 1/3
ratio and the share of samples within its default tolerance of a training point).
:func:`guard_check` is the memorization guard's per-step test on that measurement
(``TrainConfig.guard``; choosing a snapshot afterwards is :mod:`diffmem.studies.guard`).
"""

from __future__ import annotations

import numpy as np
import torch

from diffmem.atomic import write_json
from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.data.points import PointCloud
from diffmem.metrics.memorization import memorization
from diffmem.metrics.proximity import proximity
from diffmem.rng import TRACK, derive_seed
from diffmem.runs import GUARD_FILE
from diffmem.sampling import sample


def track_memorization(D, data: ImageSet, record: dict, device, num: int | None = None) -> dict:
    """Sample ``num`` (default ``track_samples``) images with the EMA denoiser (Heun, 18 steps;
    labels cycled over the training labels), quantize them to uint8 as PNGs would be (seed 001)
    and measure their memorization ratio against the training set. Sample ``i`` always starts
    from the same latent, so a larger ``num`` extends a smaller one."""
    num = record["track_samples"] if num is None else num
    labels = torch.from_numpy(data.labels[np.arange(num) % len(data)]) if record["num_classes"] else None
    generated = sample(D, num, labels=labels, sampler="heun", steps=18, seed=derive_seed(record["seed"], TRACK),
                       device=device)
    if isinstance(data, PointCloud):  # points are never quantized; also the share within the tolerance
        near = proximity(data, generated.numpy(), device=str(device))
        return dict(ratio=near.ratio, ci95=list(near.ratio_ci95), fraction_within=near.fraction_within,
                    within_ci95=list(near.within_ci95), tolerance=near.tolerance, n_generated=num)
    result = memorization(data, to_uint8(generated.numpy()), device=str(device))
    return dict(ratio=result.ratio, ci95=[result.ci95[0], result.ci95[1]], stderr=result.stderr, n_generated=num)


def guard_check(guard: float | None, result: dict | None, *, step: int, epoch: int, out, rank: int = 0,
                world_size: int = 1, device=None) -> dict | None:
    """After a tracked measurement (``result`` on rank 0, None elsewhere): the stop record when the
    ratio exceeds ``guard`` (written to ``out/guard.json``), else None. Every process gets the same
    answer (rank 0's decision is broadcast)."""
    if guard is None:
        return None
    tripped = rank == 0 and result["ratio"] > guard
    if world_size > 1:
        flag = torch.tensor([float(tripped)], device=device)
        torch.distributed.broadcast(flag, 0)
        tripped = bool(flag.item())
    if not tripped:
        return None
    stop = dict(reason="guard", guard=guard, step=step, epoch=epoch,
                ratio=result["ratio"] if result else None, ci95=result["ci95"] if result else None,
                message=f"stopped by the guard at epoch {epoch} (step {step}): "
                        f"memorization ratio {result['ratio']:.3f} > {guard:g}" if result else "stopped by the guard")
    if rank == 0:
        write_json(out / GUARD_FILE, stop)
    return stop
