"""Temporal order (Hochreiter & Schmidhuber 1997, "Long Short-Term Memory", Experiment 6a).

The paper's task: a sequence starts with E, ends with the trigger symbol B, and otherwise holds
symbols drawn uniformly from {a, b, c, d}, except at positions t1 and t2, which hold X or Y. The
length is drawn from 100..110, t1 from 10..20 and t2 from 50..60; the class, read at the end, is
the order of the two relevant symbols: XX -> Q, XY -> R, YX -> S, YY -> U.

Definition here, scaled to a fixed length L (`length`, the number of steps, positions 0..L-1):
step 0 is E, step L-1 is B, t1 is uniform on [max(1, L // 10), max(1, L // 5)] and t2 uniform on
[L // 2, 3L // 5] (both inclusive), the symbols at t1 and t2 are independently X or Y with
probability 1/2, and every other step is uniform over {a, b, c, d}. At L = 100 the windows are the
paper's, [10, 20] and [50, 60]. The clamp to 1 keeps t1 after E for L < 10; for every L >= 4 the
windows are non-empty, t1 < t2 and t2 <= L - 2. Tokens: a, b, c, d = 0..3, X = 4, Y = 5, E = 6,
B = 7. Classes: XX = 0, XY = 1, YX = 2, YY = 3, read at the last step (the trigger B). The four
classes are equally likely, so chance is exactly 1/4 for any constant guess.

Departures: the paper draws the length from 100..110 so that the end cannot be foreseen; a cell
here has one fixed length (the sweep axis), and the trigger B still marks the end. The paper counts
a sequence correct when every output unit is within 0.3 of its target; we score argmax accuracy.
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task

N_DISTRACTORS = 4  # a, b, c, d = 0..3
X, Y, E, B = 4, 5, 6, 7


def windows(length: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The inclusive ranges of t1 and t2 at this length."""
    return (max(1, length // 10), max(1, length // 5)), (length // 2, 3 * length // 5)


class TemporalOrder(Task):
    name = "temporal_order"
    order = 70
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "temporal order: classify the order of X/Y at two distant steps (LSTM paper, 6a)"
    io = IOSpec("tokens", input_size=8, output_size=4)
    readout = "final"
    solve_threshold = 0.99
    min_length = 4
    bidirectional_ok = True

    def sample(self, length, batch_size, generator, device):
        (lo1, hi1), (lo2, hi2) = windows(length)
        inputs = torch.randint(
            0, N_DISTRACTORS, (batch_size, length), generator=generator, device=device
        )
        inputs[:, 0] = E
        inputs[:, -1] = B
        t1 = torch.randint(lo1, hi1 + 1, (batch_size, 1), generator=generator, device=device)
        t2 = torch.randint(lo2, hi2 + 1, (batch_size, 1), generator=generator, device=device)
        relevant = torch.randint(0, 2, (batch_size, 2), generator=generator, device=device)
        inputs.scatter_(1, torch.cat([t1, t2], dim=1), X + relevant)
        return Batch(inputs, 2 * relevant[:, 0] + relevant[:, 1])

    def input_space(self, length):
        # t1, t2 uniform in disjoint windows (the X/Y tokens show them), their two symbols, and
        # uniform distractors at the L - 4 other steps
        (lo1, hi1), (lo2, hi2) = windows(length)
        return (hi1 - lo1 + 1) * (hi2 - lo2 + 1) * 4 * N_DISTRACTORS ** (length - 4)

    def chance(self, length):
        return 0.25
