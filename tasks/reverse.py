"""Reverse string (Delétang et al. 2022, "Neural Networks and the Chomsky Hierarchy"; DCF task).

Definition (google-deepmind/neural_networks_chomsky_hierarchy, tasks/dcf/reverse_string.py, with
the input tape built by make_model_with_empty_targets and no computation steps): a uniformly random
binary string s_1 .. s_n (tokens 0 and 1) is followed by n steps of the output-empty token 2, and at
the i-th of those steps the target is s_{n+1-i}, so the outputs spell the string reversed. The
input has 2n steps and a vocabulary of 3; the model emits 2 classes. Only the n output steps are
scored, for the loss as for the accuracy; the first n targets are placeholders (0) that nothing
reads. The score of a sequence is its per-token accuracy over the output steps, as in the paper
(accuracy_fn averaged over the output positions). Chance is 1/2: every output bit is uniform, so
either constant guess scores 1/2 exactly.

`length` is n. As in the reference there is no separate delimiter: the first output-empty token
marks the end of the string. Delétang et al. train on lengths 1..40 and test on 41..500; a plain
cell here trains and tests at one length (config.generalise runs their protocol).
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task, scored_tail

OUTPUT_EMPTY = 2


def output_start(steps: int) -> int:
    """The answer phase: the second half, the n output-empty steps."""
    return steps // 2


class Reverse(Task):
    name = "reverse"
    order = 60
    length_symbol = "n"
    length_meaning = "string length"
    summary = "reverse string: output the binary string reversed (Deletang et al. 2022)"
    io = IOSpec("tokens", input_size=3, output_size=2, answer_phase=output_start)
    readout = "per_step"
    loss_on = "scored"
    solve_threshold = 0.99
    min_length = 1

    def seq_len(self, length: int) -> int:
        return 2 * length

    def sample(self, length, batch_size, generator, device):
        bits = torch.randint(0, 2, (batch_size, length), generator=generator, device=device)
        inputs = torch.cat([bits, torch.full_like(bits, OUTPUT_EMPTY)], dim=1)
        targets = torch.cat([torch.zeros_like(bits), bits.flip(1)], dim=1)
        return Batch(inputs, targets, scored_tail(batch_size, 2 * length, length, device))

    def input_space(self, length):
        return 2**length  # the bits; the output-empty steps are fixed

    def chance(self, length):
        return 0.5
