"""Preflight: before any cell of a sweep runs, estimate each cell's memory and refuse a sweep with a
cell that cannot fit the machine, naming the field to change (seqbench sweep --force skips it).

The estimate covers the terms that dominate a training step's peak:

* parameters: 16 bytes per parameter of the budget (fp32 weights, gradients and AdamW's two
  moment buffers, torch.optim.AdamW);
* activations: the bytes autograd saves for backward (seqbench.measure.memory.saved_bytes) in a
  forward and backward of one sequence through the cell's own model, built on the CPU for the
  cell's longest length, measured at 16, 32 and 64 steps (fewer where the sequence is shorter) and
  fitted as c + a n + b n^2 per sequence (b, the attention matrices' share, only where the three
  points curve upwards; else a line through the last two), then taken at the batch size and the
  longest training sequence: c + batch x (a S + b S^2). Budgets above MEASURED_PARAMS are measured
  at MEASURED_PARAMS with c and a scaled by sqrt(params / MEASURED_PARAMS) (width grows as the
  square root of the parameters at a fixed depth);
* the held-out set, which stays in memory: eval_samples sequences as the task generates them
  (inputs, targets, mask), plus, for length generalisation, `samples` sequences at the longest test
  length; and the outputs of one evaluation chunk (EVAL_CHUNK sequences x steps x outputs, fp32).

The activation fit comes within 20% of the bytes autograd saves for the real batch
(tests/test_hardening.py: above it only for the LRU, whose parallel scan grows as n log n). The
estimate leaves out allocator overhead, backend workspaces (oneDNN, cuDNN), gradient buffers during
the backward pass and the CUDA context, so the real peak is higher: a refused cell cannot fit (up
to the fit's error); a passed cell can still end as `oom`. The limit is this machine's available memory (MemAvailable, or
the cgroup's remaining limit where lower) for CPU cells, and the smallest visible GPU's total memory
for CUDA cells. The driver checks only cells that run here (the local executor): a Ray cluster's
nodes are not this machine, and there only the config's bounds apply (seqbench.cell.config).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from seqbench.cell.config import CellConfig
from seqbench.strict import ConfigError
from seqbench.sweeps.spec import Label, SweepSpec
from seqbench.tasks import get_task

MEASURED_PARAMS = 10_000_000
FIT_LENGTHS = (16, 32, 64)
PARAMETERS, ACTIVATIONS, HELD_OUT = "parameters and AdamW state", "activations", "held-out set"


@dataclass(frozen=True)
class Estimate:
    """A cell's memory estimate, by part (bytes); parts after one that already exceeds the limit
    are not computed (they would only cost time)."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def dominant(self) -> str:
        return max(self.parts, key=self.parts.get)


def size(n: float) -> str:
    for factor, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n:.0f} B"


def estimate(cfg: CellConfig, limit: float = math.inf) -> Estimate:
    """The estimate of the module docstring for one cell (stops adding parts above limit)."""
    from seqbench.cell.train import EVAL_CHUNK

    task = get_task(cfg.task)
    parts = {PARAMETERS: 16.0 * cfg.params}
    if parts[PARAMETERS] > limit:
        return Estimate(parts)
    tc = cfg.train
    longest = task.seq_len(max(cfg.train_lengths()))
    c, a, b = _per_sequence(cfg.model, cfg.hparams, cfg.params, task.io,
                            task.seq_len(cfg.max_length()))
    parts[ACTIVATIONS] = c + tc.batch_size * (a * longest + b * longest**2)
    if sum(parts.values()) > limit:
        return Estimate(parts)
    held = tc.eval_samples * _sample_bytes(cfg.task, cfg.length)
    chunk = min(EVAL_CHUNK, tc.eval_samples) * task.seq_len(cfg.length)
    g = cfg.generalise
    if g is not None:
        held += g.samples * _sample_bytes(cfg.task, max(g.lengths))
        chunk = max(chunk, min(EVAL_CHUNK, g.samples) * task.seq_len(max(g.lengths)))
    parts[HELD_OUT] = held + 4.0 * chunk * task.io.output_size
    return Estimate(parts)


@cache
def _per_sequence(family: str, hparams, params: int, io, max_len: int) -> tuple[float, ...]:
    """(c, a, b): bytes saved for backward by one sequence of n steps ~ c + a n + b n^2."""
    import numpy as np
    import torch

    from seqbench.measure.memory import saved_bytes
    from seqbench.models import build_model

    budget = min(params, MEASURED_PARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a budget the width grid misses: irrelevant here
        model = build_model(family, io, budget, hparams, max_len)
    weights = list(model.parameters())
    n = np.array(sorted({min(max_len, k) for k in FIT_LENGTHS}), dtype=float)
    s = []
    for steps in n.astype(int):
        x = (torch.zeros(1, steps, dtype=torch.long) if io.input_kind == "tokens"
             else torch.zeros(1, steps, io.input_size))
        s.append(saved_bytes(lambda x=x: model(x).float().sum().backward(), weights))
    s = np.array(s, dtype=float)
    b = 0.0
    if len(n) == 3:
        c, a, b = np.linalg.solve(np.vander(n, 3, increasing=True), s)
    if b <= 0:  # no upward curve: a line through the last two points (or the origin)
        b = 0.0
        a = (s[-1] - s[0]) / (n[-1] - n[0]) if len(n) > 1 else s[0] / n[0]
        c = s[-1] - a * n[-1]
    scale = math.sqrt(params / budget)
    return max(c, 0.0) * scale, max(a, 0.0) * scale, float(b)


@cache
def _sample_bytes(task_name: str, length: int) -> int:
    """Bytes of one generated sequence of the task (inputs, targets, mask), as held in memory."""
    import torch

    g = torch.Generator().manual_seed(0)
    batch = get_task(task_name).sample(length, 1, g, "cpu")
    return sum(t.numel() * t.element_size() for t in (batch.inputs, batch.targets, batch.mask)
               if t is not None)


def memory_limit(device: str) -> tuple[float, str] | None:
    """(bytes, description) a cell on device may use on this machine; None where unknown."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        total = min(torch.cuda.get_device_properties(i).total_memory
                    for i in range(torch.cuda.device_count()))
        return float(total), f"the GPU has {size(total)} in all"
    available = _meminfo("MemAvailable")
    cgroup = _cgroup_room()
    if cgroup is not None and (available is None or cgroup < available):
        return cgroup, f"this process's cgroup has {size(cgroup)} left"
    if available is None:
        return None
    return available, f"this machine has {size(available)} available"


def _meminfo(field: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> float | None:
    """cgroup v2 memory.max minus memory.current of this process's cgroup, where limited."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().splitlines()[0].partition("::")[2]
        folder = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return float(limit) - float((folder / "memory.current").read_text())
    except (OSError, IndexError, ValueError):
        return None


def _train_field(spec: SweepSpec, task: str, hpset: str, name: str) -> str:
    """Where the sweep file sets a training setting for a task's cells under a set."""
    if name in spec.hpsets.get(hpset, {}):
        return f"hpsets.{hpset}.{name}"
    if name in spec.task_train.get(task, {}):
        return f"task_train.{task}.{name}"
    return f"train.{name}"


def _field(spec: SweepSpec, label: Label, cfg: CellConfig, part: str) -> str:
    """The sweep-file field to change for the part of a cell's estimate that dominates."""
    if part == PARAMETERS:
        return "params"
    if part == HELD_OUT:
        g, task = cfg.generalise, get_task(cfg.task)
        own = cfg.train.eval_samples * task.seq_len(cfg.length)
        if g is not None and g.samples * task.seq_len(max(g.lengths)) > own:
            return f"generalise.{cfg.task}.samples"
        return _train_field(spec, cfg.task, label.hpset, "eval_samples")
    lengths = spec.lengths_for(cfg.task)
    where = f"lengths.{cfg.task}" if isinstance(spec.lengths, dict) else "lengths"
    return f"{where}[{lengths.index(cfg.length)}]"


def check_memory(spec: SweepSpec, cells: list[tuple[Label, CellConfig]],
                 limit: tuple[float, str] | None) -> None:
    """Raise ConfigError naming a field, with the estimate, if a cell cannot fit within limit."""
    if limit is None:
        return
    room, where = limit
    too_big = []
    for label, cfg in cells:
        est = estimate(cfg, room)
        if est.total > room:
            too_big.append((label, cfg, est))
    if not too_big:
        return
    label, cfg, est = max(too_big, key=lambda item: item[2].total)
    parts = ", ".join(f"{name} {size(v)}" for name, v in est.parts.items())
    name = label.variant or cfg.model
    more = f" ({len(too_big) - 1} more cells do not fit either)" if len(too_big) > 1 else ""
    raise ConfigError(
        f"{_field(spec, label, cfg, est.dominant)}: cell {cfg.task} {name} L={cfg.length} "
        f"(batch {cfg.train.batch_size}) needs at least {size(est.total)} ({parts}) but {where}"
        f"{more}; make it smaller, or pass --force to run anyway (it would end as `oom`)")
