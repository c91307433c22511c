"""Exact random constructions the samplers share, written for speed on the CPU.

argsort_rows sorts each row through numpy on the CPU. torch's CPU sort is 4-15x slower on the
short rows the samplers sort (measured, one thread, torch 2.13: (512, 128) float64 rows 2050 us
against numpy's 210 us; (644, 64) small-integer levels, stable, 795 against 134 us, numpy using
a radix sort for them), and the result is the same: a sort of distinct keys has one answer, and
a stable sort's ties keep their order in both. Other devices keep torch's sort.

distinct_draws draws ordered tuples of distinct values from iid uniform draws (sequential
rejection), which needs about d random integers a row, where ranking n random keys needs n
random floats and a sort.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

FAIL_BOUND = 1e-4  # chance that a row's draws hold too few distinct values (the row is redrawn)


def argsort_rows(x: torch.Tensor, stable: bool = False) -> torch.Tensor:
    """x.argsort(1, stable=stable) for a 2-d x; on the CPU computed by numpy (see above)."""
    if x.device.type != "cpu" or x.shape[1] == 0:
        return x.argsort(1, stable=stable)
    return torch.from_numpy(np.argsort(x.numpy(), axis=1, kind="stable" if stable else None))


def median_rows(x: torch.Tensor) -> torch.Tensor:
    """x.median(1, keepdim=True).values (the lower median) for a 2-d x; on the CPU computed by
    numpy's partition (measured on (644, 65) float64 rows: torch 540 us, numpy 84 us)."""
    if x.device.type != "cpu":
        return x.median(1, keepdim=True).values
    k = (x.shape[1] - 1) // 2
    return torch.from_numpy(np.partition(x.numpy(), k, axis=1)[:, k : k + 1])


@functools.cache
def draws_needed(d: int, n: int) -> int:
    """The fewest iid uniform draws from range(n) that hold at least d distinct values with
    probability at least 1 - FAIL_BOUND (the occupancy distribution, computed exactly)."""
    if not 0 <= d <= n:
        raise ValueError(f"d: at most n = {n} distinct values exist, got {d}")
    held = np.zeros(d + 1)  # held[k]: chance of k distinct values so far (k = d: at least d)
    held[0], draws = 1.0, 0
    old = np.arange(d) / n  # chance that a draw repeats a value, with k distinct so far
    while held[d] < 1 - FAIL_BOUND:
        held[1:] += held[:-1] * (1 - old) - np.append(held[1:-1] * (1 - old[1:]), 0)
        held[0] = 0.0
        draws += 1
    return draws


@functools.lru_cache(maxsize=64)
def steps(length: int, device) -> torch.Tensor:
    """arange(length) on device, shared: read it, never write it."""
    return torch.arange(length, device=device)


def distinct_draws(rows: int, d: int, n: int, generator: torch.Generator,
                   device) -> torch.Tensor:
    """(rows, d) int64: in each row an ordered tuple of d distinct values from range(n), uniform
    among all n! / (n - d)! of them. Each row takes the first d distinct values of its iid
    uniform draws (sequential rejection sampling, exact). A row whose draws_needed(d, n) draws
    hold fewer is redrawn; whether that happens depends only on when new values arrive, never
    on which values they are, so the redraw leaves the tuple uniform."""
    m = draws_needed(d, n)
    draws = torch.randint(0, n, (rows, m), generator=generator, device=device)
    at = steps(m, device).expand(rows, m)
    first = draws.new_full((rows, n), m).scatter_reduce_(1, draws, at, "amin")
    new = first.gather(1, draws) == at  # the first draw of its value in the row
    count = new.cumsum(1)
    slot = torch.where(new & (count <= d), count - 1, d)  # output column; d: not kept
    out = draws.new_empty(rows, d + 1).scatter_(1, slot, draws)[:, :d]
    short = (count[:, -1] < d).nonzero()[:, 0]
    if len(short):
        out[short] = distinct_draws(len(short), d, n, generator, device)
    return out
