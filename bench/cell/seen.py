"""Held-out sequences that training also drew: count them exactly, and keep them out of training
where that leaves the training distribution essentially unchanged.

Why: at short lengths a task has few distinct inputs (16 at parity L=4), so a model trained on
fresh batches has seen every test sequence and a "solved" cell can be a lookup table.

Seen in training. Each training row at the cell's length N is reduced on the device to a 64-bit
code, written to a preallocated device buffer (no host synchronisation per step); after training
seen_fraction (val_seen_fraction) is the fraction of test (validation) rows, with multiplicity,
whose code is among the training rows that entered a loss. Rows at other lengths (a
length-generalisation cell trains on 1..N) cannot equal a held-out row at N, and the longer test
lengths of such a cell are never trained on. The code of a row x_0 .. x_{S-1} over V tokens is
sum_t W[t, x_t] mod 2^64 (int64 arithmetic wraps), with seen_method:
- "exact" where V^S <= 2^63: W[t, v] = v V^(S-1-t), the row read as a base-V number (injective);
- "hash64" otherwise: W holds independent uniform 64-bit integers drawn once from a fixed seed
  (Zobrist hashing, Zobrist 1970, with addition in place of XOR). Two distinct rows differ at some
  step t, where W[t, a] - W[t, b] is uniform and independent of every other term, so they collide
  with probability exactly 2^-64: a test row is counted as seen by mistake with probability at most
  (training rows) 2^-64, under 4e-14 for 20K steps of 32;
- "real-valued": feature inputs are not counted, and seen_fraction is 0. In the suite that is
  `adding`, whose rows hold L >= 2 independent float32 uniforms (torch.rand: a grid of 2^24
  values), so a given row recurs with probability at most 2^(-24 L): below 3e-9 for a test row
  over 20K steps of 32. A new real-valued task must make its own argument.

Kept out of training. The held-out rows at N (validation and test) cover the fraction
heldout_coverage = (distinct held-out rows) / task.input_space(N) of the inputs (None where the
task does not enumerate them). Where it is below EXCLUDE_BELOW (1%), training leaves out every
row equal to a held-out one (test_excluded): its targets are set to the loss's ignore index, so
it enters no loss and no gradient, and training draws exactly from the task's distribution
conditioned on not being a held-out sequence (rejection sampling), at a total-variation distance
of at most the coverage (Task.input_space bounds each input's probability by 1/input_space) from
the unconditioned one; the batch is smaller by the left-out rows (under 1% on average). A batch
whose every row is held-out is kept whole (a loss needs a row), and seen_fraction would then show
it. Above the threshold the distribution is kept and seen_fraction says how much of the score
could be memorised. Only a held-out set's inputs reach training this way, never its labels.
"""
from __future__ import annotations

import dataclasses

import torch

from seqbench.tasks import Batch, Task
from seqbench.tasks.base import IGNORE

EXCLUDE_BELOW = 0.01  # keep held-out sequences out of training when they cover less than this
HASH_SEED = 0x5EED  # the fixed seed of the hash64 table (codes must not depend on the cell)


class RowCodes:
    """The 64-bit code of every row of (B, S) token inputs (see the module docstring)."""

    def __init__(self, vocab: int, seq_len: int, device):
        if vocab**seq_len <= 2**63:
            self.method = "exact"
            place = torch.tensor([vocab ** (seq_len - 1 - t) for t in range(seq_len)])
            table = place[:, None] * torch.arange(vocab)
        else:
            self.method = "hash64"
            g = torch.Generator().manual_seed(HASH_SEED)
            high, low = (torch.randint(0, 2**32, (seq_len, vocab), generator=g) for _ in "hl")
            table = high * 2**32 + low  # uniform on the 2^64 values of int64 (it wraps)
        self.table = table.flatten().to(device)
        self.offset = (torch.arange(seq_len) * vocab).to(device)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.table.take(inputs + self.offset).sum(1)


def codes(coder: RowCodes, batches: list[Batch]) -> torch.Tensor:
    return torch.cat([coder(b.inputs) for b in batches])


def without(batch: Batch, drop: torch.Tensor) -> Batch:
    """batch with the rows where drop holds left out of every loss (targets set to IGNORE)."""
    shape = (-1,) + (1,) * (batch.targets.dim() - 1)
    return dataclasses.replace(batch, targets=torch.where(drop.view(shape), IGNORE,
                                                          batch.targets))


def grow(buffer: torch.Tensor, size: int) -> torch.Tensor:
    """buffer extended to at least size entries (doubling), its contents kept."""
    return torch.cat([buffer, buffer.new_empty(max(size, 2 * len(buffer)) - len(buffer))])


class Seen:
    """The training rows at one length, kept as codes on the device; called on every training
    batch (TrainStep's screen) it records the batch and, when excluding, leaves held-out rows out.

    validation, test: the held-out sets at `length`; capacity: the most training rows at that
    length (steps x batch size). varlen: training batches have rows of their own lengths
    (Batch.lengths, right-padded): only the rows that fill all of length's steps are counted or
    left out (a shorter row, padded, is never a held-out sequence)."""

    def __init__(self, task: Task, length: int, validation: list[Batch], test: list[Batch],
                 capacity: int, device, varlen: bool = False):
        self.length, self.steps = length, task.seq_len(length)
        self.coder = RowCodes(task.io.input_size, task.seq_len(length), device)
        self.validation, self.test = codes(self.coder, validation), codes(self.coder, test)
        self.held = torch.cat([self.validation, self.test]).unique()  # sorted
        space = task.input_space(length)
        self.coverage = None if space is None else len(self.held) / space
        # (leaving a row out takes the cross-entropy's ignore index: classes only; every token
        # task of the suite has classes)
        self.exclude = (self.coverage is not None and self.coverage < EXCLUDE_BELOW
                        and task.target == "classes")
        self.rows = torch.empty(capacity, dtype=torch.long, device=device)
        # which rows entered a loss at this length (only rows equal to a held-out one can be left
        # out; with varlen, shorter rows are not at this length)
        self.track = self.exclude or varlen
        self.used = torch.empty(capacity if self.track else 0, dtype=torch.bool, device=device)
        self.count = 0  # rows written (a host integer: no synchronisation)

    @classmethod
    def for_task(cls, task: Task, length: int, validation: list[Batch], test: list[Batch],
                 capacity: int, device, varlen: bool = False) -> Seen | None:
        """A Seen for token inputs; None for real-valued ones (not counted)."""
        if task.io.input_kind != "tokens":
            return None
        return cls(task, length, validation, test, capacity, device, varlen)

    @property
    def method(self) -> str:
        return self.coder.method

    def held_out(self, code: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which codes are those of a held-out row."""
        i = torch.searchsorted(self.held, code).clamp_(max=len(self.held) - 1)
        return self.held[i] == code

    def __call__(self, batch: Batch, length: int) -> Batch:
        if length != self.length:
            return batch
        code = self.coder(batch.inputs)
        n = len(code)
        end = self.count + n
        if end > len(self.rows):  # more rows than the capacity promised: grow (host-side size)
            self.rows = grow(self.rows, end)
            self.used = grow(self.used, end) if self.track else self.used
        self.rows[self.count : end] = code
        full = None if batch.lengths is None else batch.lengths == self.steps
        if self.exclude:
            drop = self.held_out(code)
            if full is not None:
                drop &= full
            drop &= ~drop.all()
            batch = without(batch, drop)
            torch.logical_not(drop, out=self.used[self.count : end])
            if full is not None:
                self.used[self.count : end] &= full
        elif self.track:
            self.used[self.count : end] = True if full is None else full
        self.count = end
        return batch

    def fractions(self) -> tuple[float, float]:
        """(test, validation) fractions of rows whose code a training row that entered a loss had
        (one synchronisation)."""
        trained = self.rows[: self.count]
        if self.track:
            trained = trained[self.used[: self.count]]
        return tuple(torch.isin(held, trained).sum().item() / len(held)  # an exact ratio
                     for held in (self.test, self.validation))

    def keep(self, batch: Batch) -> Batch:
        """batch without its held-out rows when excluding (for the shortcut learner's training
        sequences, so that it trains under the same rule), else batch itself."""
        if not self.exclude:
            return batch
        kept = ~self.held_out(self.coder(batch.inputs))
        return Batch(batch.inputs[kept], batch.targets[kept],
                     None if batch.mask is None else batch.mask[kept])
