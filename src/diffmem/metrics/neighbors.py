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

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_MEMORY_LIMIT = 2 * 2**30  # bytes
_U32 = 2.0**-24  # unit roundoff of float32


@dataclass
class Neighbors:
    """Exact nearest neighbours of m query rows: ``dist[i, j]`` is the L2 distance from query ``i``
    to its (j+1)-th nearest reference row ``index[i, j]``, in the units of the data given (grey
    levels for uint8 sets). Among tied distances the order of the indices is unspecified."""

    dist: np.ndarray  # (m, k) float64, ascending along each row
    index: np.ndarray  # (m, k) int64
    n_fallback: int = 0  # rows whose float32 shortlist could not be certified (re-scanned exactly)


def _as_rows(a) -> np.ndarray | torch.Tensor:
    """Flatten (N, ...) to (N, d) without copying or changing dtype."""
    if isinstance(a, torch.Tensor):
        return a.reshape(len(a), -1)
    a = np.asarray(a)
    return a.reshape(len(a), -1)


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


def _exact_sq_dists(q: torch.Tensor, r: torch.Tensor, integer: bool) -> torch.Tensor:
    """Exact squared distances (float64) between each q row (b, d) and its own candidates r (b, K, d)."""
    if integer:
        # uint8: a difference squared is an integer ≤ 255² and a sum of 256 of them < 2^24, so float32
        # sums blocks of 256 exactly (in any order); float64 adds the block sums exactly.
        sq = r.to(torch.float32).sub_(q[:, None, :].to(torch.float32))
        sq.mul_(sq)
        if sq.shape[-1] % 256:
            sq = torch.nn.functional.pad(sq, (0, -sq.shape[-1] % 256))
        return sq.view(*sq.shape[:2], -1, 256).sum(-1).sum(-1, dtype=torch.float64)
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
    with _full_float32_matmul():  # the error bound assumes true float32 products (no TF32)
        return _knn(query, reference, k, candidates, memory_limit, device, progress)


@contextlib.contextmanager
def _full_float32_matmul():
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def score_error_factor(d: int) -> float:
    """The factor ``c`` of the rigorous float32 rounding-error bound of the shortlist scores.

    For rows ``q`` and ``r_j`` of length ``d`` (centred, float32), the computed
    ``‖q‖² + s_j`` with ``s_j = ‖r_j‖² - 2 q·r_j`` is within ``c·(‖q‖² + max_j ‖r_j‖²)`` of the true
    squared distance ``‖q - r_j‖²``: Higham's ``γ_{d+2}`` for each length-d sum (the dot product
    and the two norms), plus the roundings of centring and of the fused add, with
    ``|2 q·r| ≤ ‖q‖² + ‖r‖²``.
    """
    gamma = (d + 2) * _U32 / (1 - (d + 2) * _U32)
    return 2 * gamma + 8 * _U32


def float32_scores(q32: torch.Tensor, r32: torch.Tensor, r_norm: torch.Tensor) -> torch.Tensor:
    """(b, n) float32 scores ``s_j = ‖r_j‖² - 2 q·r_j`` of centred float32 rows, one ``addmm``."""
    return torch.addmm(r_norm.unsqueeze(0), q32, r32.T, beta=1.0, alpha=-2.0)


@dataclass
class _Plan:
    """What every query block shares: the (centred) reference, its norms and the search sizes."""

    r_all: object
    offset: torch.Tensor
    r32: torch.Tensor | None  # the whole centred reference when it fits in one block
    r_norm: torch.Tensor  # (n,) float32
    bn: int
    K: int
    k: int
    integer: bool
    c_err: float
    device: torch.device

    def block(self, j0: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.r32 is not None:
            return self.r32, self.r_norm
        return _centred(self.r_all[j0 : j0 + self.bn], self.offset), self.r_norm[j0 : j0 + self.bn]


def _knn(query, reference, k, candidates, memory_limit, device, progress) -> Neighbors:
    q_all, r_all = _as_rows(query), _as_rows(reference)
    m, d = q_all.shape
    n = r_all.shape[0]
    if r_all.shape[1] != d:
        raise ValueError(f"query rows have {d} values, reference rows {r_all.shape[1]}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    K = min(n, max(k + 1, candidates))
    # Centre both sets near the reference mean: distances are unchanged, norms (and so the float32
    # rounding error, which scales with them) shrink. Any offset is correct; a strided sample will do.
    offset = torch.as_tensor(_row_mean(r_all[:: max(1, n // 1024)]), dtype=torch.float32, device=device)
    bm, bn = _plan_chunks(m, n, d, K, memory_limit)
    if bn >= n:  # whole reference fits: convert it once
        r32 = _centred(r_all, offset)
        r_norm = _sq_norms(r32)
    else:
        r32 = None
        r_norm = torch.cat([_sq_norms(_centred(r_all[j : j + bn], offset)) for j in range(0, n, bn)])
    plan = _Plan(r_all, offset, r32, r_norm, bn, K, k, _is_uint8(q_all) and _is_uint8(r_all),
                 score_error_factor(d), device)

    dist = np.empty((m, k), dtype=np.float64)
    index = np.empty((m, k), dtype=np.int64)
    n_fallback = 0
    bar = tqdm(total=m, desc="nearest neighbours", unit="img", disable=not progress, leave=False)
    for i0 in range(0, m, bm):
        q_blk = q_all[i0 : i0 + bm]
        d_blk, i_blk, fallbacks = _search_block(q_blk, plan)
        dist[i0 : i0 + len(d_blk)] = np.sqrt(d_blk)
        index[i0 : i0 + len(d_blk)] = i_blk
        n_fallback += fallbacks
        bar.update(len(d_blk))
    bar.close()
    return Neighbors(dist=dist, index=index, n_fallback=n_fallback)


def _shortlist(q32: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """The K best float32 scores of each query row over the whole reference, sorted, on the CPU."""
    n = len(plan.r_norm)
    best_s = best_i = None
    for j0 in range(0, n, plan.bn):
        r_blk, rn_blk = plan.block(j0)
        s = float32_scores(q32, r_blk, rn_blk)
        s_top, i_top = torch.topk(s, min(plan.K, s.shape[1]), dim=1, largest=False, sorted=False)
        del s
        if best_s is None:
            best_s, best_i = s_top, i_top
        else:
            merged_s = torch.cat([best_s, s_top], dim=1)
            merged_i = torch.cat([best_i, i_top + j0], dim=1)
            best_s, pos = torch.topk(merged_s, plan.K, dim=1, largest=False, sorted=False)
            best_i = torch.gather(merged_i, 1, pos)
    best_s, order = torch.sort(best_s, dim=1)
    return best_s.cpu(), torch.gather(best_i, 1, order).cpu()


def _search_block(q_blk, plan: _Plan) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact k nearest (squared distances, indices) of one block of query rows, and the number of
    rows that needed a full exact scan.

    The shortlist is small (b × K): it is certified and re-checked on the CPU, whatever the device.
    Exact re-check, cheapest first: the k+1 best candidates, then the whole shortlist, then (rarely)
    the whole reference set. A level is certified when no row it did not measure exactly can be
    nearer than the exact k-th best: every such row has ŝ ≥ the largest ŝ measured, so a true
    squared distance ≥ ‖q‖² + that ŝ - slack.
    """
    k, K, n = plan.k, plan.K, len(plan.r_norm)
    q32 = _centred(q_blk, plan.offset)
    best_s, best_i = _shortlist(q32, plan)
    q_norm = _sq_norms(q32).double().cpu()
    slack = plan.c_err * (q_norm + float(plan.r_norm.max()))
    b = q32.shape[0]
    d_blk = np.empty((b, k))
    i_blk = np.empty((b, k), dtype=np.int64)
    todo = torch.arange(b)
    for c in sorted({min(K, k + 1), K}):
        cand = best_i[todo, :c]
        exact = _exact_candidates(q_blk[todo.numpy()], plan.r_all, cand, plan.integer)
        ex_sorted, pos = torch.sort(exact, dim=1, stable=True)
        bound = q_norm[todo] + best_s[todo, c - 1].double() - slack[todo]
        ok = (bound >= ex_sorted[:, k - 1]) if c < n else torch.ones(len(todo), dtype=torch.bool)
        rows = todo[ok].numpy()
        d_blk[rows] = ex_sorted[ok, :k].numpy()
        i_blk[rows] = torch.gather(cand, 1, pos)[ok, :k].numpy()
        todo = todo[~ok]
        if len(todo) == 0:
            break
    for row in todo.tolist():
        d_blk[row], i_blk[row] = _exact_scan(q_blk[row], plan.r_all, k, plan.integer, plan.device, plan.bn)
    return d_blk, i_blk, len(todo)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Row norms squared in float32 (a fused reduction: no (n, d) temporary). Rounding: within
    γ_d + 3u of ‖x‖², which the error bound in :func:`knn` allows for."""
    return torch.linalg.vector_norm(x, dim=1).square()


def _centred(a, offset: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` as float32 on ``offset``'s device, minus ``offset``."""
    return torch.as_tensor(a).to(device=offset.device, dtype=torch.float32, copy=True).sub_(offset)  # never the caller's


def _is_uint8(a) -> bool:
    return (a.dtype == torch.uint8) if isinstance(a, torch.Tensor) else (a.dtype == np.uint8)


def _row_mean(a) -> np.ndarray:
    """Per-column mean in float64 (of the rows given)."""
    a = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
    return a.mean(axis=0, dtype=np.float64)


def _exact_candidates(q_blk, r_all, cand: torch.Tensor, integer: bool) -> torch.Tensor:
    """Exact squared distances (float64, on the CPU) from each query row to its candidate rows."""
    b, K = cand.shape
    out = torch.empty((b, K), dtype=torch.float64)
    step = max(1, (32 * 2**20) // max(1, K * q_blk.shape[1] * 8))
    cand_cpu = cand.cpu()
    for s in range(0, b, step):
        idx = cand_cpu[s : s + step]
        rows = r_all[idx.flatten().numpy()] if isinstance(r_all, np.ndarray) else r_all[idx.flatten()].cpu()
        r = torch.as_tensor(rows).reshape(idx.shape[0], K, -1)
        q = torch.as_tensor(q_blk[s : s + step]).cpu()
        out[s : s + step] = _exact_sq_dists(q, r, integer)
    return out


def _exact_scan(q_row, r_all, k: int, integer: bool, device, bn: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest by a scan over the whole reference set (see :func:`_exact_sq_dists`)."""
    q = torch.as_tensor(np.asarray(q_row) if not isinstance(q_row, torch.Tensor) else q_row).to(device)
    dists = []
    step = max(1, min(bn, (256 * 2**20) // (8 * q.numel())))
    for j in range(0, len(r_all), step):
        r = torch.as_tensor(r_all[j : j + step]).to(device)
        dists.append(_exact_sq_dists(q[None], r[None], integer)[0])
    all_d = torch.cat(dists)
    order = torch.argsort(all_d, stable=True)[:k]
    return all_d[order].cpu().numpy(), order.cpu().numpy()
