"""Dropout whose masks do not depend on how a global batch is split across processes.

``torch.nn.functional.dropout`` draws one mask for the local batch from the process's RNG, so W
data-parallel processes use other masks than one process on the same global batch, and training
results differ beyond float tolerance. Inside :func:`global_batch_dropout`, every dropout call
instead draws the mask of the *whole* global batch from one generator seeded by ``seed`` (calls
consume it in forward order, identically on every rank) and keeps the rows of this process. The
masks of image ``i`` are then the same whatever the number of processes. Outside the context this
is ordinary dropout.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F

_local = threading.local()


@contextlib.contextmanager
def global_batch_dropout(seed: int, global_batch: int, offset: int):
    """Draw dropout masks for ``global_batch`` rows from a generator seeded by ``seed``; this
    process's batch is rows ``offset, offset + 1, …`` of it."""
    _local.ctx = {"seed": int(seed), "batch": int(global_batch), "offset": int(offset), "generator": None}
    try:
        yield
    finally:
        _local.ctx = None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with global-batch masks inside :func:`global_batch_dropout`."""
    ctx = getattr(_local, "ctx", None)
    if not training or p == 0 or ctx is None:
        return F.dropout(x, p=p, training=training)
    if ctx["generator"] is None:
        ctx["generator"] = torch.Generator(device=x.device).manual_seed(ctx["seed"])
    u = torch.rand((ctx["batch"], *x.shape[1:]), generator=ctx["generator"], device=x.device)
    keep = u[ctx["offset"] : ctx["offset"] + len(x)] >= p
    return x * keep.to(x.dtype) / (1.0 - p)
