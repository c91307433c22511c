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

Departures from Zoology (HazyResearch/zoology, zoology/data/associative_recall.py, multiquery_ar),
a CPU-scale version: Zoology uses a vocabulary of 8192 (keys 1..4095, values 4096..8191), sequences
of 64 to 512 tokens with 4 to 64 pairs, places the D queries at power-law distributed gaps in the
query section with random filler tokens between them, draws the values without replacement, and
scores next-token predictions over the whole vocabulary. Here the queries follow the pairs back to
back (so the sequence length is tied to D and nothing but D varies), the values are drawn with
replacement (distinct values would let a model answer the last queries by elimination), and the
model emits only the 64 value classes.

Sampling (version 2): the same distribution as version 1, drawn more cheaply (version 1 ranked 128
random keys per row with a full argsort). The D keys come from distinct_keys, exact by symmetry;
the query order is a uniform permutation of the D pairs, from ranking D random keys.
"""
from __future__ import annotations

import torch

from bench.strict import require
from tasks.base import Batch, IOSpec, Task, scored_tail

N_KEYS = 128
N_VALUES = 64


def distinct_keys(batch_size: int, count: int, vocab: int, generator: torch.Generator,
                  device) -> torch.Tensor:
    """(batch_size, count) int64 rows of `count` distinct tokens of 0..vocab-1, each row a uniformly
    random ordered tuple (all vocab! / (vocab - count)! equally likely), rows independent.

    Few tokens (count^2 <= 2 vocab, at most one clashing pair expected among iid draws): the first
    `count` distinct tokens of 3 count // 2 + 2 iid uniform draws, in order of first appearance;
    a row with fewer distinct draws (below 1e-6 of the rows for 128 keys) is drawn again. Many
    tokens: the `count` largest of vocab iid uniform keys (float64), largest first. Both are exact
    (up to ties among float64 keys, probability below vocab^2 2^-54): the first depends only on
    which draws are equal and the second only on the order of iid keys, so relabelling the
    vocabulary by any permutation leaves the law of a row unchanged, and the ordered tuples of
    distinct tokens are one orbit of the relabellings.
    """
    if count * count > 2 * vocab:
        noise = torch.rand(batch_size, vocab, generator=generator, device=device,
                           dtype=torch.float64)
        return noise.topk(count, dim=1).indices
    draws = torch.randint(0, vocab, (batch_size, 3 * count // 2 + 2), generator=generator,
                          device=device)
    repeat = (draws.unsqueeze(2) == draws.unsqueeze(1)).tril(-1).any(2)  # equals an earlier draw
    first = repeat.argsort(dim=1, stable=True).narrow(1, 0, count)  # where the new draws are
    keys = draws.gather(1, first)
    short = repeat.gather(1, first.narrow(1, count - 1, 1)).view(-1)  # < `count` distinct draws
    if short.any():
        keys[short] = distinct_keys(int(short.sum()), count, vocab, generator, device)
    return keys


class AssocRecall(Task):
    name = "assoc_recall"
    summary = "multi-query associative recall: D key-value pairs, then every key queried (Zoology)"
    io = IOSpec("tokens", input_size=N_KEYS + N_VALUES, output_size=N_VALUES)
    readout = "per_step"
    loss_on = "scored"
    version = 2  # version 1 drew the same distribution from another random stream
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
        keys = distinct_keys(b, d, N_KEYS, generator, device)
        values = torch.randint(0, N_VALUES, (b, d), generator=generator, device=device)
        order = torch.rand(b, d, generator=generator, device=device, dtype=torch.float64).argsort(1)
        pairs = torch.stack([keys, values.add(N_KEYS)], dim=2).view(b, 2 * d)  # k_1 v_1 .. k_D v_D
        inputs = torch.cat([pairs, keys.gather(1, order)], dim=1)
        targets = keys.new_zeros(b, 3 * d)
        torch.gather(values, 1, order, out=targets[:, 2 * d :])
        return Batch(inputs, targets, scored_tail(b, 3 * d, d, device))

    def chance(self, length):
        return 1 / N_VALUES
