"""Running a sweep: the cells of a SweepSpec that are not stored yet go to an executor
(seqbench.sweeps.executors: local processes or Ray), and each record is saved as it arrives.

A cell whose key already has a trustworthy record in the store is not run again, so rerunning an
interrupted sweep completes only what is missing.
"""
from __future__ import annotations

import os
import statistics
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from seqbench.cell.config import CellConfig, display_of
from seqbench.cell.record import CellRecord
from seqbench.env import environment
from seqbench.measure.point import matmul_peak, measure
from seqbench.measure.record import MeasureRecord
from seqbench.results.report import write_summary
from seqbench.results.store import Store
from seqbench.sweeps.executors import Executor, LocalExecutor
from seqbench.sweeps.spec import Label, SweepSpec
from seqbench.tasks import get_task


def default_workers(device: str) -> int:
    """Fill the cores without oversubscription (one thread each); on CUDA one worker per
    visible GPU (seqbench.sweeps.executors.LocalExecutor gives each its own)."""
    if device == "cuda":
        return max(1, torch.cuda.device_count())
    return max(1, len(os.sched_getaffinity(0)))


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
    stored: set[str]  # keys of the cells already stored
    rates: dict[str, float]

    @property
    def todo(self) -> list[tuple[Label, CellConfig]]:
        return [(label, c) for label, c in self.cells if c.key() not in self.stored]

    @staticmethod
    def tokens(cfg: CellConfig) -> int:
        lengths = cfg.train_lengths()
        seq = sum(get_task(cfg.task).seq_len(n) for n in lengths) / len(lengths)
        return round(cfg.train.steps * cfg.train.batch_size * seq)

    def seconds(self, cfg: CellConfig) -> float | None:
        """Estimated training seconds of a cell at its full budget, from its model's rate."""
        rate = self.rates.get(cfg.model)
        return self.tokens(cfg) / rate if rate else None


def plan_sweep(spec: SweepSpec, root: str | Path) -> SweepPlan:
    """The cells of spec, which are stored under root/<name>/, and measured rates; reads only."""
    store = Store(Path(root) / spec.name)
    done = store.read().records
    cells = spec.labelled_cells()
    keys = {c.key() for _, c in cells}
    by_model: dict[str, list[float]] = {}
    for record in done.values():
        if record.key in keys and record.train_tokens_per_s:
            by_model.setdefault(record.family, []).append(record.train_tokens_per_s)
    rates = {m: statistics.median(v) for m, v in by_model.items()}
    return SweepPlan(spec, store.root, cells, set(done) & keys, rates)


def run_sweep(
    spec: SweepSpec,
    root: str | Path,
    workers: int = 1,
    threads: int = 1,
    on_cell: Callable[[CellRecord, int, int], None] | None = None,
    on_point: Callable[[MeasureRecord, int, int], None] | None = None,
    *,
    executor: Executor | None = None,
) -> tuple[Store, Counter]:
    """Run the missing cells of spec into root/<name>/ and regenerate its tables.

    The executor runs the cells (default: LocalExecutor(workers, threads): in this process for one
    worker, else a spawn-started process pool); this process saves each record (atomically) as
    soon as it arrives, so an interrupted sweep loses only the cells in flight, and whichever
    executor ran a cell, its record lands here under the same key. Each record carries the names of
    its hyper-parameter set and variant and the display metadata of its family and task; a stored
    record renamed in the sweep file, or whose family or task now shows differently, is
    relabelled (none of these is part of the key).

    Measurement points not yet stored run afterwards, one at a time in this process (timing wants
    a quiet machine) with executor.measure_threads() threads. Returns the store and a count of
    statuses for the cells run now.
    """
    executor = executor or LocalExecutor(workers, threads)
    store = Store(Path(root) / spec.name)
    loaded = store.read()  # parsed once: new records join it as they arrive
    for problem in loaded.problems:
        warnings.warn(f"ignoring unusable record {problem} (its cell runs again)", stacklevel=2)
    done = loaded.records
    cells = {cfg.key(): (label, cfg) for label, cfg in spec.labelled_cells()}
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
    todo = [c for c in spec.cells() if c.key() not in done]
    statuses: Counter = Counter()
    for i, record in enumerate(executor.run(todo), 1):
        record.hpset, record.variant = labels.get(record.key, Label())
        store.save(record)
        done[record.key] = record
        statuses[record.status] += 1
        if on_cell:
            on_cell(record, i, len(todo))
    points = [(v, p) for v, p in spec.labelled_points() if p.key() not in loaded.measurements]
    if points:
        torch.set_num_threads(executor.measure_threads())
        peak = matmul_peak(spec.device, spec.measure.dtype)
        m = spec.measure
        for i, (variant, point) in enumerate(points, 1):
            record = measure(point, peak=peak, rss=m.rss, blocks=m.blocks,
                             stream_positions=m.stream or ())
            record.variant = variant
            store.save_measurement(record)
            loaded.measurements[record.key] = record
            if on_point:
                on_point(record, i, len(points))
    device = spec.device if spec.device == "cpu" or torch.cuda.is_available() else "cpu"
    env = environment(device) | executor.describe()
    write_summary(store, loaded, env)
    return store, statuses
