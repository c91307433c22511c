"""Running a sweep: the cells of a SweepSpec that have no result stored yet go to an executor
(seqbench.sweeps.executors: local processes or Ray), and each record is saved as it arrives.

Which cells run (cell_state): a cell without a trustworthy record runs; a cell whose record holds
a result (solved, budget, or diverged: a deterministic run that diverges again) is kept; a cell
whose last run failed (oom, error, timeout: a failure of the run, not a result) runs again, its new
record keeping each earlier failure in `attempts`, until it has failed the same way GIVE_UP times
in a row: then it is given up (reported, not retried) unless retry_failed.

Before any cell runs the output folder must be writable, every cell to run must pass the memory
preflight (seqbench.sweeps.preflight; skipped with force), and temporary files that killed writers
left in the store are removed (once old enough that no live writer can own them).

Several drivers may run one sweep into one store at once (terminals, nodes on shared storage):
each claims a cell just before running it (seqbench.sweeps.claims), skips cells that another live
driver has claimed, and, once it has nothing left to start, waits for the cells the others are
running (taking over any whose claimant died), so every driver ends with the full store.
"""
from __future__ import annotations

import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from seqbench.cell.config import CellConfig, display_of
from seqbench.cell.record import GIVE_UP, RETRIED, CellRecord
from seqbench.env import environment, usable_cores
from seqbench.fileio import check_writable
from seqbench.measure.point import matmul_peak, measure
from seqbench.measure.record import MeasureRecord
from seqbench.results.report import write_summary
from seqbench.results.store import Store
from seqbench.sweeps.claims import HEARTBEAT_S, Claims
from seqbench.sweeps.executors import Executor, LocalExecutor
from seqbench.sweeps.preflight import check_memory, memory_limit
from seqbench.sweeps.spec import Label, SweepSpec
from seqbench.tasks import get_task


def default_workers(device: str, cells_per_gpu: int = 1) -> int:
    """Fill the cores without oversubscription (one thread each); on CUDA cells_per_gpu workers
    per visible GPU (seqbench.sweeps.executors.LocalExecutor pins each to its GPU)."""
    if device == "cuda":
        return max(1, cells_per_gpu * torch.cuda.device_count())
    return usable_cores()


TO_RUN, RERUN, STORED, GIVEN_UP = "to run", "rerun", "stored", "given up"
POLL_S = 1.0  # how often a driver waiting for other drivers' cells looks at the store


def cell_state(record: CellRecord | None, retry_failed: bool = False) -> str:
    """What a sweep does with a cell whose stored record is `record` (None: none usable)."""
    if record is None:
        return TO_RUN
    if record.status not in RETRIED:
        return STORED
    if record.identical_failures() >= GIVE_UP and not retry_failed:
        return GIVEN_UP
    return RERUN


@dataclass
class SweepPlan:
    """What a sweep would do now (seqbench sweep --dry-run); computed without writing anything.

    tokens: the training tokens of a cell at its full step budget, steps x batch_size x seq_len
    (an upper bound: a cell stops early once solved; evaluation and gradient flow come on top).
    rates: median measured train_tokens_per_s of this sweep's stored records, per model.
    """

    spec: SweepSpec
    root: Path
    cells: list[tuple[Label, CellConfig]]
    records: dict[str, CellRecord]  # the stored records of this sweep's cells, by key
    rates: dict[str, float]
    retry_failed: bool = False

    @property
    def stored(self) -> set[str]:
        """Keys of the cells with a stored record (results and failures alike)."""
        return set(self.records)

    def state(self, cfg: CellConfig) -> str:
        return cell_state(self.records.get(cfg.key()), self.retry_failed)

    @property
    def todo(self) -> list[tuple[Label, CellConfig]]:
        return [(label, c) for label, c in self.cells if self.state(c) in (TO_RUN, RERUN)]

    @staticmethod
    def tokens(cfg: CellConfig) -> int:
        lengths = cfg.train_lengths()
        seq = sum(get_task(cfg.task).seq_len(n) for n in lengths) / len(lengths)
        return round(cfg.train.steps * cfg.train.batch_size * seq)

    def seconds(self, cfg: CellConfig) -> float | None:
        """Estimated training seconds of a cell at its full budget, from its model's rate."""
        rate = self.rates.get(cfg.model)
        return self.tokens(cfg) / rate if rate else None


def plan_sweep(spec: SweepSpec, root: str | Path, retry_failed: bool = False) -> SweepPlan:
    """The cells of spec, which are stored under root/<name>/, and measured rates; reads only."""
    store = Store(Path(root) / spec.name)
    done = store.read().records
    cells = spec.labelled_cells()
    records = {c.key(): done[c.key()] for _, c in cells if c.key() in done}
    by_model: dict[str, list[float]] = {}
    for record in records.values():
        if record.train_tokens_per_s:
            by_model.setdefault(record.family, []).append(record.train_tokens_per_s)
    rates = {m: statistics.median(v) for m, v in by_model.items()}
    return SweepPlan(spec, store.root, cells, records, rates, retry_failed)


def run_sweep(
    spec: SweepSpec,
    root: str | Path,
    workers: int = 1,
    threads: int = 1,
    on_cell: Callable[[CellRecord, int, int], None] | None = None,
    on_point: Callable[[MeasureRecord, int, int], None] | None = None,
    *,
    executor: Executor | None = None,
    retry_failed: bool = False,
    force: bool = False,
    heartbeat_s: float = HEARTBEAT_S,
    on_wait: Callable[[int], None] | None = None,
) -> tuple[Store, Counter]:
    """Run the cells of spec that need a run (cell_state) into root/<name>/ and regenerate its
    tables.

    The executor runs the cells (default: LocalExecutor(workers, threads): in this process for one
    worker, else a spawn-started process pool); this process saves each record (atomically) as
    soon as it arrives, so an interrupted sweep loses only the cells in flight, and whichever
    executor ran a cell, its record lands here under the same key. Each record carries the names of
    its hyper-parameter set and variant and the display metadata of its family and task; a stored
    record renamed in the sweep file, or whose family or task now shows differently, is
    relabelled (none of these is part of the key).
    Raises ConfigError before any cell runs for an unwritable folder or (unless force) a cell the
    memory preflight refuses. on_wait(n) is called when this driver starts waiting for n cells
    that other drivers are running.

    Measurement points not yet stored run afterwards, one at a time in this process (timing wants
    a quiet machine) with executor.measure_threads() threads, each claimed like a cell. Returns the
    store and a count of statuses for the cells this driver ran.
    """
    executor = executor or LocalExecutor(workers, threads)
    store = Store(Path(root) / spec.name)
    loaded = store.read()
    done = loaded.records
    labelled = spec.labelled_cells()
    targets = [(label, cfg) for label, cfg in labelled
               if cell_state(done.get(cfg.key()), retry_failed) in (TO_RUN, RERUN)]
    if targets and not force and isinstance(executor, LocalExecutor):
        check_memory(spec, targets, memory_limit(spec.device))
    check_writable(store.root, "--out")  # all refusals come before anything is written
    store.remove_stale_temporaries()
    for problem in loaded.problems:
        warnings.warn(f"ignoring unusable record {problem} (its cell runs again)", stacklevel=2)
    cells = {cfg.key(): (label, cfg) for label, cfg in labelled}
    labels = {key: label for key, (label, _) in cells.items()}
    for key, record in done.items():  # labels and display metadata as the sweep gives them now
        if key not in cells:
            continue
        label, cfg = cells[key]
        shown = display_of(cfg.model, cfg.task)
        if ((record.hpset, record.variant) != label
                or (record.model_display, record.task_display) != tuple(shown.values())):
            record.hpset, record.variant = label
            record.model_display = shown["model_display"]
            record.task_display = shown["task_display"]
            store.save(record)
    prior = {cfg.key(): done.get(cfg.key()) for _, cfg in targets}
    statuses: Counter = Counter()

    def path(cfg: CellConfig) -> Path:
        return store.cell_path(cfg.task, cfg.model, cfg.length, cfg.seed, cfg.key())

    def settled(cfg: CellConfig) -> bool:
        """Whether the store holds a new record for cfg (by this driver or another)."""
        record = store.read_cell(path(cfg))
        return record is not None and record != prior[cfg.key()]

    with Claims(store.root / "claims", heartbeat_s) as claims:
        def acquire(cfg: CellConfig) -> bool:
            if not claims.acquire(cfg.key()):
                return False
            if settled(cfg):  # stored by another driver since this one looked
                claims.release(cfg.key())
                return False
            return True

        waiting = 0
        while pending := [cfg for _, cfg in targets if not settled(cfg)]:
            free = [cfg for cfg in pending if not claims.held_elsewhere(cfg.key())]
            ran = 0
            with closing(executor.run(free, acquire)) as records:
                for record in records if free else ():
                    _save(store, record, prior.get(record.key), labels)
                    claims.release(record.key)
                    statuses[record.status] += 1
                    ran += 1
                    if on_cell:
                        on_cell(record, sum(statuses.values()), len(targets))
            if not ran:  # the rest are running elsewhere (or being recovered): wait for them
                if on_wait and len(pending) != waiting:
                    on_wait(len(pending))
                waiting = len(pending)
                time.sleep(min(POLL_S, heartbeat_s))
        _measure(spec, store, executor, claims, on_point)
    loaded = store.read()
    device = spec.device if spec.device == "cpu" or torch.cuda.is_available() else "cpu"
    env = environment(device) | executor.describe()
    write_summary(store, loaded, env)
    return store, statuses


def _save(store: Store, record: CellRecord, old: CellRecord | None, labels: dict) -> None:
    """Store a cell's new record with its labels and, where it replaces a failed run, that run
    and the earlier ones in `attempts`, before the attempts of this run (a failure while sharing
    memory, seqbench.sweeps.executors)."""
    record.hpset, record.variant = labels.get(record.key, Label())
    if old is not None and old.status in RETRIED:
        try:
            stamp = store.path_for(old).stat().st_mtime
        except FileNotFoundError:
            stamp = time.time()
        record.attempts = [*old.attempts, old.as_attempt(
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))), *record.attempts]
    store.save(record)


def _measure(spec: SweepSpec, store: Store, executor: Executor, claims: Claims,
             on_point: Callable[[MeasureRecord, int, int], None] | None) -> None:
    """The sweep's measurement points not stored yet, each claimed (a point another driver is
    measuring is left to it)."""
    stored = store.read().measurements
    points = [(v, p) for v, p in spec.labelled_points() if p.key() not in stored]
    if not points:
        return
    torch.set_num_threads(executor.measure_threads())
    peak = matmul_peak(spec.device, spec.measure.dtype)
    m = spec.measure
    for i, (variant, point) in enumerate(points, 1):
        if not claims.acquire(point.key()):
            continue
        record = measure(point, peak=peak, rss=m.rss, blocks=m.blocks,
                         stream_positions=m.stream or ())
        record.variant = variant
        store.save_measurement(record)
        claims.release(point.key())
        if on_point:
            on_point(record, i, len(points))
