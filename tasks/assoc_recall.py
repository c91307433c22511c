"""Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology: Measuring and improving
recall in efficient language models").

Definition: `length` is the number D of key-value pairs (1 <= D <= 128), the knob along which
models with a bounded recurrent state fail. The input has 3D tokens: D pairs k_1 v_1 .. k_D v_D,
then D queries, which are the D keys again, each exactly once, in a uniformly random order. The D
keys are distinct, drawn without replacement from a key vocabulary of 128 tokens (ids 0..127);
each value is drawn uniformly, with replacement, from a value vocabulary of 64 tokens (ids
128..191), as in Zoology keys come from the lower part of the vocabulary and values from the upper
part. At a query position the target is the value paired with the key read there, as a class
0..63 (value token 128 + j is class j); the model answers at the query step itself. Only the D
query positions are scored, for the loss as for the accuracy (loss_on "scored"); the other targets
are placeholders (0) that nothing reads. The score of a sequence is its accuracy over its D
queries. Chance is 1/64: every answer is marginally uniform over the 64 values whatever a guesser
knows without the input, so every input-independent guess (class 1 included) scores 1/64 exactly.
The answer phase (IOSpec.answer_phase) is the D query steps: an encoder-decoder
(seqbench.models.seq2seq) encodes the 2D pair steps and decodes at the queries, reading each query
key as its step's input.

Departures from Zoology (HazyResearch/zoology, zoology/data/associative_recall.py, multiquery_ar),
a CPU-scale version: Zoology uses a vocabulary of 8192 (keys 1..4095, values 4096..8191), sequences
of 64 to 512 tokens with 4 to 64 pairs, places the D queries at power-law distributed gaps in the
query section with random filler tokens between them, draws the values without replacement, and
scores next-token predictions over the whole vocabulary. Here the queries follow the pairs back to
back (so the sequence length is tied to D and nothing but D varies), the values are drawn with
replacement (distinct values would let a model answer the last queries by elimination), and the
model emits only the 64 value classes.

Sampling (version 2): the keys are an ordered tuple of D distinct keys, uniform. Up to D = 32 they
are the first D distinct values of iid uniform draws from the 128 keys (seqbench.tasks.sampling.
distinct_draws, about D draws a row); above, the D smallest of 128 float64 uniform noise values,
in increasing order (a ranking by numpy's sort on the CPU). The query order ranks D more noise
values. Version 1 ranked all 128 noise values at every D: generating and ranking them cost 5% of an
LSTM training step at D = 4 (measured by tests/test_benchmarks.py::test_sampler_cost). A ranking
of float64 noise is uniform but for ties (probability below 128^2 2^-54 per sequence).
"""
from __future__ import annotations

import math

import torch

from seqbench.strict import require
from seqbench.tasks.base import Batch, IOSpec, Task, scored_tail
from seqbench.tasks.sampling import argsort_rows, distinct_draws

N_KEYS = 128
N_VALUES = 64
DRAWS_MAX = 32  # the most pairs drawn by distinct_draws (above, a ranking is faster: measured)


def query_start(steps: int) -> int:
    """The answer phase: the last third, the D queries (the model answers at each query step)."""
    return 2 * steps // 3


class AssocRecall(Task):
    name = "assoc_recall"
    order = 80
    version = 2
    length_symbol = "D"
    length_meaning = "number of key-value pairs"
    summary = "multi-query associative recall: D key-value pairs, then every key queried (Zoology)"
    io = IOSpec("tokens", input_size=N_KEYS + N_VALUES, output_size=N_VALUES,
                answer_phase=query_start)
    readout = "per_step"
    loss_on = "scored"
    solve_threshold = 0.99
    min_length = 1

    def seq_len(self, length: int) -> int:
        return 3 * length

    def check_length(self, length: int, field: str = "length") -> None:
        super().check_length(length, field)
        require(
            length <= N_KEYS,
            field,
            f"task {self.name!r} needs at most {N_KEYS} key-value pairs (the number of "
            f"distinct keys), got {length}",
        )

    def sample(self, length, batch_size, generator, device):
        self.check_length(length)
        b, d = batch_size, length
        if d <= DRAWS_MAX:
            keys = distinct_draws(b, d, N_KEYS, generator, device)
        else:
            noise = torch.rand(b, N_KEYS, generator=generator, device=device, dtype=torch.float64)
            keys = argsort_rows(noise)[:, :d]
        values = torch.randint(0, N_VALUES, (b, d), generator=generator, device=device)
        order = argsort_rows(torch.rand(b, d, generator=generator, device=device,
                                        dtype=torch.float64))
        pairs = torch.stack([keys, values.add(N_KEYS)], dim=2).view(b, 2 * d)  # k_1 v_1 .. k_D v_D
        inputs = torch.cat([pairs, keys.gather(1, order)], dim=1)
        targets = keys.new_zeros(b, 3 * d)
        torch.gather(values, 1, order, out=targets[:, 2 * d :])
        return Batch(inputs, targets, scored_tail(b, 3 * d, d, device))

    def input_space(self, length):
        # an ordered tuple of D distinct keys, D values, an order of the D queries, all uniform
        return math.perm(N_KEYS, length) * N_VALUES**length * math.factorial(length)

    def chance(self, length):
        return 1 / N_VALUES
