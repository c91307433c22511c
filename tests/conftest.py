"""Shared helpers for the seqbench test suite.

The suite runs on a small shared CPU: torch is pinned to one intra-op thread (several threads on
two contended cores are many times slower for these tiny models, and results do not depend on it).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
import scipy.stats
import torch

from seqbench.cell.config import CellConfig, display_of
from seqbench.cell.record import CellRecord
from seqbench.tasks import TASKS, Task, get_task
from seqbench.testing import perfect_outputs, sample  # noqa: F401 - shared with the task tests

torch.set_num_threads(1)

# A tiny training budget: a few steps, small batches, a small held-out set.
TINY_TRAIN = {"steps": 4, "batch_size": 8, "lr": 3e-3, "eval_every": 2, "eval_samples": 16}
TINY_PARAMS = 2000


def make_cell(task: str = "parity", model: str = "rnn", length: int = 2, *, seed: int = 0,
              params: int = TINY_PARAMS, hparams: dict | None = None, device: str = "cpu",
              **train: Any) -> CellConfig:
    """A strictly parsed cell config with the tiny training budget, overridable per key."""
    return CellConfig.from_dict({
        "task": task, "model": model, "length": length, "seed": seed, "params": params,
        "device": device, "train": TINY_TRAIN | train, "hparams": hparams or {},
    })


def record_for(cfg: CellConfig, status: str = "budget", **fields: Any) -> CellRecord:
    """A stored-looking record of cfg (no training): its key, config and task facts, the given
    status and any other fields."""
    t = get_task(cfg.task)
    payload = cfg.payload()
    return CellRecord(**{
        "key": cfg.key(), "config": cfg.to_dict(), "key_payload": payload,
        "task_version": payload["task_version"], "model_version": payload["model_version"],
        "status": status, "seq_len": t.seq_len(cfg.length), "params_actual": cfg.params,
        "steps": cfg.train.steps, "score_name": t.score_name, "chance": t.chance(cfg.length),
        "solve_threshold": t.solve_threshold, "solved": status == "solved",
        "env": {"device": cfg.device}, **display_of(cfg.model, cfg.task)} | fields)


def shown(values: list[float], k: int) -> str:
    """The accuracy-table text of seeds with these scores, k of them solved: mean ±half-width of
    the 95% Student t interval (scipy's quantile), then k/n."""
    n, mean = len(values), sum(values) / len(values)
    half = scipy.stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return f"{mean:.3f} ±{half:.3f} {k}/{n}"


def fake_record(task: str, model: str, length: int, score: float | None, *, seed: int = 0,
                status: str = "budget") -> CellRecord:
    """A stored-looking record with a chosen score, for report and store tests (no training)."""
    return record_for(make_cell(task, model, length, seed=seed), status, score=score)


@pytest.fixture(params=sorted(TASKS))
def task(request) -> Task:
    """Every registered task."""
    return get_task(request.param)


def wrong_test_labels(monkeypatch) -> None:
    """Make every test-set label of a two-class task wrong in the cells run from now on (the
    validation sets and every input unchanged)."""
    import dataclasses

    import seqbench.cell.train as train

    original = train.held_out

    def wrong(task, cfg, stream="test", length=None, samples=None):
        batches = original(task, cfg, stream, length, samples)
        if stream != "test":
            return batches
        return [dataclasses.replace(b, targets=1 - b.targets) for b in batches]

    monkeypatch.setattr(train, "held_out", wrong)


def spy_on_run_cell(monkeypatch) -> list[CellConfig]:
    """Record the config of every cell the executors run (still running it)."""
    import seqbench.sweeps.executors
    from seqbench.cell.train import run_cell

    calls = []

    def spy(cfg):
        calls.append(cfg)
        return run_cell(cfg)

    monkeypatch.setattr(seqbench.sweeps.executors, "run_cell", spy)
    return calls


def expect_rejected(capsys, argv: list[str], *fragments: str) -> str:
    """`seqbench` main(argv) exits 2 with one error line on stderr holding every fragment."""
    from seqbench.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("seqbench: error: ") and captured.err.count("\n") == 1
    for fragment in fragments:
        assert fragment in captured.err
    return captured.err
