"""Sweeps: a strict TOML grid of tasks x models x lengths x seeds, run cell by cell into a store.

A cell whose key already has a trustworthy record in the store is not run again, so rerunning an
interrupted sweep completes only what is missing. All cells are validated before anything runs.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from bench.config import CellConfig, TrainConfig
from bench.env import environment
from bench.measure import MeasurePoint, MeasureRecord, matmul_peak, measure
from bench.record import CellRecord
from bench.report import markdown, measurement_tables, task_tables
from bench.store import Store, atomic_write
from bench.strict import ConfigError, check_choice, coerce, from_mapping, require
from bench.train import failed, new_record, run_cell

PRESETS = ("smoke", "quick")


@dataclass(frozen=True)
class MeasureSpec:
    """Speed and memory points of a sweep: its models and device at these lengths."""

    lengths: tuple[int, ...]
    batch_size: int = 32
    dtype: str = "fp32"
    task: str = "parity"
    rss: bool = True  # CPU: peak RSS growth in a fresh subprocess
    stream: tuple[int, ...] | None = None  # streaming positions, none by default
    blocks: int = 7

    def validate(self, where: str) -> None:
        require(self.blocks >= 5, f"{where}.blocks", f"must be >= 5, got {self.blocks}")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    lengths: Any  # a list for every task, or a table task -> list
    seeds: tuple[int, ...] = (0,)
    params: int = 20_000
    device: str = "cpu"
    train: TrainConfig = field(default_factory=TrainConfig)
    task_train: Any = field(default_factory=dict)  # task -> partial train table overriding `train`
    hparams: Any = field(default_factory=dict)  # model -> hyper-parameter table
    measure: MeasureSpec | None = None

    def validate(self, where: str) -> None:
        require(self.name.replace("-", "").replace("_", "").isalnum(), "name",
                f"use letters, digits, '-' and '_' only, got {self.name!r}")
        for name in ("tasks", "models", "seeds"):
            values = getattr(self, name)
            require(len(set(values)) == len(values), name, f"must not repeat, got {list(values)}")
        for table, allowed in (("lengths", self.tasks), ("task_train", self.tasks),
                               ("hparams", self.models)):
            value = getattr(self, table)
            if isinstance(value, dict):
                for key in value:
                    check_choice(f"{table} key", key, allowed)
            elif table != "lengths":
                raise ConfigError(f"{table}: expected a table keyed by name")

    def lengths_for(self, task: str) -> tuple[int, ...]:
        if isinstance(self.lengths, dict):
            if task not in self.lengths:
                raise ConfigError(f"lengths.{task}: missing; give lengths for every task")
            return coerce(f"lengths.{task}", self.lengths[task], tuple[int, ...])
        return coerce("lengths", self.lengths, tuple[int, ...])

    def cells(self) -> list[CellConfig]:
        """Every cell of the grid, validated (raises ConfigError before anything runs)."""
        out = []
        for task in self.tasks:
            override = self.task_train.get(task, {})
            if not isinstance(override, dict):
                raise ConfigError(f"task_train.{task}: expected a table")
            train = from_mapping(
                TrainConfig, dataclasses.asdict(self.train) | override, f"task_train.{task}"
            )
            for model in self.models:
                for length in self.lengths_for(task):
                    for seed in self.seeds:
                        out.append(CellConfig(
                            task=task, model=model, length=length, seed=seed, params=self.params,
                            device=self.device, train=train, hparams=self.hparams.get(model, {}),
                        ))
        return out


    def points(self) -> list[MeasurePoint]:
        """Every measurement point of the sweep (none without a [measure] table), validated."""
        m = self.measure
        if m is None:
            return []
        return [
            MeasurePoint(model=model, length=n, batch_size=m.batch_size, device=self.device,
                         dtype=m.dtype, params=self.params, task=m.task,
                         hparams=self.hparams.get(model, {}))
            for model in self.models for n in m.lengths
        ]


def load_spec(text: str, source: str) -> SweepSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    spec = from_mapping(SweepSpec, data)
    spec.cells()
    spec.points()
    return spec


def preset(name: str) -> SweepSpec:
    check_choice("preset", name, PRESETS)
    text = resources.files("bench.sweeps").joinpath(f"{name}.toml").read_text()
    return load_spec(text, f"preset {name}")


def spec_from_file(path: str | Path) -> SweepSpec:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    return load_spec(text, str(path))


def write_summary(store: Store, title: str, env: dict | None = None) -> str:
    """Regenerate results.csv, measurements.csv, env.json and summary.md from the stored records.

    env defaults to the environment stored in the first record (reports never re-measure).
    """
    if env is None:
        records = list(store.load().values()) + store.load_measurements()
        first = records[0] if records else {}
        env = first.env if isinstance(first, CellRecord) else first.get("env", {})
    df, mdf = store.write_tables(env)
    tables = (task_tables(df) if not df.empty else []) + (
        measurement_tables(mdf) if not mdf.empty else [])
    text = markdown(tables, title) if tables else f"# {title}\n\nNo records.\n"
    atomic_write(store.root / "summary.md", text)
    return text


def default_workers(device: str) -> int:
    """Fill the cores without oversubscription (one thread each); one worker on a GPU."""
    return 1 if device == "cuda" else max(1, len(os.sched_getaffinity(0)))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _completed(todo: list[CellConfig], workers: int, threads: int) -> Iterator[CellRecord]:
    """Records of todo as they finish: in this process, or in a spawn-started process pool."""
    if workers <= 1:
        _init_worker(threads)
        yield from map(run_cell, todo)
        return
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_cell, cfg): cfg for cfg in todo}
        try:
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as exc:  # noqa: BLE001 - a worker died: record it, go on
                    yield failed(new_record(futures[future]), exc)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def run_sweep(
    spec: SweepSpec,
    root: str | Path,
    workers: int = 1,
    threads: int = 1,
    on_cell: Callable[[CellRecord, int, int], None] | None = None,
    on_point: Callable[[MeasureRecord, int, int], None] | None = None,
) -> tuple[Store, Counter]:
    """Run the missing cells of spec into root/<name>/ and regenerate its tables.

    workers > 1 runs cells in a spawn-started process pool, each worker with `threads` threads.

    Each record is saved (atomically) as soon as its cell finishes, so an interrupted sweep loses
    only the cells in flight. Measurement points not yet stored run afterwards, one at a time in
    this process with every thread of the pool (timing wants a quiet machine). Returns the store and
    a count of statuses for the cells run now.
    """
    store = Store(Path(root) / spec.name)
    done = store.load()
    todo = [c for c in spec.cells() if c.key() not in done]
    statuses: Counter = Counter()
    for i, record in enumerate(_completed(todo, min(workers, len(todo)), threads), 1):
        store.save(record)
        statuses[record.status] += 1
        if on_cell:
            on_cell(record, i, len(todo))
    measured = {m["key"] for m in store.load_measurements()}
    points = [p for p in spec.points() if p.key() not in measured]
    if points:
        torch.set_num_threads(workers * threads)
        peak = matmul_peak(spec.device, spec.measure.dtype)
        m = spec.measure
        for i, point in enumerate(points, 1):
            record = measure(point, peak=peak, rss=m.rss, blocks=m.blocks,
                             stream_positions=m.stream or ())
            store.save_measurement(record)
            if on_point:
                on_point(record, i, len(points))
    env = environment(spec.device) | {"workers": workers, "threads": threads}
    write_summary(store, f"seqbench sweep `{spec.name}`", env)
    return store, statuses
