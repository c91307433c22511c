"""Several cells per GPU: how many a sweep packs onto each GPU by default, and which GPU each
worker process gets.

A cell of the shipped presets (20K-70K parameters) keeps a large GPU mostly idle: its step is a
few hundred small kernels whose launch, and the Python around it, take longer than the kernels
themselves. Several cells per GPU, each in its own worker process, fill the gaps: one process's
host work overlaps another's kernels. Without CUDA MPS the GPU runs the kernels of one process
(context) at a time, time-sliced between them; with MPS (`nvidia-cuda-mps-control -d`) kernels of
different processes run at once (NVIDIA, "Multi-Process Service", When to Use MPS). Packing
never needs MPS.

The default number of cells per GPU (cells_per_gpu) is the smallest of:

* MAX_CELLS_PER_GPU (8): a starting point, not a measured optimum; the cells/hour that
  `scripts/gpu_check.sh --packing 1,2,4,8` measures on a given GPU is what should refine it;
* what memory allows: FREE_FRACTION of the smallest visible GPU's free memory over
  ESTIMATE_MARGIN x the largest cell's preflight estimate (seqbench.sweeps.preflight, which leaves
  out allocator overhead and workspaces) plus CONTEXT_BYTES per process (the CUDA context, cuBLAS
  and cuDNN workspaces: an allowance, not measured here);
* what the cores allow: this process's cores / (GPUs x threads per cell), since every worker
  keeps one core busy launching kernels;

and at least 1. Free memory is read in a short child process (torch.cuda.mem_get_info), so the
sweep's driver holds no CUDA context on any GPU while its cells run.

Worker slots (slots): worker i of a pool gets GPU i mod n of the n visible ones; its slot says how
many of the pool's workers share that GPU (on the CPU: the pool's memory, shared by all workers).
A cell that runs out of memory while sharing is run again alone (seqbench.sweeps.executors).
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from seqbench.cell.config import CellConfig
from seqbench.env import usable_cores
from seqbench.sweeps.preflight import estimate, size

MAX_CELLS_PER_GPU = 8
FREE_FRACTION = 0.9  # of a GPU's free memory, the rest left to fragmentation and other users
ESTIMATE_MARGIN = 2.0  # a cell is given twice its preflight estimate
CONTEXT_BYTES = float(1 << 30)  # per worker process: CUDA context and library workspaces
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Slot:
    """A pool worker's place: its CUDA_VISIBLE_DEVICES entry (None for CPU cells) and how many
    of the pool's workers share that device (this one included)."""

    gpu: str | None
    sharing: int


def slots(workers: int, gpus: Sequence[str]) -> list[Slot]:
    """The slot of each of `workers` workers: GPUs round-robin, or the CPU shared by all."""
    if not gpus:
        return [Slot(None, workers)] * workers
    assigned = [gpus[i % len(gpus)] for i in range(workers)]
    counts = Counter(assigned)
    return [Slot(gpu, counts[gpu]) for gpu in assigned]


@dataclass(frozen=True)
class Choice:
    """The cells per GPU chosen and why (one line for the sweep to print)."""

    cells_per_gpu: int
    why: str


def cells_per_gpu(largest_estimate: float, free: float | None, cores: int, gpus: int,
                  threads: int = 1) -> Choice:
    """The rule of the module docstring. free: the smallest visible GPU's free bytes (None:
    unknown, then one cell per GPU)."""
    if free is None:
        return Choice(1, "1 cell per GPU: the GPUs' free memory could not be read")
    need = ESTIMATE_MARGIN * largest_estimate + CONTEXT_BYTES
    by_memory = int(FREE_FRACTION * free // need)
    by_cores = cores // max(1, gpus * threads)
    n = max(1, min(MAX_CELLS_PER_GPU, by_memory, by_cores))
    return Choice(n, (
        f"{n} cell(s) per GPU: the smallest of the cap {MAX_CELLS_PER_GPU}, memory "
        f"{by_memory} ({FREE_FRACTION:g} x {size(free)} free / ({ESTIMATE_MARGIN:g} x "
        f"{size(largest_estimate)}, the largest cell's estimate, + {size(CONTEXT_BYTES)} per "
        f"process)) and cores {by_cores} ({cores} cores / ({gpus} GPU(s) x {threads} "
        f"thread(s)))"))


_PROBE = ("import json, torch; print(json.dumps([torch.cuda.mem_get_info(i)[0] "
          "for i in range(torch.cuda.device_count())]))")


def free_gpu_memory() -> list[int] | None:
    """Free bytes of each visible GPU, read in a child process (so this one holds no CUDA
    context); None where that fails."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S, check=True)
        free = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return [int(f) for f in free] or None


def choose(cells: Sequence[CellConfig], threads: int = 1) -> Choice:
    """The default cells per GPU for a CUDA sweep's cells on this machine."""
    import torch

    gpus = torch.cuda.device_count()
    free = free_gpu_memory()
    largest = max(estimate(cfg).total for cfg in cells)
    return cells_per_gpu(largest, min(free) if free else None, usable_cores(),
                         gpus, threads)
