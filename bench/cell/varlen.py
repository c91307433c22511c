"""Variable-length training batches: each sequence its own length, right-padded to the batch's
width, with its lengths in Batch.lengths (seqbench.tasks.base).

The distribution (train.length_spread = s): with N the cell's length, every training sequence's
length is drawn independently and uniformly from the task's valid lengths in
[max(min_length, ceil((1 - s) N)), N] (dyck: the even ones), so the batch mixes lengths and the
mean padding is about s / 2 of the width. One knob rather than a choice of distributions: the
uniform range is the common setting of padded-vs-packed comparisons, s = 0 is today's fixed
length, and every (s, N) names one distribution, so no two keys mean the same experiment.
Evaluation stays at N.

A sequence of length n is the task's own instance at n (its sampler at n: copy's recall steps are
its own last ten, adding's target is read at its own last step), padded on the right to the width
seq_len(N): inputs with zeros, per-step targets with the loss's ignore index, the mask with
False. So the loss and the score read each sequence at its own positions only (Task._readout
gathers a final readout at lengths - 1), and a right-padded causal model's outputs at the real
steps do not depend on the padding. Cost, on the host: the lengths of a block of training steps
(seqbench.cell.step.block_steps) are drawn at once on the host (TrainStep's host stream), one
sampler call per distinct length in the block, then one gather puts the rows back in their
drawn order (its index reaches the device from pinned memory without a synchronisation).

Bucketing (measurement only, seqbench.measure: batching = bucketed): the block's rows sorted by
length before they are cut into batches, each batch cut to its own longest row, so padding is
small but the lengths within a batch are correlated (the standard bucket iterator's trade-off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seqbench.tasks import Batch, Task
from seqbench.tasks.base import IGNORE


@dataclass(frozen=True)
class VarLen:
    """How training batches get lengths of their own: spread s (module docstring), whether the
    model runs them packed, and whether they are bucketed (measurement only)."""

    spread: float
    packed: bool = False
    bucketed: bool = False

    def choices(self, task: Task, length: int) -> list[int]:
        """The lengths a sequence may have: the task's valid lengths in [(1 - s) N, N]."""
        low = max(task.min_length, math.ceil((1 - self.spread) * length))
        return [n for n in range(low, length + 1) if task.accepts(n)]

    def mean_tokens(self, task: Task, length: int, batch_size: int) -> float:
        """The expected time steps of a batch's real (unpadded) positions."""
        steps = [task.seq_len(n) for n in self.choices(task, length)]
        return batch_size * sum(steps) / len(steps)

    def draw(self, task: Task, length: int, batch_size: int, steps: int, gen: torch.Generator,
             host: torch.Generator, device) -> list[tuple[Batch, int]]:
        """`steps` batches with their real time steps (a host count), in order: lengths drawn on
        the host stream `host`, sequences on the device stream `gen`."""
        choices = torch.tensor(self.choices(task, length))
        picks = choices[torch.randint(len(choices), (steps * batch_size,), generator=host)]
        if self.bucketed:
            picks = picks.sort().values
        order = torch.argsort(picks, stable=True)
        sizes, counts = torch.unique_consecutive(picks[order], return_counts=True)
        width = task.seq_len(length)
        parts = [pad(task.sample(n, c, gen, device), task.seq_len(n), width)
                 for n, c in zip(sizes.tolist(), counts.tolist(), strict=True)]
        block = [None if p[0] is None else torch.cat(p) for p in zip(*parts, strict=True)]
        if not self.bucketed:  # back to the drawn order: row i of the block is sequence i
            where = torch.empty_like(order)
            where[order] = torch.arange(len(order))
            index = to_device(where, device)
            block = [None if t is None else t.index_select(0, index) for t in block]
        real = torch.tensor([task.seq_len(n) for n in picks.tolist()]).view(steps, batch_size)
        out = []
        for k in range(steps):
            rows = slice(k * batch_size, (k + 1) * batch_size)
            fields = [None if t is None else t[rows] for t in block]
            if self.bucketed:  # cut to the batch's longest row
                fields = trim(fields, int(real[k].max()))
            out.append((Batch(*fields), int(real[k].sum())))
        return out


def pad(batch: Batch, steps: int, width: int) -> tuple:
    """(inputs, targets, mask, lengths) of a batch of `steps` time steps right-padded to width."""
    extra = width - steps
    inputs = F.pad(batch.inputs, (0, 0, 0, extra) if batch.inputs.dim() == 3 else (0, extra))
    per_step = batch.targets.dim() == 2
    targets = F.pad(batch.targets, (0, extra), value=IGNORE) if per_step else batch.targets
    mask = None if batch.mask is None else F.pad(batch.mask, (0, extra), value=False)
    lengths = torch.full((len(inputs),), steps, dtype=torch.long, device=inputs.device)
    return inputs, targets, mask, lengths


def trim(fields: list, width: int) -> list:
    """(inputs, targets, mask, lengths) cut to the first `width` time steps."""
    inputs, targets, mask, lengths = fields
    return [inputs[:, :width], targets[:, :width] if targets.dim() == 2 else targets,
            None if mask is None else mask[:, :width], lengths]


def to_device(host: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on the device without a synchronisation: from pinned memory, non-blocking,
    on CUDA (a pageable copy would wait for the stream)."""
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
