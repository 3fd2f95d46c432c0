"""Exact k-nearest neighbours in pixel space (L2), fast and memory-bounded.

The work is GEMM-shaped: for a query row ``q`` and reference rows ``r_j``,

    ‖q - r_j‖² = ‖q‖² + ‖r_j‖² - 2 q·r_j,

and since ``‖q‖²`` is the same for every ``j`` the ranking only needs ``s_j = ‖r_j‖² - 2 q·r_j``,
one ``addmm`` per block. Blocks are reduced to a few candidates per query row in float32; the
candidates are then re-measured exactly in float64 (in integers when both sets are uint8), and the
float32 shortlist is *certified*: with a rigorous bound ``E`` on the float32 rounding error of
``s_j`` (Higham's ``γ_d`` bound for a length-``d`` dot product), any reference row left out of the
shortlist has true ``s_j ≥ s_K - E``. When that cannot beat the exact k-th best, the shortlist is
provably complete; when it can (near-ties, many duplicates), that row falls back to an exact float64
scan of the whole reference set. Results are therefore exact whatever the rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_MEMORY_LIMIT = 2 * 2**30  # bytes
_U32 = 2.0**-24  # unit roundoff of float32


@dataclass
class Neighbors:
    """Exact nearest neighbours: ``dist[i, k]`` is the L2 distance from query ``i`` to its (k+1)-th
    nearest reference row ``index[i, k]`` (float64, in the units of the data given)."""

    dist: np.ndarray
    index: np.ndarray
    n_fallback: int = 0  # rows whose float32 shortlist could not be certified (re-scanned exactly)


def _as_rows(a) -> np.ndarray | torch.Tensor:
    """Flatten (N, ...) to (N, d) without copying or changing dtype."""
    if isinstance(a, torch.Tensor):
        return a.reshape(len(a), -1)
    a = np.asarray(a)
    return a.reshape(len(a), -1)


def _to_tensor(a, device, dtype, offset=None) -> torch.Tensor:
    t = torch.as_tensor(a).to(device=device)
    t = t.to(dtype)
    if offset is not None:
        t = t - offset.to(dtype)
    return t


def _plan_chunks(m: int, n: int, d: int, candidates: int, memory_limit: int) -> tuple[int, int]:
    """Choose (query rows, reference rows) per block so the working set stays under the budget.

    Working set: reference block (bn·d float32) + query block (bm·d float32) + score block
    (bm·bn float32, plus as much again for top-k/merge temporaries) + exact re-check buffers.
    """
    budget = max(int(memory_limit * 0.8), 64 * 2**20)
    bn = n
    bm = min(m, 1024)
    while True:
        need = 4 * (bn * d + bm * d + 2 * bm * bn) + 8 * 64 * candidates * d * 3
        if need <= budget or (bm <= 64 and bn <= 1024):
            return max(bm, 1), max(bn, 1)
        if bn * d * 4 > budget // 2 and bn > 1024:
            bn = max(1024, bn // 2)
        elif bm > 64:
            bm = max(64, bm // 2)
        else:
            bn = max(1024, bn // 2)


def _exact_sq_dists(q: np.ndarray | torch.Tensor, r: torch.Tensor, integer: bool) -> torch.Tensor:
    """Exact squared distances between each q row (b, d) and its own candidates r (b, K, d)."""
    if integer:  # uint8 data: differences and their squares are exact in int64
        diff = r.to(torch.int64) - q.to(torch.int64)[:, None, :]
        return (diff * diff).sum(-1).to(torch.float64)
    diff = r.to(torch.float64) - q.to(torch.float64)[:, None, :]
    return (diff * diff).sum(-1)


def knn(
    query,
    reference,
    k: int = 2,
    *,
    candidates: int = 8,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Neighbors:
    """Exact ``k`` nearest reference rows for every query row, in L2.

    ``query`` (m, ...) and ``reference`` (n, ...) are numpy arrays or tensors of the same per-row
    size; uint8 sets are measured exactly in integers, anything else in float64. Memory stays within
    ``memory_limit`` bytes beyond the inputs themselves (uint8 inputs are converted block by block).
    """
    q_all, r_all = _as_rows(query), _as_rows(reference)
    m, d = q_all.shape
    n = r_all.shape[0]
    if r_all.shape[1] != d:
        raise ValueError(f"query rows have {d} values, reference rows {r_all.shape[1]}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    integer = _is_uint8(q_all) and _is_uint8(r_all)
    K = min(n, max(k + 1, candidates))

    # Centre both sets on the reference mean: distances are unchanged, norms (and so the float32
    # rounding error, which scales with them) shrink.
    offset = torch.as_tensor(np.asarray(_row_mean(r_all), dtype=np.float64))
    bm, bn = _plan_chunks(m, n, d, K, memory_limit)
    resident = bn >= n  # whole reference fits: convert it once
    if resident:
        r32 = _to_tensor(r_all, device, torch.float32, offset.to(device))
        r_norm = _row_sq_norms(r_all, offset).to(device)  # float64, exact-ish
        r_norm32 = r_norm.to(torch.float32)
        r_norm_max = float(r_norm.max())
    else:
        r_norm = torch.cat([_row_sq_norms(r_all[j : j + bn], offset) for j in range(0, n, bn)])
        r_norm_max = float(r_norm.max())

    # Rigorous float32 error bound on s_j = ‖r_j‖² - 2 q·r_j (Higham γ_d for the dot product, plus
    # rounding of the stored norm and of the fused add): |ŝ - s| ≤ c·(‖q‖² + ‖r‖²) with
    # |2 q·r| ≤ ‖q‖² + ‖r‖².
    gamma = (d + 2) * _U32 / (1 - (d + 2) * _U32)
    c_err = gamma + 4 * _U32

    dist = np.empty((m, k), dtype=np.float64)
    index = np.empty((m, k), dtype=np.int64)
    n_fallback = 0
    bar = tqdm(total=m, desc="nearest neighbours", unit="img", disable=not progress, leave=False)
    for i0 in range(0, m, bm):
        q_blk = q_all[i0 : i0 + bm]
        q32 = _to_tensor(q_blk, device, torch.float32, offset.to(device))
        b = q32.shape[0]
        best_s = torch.full((b, K), math.inf, device=device, dtype=torch.float32)
        best_i = torch.zeros((b, K), device=device, dtype=torch.int64)
        for j0 in range(0, n, bn):
            if resident:
                r_blk, rn_blk = r32, r_norm32
            else:
                r_blk = _to_tensor(r_all[j0 : j0 + bn], device, torch.float32, offset.to(device))
                rn_blk = r_norm[j0 : j0 + bn].to(device=device, dtype=torch.float32)
            s = torch.addmm(rn_blk.unsqueeze(0), q32, r_blk.T, beta=1.0, alpha=-2.0)
            kk = min(K, s.shape[1])
            s_top, i_top = torch.topk(s, kk, dim=1, largest=False, sorted=False)
            del s
            if j0 == 0 and kk == K:
                best_s, best_i = s_top, i_top
            else:
                merged_s = torch.cat([best_s, s_top], dim=1)
                merged_i = torch.cat([best_i, i_top + j0], dim=1)
                best_s, pos = torch.topk(merged_s, K, dim=1, largest=False, sorted=False)
                best_i = torch.gather(merged_i, 1, pos)
        # Exact re-check of the shortlist.
        q_norm = _row_sq_norms(q_blk, offset).to(device)
        exact = _exact_candidates(q_blk, r_all, best_i, integer, device)  # (b, K) float64 sq. dists
        order = torch.argsort(exact, dim=1, stable=True)
        exact_sorted = torch.gather(exact, 1, order)
        idx_sorted = torch.gather(best_i, 1, order)
        # Certify: every row outside the shortlist has s ≥ max(shortlist ŝ) - E, i.e. a true squared
        # distance ≥ ‖q‖² + max ŝ - E. It cannot displace the exact k-th best if that bound ≥ it.
        if K < n:
            err = c_err * (q_norm + r_norm_max)
            floor = q_norm + best_s.max(dim=1).values.to(torch.float64) - err
            ok = floor >= exact_sorted[:, k - 1]
        else:
            ok = torch.ones(b, dtype=torch.bool, device=device)
        d_blk = exact_sorted[:, :k].cpu().numpy()
        i_blk = idx_sorted[:, :k].cpu().numpy()
        for row in torch.nonzero(~ok).flatten().tolist():
            d_blk[row], i_blk[row] = _exact_scan(q_blk[row], r_all, k, integer, device, bn)
            n_fallback += 1
        dist[i0 : i0 + b] = np.sqrt(d_blk)
        index[i0 : i0 + b] = i_blk
        bar.update(b)
    bar.close()
    return Neighbors(dist=dist, index=index, n_fallback=n_fallback)


def _is_uint8(a) -> bool:
    return (a.dtype == torch.uint8) if isinstance(a, torch.Tensor) else (a.dtype == np.uint8)


def _row_mean(a) -> np.ndarray:
    """Per-column mean in float64, accumulated in blocks (no full float64 copy)."""
    total = np.zeros(a.shape[1], dtype=np.float64)
    for j in range(0, len(a), 4096):
        blk = a[j : j + 4096]
        blk = blk.cpu().numpy() if isinstance(blk, torch.Tensor) else blk
        total += blk.sum(axis=0, dtype=np.float64)
    return total / len(a)


def _row_sq_norms(a, offset: torch.Tensor) -> torch.Tensor:
    """‖a_i - offset‖² in float64, on the CPU, block by block."""
    out = []
    for j in range(0, len(a), 4096):
        blk = torch.as_tensor(a[j : j + 4096]).cpu().to(torch.float64) - offset
        out.append((blk * blk).sum(1))
    return torch.cat(out)


def _exact_candidates(q_blk, r_all, cand: torch.Tensor, integer: bool, device) -> torch.Tensor:
    """Exact squared distances from each query row to its candidate reference rows."""
    b, K = cand.shape
    out = torch.empty((b, K), dtype=torch.float64, device=device)
    step = max(1, (64 * 2**20) // max(1, K * q_blk.shape[1] * 8))
    cand_cpu = cand.cpu()
    for s in range(0, b, step):
        idx = cand_cpu[s : s + step]
        rows = r_all[idx.flatten().numpy()] if isinstance(r_all, np.ndarray) else r_all[idx.flatten()]
        r = torch.as_tensor(rows).to(device).reshape(idx.shape[0], K, -1)
        q = torch.as_tensor(q_blk[s : s + step]).to(device)
        out[s : s + step] = _exact_sq_dists(q, r, integer)
    return out


def _exact_scan(q_row, r_all, k: int, integer: bool, device, bn: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest by a float64 (or int64) scan over the whole reference set."""
    q = torch.as_tensor(np.asarray(q_row) if not isinstance(q_row, torch.Tensor) else q_row).to(device)
    dists = []
    step = max(1, min(bn, (256 * 2**20) // (8 * q.numel())))
    for j in range(0, len(r_all), step):
        r = torch.as_tensor(r_all[j : j + step]).to(device)
        dists.append(_exact_sq_dists(q[None], r[None], integer)[0])
    all_d = torch.cat(dists)
    order = torch.argsort(all_d, stable=True)[:k]
    return all_d[order].cpu().numpy(), order.cpu().numpy()
