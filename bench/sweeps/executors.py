"""Where a sweep's cells run: the Executor interface and its local and Ray implementations.

An executor takes the cells a sweep still has to run and yields one CellRecord per cell, in the
order they finish. It never raises for a failed cell: a cell whose worker died or whose task
failed comes back as an `error` (or `oom`) record built with seqbench.cell.train.new_record/failed, so the
sweep stores it and goes on. It does not touch the store: the driver (seqbench.sweeps.spec.run_sweep)
saves every record as it arrives, so whichever backend ran a cell, the results land in the same
store with the same key, and an interrupted sweep loses only the cells in flight.

run(cells, acquire) calls acquire(cfg) just before it starts a cell and skips the cell where it
returns False: the driver claims cells there, so several drivers on one store share its cells
(seqbench.sweeps.claims). An interrupt (KeyboardInterrupt or another BaseException raised in the
driver, as seqbench sweep's SIGTERM/SIGINT handler does, or closing the generator) stops the cells in
flight and the processes running them before it propagates, so nothing is left running.

Backends:

* LocalExecutor(workers, threads): this machine. workers == 1 (or a single cell) runs in this
  process; otherwise a spawn-started process pool with at most `workers` cells in flight, each
  worker with `threads` torch threads. CUDA cells: worker i is pinned to visible GPU i mod n
  (seqbench.sweeps.packing.slots), so workers = N x GPUs runs N cells on each GPU at once.
* RayExecutor(address, threads, cells_per_gpu=N): each cell is a Ray task asking for
  num_cpus=threads and, for CUDA cells, num_gpus=1/N; a local Ray instance, or a running cluster
  at `address`.

Cells sharing memory (several on one GPU, or several workers on one machine's RAM): a cell that
runs out of memory while sharing it (status `oom`, or a cuBLAS/cuDNN/cuFFT allocation failure)
is not recorded yet: once the other cells are done it runs again alone (locally: one worker per
GPU; Ray: num_gpus=1), and its record keeps the shared run's failure in `attempts` (its error
ends with a line saying how many cells shared the device). Its neighbours are separate processes
and are not touched; the worker that ran it frees what the cell held (garbage collection and,
on CUDA, the allocator's cache, after every cell) and goes on with the next cell. Each CUDA
record's env says how many cells could share its GPU (`cells_per_gpu`, 1: the GPU to itself):
its tokens/s is that of a cell sharing the GPU, not of a cell alone on it.

Another backend (Slurm through submitit, say) is one more subclass: implement run() so that it
submits cells (submitit's AutoExecutor(...).submit(run_cell, cfg) per cell, or a job array),
yields each finished job's record (job.result()), turns a failed or cancelled job into
failed(new_record(cfg), exc), and keeps self._running current for progress displays.
"""
from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from seqbench.cell.config import CellConfig
from seqbench.cell.record import CellRecord
from seqbench.cell.train import failed, new_record, run_cell
from seqbench.env import usable_cores
from seqbench.strict import ConfigError, check_choice, require
from seqbench.sweeps.packing import Slot, slots

EXECUTORS = ("local", "ray")
Acquire = Callable[[CellConfig], bool]


class Executor(ABC):
    """Runs cells and yields their records as they complete (see the module docstring)."""

    name = ""
    threads = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, tuple[CellConfig, float]] = {}

    @abstractmethod
    def run(self, cells: Sequence[CellConfig], acquire: Acquire | None = None
            ) -> Iterator[CellRecord]:
        """Run every cell once (those acquire(cfg), called just before a cell starts, accepts);
        yield one record per cell run as each finishes. Never raises for a failed cell (it
        becomes a record); an interrupt (KeyboardInterrupt, closing the generator) stops the
        cells in flight and their processes."""

    def running(self) -> list[tuple[CellConfig, float]]:
        """The cells in flight now with their start time (time.monotonic()), oldest first; safe to
        call from another thread (a progress display)."""
        with self._lock:
            return sorted(self._running.values(), key=lambda item: item[1])

    def describe(self) -> dict[str, Any]:
        """What to store in the sweep's env.json about how its cells were run."""
        return {"executor": self.name, "threads": self.threads}

    def measure_threads(self) -> int:
        """Threads for the measurement points, which run afterwards in the driver process."""
        return usable_cores()

    def _started(self, cfg: CellConfig) -> None:
        with self._lock:
            self._running[cfg.key()] = (cfg, time.monotonic())

    def _finished(self, cfg: CellConfig) -> None:
        with self._lock:
            self._running.pop(cfg.key(), None)


OOM_HOOK_ENV = "SEQBENCH_TEST_OOM_SHARED"
# errors of CUDA libraries that failed to allocate: out of memory, though not torch's OOM type
ALLOC_FAILED = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUFFT_ALLOC_FAILED")
_slot = Slot(None, 1)  # this process's slot: set in pool workers by _init_worker


def _oom_hook(cfg: CellConfig, sharing: int) -> None:
    """TEST-ONLY: with SEQBENCH_TEST_OOM_SHARED=MODEL[,MODEL] a cell of those families runs out
    of memory at its start while its worker shares memory with others (sharing > 1), as if its
    neighbours held what it needs; alone it runs normally. The tests check OOM isolation on a CPU
    with it."""
    names = os.environ.get(OOM_HOOK_ENV, "")
    if sharing > 1 and cfg.model in names.split(","):
        raise torch.OutOfMemoryError(f"out of memory (TEST-ONLY {OOM_HOOK_ENV}): tried to "
                                     f"allocate what {sharing - 1} neighbour(s) hold")


def run_here(cfg: CellConfig, sharing: int) -> CellRecord:
    """Run a cell in this process, sharing its device with `sharing` cells in all: run_cell, with
    anything it lets escape (it should not) turned into an error record, the sharing noted in a
    CUDA record's env, and the memory the cell held released for the next one."""
    try:
        _oom_hook(cfg, sharing)
        record = run_cell(cfg)
    except Exception as exc:  # noqa: BLE001 - a failure becomes a record, never a crash
        record = failed(new_record(cfg), exc)
    if cfg.device == "cuda":
        record.env["cells_per_gpu"] = sharing
    gc.collect()  # whatever the cell left in reference cycles (a traceback holds tensors)
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # cached blocks a neighbour on this GPU may need
    return record


def _worker_cell(cfg: CellConfig) -> tuple[CellRecord, int]:
    """A pool worker's task: the cell's record and how many cells shared its device."""
    return run_here(cfg, _slot.sharing), _slot.sharing


def out_of_memory(record: CellRecord) -> bool:
    """Whether a record failed for lack of memory."""
    return record.status == "oom" or (record.status == "error" and any(
        marker in (record.error or "") for marker in ALLOC_FAILED))


def shared_attempt(record: CellRecord, sharing: int) -> dict:
    """A failure while sharing memory, as an entry of the record of the rerun alone."""
    where = "GPU" if record.config.get("device") == "cuda" else "machine's memory"
    note = f"(out of memory with {sharing} cells sharing the {where}; run again alone)"
    return {"status": record.status, "error": f"{(record.error or '').strip()}\n{note}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _init_worker(threads: int, places=None) -> None:
    """Torch threads, and this worker's slot taken from the queue: its GPU is set before CUDA is
    initialised in the worker, so the device it sees as cuda:0 is its own."""
    global _slot
    if places is not None:
        _slot = places.get(timeout=60)
        if _slot.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = _slot.gpu
    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_pool_worker(threads: int, places, driver: int) -> None:
    """Pool initializer: _init_worker, and the worker's tie to its driver. The driver alone
    decides when cells stop (a Ctrl-C reaches the whole process group, so workers ignore SIGINT
    and the driver stops them), and on Linux a worker is killed when its driver dies, however it
    dies (PR_SET_PDEATHSIG: even SIGKILL of the driver leaves no worker computing for nobody)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != driver:  # the driver died before the tie was made
        os._exit(1)
    _init_worker(threads, places)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel queued cells, end the workers (SIGTERM, then SIGKILL after 5 s) and
    wait for them, so none outlives the driver's interruption. (ProcessPoolExecutor has no public
    way to end running workers before Python 3.14's terminate_workers.)"""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        process.terminate()
    deadline = time.monotonic() + 5
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


class LocalExecutor(Executor):
    """Cells on this machine: in this process when workers == 1 (or one cell is left), else in a
    spawn-started process pool (fork would copy torch's thread pools and locks), at most `workers`
    cells in flight, each worker with `threads` torch threads.

    GPUs: for CUDA cells each pool worker is pinned to one visible GPU (CUDA_VISIBLE_DEVICES, or
    0..n-1): the pool's initializer takes the worker's slot (seqbench.sweeps.packing.slots: GPU
    i mod n for worker i) from a queue and sets CUDA_VISIBLE_DEVICES to it before the worker
    touches CUDA. So workers = N x GPUs (the CLI's default, N from --cells-per-gpu) runs N cells
    on each GPU at once.

    A worker that dies (the kernel's OOM killer, a segfault, a stray signal) breaks the whole pool.
    The cells that were in flight are then run again one at a time, each in a fresh single-worker
    pool, so only a cell that kills its worker again, alone, gets an `error` record; the others
    (and a cell whose worker was killed from outside) are unaffected, and a fresh pool takes the
    rest. A cell that runs out of memory while sharing it runs again alone once the other cells
    are done (module docstring): then one worker per GPU (one on the CPU), each in a fresh pool.
    """

    name = "local"

    def __init__(self, workers: int = 1, threads: int = 1):
        super().__init__()
        require(workers >= 1, "--workers", f"must be >= 1, got {workers}")
        require(threads >= 1, "--threads", f"must be >= 1, got {threads}")
        self.workers, self.threads = workers, threads
        self.cells_per_gpu: int | None = None  # the most cells sharing a GPU (CUDA runs)
        self._alone: deque = deque()  # cells that ran out of memory while sharing it
        self._shared_failures: dict[str, dict] = {}  # their failures, by key

    def describe(self) -> dict[str, Any]:
        out = super().describe() | {"workers": self.workers}
        return out | ({"cells_per_gpu": self.cells_per_gpu} if self.cells_per_gpu else {})

    def measure_threads(self) -> int:
        return self.workers * self.threads

    def run(self, cells: Sequence[CellConfig], acquire: Acquire | None = None
            ) -> Iterator[CellRecord]:
        pending = deque(cells)
        workers = min(self.workers, len(pending))
        cuda = any(c.device == "cuda" for c in pending)
        gpus = visible_gpus() if cuda else []
        if cuda:
            self.cells_per_gpu = (max(slot.sharing for slot in slots(workers, gpus))
                                  if workers > 1 and gpus else 1)
        self._alone, self._shared_failures = deque(), {}
        if workers <= 1:
            _init_worker(self.threads)
            while pending:
                cfg = pending.popleft()
                if acquire is not None and not acquire(cfg):
                    continue
                self._started(cfg)
                try:
                    record = run_here(cfg, 1)
                finally:
                    self._finished(cfg)
                yield record
            return
        while pending:
            suspects = yield from self._pool(pending, min(workers, len(pending)), gpus, acquire)
            for cfg in suspects:  # in flight when a worker died: which one killed it?
                if not (yield from self._pool(deque([cfg]), 1, gpus, None)):  # still acquired
                    continue  # ran fine alone
                yield failed(new_record(cfg), BrokenProcessPool(
                    "the worker process running this cell died: killed from outside (the "
                    "kernel's OOM killer, a signal) or crashed"))
            if not pending and self._alone:  # the others are done: each alone on its device
                pending, self._alone = self._alone, deque()
                workers, acquire = max(1, len(gpus)), None  # still claimed by this driver

    def _pool(self, pending: deque, workers: int, gpus: list[str], acquire: Acquire | None):
        """Run cells from pending in a fresh pool until it is empty (returns []) or the pool breaks
        (returns the cells that were in flight; the rest stay in pending). A cell that ran out of
        memory while sharing it goes to self._alone instead of being yielded. An exception thrown
        into it (an interrupt) or closing it stops the workers first (_stop_pool)."""
        ctx = multiprocessing.get_context("spawn")
        places = ctx.Queue()
        for slot in slots(workers, gpus):
            places.put(slot)
        inflight: dict[Any, CellConfig] = {}
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker,
                                 initargs=(self.threads, places, os.getpid())) as pool:
            try:
                while pending or inflight:
                    while pending and len(inflight) < workers:
                        cfg = pending.popleft()
                        if acquire is not None and not acquire(cfg):
                            continue
                        try:
                            future = pool.submit(_worker_cell, cfg)
                        except BrokenProcessPool:
                            pending.appendleft(cfg)
                            return self._broken(inflight)
                        inflight[future] = cfg
                        self._started(cfg)
                    if not inflight:  # every remaining cell was claimed elsewhere
                        break
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    broken = False
                    for future in done:
                        sharing = 1
                        try:
                            record, sharing = future.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        except Exception as exc:  # noqa: BLE001 - e.g. a record that won't pickle
                            record = failed(new_record(inflight[future]), exc)
                        cfg = inflight.pop(future)
                        self._finished(cfg)
                        if sharing > 1 and out_of_memory(record):
                            self._shared_failures[cfg.key()] = shared_attempt(record, sharing)
                            self._alone.append(cfg)
                            continue
                        earlier = self._shared_failures.pop(cfg.key(), None)
                        if earlier is not None:
                            record.attempts = [earlier, *record.attempts]
                        yield record
                    if broken:
                        return self._broken(inflight)
            except BaseException:
                _stop_pool(pool)
                raise
            finally:
                for cfg in inflight.values():
                    self._finished(cfg)
        return []

    def _broken(self, inflight: dict) -> list[CellConfig]:
        suspects = list(inflight.values())
        for cfg in suspects:
            self._finished(cfg)
        inflight.clear()
        return suspects


def _ray_cell(config: dict, threads: int, sharing: int = 1) -> dict:
    """A Ray task: one cell from its config mapping (run_here, sharing its GPU with `sharing`
    cells), returned as a record mapping (plain data, so the driver re-checks the key against its
    own code: a worker with another task version fails loudly instead of storing a mislabelled
    record)."""
    torch.set_num_threads(threads)
    return run_here(CellConfig.from_dict(config), sharing).to_dict()


class RayExecutor(Executor):
    """Each cell is a Ray task with num_cpus=threads and, for CUDA cells, num_gpus=1/cells_per_gpu
    (Ray then sets CUDA_VISIBLE_DEVICES for the task and runs up to cells_per_gpu such tasks on a
    GPU). The driver keeps at most `max_in_flight` cells submitted (default: what the cluster
    holds at the start, CPUs // threads, or its GPUs x cells_per_gpu for CUDA cells; give more
    for an autoscaling cluster), so the cells in flight are the ones running. A CUDA cell that
    runs out of memory while sharing its GPU is submitted again with num_gpus=1 (a GPU to itself).

    address None starts a local Ray instance for the sweep (and shuts it down afterwards); "auto"
    or "ray://host:10001" joins a running cluster, whose nodes need seqbench installed at the same
    version (a record whose key does not match the driver's code becomes an `error` record). If
    Ray is already initialised in this process, that instance is used and left running. A task
    whose worker dies is retried `retries` times by Ray, then becomes an `error` record.
    """

    name = "ray"

    def __init__(self, address: str | None = None, threads: int = 1,
                 max_in_flight: int | None = None, retries: int = 1, cells_per_gpu: int = 1):
        super().__init__()
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--executor: ray is not installed; install seqbench[ray] "
                "(pip install 'seqbench[ray]')") from None
        require(threads >= 1, "--threads", f"must be >= 1, got {threads}")
        require(max_in_flight is None or max_in_flight >= 1, "--workers",
                f"must be >= 1, got {max_in_flight}")
        require(cells_per_gpu >= 1, "--cells-per-gpu", f"must be >= 1, got {cells_per_gpu}")
        self._ray = ray
        self.address, self.threads = address, threads
        self.max_in_flight, self.retries = max_in_flight, retries
        self.cells_per_gpu = cells_per_gpu

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"address": self.address, "cells_per_gpu": self.cells_per_gpu}

    def _capacity(self, cuda: bool) -> int:
        if self.max_in_flight:
            return self.max_in_flight
        resources = self._ray.cluster_resources()
        if cuda:
            gpus = int(resources.get("GPU", 0))
            require(gpus >= 1, "--executor", "the Ray cluster has no GPU for these CUDA cells "
                    "(give --workers N to queue N cells anyway, e.g. for an autoscaling cluster)")
            return gpus * self.cells_per_gpu
        return max(1, int(resources.get("CPU", 1) // self.threads))

    def run(self, cells: Sequence[CellConfig], acquire: Acquire | None = None
            ) -> Iterator[CellRecord]:
        if not cells:
            return
        ray = self._ray
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False)
        inflight: dict[Any, tuple[CellConfig, int]] = {}
        earlier: dict[str, dict] = {}  # failures while sharing a GPU, by key
        try:
            task = ray.remote(_ray_cell)

            def submit(cfg: CellConfig, sharing: int) -> None:
                ref = task.options(
                    num_cpus=self.threads,
                    num_gpus=1 / sharing if cfg.device == "cuda" else 0,
                    max_retries=self.retries,
                ).remote(cfg.to_dict(), self.threads, sharing)
                inflight[ref] = (cfg, sharing)
                self._started(cfg)

            pending = deque(cells)
            limit = self._capacity(any(c.device == "cuda" for c in pending))
            while pending or inflight:
                while pending and len(inflight) < limit:
                    cfg = pending.popleft()
                    if acquire is not None and not acquire(cfg):
                        continue
                    submit(cfg, self.cells_per_gpu if cfg.device == "cuda" else 1)
                if not inflight:
                    break
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                cfg, sharing = inflight.pop(ref)
                self._finished(cfg)
                try:
                    record = CellRecord.from_dict(ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - worker died, task error, version skew
                    record = failed(new_record(cfg), exc)
                if sharing > 1 and out_of_memory(record):
                    earlier[cfg.key()] = shared_attempt(record, sharing)
                    submit(cfg, 1)
                    continue
                if cfg.key() in earlier:
                    record.attempts = [earlier.pop(cfg.key()), *record.attempts]
                yield record
        finally:
            for ref, (cfg, _) in inflight.items():
                ray.cancel(ref, force=True)
                self._finished(cfg)
            if started:
                ray.shutdown()


def make_executor(kind: str, *, workers: int, threads: int, address: str | None = None,
                  max_in_flight: int | None = None, cells_per_gpu: int = 1) -> Executor:
    """The CLI's --executor: local (workers x threads; workers = cells per GPU x GPUs on CUDA) or
    ray (address, threads, cells_per_gpu)."""
    check_choice("--executor", kind, EXECUTORS)
    if kind == "local":
        require(address is None, "--address", "only with --executor ray")
        return LocalExecutor(workers, threads)
    return RayExecutor(address, threads, max_in_flight=max_in_flight, cells_per_gpu=cells_per_gpu)
