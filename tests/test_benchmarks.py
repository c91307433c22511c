"""Microbenchmarks (pytest-benchmark): each model's training step and inference forward at a few
small lengths, and every task's batch generation.

In the normal test run they are disabled (`--benchmark-disable` in pyproject's addopts): each body
runs once, a quick smoke check. `tox -e bench` enables them with warm-up and saves the results to
.benchmarks/; compare with a saved run through posargs, e.g.
`tox -e bench -- --benchmark-compare --benchmark-compare-fail=median:25%`.
Sequence length, tokens per call and (for training) the bytes saved for backward go into each
result's extra_info.
"""
from __future__ import annotations

import pytest
import torch

from seqbench.measure.memory import saved_bytes
from seqbench.measure.point import Harness, MeasurePoint
from seqbench.models import FAMILIES
from seqbench.strict import ConfigError
from seqbench.tasks import TASKS, get_task

pytestmark = pytest.mark.benchmark

LENGTHS = (16, 64, 256)
BATCH = 16
PARAMS = 20_000


def harness(model: str, length: int) -> Harness:
    h = Harness(MeasurePoint(model=model, length=length, batch_size=BATCH, params=PARAMS))
    h.train_step()  # optimiser state exists from here on, as in seqbench.measure.point
    return h


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_train_step(benchmark, model, length):
    h = harness(model, length)
    benchmark.group = f"train L={length}"
    h.opt.zero_grad(set_to_none=True)
    benchmark.extra_info |= {
        "model": model, "seq_len": h.seq_len, "batch_size": BATCH,
        "tokens": BATCH * h.seq_len,
        "saved_bytes": saved_bytes(h.forward_backward, list(h.model.parameters())),
    }
    h.opt.zero_grad(set_to_none=True)
    benchmark(h.train_step)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in h.model.parameters())


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_inference(benchmark, model, length):
    h = harness(model, length)
    h.model.eval()
    benchmark.group = f"infer L={length}"
    benchmark.extra_info |= {"model": model, "seq_len": h.seq_len, "batch_size": BATCH,
                             "tokens": BATCH * h.seq_len}
    benchmark(h.infer_step)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", sorted(TASKS))
def test_batch_generation(benchmark, name, length):
    task = get_task(name)
    try:
        task.check_length(length)
    except ConfigError as exc:  # assoc_recall has at most 128 pairs
        pytest.skip(f"{name} does not take length {length}: {exc}")
    gen = torch.Generator().manual_seed(0)
    benchmark.group = f"data L={length}"
    benchmark.extra_info |= {"task": name, "seq_len": task.seq_len(length),
                             "batch_size": BATCH}
    batch = benchmark(task.sample, length, BATCH, gen, "cpu")
    assert batch.inputs.shape[:2] == (BATCH, task.seq_len(length))
