"""Delay line: emit the input delayed by k steps (the lag variant of the S4 copying generator).

Source: state-spaces/s4, src/dataloaders/datasets/copying.py, torch_copying_lag_data, where the
target is the input shifted right by the lag, y_t = x_{t-k}.

Definition: for delay k (`length`), the input is 2k tokens drawn i.i.d. uniformly from 0..7
(V = 8); the target at step t >= k is the input at step t - k. Only steps k..2k-1 are scored, for
the loss as for the accuracy; the first k targets are placeholders (0) that nothing reads, since
nothing the model has seen determines them. Chance is 1/8: every scored target is uniform over the
8 tokens and independent of everything a constant guess can use, so any constant guess (class 1
included) scores 1/8 exactly.

Departures from the reference generator, and why: the reference draws its tokens from 1..A-2 and
scores a blank target (0) on the first k steps, which any model can learn from position alone; we
score only the recall steps. The reference also decouples the sequence length from the lag; we tie
it to 2k so that every delay demands a full window of k tokens (at step k all of x_0..x_{k-1} are
still owed). A layout of k + m steps with m < k would only ask to hold the first m tokens for k
steps, which is the copy task without its recall cue.
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task, scored_tail

N_SYMBOLS = 8


class Delay(Task):
    name = "delay"
    order = 50
    length_symbol = "k"
    length_meaning = "lag"
    summary = "delay line: output the input delayed by k steps, scored on k steps (S4 lag task)"
    io = IOSpec("tokens", input_size=N_SYMBOLS, output_size=N_SYMBOLS)
    readout = "per_step"
    loss_on = "scored"
    solve_threshold = 0.99
    min_length = 1

    def seq_len(self, length: int) -> int:
        return 2 * length

    def sample(self, length, batch_size, generator, device):
        inputs = torch.randint(
            0, N_SYMBOLS, (batch_size, 2 * length), generator=generator, device=device
        )
        targets = torch.cat([inputs.new_zeros(batch_size, length), inputs[:, :length]], dim=1)
        return Batch(inputs, targets, scored_tail(batch_size, 2 * length, length, device))

    def input_space(self, length):
        return N_SYMBOLS ** (2 * length)  # uniform tokens

    def chance(self, length):
        return 1 / N_SYMBOLS
