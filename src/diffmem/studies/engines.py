"""Where a study's jobs run: a local pool of worker processes, or a Ray cluster.

:class:`Engine` names the place (``local``, or ``ray`` with its ``address`` and GPUs per job) and
runs a study's jobs there (:meth:`Engine.run`); every study (sweep, EMM, timescales, two-split,
random features, regularization) takes one, with the same ``workers`` and ``threads``.

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
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from diffmem.progress import Progress
from diffmem.errors import InputError, check_number

Job = tuple[str, Callable, tuple]


MAX_WORKERS = 1024  # processes (or threads per process) one command may ask for
ENGINES = ("local", "ray")
SHARED_MARKER = ".diffmem-shared"  # written by the driver into the output folder, read by every Ray task


@dataclass(frozen=True)
class Engine:
    """Where jobs run: ``local`` (worker processes here) or ``ray`` (tasks on the cluster at
    ``address``, or on a local Ray instance; ``gpus`` per task). ``ray_logs``: let Ray's own log
    lines reach the terminal (off: only diffmem's lines and errors)."""

    kind: str = "local"
    address: str | None = None
    gpus: float = 0.0
    ray_logs: bool = False

    def __post_init__(self):
        if self.kind not in ENGINES:
            raise InputError(f"expected local or ray, got {self.kind!r}", param="engine")
        object.__setattr__(self, "gpus", check_number("gpus", self.gpus, lo=0))

    def run(self, jobs: list[Job], *, workers: int, threads: int | None = None, out=None,
            progress: bool = False, desc: str = "") -> Iterator[tuple[str, object]]:
        """Yield ``(key, result)`` of every job as it finishes. On Ray, ``out`` (the folder the jobs
        write into) must be storage that every node sees: each task first reads a marker the driver
        wrote there, and a node that cannot is refused in one line."""
        workers, threads = check_pool(workers, threads)
        threads = threads or default_threads(workers)
        if self.kind == "local":
            runner = run_local(jobs, workers=workers, threads=threads)
        else:
            runner = run_ray(jobs, workers=workers, threads=threads, gpus=self.gpus, address=self.address,
                             out=out, ray_logs=self.ray_logs)
        report = Progress(len(jobs), enabled=progress)  # a line on stderr as each job finishes, with an ETA
        for key, result in runner:
            report.done(f"{desc + ': ' if desc else ''}{key} finished")
            yield key, result


def as_engine(engine, *, address: str | None = None, gpus: float = 0.0) -> Engine:
    """An :class:`Engine` from itself or from its kind's name (``local``, ``ray``)."""
    if isinstance(engine, Engine):
        return engine
    return Engine(engine, address=address, gpus=gpus)


def write_marker(out: Path) -> tuple[str, str]:
    """Write a fresh token into ``out/.diffmem-shared`` (the driver, before any task): (path, token)."""
    from diffmem.atomic import write_text

    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    write_text(out / SHARED_MARKER, token + "\n")
    return str((out / SHARED_MARKER).resolve()), token


def check_marker(marker: tuple[str, str] | None) -> None:
    """In a task: the driver's marker must be readable here, with the driver's token."""
    if marker is None:
        return
    path, token = marker
    try:
        seen = Path(path).read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        raise SharedStorageError(f"node {socket.gethostname()} cannot see {Path(path).parent} (its "
                                 f"{SHARED_MARKER} is {'missing' if seen is None else 'another run'}'s): "
                                 f"--out must be storage every Ray node sees (a shared file system)")


class SharedStorageError(RuntimeError):
    """A Ray task's node does not see the driver's output folder."""


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


def _call(fn: Callable, args: tuple, threads: int, marker: tuple[str, str] | None = None):
    """Run one job in a Ray worker with the thread budget (Ray reuses its worker processes), once
    the driver's output folder is seen to be shared."""
    import torch

    check_marker(marker)
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


def run_ray(jobs: Iterable[Job], *, workers: int, threads: int, gpus: float = 0.0, address: str | None = None,
            out=None, ray_logs: bool = False) -> Iterator[tuple[str, object]]:
    """Run ``jobs`` as Ray tasks requesting ``threads`` CPUs (and ``gpus`` GPUs) each, on the cluster
    at ``address`` or on a local Ray instance with ``workers × threads`` CPUs. With ``out``, every
    task first checks that it sees the driver's marker there (:meth:`Engine.run`); the marker is
    removed when the jobs are done. Ray's own logs stay out of the terminal unless ``ray_logs``."""
    try:
        import ray
    except ImportError:
        raise InputError("the ray engine needs Ray: pip install 'diffmem[ray]'", param="engine") from None
    marker = None if out is None else write_marker(Path(out))
    with contextlib.ExitStack() as stack:
        if not ray_logs:
            stack.enter_context(_native_stderr_to(Path(tempfile.gettempdir()) / f"diffmem-ray-{os.getpid()}.log"))
        started = not ray.is_initialized()
        if started:
            kwargs = dict(address=address) if address else dict(num_cpus=workers * threads)
            ray.init(include_dashboard=False, log_to_driver=ray_logs, configure_logging=ray_logs,
                     logging_level=logging.INFO if ray_logs else logging.ERROR, **kwargs)
        try:
            remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=2)(_call)
            futures = {remote.remote(fn, args, threads, marker): key for key, fn, args in jobs}
            waiting = list(futures)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                yield futures[done[0]], _get(ray, done[0])
        finally:
            if marker is not None:
                Path(marker[0]).unlink(missing_ok=True)
            if started:
                ray.shutdown()


@contextlib.contextmanager
def _native_stderr_to(path: Path):
    """Send what Ray's C++ core writes to this process's stderr (file descriptor 2: its start-up notes,
    the raylet's state dumps when a node or worker dies) to ``path``; diffmem's own lines (Python's
    ``sys.stderr``) still reach the terminal. The workers' and raylet's logs stay in Ray's session
    folder (``/tmp/ray/session_latest/logs``) in any case. Ray's Python loggers keep only errors."""
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    terminal = os.dup(2)
    python_stderr = sys.stderr
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding or "utf-8",
                      errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)
        os.close(terminal)
        ray_logger.setLevel(level)


def _get(ray, ref):
    """A task's result; a node that cannot see the output folder becomes one line (InputError)."""
    try:
        return ray.get(ref)
    except SharedStorageError as err:  # Ray raises the task's own exception type (with RayTaskError)
        raise InputError(str(getattr(err, "cause", None) or err).splitlines()[-1], param="out") from None


def check_engine(engine, workers, threads, gpus, progress) -> None:
    """The pool keywords of :func:`run_sweep` and :func:`emm` (the engine and its GPUs are checked
    by :func:`~diffmem.studies.engines.as_engine`); errors name the parameter."""
    check_pool(workers, threads)
    if not isinstance(progress, bool):
        raise InputError(f"expected True or False, got {progress!r}", param="progress")
