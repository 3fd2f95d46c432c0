"""Where a sweep's jobs run: a local pool of worker processes, or a Ray cluster.

Both take jobs ``(key, fn, args)`` (``fn`` a module-level function, so it pickles) and yield
``(key, result)`` as jobs finish, in any order. Each worker gets a thread budget (``threads``
torch/OpenMP threads); two one-thread workers use a 2-core machine best for small nets.

Failure handling, local: a worker killed mid-job (``kill -9``, out of memory) breaks the pool; the
engine starts a new pool and runs the unfinished jobs again, up to ``retries`` times each — jobs are
resumable (training resumes from its last state), so nothing finished is recomputed. Workers die
with the driver (``PR_SET_PDEATHSIG`` on Linux), so a killed sweep leaves no orphan still writing.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
from typing import Callable, Iterable, Iterator

from diffmem.errors import InputError, check_number

Job = tuple[str, Callable, tuple]


MAX_WORKERS = 1024  # processes (or threads per process) one command may ask for


def check_pool(workers: int, threads: int | None) -> tuple[int, int | None]:
    """``workers`` (≥ 1) and ``threads`` per worker (≥ 1, or None: :func:`default_threads`),
    validated; errors name the parameter."""
    workers = check_number("workers", workers, lo=1, hi=MAX_WORKERS, integer=True)
    if threads is not None:
        threads = check_number("threads", threads, lo=1, hi=MAX_WORKERS, integer=True)
    return workers, threads


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _worker_init(threads: int) -> None:
    """Thread budget, and die with the driver (Linux)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _call(fn: Callable, args: tuple, threads: int):
    """Run one job in a Ray worker with the thread budget (Ray reuses its worker processes)."""
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def run_local(jobs: Iterable[Job], *, workers: int, threads: int, retries: int = 2) -> Iterator[tuple[str, object]]:
    """Run ``jobs`` on ``workers`` spawned processes (one worker: here, in this process, with its
    thread budget); see the module docstring for failures."""
    if workers == 1:
        yield from _run_here(jobs, threads)
        return
    pending = {key: (fn, args) for key, fn, args in jobs}
    attempts = dict.fromkeys(pending, 0)
    context = multiprocessing.get_context("spawn")
    while pending:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                    initargs=(threads,)) as pool:
            futures = {pool.submit(fn, *args): key for key, (fn, args) in pending.items()}
            try:
                for future in cf.as_completed(futures):
                    key = futures[future]
                    result = future.result()  # an exception in the job itself propagates
                    del pending[key]
                    yield key, result
            except cf.process.BrokenProcessPool:
                for key in pending:
                    attempts[key] += 1
                    if attempts[key] > retries:
                        raise RuntimeError(f"job {key}: its worker died {attempts[key]} times; giving up") from None


def _run_here(jobs: Iterable[Job], threads: int) -> Iterator[tuple[str, object]]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for key, fn, args in jobs:
            yield key, fn(*args)
    finally:
        torch.set_num_threads(before)


def run_ray(jobs: Iterable[Job], *, workers: int, threads: int, gpus: float = 0.0,
            address: str | None = None) -> Iterator[tuple[str, object]]:
    """Run ``jobs`` as Ray tasks requesting ``threads`` CPUs (and ``gpus`` GPUs) each, on the cluster
    at ``address`` or on a local Ray instance with ``workers × threads`` CPUs."""
    try:
        import ray
    except ImportError:
        raise InputError("the ray engine needs Ray: pip install 'diffmem[ray]'", param="engine") from None
    started = not ray.is_initialized()
    if started:
        kwargs = dict(address=address) if address else dict(num_cpus=workers * threads)
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    try:
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=2)(_call)
        futures = {remote.remote(fn, args, threads): key for key, fn, args in jobs}
        waiting = list(futures)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            yield futures[done[0]], ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
