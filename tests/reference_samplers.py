"""The samplers rewritten for speed, as they were before, kept verbatim as references: the tests
prove that each new sampler draws the same distribution (the very same batches where the random
stream is kept; by statistical tests where it changed: tests/test_tasks_recall_formal.py), and the benchmark times the old code next to the new.

Each reference takes (length, batch_size, generator, device) like Task.sample. REFERENCES maps a
task name to its reference and to whether the new sampler keeps its random stream.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from seqbench.tasks.assoc_recall import N_KEYS, N_VALUES
from seqbench.tasks.base import Batch, scored_tail
from seqbench.tasks.dyck import TABLE_MAX, Dyck, class_pattern, eligible, skeleton
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


def dyck_partners(opens):
    length = opens.shape[1]
    pos = torch.arange(length, device=opens.device)
    level = 2 * opens.cumsum(1) - 1 - pos + ~opens
    order = (level * length + pos).argsort(1)
    first, second = order[:, 0::2], order[:, 1::2]
    return torch.empty_like(order).scatter_(1, first, second).scatter_(1, second, first)


def dyck(length, batch_size, generator, device):
    """Version 2: above TABLE_MAX, shapes from the median of float64 keys, pairs by torch's
    argsort, the kinds position by position."""
    positive, negative = class_pattern(batch_size, generator, device)
    if length <= TABLE_MAX:
        return Batch(Dyck._from_table(length, negative, generator, device), positive.long())
    b, n = batch_size, length // 2
    parts, have = [], 0
    while have < b:
        rows = math.ceil((b - have) / 0.8) + 4
        u = torch.rand(rows, 2 * n + 2, generator=generator, device=device, dtype=torch.float64)
        keys = u[:, :-1]
        up = keys < keys.median(1, keepdim=True).values
        start = (2 * up.cumsum(1) - 1 - torch.arange(2 * n + 1)).argmin(1, keepdim=True) + 1
        opens = up.gather(1, (start + torch.arange(2 * n)) % (2 * n + 1))
        partner = dyck_partners(opens)
        ranks = eligible(opens, partner).cumsum(1)
        pick = (u[:, -1:] * ranks[:, -1:]).long()
        b1 = (ranks <= pick).sum(1, keepdim=True)
        keep = (ranks[:, -1] > 0).nonzero()[: b - have, 0]
        parts.append((opens[keep], partner[keep], b1[keep]))
        have += len(keep)
    opens, partner, b1 = parts[0] if len(parts) == 1 else map(torch.cat, zip(*parts))
    src, flip = skeleton(opens, partner, b1, positive[:, None])
    bits = torch.randint(0, 2, src.shape, generator=generator, device=device)
    return Batch(2 * (bits.gather(1, src) ^ flip.long()) + (~opens).long(), positive.long())


class Reference(NamedTuple):
    sample: Callable[..., Batch]  # (length, batch_size, generator, device) -> Batch
    same_stream: bool  # the new sampler returns the very same batches from the same generator


REFERENCES: dict[str, Reference] = {
    "assoc_recall": Reference(assoc_recall, same_stream=False),
    "dyck": Reference(dyck, same_stream=False),
    "mod_arith": Reference(mod_arith, same_stream=True),
    "selective_copy": Reference(selective_copy, same_stream=True),
}
