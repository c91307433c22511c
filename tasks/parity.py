"""Parity check (Delétang et al. 2022, "Neural Networks and the Chomsky Hierarchy").

Definition: a uniformly random binary string of length L (tokens 0 and 1); the target, read at the
last step, is the number of ones modulo 2. Chance is 1/2. (Delétang et al. train on lengths 1..40
and test on 41..500; here a cell trains and tests at one fixed length.)
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task


class Parity(Task):
    name = "parity"
    order = 30
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "parity check: number of ones mod 2, read at the end (Deletang et al. 2022)"
    io = IOSpec("tokens", input_size=2, output_size=2)
    readout = "final"
    bidirectional_ok = True
    solve_threshold = 0.99

    def sample(self, length, batch_size, generator, device):
        bits = torch.randint(0, 2, (batch_size, length), generator=generator, device=device)
        return Batch(bits, bits.sum(1) % 2)

    def input_space(self, length):
        return 2**length  # uniform bit strings

    def chance(self, length):
        return 0.5
