"""Benchmarks of the costs around a training step (pytest-benchmark), not of the step itself: the
training step's speed is measured by `seqbench measure` and regression-gated by `seqbench gate
--perf` (one system for it, with interleaving, calibration and a test); these check the suite's
own overheads against their bars.

In the normal test run they are disabled (`--benchmark-disable` in pyproject's addopts): each body
runs once, a quick smoke check. `tox -e bench` enables them (saved under .benchmarks/).

test_sampler_cost checks the bar on data generation: at every length a preset trains a task at,
drawing the training batches costs under 2% of an LSTM training step (20K parameters, forward,
backward, clipping and fused AdamW, one thread) per step, both timed with
seqbench.measure.timing.time_blocks in short blocks, in turn for a few seconds: each figure is the
fastest block, so that load from other processes on a shared machine, which only ever adds time,
counts in neither. The cost now is one block's sampler call (seqbench.cell.step.draw, as the sweep
draws it) divided by the block's steps: a timed block of single batches would mostly miss the call
that refills the block, or always hit it. The per-batch cost before (one sampler call per step,
with the old sampler where one was rewritten: tests/reference_samplers.py) is timed in the same
run. Each result's
extra_info holds the times, the fraction and the speed-up, and `-s` prints them as one table:
`pytest tests/test_benchmarks.py -k sampler_cost --benchmark-enable -s`.

test_plot_quick times `seqbench plot` of the committed quick preset's records (every figure, PNG,
in a copy of results/quick; the records parsed once, outside the timing) in this process
(--jobs 1) and with one process per core (--jobs 0), in turn, in one run; -s prints the fastest of
each and their ratio: `pytest tests/test_benchmarks.py -k plot_quick --benchmark-enable -s`. The
normal (disabled) run plots one task's records, a smoke check of a few seconds.
"""
from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

import pytest
import torch
from reference_samplers import REFERENCES

from seqbench.cell.step import block_steps, draw, sample_elements
from seqbench.env import usable_cores
from seqbench.measure.point import Harness, MeasurePoint
from seqbench.measure.timing import time_blocks
from seqbench.results.plots import plot_folder
from seqbench.results.store import Store
from seqbench.sweeps.spec import PRESETS, preset
from seqbench.tasks import get_task

pytestmark = pytest.mark.benchmark

# --- data generation against the training step -------------------------------------------------

COST_BATCH = 32
COST_BAR = 0.02  # batch generation / LSTM training step
COST_SECONDS = 3.0  # time_blocks runs go on in turn, at least 3 each, until this is spent


def preset_lengths() -> list[tuple[str, int]]:
    """(task, length) for every length some preset trains a task at."""
    cells = set()
    for name in PRESETS:
        spec = preset(name)
        cells.update((task, n) for task in spec.tasks for n in spec.lengths_for(task))
    return sorted(cells)


@pytest.fixture(scope="module")
def cost_table():
    """Rows of test_sampler_cost, printed as one table when the module ends (shown under -s)."""
    rows: list[str] = []
    yield rows
    if rows:
        print("\nbatch generation per training step (batch 32) against an LSTM training step "
              "(20K params, CPU)")
        print(f"{'task':15} {'length':>6} {'before ms':>9} {'now ms':>8} {'before/now':>10} "
              f"{'step ms':>8} {'now/step':>8}")
        print("\n".join(rows))


@pytest.mark.parametrize(("name", "length"), preset_lengths())
def test_sampler_cost(benchmark, cost_table, name, length):
    """Batch generation per training step, before (one sampler call per step, with the old sampler
    where one was rewritten: tests/reference_samplers.py) and now (the sweep's own draw,
    seqbench.cell.step.draw: one call per block of steps, divided by its steps), both against the
    LSTM training step, measured in turn in one run."""
    task = get_task(name)
    h = Harness(MeasurePoint(model="lstm", length=length, batch_size=COST_BATCH, params=20_000,
                             task=name))
    benchmark.group = f"sampler cost {name}"
    batch = benchmark(h.sample)
    assert batch.inputs.shape[:2] == (COST_BATCH, task.seq_len(length))
    if benchmark.disabled:  # the normal test run: a smoke check, nothing timed
        return
    h.train_step()  # optimiser state exists from here on, as in seqbench.measure.point
    gen = torch.Generator().manual_seed(0)
    before = REFERENCES.get(name, task)
    steps = block_steps(COST_BATCH, sample_elements(task, length))
    per_step = {"step": 1, "now": steps, "before": 1}
    calls = {"step": h.train_step,
             "now": functools.partial(draw, task, length, COST_BATCH, steps, gen, "cpu"),
             "before": functools.partial(before.sample, length, COST_BATCH, gen, "cpu")}
    best = dict.fromkeys(calls, float("inf"))
    start, rounds = time.perf_counter(), 0
    while rounds < 3 or (rounds < 50 and time.perf_counter() - start < COST_SECONDS):
        for key, fn in calls.items():  # in turn; load from other processes only adds time
            timing = time_blocks(fn, "cpu", blocks=5, min_block_s=0.005)
            best[key] = min(best[key], min(timing.samples) / per_step[key])
        rounds += 1
    step, now, old = best["step"], best["now"], best["before"]
    fraction = now / step
    benchmark.extra_info |= {
        "task": name, "length": length, "seq_len": task.seq_len(length), "batch_size": COST_BATCH,
        "sampler_ms": 1e3 * now, "before_ms": 1e3 * old, "lstm_step_ms": 1e3 * step,
        "fraction_of_step": fraction, "before_fraction_of_step": old / step,
        "speedup": old / now,
    }
    cost_table.append(f"{name:15} {length:6d} {1e3 * old:9.4f} {1e3 * now:8.4f} "
                      f"{old / now:9.1f}x {1e3 * step:8.2f} {100 * fraction:7.2f}%")
    assert fraction < COST_BAR, f"{name} at {length}: batch generation is {fraction:.1%} of a step"



# --- figures: `seqbench plot results/quick` in one process and on every core -------------------

QUICK = Path(__file__).parents[1] / "results" / "quick"
PLOT_ROUNDS = 3


def test_plot_quick(benchmark, tmp_path):
    """plot_folder on a copy of results/quick's records with jobs=1 and jobs=0 (one process per
    core), each round one of each in turn (pedantic's untimed setup runs the serial one):
    the fastest of each, so that load from other processes, which only adds time, counts in
    neither; their files are the same."""
    cells = sorted((QUICK / "cells").glob("*.json"))
    if benchmark.disabled:  # the normal test run: a smoke check on one task
        cells = [c for c in cells if c.name.startswith("parity_")]
    (tmp_path / "cells").mkdir()
    for cell in cells:
        shutil.copy(cell, tmp_path / "cells")
    loaded = Store(tmp_path).read()
    best: dict[int, float] = {}
    files: dict[int, dict[str, bytes]] = {}

    def plot(jobs: int) -> list[Path]:
        start = time.perf_counter()
        written = plot_folder(tmp_path, loaded, jobs=jobs)
        best[jobs] = min(best.get(jobs, float("inf")), time.perf_counter() - start)
        files[jobs] = {p.name: p.read_bytes() for p in written}
        return written

    def serial() -> None:
        plot(1)

    benchmark.group = "plot results/quick"
    written = benchmark.pedantic(plot, args=(0,), setup=serial,
                                 rounds=1 if benchmark.disabled else PLOT_ROUNDS)
    assert written and files[1] == files[0]
    cores = usable_cores()
    benchmark.extra_info |= {"figures": len(written), "cores": cores, "jobs1_s": best[1],
                             "all_cores_s": best[0], "speedup": best[1] / best[0]}
    print(f"\nplot results/quick ({len(written)} figures): --jobs 1 {best[1]:.2f} s, "
          f"--jobs 0 ({cores} cores) {best[0]:.2f} s, ratio {best[1] / best[0]:.2f}x")
