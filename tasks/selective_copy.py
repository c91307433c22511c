"""Selective copying (Gu & Dao 2023, "Mamba", section 3.1 and appendix E.1).

Definition (the generator the Mamba paper builds on: state-spaces/s4,
src/dataloaders/datasets/copying.py, torch_copying_data with variable=True): for L noise tokens,
K = 16 data tokens are drawn i.i.d. uniformly from 1..14 and written, in order, at K distinct
positions chosen uniformly among the first L + K steps; every other one of those steps holds the
noise token 0. Then come K marker tokens (15), and at the k-th marker step the target is the k-th
data token. The input has L + 2K steps and a vocabulary of 16 (noise, 14 data tokens, marker), the
paper's setting of 16 tokens including noise and 16 data tokens to memorise. Only the K marker steps
are scored, for the loss as for the accuracy (the reference loss sees the K outputs only); the
targets elsewhere are the noise token 0, placeholders that nothing reads. Chance is 1/14: every data
token is equally likely at every recall step, so any constant data-token guess (class 1 included)
scores 1/14 exactly and the noise and marker classes score 0.

`length` is L, the number of noise tokens, as T is for `copy`: with fixed positions (the first K
steps) this generator is the copy task. The paper trains at one sequence length (4096); here L is
the sweep axis, so min_length is 1 (at least one noise token to skip).

The positions are the 16 largest of L + 16 float32 uniform keys. torch.rand's float32 values lie on
a grid of 2^-24, so the 16th and 17th largest fall in one cell with probability about
(L + 16) 2^-25 per sequence (1.2e-4 at L = 4096, 1e-6 at L = 16), and torch.topk then picks one by
a fixed rule: that is how far the positions depart from uniform. Float64 keys would remove it, at the cost of a new random
stream (a new task version).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqbench.tasks.base import Batch, IOSpec, Task, scored_tail

N_DATA = 16  # K, data tokens to copy
NOISE = 0
N_SYMBOLS = 14  # data tokens are 1..14
MARKER = 15


def marker_start(steps: int) -> int:
    """The answer phase: the last K steps, the markers."""
    return steps - N_DATA


class SelectiveCopy(Task):
    name = "selective_copy"
    order = 40
    length_symbol = "L"
    length_meaning = "noise steps"
    summary = "selective copying: recall 16 tokens scattered among L noise tokens (Gu & Dao 2023)"
    io = IOSpec("tokens", input_size=16, output_size=16, answer_phase=marker_start)
    readout = "per_step"
    loss_on = "scored"
    solve_threshold = 0.99
    min_length = 1

    def seq_len(self, length: int) -> int:
        return length + 2 * N_DATA

    def sample(self, length, batch_size, generator, device):
        region = length + N_DATA
        tokens = torch.randint(
            1, N_SYMBOLS + 1, (batch_size, N_DATA), generator=generator, device=device
        )
        # K distinct positions, uniform over the K-subsets of the region, in increasing order
        keys = torch.rand(batch_size, region, generator=generator, device=device)
        positions = keys.topk(N_DATA, dim=1).indices.sort(dim=1).values
        inputs = tokens.new_full((batch_size, region + N_DATA), MARKER)
        inputs[:, :region] = NOISE
        inputs.scatter_(1, positions, tokens)
        targets = F.pad(tokens, (region, 0), value=NOISE)
        return Batch(inputs, targets, scored_tail(batch_size, region + N_DATA, N_DATA, device))

    def input_space(self, length):
        # uniform K-subsets of the L + K positions, uniform tokens at them
        return math.comb(length + N_DATA, N_DATA) * N_SYMBOLS**N_DATA

    def chance(self, length):
        return 1 / N_SYMBOLS
