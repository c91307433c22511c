"""Majority (Hahn 2020, "Theoretical Limitations of Self-Attention in Neural Sequence Models",
TACL 8: MAJORITY, the bit strings in which more than half of the bits are 1).

Definition: L = `length` bits drawn i.i.d. uniformly from {0, 1} (tokens 0 and 1), L odd so that
there is no tie; the target, read at the last step, is 1 if more than half of the bits are 1, else
0. Chance is exactly 1/2: flipping every bit is a bijection of the 2^L strings that exchanges the
two classes, so each class holds exactly half of them and both constant guesses score 1/2.
"""
from __future__ import annotations

import torch

from seqbench.strict import require
from seqbench.tasks import Batch, IOSpec, Task


class Majority(Task):
    name = "majority"
    summary = "majority: is more than half of L random bits 1 (Hahn 2020); L odd"
    io = IOSpec("tokens", input_size=2, output_size=2)
    readout = "final"
    solve_threshold = 0.99
    bidirectional_ok = True  # one label for the whole string
    # display: after the built-in tasks; the length is the number of bits
    order = 200
    length_symbol = "L"
    length_meaning = "number of bits"

    def check_length(self, length: int, field: str = "length") -> None:
        super().check_length(length, field)
        require(length % 2 == 1, field, f"task 'majority' needs an odd length (no ties), got "
                f"{length}")

    def sample(self, length, batch_size, generator, device) -> Batch:
        bits = torch.randint(0, 2, (batch_size, length), generator=generator, device=device)
        return Batch(bits, (2 * bits.sum(1) > length).long())

    def chance(self, length: int) -> float:
        return 0.5
