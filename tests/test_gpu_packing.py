"""Several cells per GPU on CUDA: a packed sweep, a real out-of-memory in a worker that leaves it
usable, and a packed cell's OOM rerun alone (skipped without a GPU; the CPU side of the same
logic: tests/test_packing.py)."""
from __future__ import annotations

import pytest
import torch
from conftest import make_cell

import seqbench.sweeps.executors as ex
from seqbench.sweeps.driver import run_sweep
from seqbench.sweeps.executors import LocalExecutor, run_here, visible_gpus
from seqbench.sweeps.spec import load_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PACKED = """
name = "packed"
device = "cuda"
tasks = ["parity", "copy"]
models = ["rnn", "lstm", "gru", "transformer"]
lengths = { parity = [8], copy = [10] }
params = 5000
[train]
steps = 20
batch_size = 16
eval_every = 10
eval_samples = 32
"""


def test_a_packed_sweep_runs_two_cells_on_each_gpu(tmp_path):
    spec = load_spec(PACKED, "test")
    gpus = len(visible_gpus())
    executor = LocalExecutor(workers=2 * gpus, threads=1)
    store, statuses = run_sweep(spec, tmp_path, executor=executor)
    assert sum(statuses.values()) == len(spec.cells()) == 8
    records = store.load()
    for record in records.values():
        assert record.status in ("solved", "budget"), record.error
        assert record.env["device"] == "cuda" and record.env["cells_per_gpu"] == 2
        assert record.train_tokens_per_s > 0 and record.attempts == []
    assert executor.describe()["cells_per_gpu"] == 2
    assert '"cells_per_gpu": 2' in (store.root / "env.json").read_text()


def test_a_cuda_oom_leaves_the_worker_usable():
    """A cell that overflows the GPU is recorded as out of memory; afterwards nothing of it is
    allocated or cached, and the next cell in the same process trains normally."""
    run_here(make_cell("parity", "lstm", 4, device="cuda"), 2)  # warm: context and handles
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    # a 2k-parameter Transformer at 2^16 steps: the held-out set and the gradient-flow batch fit,
    # the attention of a training batch of 4096 sequences does not (any GPU up to 141 GiB)
    huge = make_cell("parity", "transformer", 1 << 16, device="cuda", batch_size=4096,
                     eval_samples=16)
    record = run_here(huge, 2)
    assert ex.out_of_memory(record), record.error  # oom, or a CUDA library's allocation failure
    assert record.env["cells_per_gpu"] == 2
    torch.cuda.synchronize()
    slack = 64 << 20  # library workspaces a new kernel may have set up
    assert torch.cuda.memory_allocated() <= allocated + slack
    assert torch.cuda.memory_reserved() <= reserved + slack  # the allocator's cache was emptied
    after = run_here(make_cell("parity", "gru", 4, device="cuda"), 2)
    assert after.status in ("solved", "budget"), after.error


def test_a_packed_oom_reruns_alone_on_cuda(tmp_path, monkeypatch):
    """Real CUDA workers, 2 per GPU, the TEST-ONLY hook making GRU cells run out of memory while
    they share a GPU: they rerun with the GPU to themselves (cells_per_gpu 1), keeping the shared
    failure in attempts; the other cells are untouched."""
    monkeypatch.setenv(ex.OOM_HOOK_ENV, "gru")
    spec = load_spec(PACKED, "test")
    store, _ = run_sweep(spec, tmp_path, executor=LocalExecutor(2 * len(visible_gpus()), 1))
    for record in store.load().values():
        assert record.status in ("solved", "budget"), record.error
        shared = record.family == "gru"
        assert record.env["cells_per_gpu"] == (1 if shared else 2)
        assert [a["status"] for a in record.attempts] == (["oom"] if shared else [])
