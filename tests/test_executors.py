"""Executors: Ray gives the local pool's records; a killed sweep resumes losslessly; a dead worker
costs only its own cell. (Cells per GPU and out-of-memory isolation: tests/test_packing.py.)"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import seqbench.sweeps.executors
from seqbench.cli import main
from seqbench.results.store import Store
from seqbench.strict import ConfigError
from seqbench.sweeps.driver import run_sweep
from seqbench.sweeps.executors import LocalExecutor, RayExecutor
from seqbench.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent

TINY = """
name = "tiny"
tasks = ["parity", "adding"]
models = ["rnn", "gru"]
lengths = { parity = [2, 3], adding = [4] }
params = 2000
[train]
steps = 4
batch_size = 8
eval_every = 2
eval_samples = 16
"""


def same_figures(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert (x.status, x.steps, x.score, x.test_loss, x.params_actual) == (
            y.status, y.steps, y.score, y.test_loss, y.params_actual), key
        assert x.history == y.history and x.grad_flow == y.grad_flow, key


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_gives_the_local_records(ray_instance, tmp_path):
    spec = load_spec(TINY, "test")
    local, _ = run_sweep(spec, tmp_path / "local", executor=LocalExecutor(1, 1))
    executor = RayExecutor(threads=1)
    ray_store, statuses = run_sweep(spec, tmp_path / "ray", executor=executor)
    assert sum(statuses.values()) == len(spec.cells()) == 6
    assert executor.running() == []
    records = ray_store.load()
    assert set(records) == {c.key() for c in spec.cells()}
    same_figures(records, local.load())
    assert {p.name for p in ray_store.cells.iterdir()} == {p.name for p in local.cells.iterdir()}
    assert (ray_store.root / "summary.md").read_text() == (local.root / "summary.md").read_text()
    assert '"executor": "ray"' in (ray_store.root / "env.json").read_text()
    # a second run finds everything stored and submits nothing
    assert sum(run_sweep(spec, tmp_path / "ray", executor=executor)[1].values()) == 0


def test_ray_missing_is_a_config_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"install seqbench\[ray\]"):
        RayExecutor()
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(config), "--out", str(out), "--executor", "ray"]) == 2
    assert "--executor: ray is not installed; install seqbench[ray]" in capsys.readouterr().err
    assert not out.exists()


def test_address_needs_the_ray_executor(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "o"),
                 "--address", "auto"]) == 2
    assert "--address: only with --executor ray" in capsys.readouterr().err


KILLABLE = TINY.replace("steps = 4", "steps = 40").replace("eval_every = 2", "eval_every = 20")


def test_sigkilled_sweep_resumes_losing_nothing(tmp_path):
    """A sweep killed outright (no cleanup at all) and run again ends exactly like one that was
    never interrupted, and nothing it left behind is trusted."""
    config = tmp_path / "tiny.toml"
    config.write_text(KILLABLE)
    out = tmp_path / "killed"
    cells = out / "tiny" / "cells"
    argv = [sys.executable, "-m", "seqbench.cli", "sweep", "--threads", "1", "--config",
            str(config), "--out", str(out), "--workers", "1"]
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(cells.glob("*.json"))) < 2:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spec = load_spec(KILLABLE, "test")
    survivors = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    assert 2 <= len(survivors) < len(spec.cells())
    assert not (out / "tiny" / "summary.md").exists()

    rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"[{len(spec.cells()) - len(survivors)}/" in rerun.stdout  # only the missing cells ran
    store = Store(out / "tiny")
    assert set(store.load()) == {c.key() for c in spec.cells()}
    for name, mtime in survivors.items():
        assert (cells / name).stat().st_mtime_ns == mtime  # finished cells were not redone
    # everything in cells/ is a trusted record, or a temporary file the store never reads
    assert all(p.suffix == ".json" or (p.name.startswith(".") and p.suffix == ".tmp")
               for p in cells.iterdir())
    assert len(list(cells.glob("*.json"))) == len(spec.cells())

    whole, _ = run_sweep(spec, tmp_path / "whole", executor=LocalExecutor(1, 1))
    assert (out / "tiny" / "summary.md").read_text() == (whole.root / "summary.md").read_text()
    same_figures(store.load(), whole.load())


def test_a_dead_worker_costs_only_its_own_cell(tmp_path, monkeypatch):
    """Kill a pool worker mid-sweep: the cells in flight are rerun alone, so none gets an error
    record it did not earn (the kill came from outside, so no cell is to blame) and none is lost."""
    spec = load_spec(KILLABLE.replace("steps = 40", "steps = 150"), "test")
    cells = spec.cells()[:3]
    executor = LocalExecutor(workers=2, threads=1)
    records, breaks = [], []
    broken = LocalExecutor._broken

    def spy(self, inflight):
        breaks.append(sorted(c.key() for c in inflight.values()))
        return broken(self, inflight)

    monkeypatch.setattr(LocalExecutor, "_broken", spy)
    driver = threading.Thread(target=lambda: records.extend(executor.run(cells)))
    driver.start()
    deadline = time.monotonic() + 60
    # once a first cell is done the workers are warm and the next two cells are in flight
    while not (records or (len(executor.running()) == 2 and executor.running()[0][1]
                           < time.monotonic() - 20)):
        assert time.monotonic() < deadline and driver.is_alive()
        time.sleep(0.02)
    workers = [p for p in multiprocessing.active_children() if p.name.startswith("Spawn")]
    assert workers
    os.kill(workers[0].pid, signal.SIGKILL)
    driver.join(timeout=120)
    assert not driver.is_alive()
    assert len(breaks) == 1 and breaks[0]  # the pool broke once, with cells in flight
    assert sorted(r.key for r in records) == sorted(c.key() for c in cells)
    assert [r.status for r in records if r.status in ("error", "oom")] == []
    assert executor.running() == []


def test_a_cell_that_kills_its_worker_gets_an_error_record(monkeypatch):
    """The pool logic, without processes: a pass that breaks with two cells in flight reruns
    each alone; the one that breaks its pool again is recorded as an error."""
    spec = load_spec(TINY, "test")
    good, bad, other = spec.cells()[:3]
    passes = []

    def fake_pool(self, pending, workers, gpus, acquire):
        passes.append([c.key() for c in pending])
        if len(passes) == 1:  # the first pass breaks with good and bad in flight
            pending.popleft(), pending.popleft()
            return [good, bad]
            yield  # a generator, like the real one
        while pending:
            cfg = pending.popleft()
            if cfg is bad:
                return [bad]
            yield seqbench.sweeps.executors.new_record(cfg)
        return []

    monkeypatch.setattr(LocalExecutor, "_pool", fake_pool)
    records = list(LocalExecutor(workers=2).run([good, bad, other]))
    assert [(r.key, r.status) for r in records] == [
        (good.key(), "budget"), (bad.key(), "error"), (other.key(), "budget")]
    assert "worker process running this cell died" in records[1].error
    assert passes == [[c.key() for c in (good, bad, other)], [good.key()], [bad.key()],
                      [other.key()]]
