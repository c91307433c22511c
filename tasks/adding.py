"""Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al. 2016).

Definition: two input channels of length L. Channel 0 holds values drawn i.i.d. from U(0, 1);
channel 1 is a marker channel with exactly two 1s, one placed uniformly in the first half
(positions 0 .. L//2 - 1) and one uniformly in the second half (L//2 .. L - 1), as in Arjovsky et
al. 2016. The target is the sum of the two marked values, read at the last step; the loss is MSE.

We chose the one-per-half placement over the TCN code's uniform placement (Bai et al. 2018) because
it guarantees a dependency of at least L/2 steps on every sequence. The best constant prediction is
the mean, 1, and its MSE is Var(X1 + X2) = 2/12 = 1/6 exactly (for either placement; papers quote
0.1767). Headline score: the fraction of sequences predicted within 0.04 of the target. The best
constant guess (1) scores P(|X1 + X2 - 1| < e) = 2e - e^2 = 0.0784 under the triangular density of
the sum.
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task


class Adding(Task):
    name = "adding"
    order = 20
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "adding problem: sum the two marked values, one per half (Arjovsky et al. 2016)"
    io = IOSpec("features", input_size=2, output_size=1)
    readout = "final"
    bidirectional_ok = True
    target = "regression"
    score_name = "frac |err|<0.04"
    tolerance = 0.04
    solve_threshold = 0.95
    min_length = 2

    def sample(self, length, batch_size, generator, device):
        values = torch.rand(batch_size, length, generator=generator, device=device)
        half = length // 2
        first = torch.randint(0, half, (batch_size, 1), generator=generator, device=device)
        second = torch.randint(half, length, (batch_size, 1), generator=generator, device=device)
        marked = torch.cat([first, second], dim=1)
        markers = torch.zeros_like(values).scatter_(1, marked, 1.0)
        targets = values.gather(1, marked).sum(1)
        return Batch(torch.stack([values, markers], dim=-1), targets)

    def chance(self, length):
        return 2 * self.tolerance - self.tolerance**2

    def baseline_loss(self, length):
        return 1 / 6
