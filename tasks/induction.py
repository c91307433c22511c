"""Induction heads (Olsson et al. 2022; the synthetic task of H3, Fu et al. 2023, and Mamba, Gu &
Dao 2023).

Definition: a sequence of L = `length` tokens over a vocabulary of 16: token 15 is the special
trigger A, tokens 0..14 are ordinary. Every position holds an ordinary token drawn uniformly from
0..14, except that A is written at one position p, drawn uniformly from 0 .. L//2 - 1 (the first
half), and at the last position L - 1. The target, read at the last step, is the token B at
position p + 1 (the token that followed the first A), so B is uniform over the 15 ordinary tokens
and A occurs exactly twice. The model emits 16 classes, one per token id (class 15, the trigger, is
never a target). Chance is 1/15: B is uniform over 0..14 and independent of anything a guesser
knows without the input, so every constant guess among them (class 1 included) is right with
probability 1/15 exactly.

Departures from H3 and Mamba (Mamba also uses a vocabulary of 16): the H3 generator
(HazyResearch/safari, generate_induction_head) places the first trigger uniformly anywhere before
the last two positions, and in half of its sequences writes several triggers, each followed by the
same B. Here there is exactly one earlier trigger and it lies in the first half, so that B is
always at least L - 1 - L//2 (about L/2) steps before the query, as the adding problem places its
markers: the task measures a dependency that grows with L on every sequence. L >= 3 (A B A).
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task

VOCAB = 16
TRIGGER = VOCAB - 1


class Induction(Task):
    name = "induction"
    order = 90
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "induction head: after the second trigger, recall the token that followed the first"
    io = IOSpec("tokens", input_size=VOCAB, output_size=VOCAB)
    readout = "final"
    solve_threshold = 0.99
    min_length = 3

    def sample(self, length, batch_size, generator, device):
        tokens = torch.randint(0, TRIGGER, (batch_size, length), generator=generator, device=device)
        first = torch.randint(0, length // 2, (batch_size, 1), generator=generator, device=device)
        tokens.scatter_(1, first, TRIGGER)
        tokens[:, -1] = TRIGGER
        return Batch(tokens, tokens.gather(1, first + 1).squeeze(1))

    def input_space(self, length):
        # the first trigger's position, uniform in the first half, and uniform ordinary tokens at
        # the L - 2 other positions (the first trigger is visible, so distinct draws differ)
        return length // 2 * TRIGGER ** (length - 2)

    def chance(self, length):
        return 1 / TRIGGER
