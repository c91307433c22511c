"""The samplers rewritten for speed, as they were before, kept verbatim as references: the tests
prove that each new sampler draws the same distribution (the very same batches where the random
stream is kept), and the benchmark times the old code next to the new.

Each reference takes (length, batch_size, generator, device) like Task.sample. REFERENCES maps a
task name to its reference and to whether the new sampler keeps its random stream.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from seqbench.tasks.assoc_recall import N_KEYS, N_VALUES
from seqbench.tasks.base import Batch, scored_tail
from seqbench.tasks.mod_arith import MODULUS, PLUS
from seqbench.tasks.selective_copy import MARKER, N_DATA, N_SYMBOLS, NOISE

LOG2 = (0, 0, 1, 3, 2)  # discrete logarithm base 2 in Z_5 (index 0 unused)
POW2 = (1, 2, 4, 3)


def assoc_recall(length, batch_size, generator, device):
    b, d = batch_size, length
    noise = torch.rand(b, N_KEYS, generator=generator, device=device, dtype=torch.float64)
    keys = noise.argsort(1)[:, :d]
    values = torch.randint(0, N_VALUES, (b, d), generator=generator, device=device)
    order = torch.rand(b, d, generator=generator, device=device, dtype=torch.float64).argsort(1)
    inputs = keys.new_empty(b, 3 * d)
    inputs[:, 0 : 2 * d : 2] = keys
    inputs[:, 1 : 2 * d : 2] = N_KEYS + values
    inputs[:, 2 * d :] = keys.gather(1, order)
    targets = keys.new_zeros(b, 3 * d)
    targets[:, 2 * d :] = values.gather(1, order)
    return Batch(inputs, targets, scored_tail(b, 3 * d, d, device))


def mod_arith_evaluate(numbers: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    b, count = numbers.shape
    signed = numbers.clone()
    signed[:, 1:] = torch.where(ops == 1, (-numbers[:, 1:]) % MODULUS, numbers[:, 1:])
    starts = torch.cat([ops.new_ones(b, 1, dtype=torch.bool), ops != 2], dim=1)
    term = starts.long().cumsum(1) - 1
    log2 = torch.tensor(LOG2, device=numbers.device)[signed]
    logs = torch.zeros_like(signed).scatter_add_(1, term, log2)
    zeros = torch.zeros_like(signed).scatter_add_(1, term, (signed == 0).long())
    values = torch.tensor(POW2, device=numbers.device)[logs % 4]
    values = torch.where(zeros > 0, 0, values)
    used = torch.arange(count, device=numbers.device) <= term[:, -1:]
    return (values * used).sum(1) % MODULUS


def mod_arith(length, batch_size, generator, device):
    n = length
    numbers = torch.randint(0, MODULUS, (batch_size, n + 1), generator=generator, device=device)
    ops = torch.randint(0, 3, (batch_size, n), generator=generator, device=device)
    inputs = numbers.new_empty(batch_size, 2 * n + 1)
    inputs[:, 0::2] = numbers
    inputs[:, 1::2] = PLUS + ops
    return Batch(inputs, (mod_arith_evaluate(numbers, ops) + 1) % MODULUS)


def selective_copy(length, batch_size, generator, device):
    region = length + N_DATA
    tokens = torch.randint(
        1, N_SYMBOLS + 1, (batch_size, N_DATA), generator=generator, device=device
    )
    keys = torch.rand(batch_size, region, generator=generator, device=device)
    positions = keys.topk(N_DATA, dim=1).indices.sort(dim=1).values
    data = tokens.new_full((batch_size, region), NOISE).scatter_(1, positions, tokens)
    markers = tokens.new_full((batch_size, N_DATA), MARKER)
    inputs = torch.cat([data, markers], dim=1)
    targets = torch.cat([tokens.new_full((batch_size, region), NOISE), tokens], dim=1)
    return Batch(inputs, targets, scored_tail(batch_size, region + N_DATA, N_DATA, device))


class Reference(NamedTuple):
    sample: Callable[..., Batch]  # (length, batch_size, generator, device) -> Batch
    same_stream: bool  # the new sampler returns the very same batches from the same generator


REFERENCES: dict[str, Reference] = {
    "assoc_recall": Reference(assoc_recall, same_stream=True),
    "mod_arith": Reference(mod_arith, same_stream=True),
    "selective_copy": Reference(selective_copy, same_stream=True),
}
