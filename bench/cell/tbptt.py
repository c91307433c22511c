"""Truncated backpropagation through time (Williams & Peng 1990; the k1/k2 notation of Sutskever
2013, "Training Recurrent Neural Networks", sec. 2.8.6): the sequence is run forward in chunks of
k time steps, each chunk from the state the previous one ended in, detached, so gradients flow
back at most to the start of the chunk they arise in. Here k1 = k2 = k (train.tbptt = k): every
chunk is backpropagated over its own k steps.

A training step (one batch of sequences, as without TBPTT) runs its chunks in order through the
model's forward_from(x, state) (seqbench.models.base), the loss of each chunk being the task's
loss over the positions in it (Task.loss_terms):
- "sequence" updates (default): each chunk backpropagates its summed loss divided by the count
  over the whole sequence, so the gradients accumulated over the chunks are those of the
  sequence's mean loss, minus every path that crosses a chunk boundary; one optimiser step
  (clipping at the global norm of the summed gradient).
- "chunk" updates: one optimiser step per chunk, on the chunk's own mean loss (the state carried
  on into the next chunk, as in streaming training).
A chunk holding no position of the loss only carries the state on (forward under no_grad): for a
task read at the last step, every chunk but the last; with sequence updates on a task scored at
some steps only, those chunks are backpropagated with a zero loss (where they lie is data on the
device, and asking would cost a synchronisation); with chunk updates there the host reads which
chunks hold scored positions (batch.mask: one synchronisation per step, the only one), since an
AdamW step on a zero gradient would still move the weights along its momentum.

So a final-readout task whose dependency spans more than k steps (adding's first marker, copy's
symbols) cannot be learnt: no gradient connects the answer to it. With k >= the sequence's steps
there is one chunk and the step is plain training, the same code path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils._pytree import tree_map

from seqbench.tasks import Batch, Task

if TYPE_CHECKING:
    from seqbench.cell.step import TrainStep


def bounds(steps: int, k: int) -> list[tuple[int, int]]:
    """The chunks [start, end) of a sequence of `steps` time steps, k at a time."""
    return [(s, min(s + k, steps)) for s in range(0, steps, k)]


def detach(state: Any) -> Any:
    """A carried state (a tensor or nested tuples of them) cut from the graph."""
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, state)


def part(batch: Batch, start: int, end: int) -> Batch:
    """The time steps [start, end) of a per-step batch."""
    mask = None if batch.mask is None else batch.mask[:, start:end]
    return Batch(batch.inputs[:, start:end], batch.targets[:, start:end], mask)


def carrying(task: Task, batch: Batch, chunks: list[tuple[int, int]], per_chunk: bool
             ) -> list[bool]:
    """Which chunks hold positions of the loss (module docstring)."""
    last = len(chunks) - 1
    if task.readout == "final":
        return [i == last for i in range(len(chunks))]
    if task.loss_on == "all" or not per_chunk:
        return [True] * len(chunks)
    scored = batch.mask.any(0)  # (L,) on the device
    return torch.stack([scored[s:e].any() for s, e in chunks]).tolist()  # one synchronisation


def truncated_step(step: TrainStep, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One TBPTT training step on batch: (the batch's mean loss, detached; whether every update's
    gradient norm was finite)."""
    task, model = step.task, step.model
    chunks = bounds(batch.inputs.shape[1], step.tbptt)
    per_chunk = step.tbptt_update == "chunk"
    count = task.loss_count(batch)
    total, finite, state = 0.0, step.finite_true, None
    if not per_chunk:
        step.opt.zero_grad(set_to_none=True)
    for (start, end), carries in zip(chunks, carrying(task, batch, chunks, per_chunk),
                                     strict=True):
        x = batch.inputs[:, start:end]
        if not carries:
            with torch.no_grad(), step.autocast:
                state = model.forward_from(x, state)[1]
            continue
        with step.autocast:
            out, new = model.forward_from(x, state)
            terms, n = task.loss_terms(out, batch if task.readout == "final" else
                                       part(batch, start, end))
        if per_chunk:
            step.opt.zero_grad(set_to_none=True)
            step.backward(terms / n)
            finite = finite & step.update()
        else:
            step.backward(terms / count)
        total = total + terms.detach()
        state = detach(new)
    if not per_chunk:
        finite = step.update()
    return total / count, finite
