"""Several cells per GPU on a CPU: which GPU each worker gets, how many workers the sweep starts,
the default cells per GPU, Ray's fractional GPU request, and out-of-memory isolation (a cell that
runs out of memory while sharing is rerun alone; its neighbours are untouched).
(The CUDA side: tests/test_gpu_packing.py.)"""
from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from concurrent.futures import Future

import pytest
import torch
from conftest import make_cell, record_for
from test_executors import TINY, same_figures

import seqbench.cell.cli
import seqbench.sweeps.cli
import seqbench.sweeps.executors as ex
import seqbench.sweeps.packing as packing
from seqbench.cell.record import CellRecord
from seqbench.cli import main
from seqbench.sweeps.driver import default_workers, run_sweep
from seqbench.sweeps.executors import LocalExecutor, RayExecutor, _init_worker, visible_gpus
from seqbench.sweeps.packing import CONTEXT_BYTES, MAX_CELLS_PER_GPU, Slot, cells_per_gpu, slots
from seqbench.sweeps.spec import load_spec

GIB = float(1 << 30)


# --- which GPU each worker gets ------------------------------------------------------------------

def test_slots_pin_n_workers_to_each_of_several_gpus():
    gpus = ["0", "GPU-abc", "7"]
    assert slots(6, gpus) == [Slot(g, 2) for g in gpus * 2]  # 2 cells per GPU
    assert [s.gpu for s in slots(12, gpus)] == gpus * 4
    assert {s.sharing for s in slots(12, gpus)} == {4}
    uneven = slots(5, gpus)  # GPUs 0 and GPU-abc get two workers, 7 gets one
    assert [(s.gpu, s.sharing) for s in uneven] == [
        ("0", 2), ("GPU-abc", 2), ("7", 1), ("0", 2), ("GPU-abc", 2)]
    assert slots(3, []) == [Slot(None, 3)] * 3  # CPU cells share the machine's memory
    assert slots(1, ["3"]) == [Slot("3", 1)]


def test_each_worker_takes_its_slot_before_cuda_starts(monkeypatch):
    """Every worker of a pool with 2 cells per GPU over 3 GPUs sees only its own GPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,GPU-abc,7,9")  # more entries than devices
    assert visible_gpus() == ["5", "GPU-abc", "7"]
    places = multiprocessing.get_context("spawn").Queue()
    for slot in slots(6, visible_gpus()):
        places.put(slot)
    monkeypatch.setattr(ex, "_slot", ex._slot)  # restored after the test
    threads, seen = torch.get_num_threads(), []
    try:
        for _ in range(6):  # what each of the six workers' initializer does
            _init_worker(1, places)
            seen.append((ex._slot.sharing, os.environ["CUDA_VISIBLE_DEVICES"]))
    finally:
        torch.set_num_threads(threads)
    assert seen == [(2, g) for g in ["5", "GPU-abc", "7"] * 2]
    assert Counter(gpu for _, gpu in seen) == {"5": 2, "GPU-abc": 2, "7": 2}


def test_workers_are_cells_per_gpu_times_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert default_workers("cuda") == 3
    assert default_workers("cuda", 4) == 12


# --- the sweep command ---------------------------------------------------------------------------

CUDA_TINY = 'device = "cuda"\n' + TINY


@pytest.fixture
def fake_gpus(monkeypatch):
    """Three fake GPUs with 80 GiB free each and 48 cores; the sweep's run is captured."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(seqbench.cell.cli, "check_device", lambda device: None)
    monkeypatch.setattr(packing, "free_gpu_memory", lambda: [80 * 1 << 30] * 3)
    monkeypatch.setattr(packing, "usable_cores", lambda: 48)
    runs = []
    monkeypatch.setattr(seqbench.sweeps.cli, "_run",
                        lambda spec, args, executor: runs.append(executor) or Counter())
    monkeypatch.setattr(seqbench.sweeps.cli, "_stored_summary", lambda *a: 0)
    return runs


@pytest.mark.parametrize(("args", "workers", "per_gpu"), [
    ([], 3 * MAX_CELLS_PER_GPU, MAX_CELLS_PER_GPU),  # the rule: plenty of memory and cores
    (["--cells-per-gpu", "4"], 12, 4),
    (["--cells-per-gpu", "4", "--workers", "10"], 10, 4),
    (["--workers", "5"], 5, 2),  # round-robin: two GPUs get two workers
])
def test_sweep_starts_cells_per_gpu_workers_per_gpu(tmp_path, capsys, fake_gpus, args, workers,
                                                    per_gpu):
    config = tmp_path / "cuda.toml"
    config.write_text(CUDA_TINY)
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "o"), *args]) == 0
    (executor,) = fake_gpus
    assert isinstance(executor, LocalExecutor) and executor.workers == workers
    out = " ".join(capsys.readouterr().out.split())
    assert f"{workers} worker(s) x 1 thread(s), {per_gpu} cell(s) per GPU" in out
    assert ("cell(s) per GPU: the smallest of the cap" in out) == (args == [])


@pytest.mark.parametrize(("config", "args", "message"), [
    (TINY, ["--cells-per-gpu", "2"], '--cells-per-gpu: only for CUDA sweeps (device = "cuda")'),
    (CUDA_TINY, ["--cells-per-gpu", "-1"], "--cells-per-gpu: must be >= 1 (0 = auto), got -1"),
    (CUDA_TINY, ["--cells-per-gpu", "2", "--workers", "7"],
     "--workers: at most --cells-per-gpu x GPUs = 6, got 7"),
])
def test_sweep_refuses_bad_cells_per_gpu(tmp_path, capsys, fake_gpus, config, args, message):
    from conftest import expect_rejected

    path = tmp_path / "s.toml"
    path.write_text(config)
    expect_rejected(capsys, ["sweep", "--config", str(path), "--out", str(tmp_path / "o"),
                             *args], message)
    assert fake_gpus == []


# --- the default cells per GPU -------------------------------------------------------------------

@pytest.mark.parametrize(("estimate", "free", "cores", "gpus", "threads", "expected"), [
    (0.5 * GIB, 100 * GIB, 64, 1, 1, MAX_CELLS_PER_GPU),  # memory allows 45, cores 64: the cap
    (10 * GIB, 100 * GIB, 64, 1, 1, 4),  # 90 GiB / (2 x 10 + 1) GiB = 4.3
    (0.5 * GIB, 100 * GIB, 12, 4, 1, 3),  # 12 cores for 4 GPUs
    (0.5 * GIB, 100 * GIB, 12, 2, 2, 3),  # 12 cores / (2 GPUs x 2 threads)
    (200 * GIB, 100 * GIB, 64, 1, 1, 1),  # nothing fits twice: still one cell per GPU
    (0.5 * GIB, 2 * GIB, 64, 1, 1, 1),  # 1.8 GiB / 2 GiB
])
def test_cells_per_gpu_rule(estimate, free, cores, gpus, threads, expected):
    choice = cells_per_gpu(estimate, free, cores, gpus, threads)
    assert choice.cells_per_gpu == expected
    assert choice.why.startswith(f"{expected} cell(s) per GPU")


def test_cells_per_gpu_rule_at_the_memory_boundary():
    need = 2 * 3 * GIB + CONTEXT_BYTES  # a 3 GiB cell
    exact = 5 * need / 0.9  # room for exactly five
    assert cells_per_gpu(3 * GIB, exact * 1.0001, 64, 1).cells_per_gpu == 5
    assert cells_per_gpu(3 * GIB, exact * 0.9999, 64, 1).cells_per_gpu == 4


def test_unknown_free_memory_means_one_cell_per_gpu():
    choice = cells_per_gpu(GIB, None, 64, 1)
    assert choice.cells_per_gpu == 1 and "could not be read" in choice.why


def test_choose_uses_the_largest_cell_estimate(monkeypatch):
    from seqbench.sweeps.preflight import estimate

    cells = load_spec(TINY, "test").cells()
    largest = max(estimate(c).total for c in cells)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(packing, "usable_cores", lambda: 8)
    monkeypatch.setattr(packing, "free_gpu_memory", lambda: [40 * 1 << 30, 20 * 1 << 30])
    assert packing.choose(cells) == cells_per_gpu(largest, 20 * GIB, 8, 2)
    monkeypatch.setattr(packing, "free_gpu_memory", lambda: None)
    assert packing.choose(cells).cells_per_gpu == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_free_gpu_memory_is_none_without_a_gpu():
    assert packing.free_gpu_memory() is None


# --- Ray: a fraction of a GPU per cell ------------------------------------------------------------

def record_of(cfg, status: str = "budget") -> CellRecord:
    """A record as a cell of cfg would return it (no training, no GPU needed)."""
    return record_for(cfg, status, score=0.5 if status == "budget" else None,
                      error="CUDA out of memory" if status == "oom" else None)


class FakeRay:
    """The part of Ray the executor uses: tasks run at once, in this process, and every
    .options(...) request is kept."""

    def __init__(self, gpus: int):
        self.gpus, self.requests, self.results = gpus, [], {}

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 64.0, "GPU": float(self.gpus)}

    def remote(self, fn):
        ray = self

        class Task:
            def options(self, **kw):
                ray.requests.append(kw)
                return self

            def remote(self, *args):
                ref = object()
                ray.results[ref] = fn(*args)
                return ref

        return Task()

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return self.results.pop(ref)

    def cancel(self, ref, force):
        pass


def test_ray_asks_for_a_fraction_of_a_gpu_and_reruns_a_shared_oom_on_a_whole_one(monkeypatch):
    """4 cells per GPU: num_gpus=1/4 and up to 2 x 4 cells in flight on 2 GPUs; a GRU cell that
    runs out of memory while sharing is submitted again with a whole GPU, its record keeping the
    failure; one that fails alone too is recorded as `oom` with both failures."""
    cells = [make_cell("parity", m, n, device="cuda") for m in ("rnn", "gru") for n in (2, 3)]
    stubborn = cells[3]  # gru L=3: out of memory alone too

    def fake_run_cell(cfg):
        return record_of(cfg, "oom" if cfg.key() == stubborn.key() else "budget")

    monkeypatch.setattr(ex, "run_cell", fake_run_cell)
    monkeypatch.setattr(ex, "new_record", lambda cfg: record_of(cfg, "error"))
    monkeypatch.setenv(ex.OOM_HOOK_ENV, "gru")
    executor = RayExecutor(threads=1, cells_per_gpu=4)
    fake = FakeRay(gpus=2)
    executor._ray = fake
    assert executor._capacity(cuda=True) == 8
    assert executor.describe()["cells_per_gpu"] == 4
    records = {r.key: r for r in executor.run(cells)}
    assert [r["num_gpus"] for r in fake.requests] == [0.25] * 4 + [1.0, 1.0]
    assert all(r["num_cpus"] == 1 for r in fake.requests)
    for cfg in cells:
        record = records[cfg.key()]
        shared = cfg.model == "gru"
        assert record.env["cells_per_gpu"] == (1 if shared else 4)
        assert [a["status"] for a in record.attempts] == (["oom"] if shared else [])
    assert records[cells[2].key()].status == "budget"
    assert records[stubborn.key()].status == "oom"
    assert "with 4 cells sharing the GPU; run again alone" in records[
        stubborn.key()].attempts[0]["error"]
    assert executor.running() == []


def test_ray_cpu_cells_ask_for_no_gpu(monkeypatch):
    monkeypatch.setattr(ex, "run_cell", record_of)
    executor = RayExecutor(threads=2, cells_per_gpu=4)
    executor._ray = fake = FakeRay(gpus=0)
    list(executor.run([make_cell("parity", "rnn", 2)]))
    assert fake.requests == [{"num_cpus": 2, "num_gpus": 0, "max_retries": 1}]


# --- out-of-memory isolation ----------------------------------------------------------------------

PARITY = TINY.replace('tasks = ["parity", "adding"]', 'tasks = ["parity"]').replace(
    'models = ["rnn", "gru"]', 'models = ["gru", "rnn"]').replace(", adding = [4]", "")


def test_a_cell_out_of_memory_while_sharing_reruns_alone_and_spares_its_neighbours(
        tmp_path, monkeypatch):
    """Real worker processes: with 2 workers sharing the machine, the TEST-ONLY hook makes every
    GRU cell run out of memory; each is rerun alone in a fresh worker once the RNN cells are done,
    and its stored record keeps the shared failure in `attempts`. The GRU cells come first, so
    the workers that ran out of memory went on to run the RNN cells. Every record equals that of a
    run with one cell at a time: neighbours untouched, the rerun complete."""
    spec = load_spec(PARITY, "test")
    alone, _ = run_sweep(spec, tmp_path / "alone", executor=LocalExecutor(1, 1))
    monkeypatch.setenv(ex.OOM_HOOK_ENV, "gru")
    order, passes = [], []
    pool = LocalExecutor._pool

    def spy(self, pending, workers, gpus, acquire):
        passes.append((workers, [c.model for c in pending]))
        return (yield from pool(self, pending, workers, gpus, acquire))

    monkeypatch.setattr(LocalExecutor, "_pool", spy)
    packed, statuses = run_sweep(spec, tmp_path / "packed", executor=LocalExecutor(2, 1),
                                 on_cell=lambda record, i, n: order.append(record.family))
    assert sum(statuses.values()) == 4 and set(statuses) <= {"budget", "solved"}
    assert passes == [(2, ["gru", "gru", "rnn", "rnn"]), (1, ["gru", "gru"])]
    assert order == ["rnn", "rnn", "gru", "gru"]  # the shared failures ran after the others
    records = packed.load()
    same_figures(records, alone.load())
    for key, record in records.items():
        if record.family == "rnn":
            assert record.attempts == []
            continue
        (attempt,) = record.attempts
        assert attempt["status"] == "oom"
        assert "TEST-ONLY" in attempt["error"]
        assert attempt["error"].endswith(
            "(out of memory with 2 cells sharing the machine's memory; run again alone)")
        assert record.status in ("budget", "solved")


def test_a_shared_oom_is_deferred_and_others_are_yielded_in_order(monkeypatch):
    """The pool's bookkeeping without processes: a result that ran out of memory while sharing is
    held back, the rest pass through, and the rerun's record gets the failure first in attempts."""
    cells = [make_cell("parity", m, 2) for m in ("rnn", "gru", "lstm")]
    results = {"rnn": (record_of(cells[0]), 2), "gru": (record_of(cells[1], "oom"), 2),
               "lstm": (record_of(cells[2]), 2)}

    class InlinePool:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, cfg):
            future = Future()
            record, sharing = results[cfg.model]
            future.set_result((record_of(cfg, record.status), sharing))
            return future

    monkeypatch.setattr(ex, "ProcessPoolExecutor", InlinePool)
    executor = LocalExecutor(2, 1)
    first = list(executor._pool(ex.deque(cells), 2, [], None))
    assert [r.family for r in first] == ["rnn", "lstm"]
    assert list(executor._alone) == [cells[1]]
    results["gru"] = (record_of(cells[1]), 1)  # alone it fits
    (rerun,) = list(executor._pool(ex.deque([cells[1]]), 1, [], None))
    assert rerun.status == "budget" and [a["status"] for a in rerun.attempts] == ["oom"]
    results["lstm"] = (record_of(cells[2], "oom"), 1)  # out of memory alone: recorded as is
    (oom,) = list(executor._pool(ex.deque([cells[2]]), 1, [], None))
    assert oom.status == "oom" and oom.attempts == []


@pytest.mark.parametrize(("status", "error", "expected"), [
    ("oom", "CUDA out of memory", True),
    ("error", "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate",
     True),
    ("error", "cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
    ("error", "RuntimeError: boom", False),
    ("budget", None, False),
])
def test_out_of_memory_covers_library_allocation_failures(status, error, expected):
    record = record_of(make_cell(), "budget")
    record.status, record.error = status, error
    assert ex.out_of_memory(record) is expected


def test_run_here_notes_the_sharing_of_cuda_cells_only():
    cpu = ex.run_here(make_cell("parity", "rnn", 2, steps=2, eval_every=1), 3)
    assert cpu.status in ("budget", "solved") and "cells_per_gpu" not in cpu.env
