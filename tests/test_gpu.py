"""CUDA paths: cuDNN recurrent cells and on-device batch generation (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch
from conftest import make_cell, sample

from seqbench.cell.train import run_cell
from seqbench.tasks import TASKS
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
