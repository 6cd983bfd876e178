"""Several T1w at once on one machine: a process pool sized by CPUs, threads per T1w and memory.

The options follow fMRIPrep's meaning: ``nprocs`` is the number of CPUs the whole run may use,
``omp_nthreads`` the threads one T1w uses (ANTs/ITK threads and torch's intra-op threads), so up to
``nprocs // omp_nthreads`` T1w run at once, each in its own worker process. ``mem_gb`` is a memory
budget: a T1w is not started while the ones running plus it would exceed it (its size is the
backend's measured peak, raised to the largest peak a worker has really reached).

Why processes and these defaults (``bench/parallel.py``): one T1w through the ANTs backend keeps a
second core busy only part of the time (numpy steps, I/O and model inference are mostly one thread),
so two single-thread T1w at once give more T1w per hour than one T1w on two threads. By default
every usable CPU is used, with one thread per T1w when there are at least as many T1w as CPUs, and
the CPUs shared out among the T1w when there are fewer; T1w that take only seconds (maps reused
with ``--preproc derivatives``) run one at a time on every CPU, since starting a worker (imports,
model loading) costs more than it saves there (bench/parallel.py --backend derivatives: 0.59x).

What the pool keeps from a sequential run:

* each worker builds its context (backend, model packages) once, with ``setup``, and reuses it for
  every T1w it gets; ``work(item, context)`` must be a module-level function that never raises
  (it records its own failures) -- an exception escaping it is turned into a failure by ``lost``;
* log records from the workers reach the parent's handlers through a queue; each T1w's own log is
  written by ``work`` in its worker, where only that T1w runs, so it holds its lines in order;
* results come back in the order of ``items``; progress lines name each T1w when it starts and ends;
* a worker that dies (killed, out of memory) breaks only the T1w it was running: the pool is
  restarted, T1w that were running beside it are retried once, and a T1w that takes a worker down
  twice gets a failure record from ``lost``;
* a worker whose parent died exits on its own (no orphans left computing after a kill).
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

from .errors import UsageError

__all__ = [
    "UNIT_MEMORY_GB",
    "ResourcePlan",
    "available_cpus",
    "available_memory_gb",
    "plan_resources",
    "set_threads",
    "run_units",
]

_log = logging.getLogger("bids_app.parallel")

T = TypeVar("T")
R = TypeVar("R")

#: Peak resident memory of one T1w per preprocessing backend, GB, whole worker process (imports,
#: backend, models loaded). ants: bench/preproc.py, 2.45 GB on the 2-core machine; derivatives with
#: the demo models: 1.24 GB (bench/parallel.py --backend derivatives, largest process); clinica: SPM25
#: standalone is not installable where this was measured -- 4 GB is an assumption, not a figure.
UNIT_MEMORY_GB: dict[str, float] = {"ants": 2.5, "clinica": 4.0, "derivatives": 1.3}
#: Peak of the full-size published models' inference (bench/inference.py: 2.24 GB), counted
#: instead of the backend's figure when it is larger (the stages run one after the other).
FULL_SIZE_MODELS_GB = 2.3
#: At most this many threads per T1w by default (ANTs scales poorly beyond).
MAX_DEFAULT_THREADS = 8


def available_cpus() -> int:
    """CPUs this process may run on (affinity / cgroup cpuset), not the machine's total."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cgroup_limit_gb() -> float:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text) / 1024**3
    return math.inf


def available_memory_gb() -> float:
    """Memory a run may plan with: ``MemAvailable`` (Linux), or the cgroup limit when lower."""
    avail = math.inf
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) / 1024**2
                break
    except OSError:
        pass
    avail = min(avail, _cgroup_limit_gb())
    if math.isinf(avail):
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
        except (ValueError, OSError, AttributeError):
            avail = 4.0
    return float(avail)


@dataclass(frozen=True)
class ResourcePlan:
    """How a participant-level run uses the machine (see module docstring)."""

    nprocs: int
    omp_nthreads: int
    mem_gb: float
    unit_mem_gb: float
    n_units: int

    @property
    def workers(self) -> int:
        """T1w run at once: CPUs / threads, no more than there are T1w and than memory allows."""
        by_memory = max(1, int(self.mem_gb // self.unit_mem_gb)) if self.unit_mem_gb > 0 else self.nprocs
        return max(1, min(self.nprocs // self.omp_nthreads, max(self.n_units, 1), by_memory))

    def describe(self) -> str:
        return (
            f"{self.workers} T1w at once x {self.omp_nthreads} thread(s) (--nprocs {self.nprocs}, "
            f"--omp-nthreads {self.omp_nthreads}; memory budget {self.mem_gb:.1f} GB, "
            f"about {self.unit_mem_gb:.1f} GB per T1w)"
        )


def plan_resources(
    n_units: int,
    *,
    nprocs: int | None = None,
    omp_nthreads: int | None = None,
    mem_gb: float | None = None,
    unit_mem_gb: float = 2.5,
    prefer_threads: bool = False,
) -> ResourcePlan:
    """Resolve the defaults of ``--nprocs``, ``--omp-nthreads`` and ``--mem-gb`` and check them.

    ``nprocs`` defaults to the usable CPUs, ``mem_gb`` to 90% of the available memory, and
    ``omp_nthreads`` to 1 when there are at least as many T1w as CPUs, otherwise to the CPUs
    shared out among the T1w (at most :data:`MAX_DEFAULT_THREADS`). With ``prefer_threads`` (T1w
    that take seconds, e.g. the ``derivatives`` backend: a worker's start-up, imports and model
    loading, costs more than it saves) the default is one T1w at a time on every CPU.
    """
    if nprocs is not None and nprocs < 1:
        raise UsageError(f"--nprocs must be at least 1; got {nprocs}")
    if omp_nthreads is not None and omp_nthreads < 1:
        raise UsageError(f"--omp-nthreads must be at least 1; got {omp_nthreads}")
    if mem_gb is not None and not mem_gb > 0:
        raise UsageError(f"--mem-gb must be a positive number of gigabytes; got {mem_gb}")
    nprocs = nprocs or available_cpus()
    if omp_nthreads is None and prefer_threads:
        omp_nthreads = nprocs
    elif omp_nthreads is None:
        omp_nthreads = max(1, min(MAX_DEFAULT_THREADS, nprocs // max(1, min(n_units, nprocs))))
    if omp_nthreads > nprocs:
        raise UsageError(f"--omp-nthreads {omp_nthreads} is more than --nprocs {nprocs} (the CPUs of the whole run)")
    mem_gb = mem_gb if mem_gb is not None else 0.9 * available_memory_gb()
    plan = ResourcePlan(nprocs=nprocs, omp_nthreads=omp_nthreads, mem_gb=float(mem_gb),
                        unit_mem_gb=float(unit_mem_gb), n_units=n_units)
    if unit_mem_gb > mem_gb:
        _log.warning("one T1w needs about %.1f GB, more than --mem-gb %.1f: running one at a time", unit_mem_gb, mem_gb)
    return plan


def set_threads(n: int) -> int:
    """Threads for everything of one T1w: ITK (ANTs), OpenMP/BLAS and torch. Returns torch's
    previous intra-op thread count (``-1`` when torch is not importable)."""
    n = max(1, int(n))
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return -1
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


# -- worker side -----------------------------------------------------------------------------
_CONTEXT: Any = None


def _watch_parent(parent: int) -> None:
    """Exit when the parent is gone (SIGKILL leaves the pool's workers behind otherwise)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(70)


def _init_worker(setup: Callable[[], Any], threads: int, queue: Any, parent: int) -> None:
    global _CONTEXT
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    root = logging.getLogger("bids_app")
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(logging.DEBUG)
    root.propagate = False
    set_threads(threads)
    _CONTEXT = setup()


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def _run_in_worker(work: Callable[[Any, Any], Any], item: Any) -> tuple[Any, float, int]:
    return work(item, _CONTEXT), _peak_rss_gb(), os.getpid()


class _Forward(logging.Handler):
    """Parent side of the log queue: a record from a worker goes to the logger it was made for."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if not logger.disabled:
            logger.handle(record)


@dataclass
class _Slot(Generic[T]):
    index: int
    item: T
    strikes: int = 0
    started: float = 0.0


def run_units(
    items: Sequence[T],
    work: Callable[[T, Any], R],
    *,
    plan: ResourcePlan,
    setup: Callable[[], Any],
    lost: Callable[[T, str], R],
    context: Any = None,
    label: Callable[[T], str] = str,
) -> list[R]:
    """Run ``work(item, context)`` for every item, at most ``plan.workers`` at once; results in
    the order of ``items``.

    With one worker everything runs in this process with ``context`` (built by ``setup`` when not
    given). Otherwise ``setup`` (picklable: a module-level function or a ``functools.partial`` of
    one, with plain arguments) builds each worker's context once. ``lost(item, reason)`` makes the
    result of an item whose worker died or whose ``work`` raised.
    """
    n = len(items)
    results: list[Any] = [None] * n
    if n == 0:
        return []
    if plan.workers <= 1:
        previous = set_threads(plan.omp_nthreads)
        try:
            ctx = context if context is not None else setup()
            for i, item in enumerate(items):
                _log.info("[%d/%d] %s (%d left after this one)", i + 1, n, label(item), n - i - 1)
                try:
                    results[i] = work(item, ctx)
                except Exception as exc:  # work() should not raise; if it does, the others still run
                    _log.exception("%s: %s", label(item), exc)
                    results[i] = lost(item, f"{type(exc).__name__}: {exc}")
        finally:
            if previous > 0:
                set_threads(previous)
        return results
    return _run_pool(items, work, plan, setup, lost, label, results)


def _run_pool(items, work, plan, setup, lost, label, results) -> list[Any]:
    mp = multiprocessing.get_context("spawn")  # no fork of a process holding torch / OpenMP threads
    queue = mp.Queue()
    listener = logging.handlers.QueueListener(queue, _Forward(), respect_handler_level=False)
    listener.start()
    pending = [_Slot(i, item) for i, item in enumerate(items)]
    pending.reverse()  # pop() from the end = first item first
    n, done, unit_gb = len(items), 0, plan.unit_mem_gb
    _log.info("running %s", plan.describe())
    try:
        while pending:
            running: dict[Future, _Slot] = {}
            pool = ProcessPoolExecutor(max_workers=plan.workers, mp_context=mp, initializer=_init_worker,
                                       initargs=(setup, plan.omp_nthreads, queue, os.getpid()))
            broken = False
            try:
                while pending or running:
                    while pending and len(running) < plan.workers and (
                        not running or (len(running) + 1) * unit_gb <= plan.mem_gb
                    ) and not _suspect_involved(pending[-1], running):
                        slot = pending.pop()
                        slot.started = time.perf_counter()
                        _log.info("[%d/%d] %s started (%d running, %d waiting)", slot.index + 1, n, label(slot.item),
                                  len(running) + 1, len(pending))
                        running[pool.submit(_run_in_worker, work, slot.item)] = slot
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        slot = running.pop(future)
                        try:
                            result, peak_gb, _ = future.result()
                        except BrokenProcessPool:
                            broken = True
                            running[future] = slot
                            break
                        except Exception as exc:  # work() raised (should not) or its result did not pickle
                            result, peak_gb = lost(slot.item, f"{type(exc).__name__}: {exc}"), 0.0
                        results[slot.index] = result
                        done += 1
                        if peak_gb > unit_gb:
                            _log.debug("a worker reached %.2f GB; planning with that from now on", peak_gb)
                            unit_gb = peak_gb
                        ok = getattr(result, "ok", None)
                        _log.info("[done %d/%d] %s %s in %.0f s", done, n, label(slot.item),
                                  "ok" if ok else ("FAILED" if ok is False else "finished"),
                                  time.perf_counter() - slot.started)
                    if broken:
                        break
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if broken:
                _requeue_after_crash(running, pending, results, lost, label)
                done = sum(r is not None for r in results)
    finally:
        listener.stop()
        queue.close()
    return results


def _suspect_involved(candidate: _Slot, running: dict[Future, _Slot]) -> bool:
    """Whether starting ``candidate`` now would run a suspect beside another T1w.

    A dead worker breaks the whole pool, so every T1w running at the time is a suspect. Each
    suspect is retried alone: a second death is then its own, and a T1w that merely ran beside the
    culprit is not failed with it.
    """
    return bool(running) and (candidate.strikes > 0 or any(s.strikes > 0 for s in running.values()))


def _requeue_after_crash(running, pending, results, lost, label) -> None:
    """A worker died: every T1w that was running is retried once, alone (see
    :func:`_suspect_involved`); a second strike is a failure."""
    for future, slot in running.items():
        if future.done() and not future.cancelled() and future.exception() is None:
            results[slot.index] = future.result()[0]
            continue
        slot.strikes += 1
        if slot.strikes >= 2:
            reason = ("the worker process running this T1w died twice (killed, e.g. out of memory? "
                      "try a lower --nprocs or a higher --mem-gb)")
            _log.error("%s: %s", label(slot.item), reason)
            results[slot.index] = lost(slot.item, reason)
        else:
            _log.warning("%s: a worker process died while this T1w ran; retrying it", label(slot.item))
            pending.append(slot)
