"""Memory accounting for one step: what each number means is stated where it is measured.

- saved_bytes: bytes of the distinct tensor storages autograd saves for backward during the step
  (activation memory), parameters excluded; measured with torch.autograd.graph.saved_tensors_hooks.
  Exact for what autograd keeps; it does not see backend workspaces (oneDNN, cuDNN).
- cuda_peak: torch.cuda.max_memory_allocated (live tensors) and max_memory_reserved (allocator
  cache) during the step, above what was allocated before it (parameters, gradients, optimiser
  state; the cache is emptied first, so reserved is measured from the segments holding those);
  neither includes the CUDA context.
- rss_growth_bytes: growth of the process's peak resident set (VmHWM) during one step, measured in
  a fresh subprocess after warm-up, with the high-water mark reset by writing 5 to
  /proc/self/clear_refs. It sees everything the CPU allocators touch (oneDNN workspaces included),
  and nothing that is allocated but never touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch


def saved_bytes(step: Callable[[], object], params: list[torch.Tensor]) -> int:
    """Bytes of distinct non-parameter storages saved for backward while step() runs."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def cuda_peak(step: Callable[[], object], device: str | torch.device) -> tuple[int, int]:
    """Peak allocated and reserved bytes during step(), above the allocation before it."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # else blocks cached by earlier steps hide the step's reservations
    base_alloc = torch.cuda.memory_allocated(device)
    base_reserved = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (
        torch.cuda.max_memory_allocated(device) - base_alloc,
        torch.cuda.max_memory_reserved(device) - base_reserved,
    )


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def rss_growth_in_process(step: Callable[[], object], warmup: int = 2) -> int | None:
    """Peak RSS growth of one step after warm-up; None where /proc/self/clear_refs is unusable.

    Meant to run in a fresh process (see rss_growth), so earlier work does not hide the peak.
    """
    for _ in range(warmup):
        step()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        step()
        return max(0, (_status_kb("VmHWM") - before) * 1024)
    except OSError:
        return None


# glibc: a fixed mmap threshold (no dynamic raise) returns each large freed block to the OS, so the
# resident set falls back after every step and the next step's high-water mark shows its own peak
# instead of being hidden by memory the warm-up left cached in the heap.
_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def rss_growth(point: dict, timeout_s: float = 600) -> int | None:
    """Run seqbench.measure.point's point in a fresh interpreter and return its peak RSS growth."""
    out = subprocess.run(
        [sys.executable, "-m", "seqbench.measure.point", "--rss-child", json.dumps(point)],
        capture_output=True, text=True, timeout=timeout_s, check=False, env=os.environ | _MALLOC,
    )
    if out.returncode != 0:
        raise RuntimeError(f"rss subprocess failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_growth_bytes"]
