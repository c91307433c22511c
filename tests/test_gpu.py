"""CUDA paths: cuDNN recurrent cells, on-device batch generation, and the sync-free training step
timed with CUDA events (skipped without a GPU)."""
from __future__ import annotations

import time

import pytest
import torch
from conftest import make_cell, sample

from seqbench.cell.step import TrainStep
from seqbench.cell.train import run_cell
from seqbench.models import FAMILIES, build_model, parse_hparams
from seqbench.tasks import TASKS, get_task
from seqbench.tasks.parity import Parity

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_lstm_cell_on_cuda():
    record = run_cell(make_cell("copy", "lstm", 5, device="cuda", steps=20, eval_every=10))
    assert record.status in ("solved", "budget"), record.error
    assert record.steps == 20 and 0 <= record.score <= 1
    assert record.env["device"] == "cuda"
    assert record.env["gpu"] == torch.cuda.get_device_name()
    assert record.env["cudnn"] == torch.backends.cudnn.version()
    assert record.train_tokens_per_s > 0


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_generate_on_cuda(name):
    task = TASKS[name]()
    a, b = sample(task, 6, 16, seed=1, device="cuda"), sample(task, 6, 16, seed=1, device="cuda")
    tensors = [a.inputs, a.targets] + ([a.mask] if a.mask is not None else [])
    assert all(t.device.type == "cuda" for t in tensors)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_training_batches_are_drawn_on_cuda(monkeypatch):
    original, devices = Parity.sample, set()

    def spy(self, length, batch_size, generator, device):
        batch = original(self, length, batch_size, generator, device)
        devices.update({batch.inputs.device.type, batch.targets.device.type, generator.device.type})
        return batch

    monkeypatch.setattr(Parity, "sample", spy)
    record = run_cell(make_cell("parity", "gru", 3, device="cuda", steps=10, eval_every=5))
    assert record.status in ("solved", "budget"), record.error
    assert devices == {"cuda"}


def train_step(model: str, task: str = "parity", length: int = 32, **kw) -> TrainStep:
    t = get_task(task)
    torch.manual_seed(0)
    net = build_model(model, t.io, 5000, parse_hparams(model, {}), t.seq_len(length)).to("cuda")
    return TrainStep(net, t, lengths=[length], batch_size=16, lr=1e-3, clip=1.0, device="cuda",
                     **kw)


@pytest.mark.parametrize(("model", "task"), [(m, "parity") for m in sorted(FAMILIES)]
                         + [("lstm", "adding"), ("transformer", "cycle_nav")])
def test_train_step_never_waits_for_the_gpu(model, task):
    """40 steps (new batch blocks drawn at steps 17 and 33 included) under
    torch.cuda.set_sync_debug_mode("error"), which raises at any operation that would wait for
    the device (.item(), a copy to the host, a stream synchronisation)."""
    step = train_step(model, task)
    for _ in range(16):  # warm-up: allocator, cuDNN and cuBLAS handles
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(24):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    window = step.window()
    assert window.steps == 40 and window.first_nonfinite is None and window.seconds > 0


def test_train_steps_return_before_the_gpu_has_run_them():
    """With 0.2 s of device work queued ahead (torch.cuda._sleep), 5 steps are issued in far less
    host time than that: nothing in them waits for the queue to drain."""
    step = train_step("lstm")
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 1 << 20
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    cycles = int(cycles * 0.2 / (start.elapsed_time(end) / 1000))  # 0.2 s of sleep
    torch.cuda._sleep(cycles)
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    issued = time.perf_counter() - t0
    torch.cuda.synchronize()
    assert issued < 0.1, f"5 steps took {issued:.3f} s of host time behind a 0.2 s queue"


def test_train_step_windows_are_timed_with_cuda_events(monkeypatch):
    """Two events a step, read once per window; the window's seconds are the device time of its
    steps: positive, and at most the host time from before the first step to the window's read."""
    real, created = torch.cuda.Event, []

    def counting(*args, **kwargs):
        event = real(*args, **kwargs)
        created.append(event)
        return event

    step = train_step("gru")
    monkeypatch.setattr(torch.cuda, "Event", counting)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    window = step.window()
    wall = time.perf_counter() - t0
    assert len(created) == 2 * 10
    assert 0 < window.seconds <= wall
    assert window.tokens == 10 * 16 * 32 and window.steps == 10
    step()
    assert step.window().steps == 1 and len(created) == 22  # a new window, its own events
