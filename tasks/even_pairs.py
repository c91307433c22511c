"""Even pairs (Delétang et al. 2022, "Neural Networks and the Chomsky Hierarchy"; regular task).

Definition (google-deepmind/neural_networks_chomsky_hierarchy, tasks/regular/even_pairs.py): a
uniformly random binary string of length L over {a, b} (tokens 0 and 1); the target, read at the
last step, is the number of "ab" plus "ba" substrings (adjacent unequal symbols) modulo 2: class 0
when it is even, class 1 when it is odd, as in the reference. The count of changes is odd exactly
when the first and last symbols differ, so the target is (first != last). Chance is 1/2 exactly
for L >= 2: the first and last symbols are independent and uniform. At L = 1 the count is always 0
(chance 1), so min_length is 2.

Departures: Delétang et al. train on lengths 1..40 and test on 41..500; here a cell trains and tests
at one length unless the cell asks for their protocol (config.generalise), which draws its training
lengths from 2..N.
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task


class EvenPairs(Task):
    name = "even_pairs"
    order = 100
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "even pairs: parity of the number of ab/ba substrings (Deletang et al. 2022)"
    io = IOSpec("tokens", input_size=2, output_size=2)
    readout = "final"
    solve_threshold = 0.99
    min_length = 2
    bidirectional_ok = True

    def sample(self, length, batch_size, generator, device):
        bits = torch.randint(0, 2, (batch_size, length), generator=generator, device=device)
        changes = (bits[:, 1:] != bits[:, :-1]).sum(1)
        return Batch(bits, changes % 2)

    def input_space(self, length):
        return 2**length  # uniform bit strings

    def chance(self, length):
        return 1.0 if length < 2 else 0.5
