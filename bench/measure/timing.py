"""Timing discipline for every speed figure: warm-up, synchronised blocks, median and IQR.

A call is timed inside blocks of n calls: on CUDA between two CUDA events recorded around the block
and read after one synchronise at its end (never a synchronise inside the timed calls); on CPU with
perf_counter around the block. Warm-up calls come first, for each new shape (allocator, cuDNN
autotuning, oneDNN primitive caches). The block size is chosen so a block lasts at least
min_block_s, which keeps timer resolution and launch jitter out of the figure.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Timing:
    """Seconds per call, one sample per block."""

    samples: tuple[float, ...]
    calls_per_block: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]


def time_blocks(
    fn: Callable[[], object],
    device: str | torch.device,
    *,
    warmup: int = 3,
    blocks: int = 7,
    min_block_s: float = 0.05,
) -> Timing:
    """Time fn per call over `blocks` blocks (at least 5) after `warmup` calls."""
    if blocks < 5:
        raise ValueError(f"blocks: at least 5 are needed for a median and IQR, got {blocks}")
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    n = max(1, math.ceil(min_block_s / max(time.perf_counter() - t0, 1e-9)))
    samples = []
    for _ in range(blocks):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1000 / n)
        else:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples.append((time.perf_counter() - t0) / n)
    return Timing(tuple(samples), n)
