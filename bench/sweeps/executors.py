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
  worker with `threads` torch threads. CUDA cells with several visible GPUs get one GPU per worker
  (see LocalExecutor).
* RayExecutor(address, threads): each cell is a Ray task asking for num_cpus=threads and, for
  CUDA cells, num_gpus=1; a local Ray instance, or a running cluster at `address`.

Another backend (Slurm through submitit, say) is one more subclass: implement run() so that it
submits cells (submitit's AutoExecutor(...).submit(run_cell, cfg) per cell, or a job array),
yields each finished job's record (job.result()), turns a failed or cancelled job into
failed(new_record(cfg), exc), and keeps self._running current for progress displays.
"""
from __future__ import annotations

import ctypes
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
from seqbench.strict import ConfigError, check_choice, require

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
        return max(1, len(os.sched_getaffinity(0)))

    def _started(self, cfg: CellConfig) -> None:
        with self._lock:
            self._running[cfg.key()] = (cfg, time.monotonic())

    def _finished(self, cfg: CellConfig) -> None:
        with self._lock:
            self._running.pop(cfg.key(), None)


def _guarded(cfg: CellConfig) -> CellRecord:
    """run_cell, with anything it lets escape (it should not) turned into an error record."""
    try:
        return run_cell(cfg)
    except Exception as exc:  # noqa: BLE001 - a failure becomes a record, never a crash
        return failed(new_record(cfg), exc)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _init_worker(threads: int, gpus=None) -> None:
    """Torch threads, and this worker's GPU taken from the queue (before CUDA is initialised in
    the worker, so the device it sees as cuda:0 is its own)."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get(timeout=60)
    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_pool_worker(threads: int, gpus, driver: int) -> None:
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
    _init_worker(threads, gpus)


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

    GPUs: when the cells run on CUDA and more than one GPU is visible, each pool worker gets its
    own: the pool's initializer takes one entry of the visible list (CUDA_VISIBLE_DEVICES, or
    0..n-1) from a queue filled with gpus[i % n] for worker i, and sets CUDA_VISIBLE_DEVICES to it
    before the worker touches CUDA. So workers == number of GPUs (the CLI's default on CUDA) runs
    one cell per GPU; more workers than GPUs share them round-robin.

    A worker that dies (the kernel's OOM killer, a segfault, a stray signal) breaks the whole pool.
    The cells that were in flight are then run again one at a time, each in a fresh single-worker
    pool, so only a cell that kills its worker again, alone, gets an `error` record; the others
    (and a cell whose worker was killed from outside) are unaffected, and a fresh pool takes the
    rest.
    """

    name = "local"

    def __init__(self, workers: int = 1, threads: int = 1):
        super().__init__()
        require(workers >= 1, "--workers", f"must be >= 1, got {workers}")
        require(threads >= 1, "--threads", f"must be >= 1, got {threads}")
        self.workers, self.threads = workers, threads

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"workers": self.workers}

    def measure_threads(self) -> int:
        return self.workers * self.threads

    def run(self, cells: Sequence[CellConfig], acquire: Acquire | None = None
            ) -> Iterator[CellRecord]:
        pending = deque(cells)
        workers = min(self.workers, len(pending))
        if workers <= 1:
            _init_worker(self.threads)
            while pending:
                cfg = pending.popleft()
                if acquire is not None and not acquire(cfg):
                    continue
                self._started(cfg)
                try:
                    record = _guarded(cfg)
                finally:
                    self._finished(cfg)
                yield record
            return
        gpus = (visible_gpus() if any(c.device == "cuda" for c in pending) else [])
        while pending:
            suspects = yield from self._pool(pending, min(workers, len(pending)), gpus, acquire)
            for cfg in suspects:  # in flight when a worker died: which one killed it?
                if not (yield from self._pool(deque([cfg]), 1, gpus, None)):  # still acquired
                    continue  # ran fine alone
                yield failed(new_record(cfg), BrokenProcessPool(
                    "the worker process running this cell died: killed from outside (the "
                    "kernel's OOM killer, a signal) or crashed"))

    def _pool(self, pending: deque, workers: int, gpus: list[str], acquire: Acquire | None):
        """Run cells from pending in a fresh pool until it is empty (returns []) or the pool breaks
        (returns the cells that were in flight; the rest stay in pending). An exception thrown
        into it (an interrupt) or closing it stops the workers first (_stop_pool)."""
        ctx = multiprocessing.get_context("spawn")
        queue = None
        if len(gpus) > 1:
            queue = ctx.Queue()
            for i in range(workers):
                queue.put(gpus[i % len(gpus)])
        inflight: dict[Any, CellConfig] = {}
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker,
                                 initargs=(self.threads, queue, os.getpid())) as pool:
            try:
                while pending or inflight:
                    while pending and len(inflight) < workers:
                        cfg = pending.popleft()
                        if acquire is not None and not acquire(cfg):
                            continue
                        try:
                            future = pool.submit(_guarded, cfg)
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
                        try:
                            record = future.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        except Exception as exc:  # noqa: BLE001 - e.g. a record that won't pickle
                            record = failed(new_record(inflight[future]), exc)
                        cfg = inflight.pop(future)
                        self._finished(cfg)
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


def _ray_cell(config: dict, threads: int) -> dict:
    """A Ray task: one cell from its config mapping, returned as a record mapping (plain data, so
    the driver re-checks the key against its own code: a worker with another task version fails
    loudly instead of storing a mislabelled record)."""
    torch.set_num_threads(threads)
    return run_cell(CellConfig.from_dict(config)).to_dict()


class RayExecutor(Executor):
    """Each cell is a Ray task with num_cpus=threads and, for CUDA cells, num_gpus=1 (Ray then
    sets CUDA_VISIBLE_DEVICES for the task). The driver keeps at most `max_in_flight` cells
    submitted (default: what the cluster holds at the start, CPUs // threads, or its GPUs for CUDA
    cells; give more for an autoscaling cluster), so the cells in flight are the ones running.

    address None starts a local Ray instance for the sweep (and shuts it down afterwards); "auto"
    or "ray://host:10001" joins a running cluster, whose nodes need seqbench installed at the same
    version (a record whose key does not match the driver's code becomes an `error` record). If
    Ray is already initialised in this process, that instance is used and left running. A task
    whose worker dies is retried `retries` times by Ray, then becomes an `error` record.
    """

    name = "ray"

    def __init__(self, address: str | None = None, threads: int = 1,
                 max_in_flight: int | None = None, retries: int = 1):
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
        self._ray = ray
        self.address, self.threads = address, threads
        self.max_in_flight, self.retries = max_in_flight, retries

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"address": self.address}

    def _capacity(self, cuda: bool) -> int:
        if self.max_in_flight:
            return self.max_in_flight
        resources = self._ray.cluster_resources()
        if cuda:
            gpus = int(resources.get("GPU", 0))
            require(gpus >= 1, "--executor", "the Ray cluster has no GPU for these CUDA cells "
                    "(give --workers N to queue N cells anyway, e.g. for an autoscaling cluster)")
            return gpus
        return max(1, int(resources.get("CPU", 1) // self.threads))

    def run(self, cells: Sequence[CellConfig], acquire: Acquire | None = None
            ) -> Iterator[CellRecord]:
        if not cells:
            return
        ray = self._ray
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False)
        inflight: dict[Any, CellConfig] = {}
        try:
            task = ray.remote(_ray_cell)
            pending = deque(cells)
            limit = self._capacity(any(c.device == "cuda" for c in pending))
            while pending or inflight:
                while pending and len(inflight) < limit:
                    cfg = pending.popleft()
                    if acquire is not None and not acquire(cfg):
                        continue
                    ref = task.options(
                        num_cpus=self.threads, num_gpus=1 if cfg.device == "cuda" else 0,
                        max_retries=self.retries,
                    ).remote(cfg.to_dict(), self.threads)
                    inflight[ref] = cfg
                    self._started(cfg)
                if not inflight:
                    break
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                cfg = inflight.pop(ref)
                try:
                    record = CellRecord.from_dict(ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - worker died, task error, version skew
                    record = failed(new_record(cfg), exc)
                self._finished(cfg)
                yield record
        finally:
            for ref, cfg in inflight.items():
                ray.cancel(ref, force=True)
                self._finished(cfg)
            if started:
                ray.shutdown()


def make_executor(kind: str, *, workers: int, threads: int, address: str | None = None,
                  max_in_flight: int | None = None) -> Executor:
    """The CLI's --executor: local (workers x threads) or ray (address, threads)."""
    check_choice("--executor", kind, EXECUTORS)
    if kind == "local":
        require(address is None, "--address", "only with --executor ray")
        return LocalExecutor(workers, threads)
    return RayExecutor(address, threads, max_in_flight=max_in_flight)
