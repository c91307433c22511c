"""Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016; Bai et al. 2018).

Definition (as in the TCN reference code, locuslab/TCN copy_memory/utils.py): for delay T the
input has length T + 20: ten symbols drawn uniformly from 1..8, then T - 1 blanks (0), then the
delimiter 9 followed by ten more 9s. The target is blank (0) at every step except the last ten,
which repeat the ten symbols in order. The loss is cross-entropy averaged over all T + 20 steps
(as in the paper); the headline score is accuracy on the ten recall positions (chance 1/8). A
memoryless model that predicts blanks exactly and a uniform guess over 1..8 on the recall steps has
loss 10 ln(8) / (T + 20), the baseline that LSTM, GRU and RNN sit at for T = 1000 in Bai et al.
"""
from __future__ import annotations

import math

import torch

from seqbench.tasks.base import Batch, IOSpec, Task, scored_tail

N_SYMBOLS = 10
DELIMITER = 9


def recall_start(steps: int) -> int:
    """The answer phase: the last ten steps (the recall), after T - 1 blanks and the delimiter."""
    return steps - N_SYMBOLS


class CopyMemory(Task):
    name = "copy"
    order = 10
    length_symbol = "T"
    length_meaning = "delay"
    summary = "copy memory: recall 10 symbols after T blanks (Bai et al. 2018)"
    io = IOSpec("tokens", input_size=10, output_size=10, answer_phase=recall_start)
    readout = "per_step"
    loss_on = "all"
    solve_threshold = 0.99

    def seq_len(self, length: int) -> int:
        return length + 2 * N_SYMBOLS

    def sample(self, length, batch_size, generator, device):
        symbols = torch.randint(1, 9, (batch_size, N_SYMBOLS), generator=generator, device=device)
        blanks = symbols.new_zeros(batch_size, length - 1)
        delim = symbols.new_full((batch_size, N_SYMBOLS + 1), DELIMITER)
        inputs = torch.cat([symbols, blanks, delim], dim=1)
        targets = torch.cat([symbols.new_zeros(batch_size, length + N_SYMBOLS), symbols], dim=1)
        return Batch(inputs, targets,
                     scored_tail(batch_size, self.seq_len(length), N_SYMBOLS, device))

    def input_space(self, length):
        return 8**N_SYMBOLS  # the ten symbols; blanks and delimiters are fixed, whatever T

    def chance(self, length):
        return 1 / 8

    def baseline_loss(self, length):
        return N_SYMBOLS * math.log(8) / self.seq_len(length)
