"""Measurement on CUDA: event timing, cuDNN recurrent kernels, peak allocator memory, bf16
autocast, FLOP counts the counter cannot see, and recovery after an out-of-memory point (skipped
without a GPU).

As on CPU, no speed is asserted: only positive, mutually consistent figures and exact counts.
"""
from __future__ import annotations

import pytest
import torch
from conftest import TINY_PARAMS

from seqbench.measure import timing
from seqbench.measure.point import Harness, MeasurePoint, measure, rnn_flops, train_flops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BATCH = 4
GIB = 1 << 30


def point(model: str = "lstm", length: int = 64, **kw) -> MeasurePoint:
    return MeasurePoint(**{"model": model, "length": length, "batch_size": BATCH,
                           "params": TINY_PARAMS, "device": "cuda"} | kw)


def test_cuda_time_blocks_uses_events(monkeypatch):
    real, created = torch.cuda.Event, []

    def counting(*args, **kwargs):
        event = real(*args, **kwargs)
        created.append(event)
        return event

    monkeypatch.setattr(torch.cuda, "Event", counting)
    a = torch.randn(256, 256, device="cuda")
    t = timing.time_blocks(lambda: a @ a, "cuda", blocks=5, min_block_s=0.001)
    assert len(t.samples) == 5 and all(s > 0 for s in t.samples)
    assert len(created) == 2 * 5  # a start and an end event around each block
    assert t.median > 0 and t.iqr >= 0


def test_lstm_point_on_cuda():
    """cuDNN LSTM: event-timed medians, peak memory above the model, flags of the CUDA run."""
    r = measure(point("lstm", 64), blocks=5)
    assert (r.status, r.error) == ("ok", None)
    tokens = BATCH * 64
    assert r.train_ms > 0 and r.infer_ms > 0 and r.train_ms_iqr >= 0
    assert r.train_tokens_per_s == pytest.approx(tokens / (r.train_ms / 1e3), rel=1e-9)
    assert r.infer_tokens_per_s == pytest.approx(tokens / (r.infer_ms / 1e3), rel=1e-9)
    assert r.train_peak_allocated > 0 and r.infer_peak_allocated > 0
    assert r.train_peak_reserved >= 0 and r.infer_peak_reserved >= 0
    assert r.rss_growth_bytes is None  # a CPU figure
    assert r.saved_bytes > 0 and r.train_flops > 0 and r.data_gen_fraction > 0
    assert r.flags["cudnn_enabled"] is torch.backends.cudnn.enabled
    assert r.flags["tf32_matmul"] is torch.backends.cuda.matmul.allow_tf32
    assert r.flags["autocast_bf16"] is False
    assert r.env["device"] == "cuda" and r.env["gpu"] == torch.cuda.get_device_name()
    assert r.env["cudnn"] == torch.backends.cudnn.version()


def test_cuda_peak_memory_is_recorded_and_grows_with_length():
    """A point large enough that its activations need segments of their own: reserved is counted
    from the segments holding the model, so it is positive too."""
    small, large = (measure(point("lstm", n, batch_size=64, params=20_000), blocks=5)
                    for n in (128, 512))
    for r in (small, large):
        assert r.status == "ok", r.error
        assert r.train_peak_allocated > 0 and r.train_peak_reserved > 0
        assert r.infer_peak_allocated > 0
    assert large.train_peak_allocated > small.train_peak_allocated
    assert large.infer_peak_allocated > small.infer_peak_allocated
    assert large.saved_bytes > small.saved_bytes


@pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(),
                    reason="needs a GPU with bf16")
@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_bf16_autocast_on_cuda(model):
    fp32 = measure(point(model, 64), blocks=5)
    bf16 = measure(point(model, 64, dtype="bf16"), blocks=5)
    assert fp32.status == "ok", fp32.error
    assert bf16.flags["autocast_bf16"] is True and bf16.point["dtype"] == "bf16"
    assert "tf32_matmul" in bf16.flags and "cudnn_benchmark" in bf16.flags
    if model == "lstm" and torch.backends.cudnn.version() < 91300:
        # cuDNN's RNNs take bf16 from 9.13 on; before, a failure must be recorded, not raised
        assert bf16.status in ("ok", "error")
        if bf16.status == "error":
            return
    assert bf16.status == "ok", bf16.error
    assert bf16.train_ms > 0 and bf16.infer_ms > 0 and bf16.train_peak_allocated > 0
    assert bf16.train_flops > 0 and bf16.saved_bytes > 0
    if model == "transformer":  # autocast ran: matmul activations saved in bf16
        assert bf16.saved_bytes < fp32.saved_bytes


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_cudnn_rnn_flops_are_counted_analytically(model):
    """The counter does not see cuDNN's fused RNN: 3x the analytic forward plus the head."""
    h = Harness(point(model, 16))
    head = h.model.head
    head_flops = 3 * 2 * BATCH * 16 * head.in_features * head.out_features
    assert train_flops(h) == 3 * rnn_flops(h.model, BATCH, 16) + head_flops


def test_transformer_flops_on_cuda_count_attention():
    flops = {n: train_flops(Harness(point("transformer", n))) for n in (8, 16, 32)}
    assert 0 < flops[8] < flops[16] < flops[32]
    # linear terms cancel in f(2n) - 2 f(n); attention leaves a quadratic (ratio 4 per doubling)
    assert flops[32] - 2 * flops[16] == 4 * (flops[16] - 2 * flops[8]) > 0


def test_oom_is_recorded_and_the_next_point_still_measures():
    measure(point("lstm", 16), blocks=5)  # warm: context, cuBLAS/cuDNN handles and workspaces
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    # data fits (8 GiB of tokens); the 32 GiB embedded activations overflow the GPU a few
    # operations in, on an 80 GiB H100 and a 141 GiB H200 alike
    huge = point("transformer", 1 << 14, batch_size=1 << 16)
    r = measure(huge, blocks=5)
    assert r.status == "oom", r.error
    assert "out of memory" in r.error.lower() or r.error.startswith("OutOfMemoryError")
    assert r.train_ms is None and r.train_peak_allocated is None
    assert r.key == huge.key()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + GIB  # nothing of the failed point is kept
    after = measure(point("lstm", 64), blocks=5)
    assert after.status == "ok", after.error
    assert after.train_ms > 0 and after.train_peak_allocated > 0
