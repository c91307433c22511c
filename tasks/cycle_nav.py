"""Cycle navigation (Delétang et al. 2022, "Neural Networks and the Chomsky Hierarchy"; regular).

Definition (google-deepmind/neural_networks_chomsky_hierarchy, tasks/regular/cycle_navigation.py):
a string of L uniformly random actions, tokens 0, 1, 2 meaning move -1 (left), stay, move +1
(right) on a cycle of 5 states; the agent starts at state 0 and the label, read at the last step,
is its final state, (sum of the moves) mod 5.

Classes: the model emits 5 classes, class (final state + 1) mod 5 (equivalently: the walk starts at
state 1 and the class is the final state). The reference uses the final state itself as the class;
the shift is a fixed relabelling of the outputs, which changes nothing for any model, and it makes
class 1 (returning to the start) the most likely class, the constant guess the suite's chance test
uses.

Chance (exact): the best constant guess is "back at the start", class 1, right with probability
P(S = 0 mod 5) for S a sum of L independent moves uniform on {-1, 0, +1}. By the discrete Fourier
transform on Z_5, with phi_k = (1 + 2 cos(2 pi k / 5)) / 3, i.e. phi_1 = (1 + sqrt 5) / 6 and
phi_2 = (1 - sqrt 5) / 6:
    P(S = c) = 1/5 + (2/5) (phi_1^L cos(2 pi c / 5) + phi_2^L cos(4 pi c / 5)),
so P(S = 0) = 1/5 + (2/5) (phi_1^L + phi_2^L) = 1/5 + 2 Lucas(L) / (5 * 3^L), which is the maximum
over c (tied with c = +-1 only at L = 1). It exceeds 1/5 at every L, by a margin that halves about
every step: 1/3 at L = 1 and 2, 0.2593 at L = 3, 0.2008 at L = 10. The tests check the formula
against dynamic programming over the distribution of the state.

Departures: Delétang et al. train on lengths 1..40 and test on 41..500; here a cell trains and tests
at one length unless it asks for their protocol (config.generalise).
"""
from __future__ import annotations

import math

import torch

from seqbench.tasks.base import Batch, IOSpec, Task

CYCLE = 5
PHI_1 = (1 + math.sqrt(5)) / 6
PHI_2 = (1 - math.sqrt(5)) / 6


class CycleNav(Task):
    name = "cycle_nav"
    order = 110
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "cycle navigation: final state of a walk on a 5-cycle (Deletang et al. 2022)"
    io = IOSpec("tokens", input_size=3, output_size=CYCLE)
    readout = "final"
    solve_threshold = 0.99
    min_length = 1
    bidirectional_ok = True

    def sample(self, length, batch_size, generator, device):
        actions = torch.randint(0, 3, (batch_size, length), generator=generator, device=device)
        final_state = (actions - 1).sum(1) % CYCLE
        return Batch(actions, (final_state + 1) % CYCLE)

    def input_space(self, length):
        return 3**length  # uniform action strings

    def chance(self, length):
        return 1 / CYCLE + 2 / CYCLE * (PHI_1**length + PHI_2**length)
