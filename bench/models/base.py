"""The one model interface: encoder -> family core -> linear head, causal by construction.

A model maps a batch of length L, (B, L) tokens or (B, L, F) features, to per-step outputs
(B, L, output_size); the output at step t depends only on inputs at steps <= t. Families are sized
to a shared parameter budget by searching their single width knob.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tasks.base import IOSpec


@dataclass
class Core:
    """A family's core module, mapping (B, L, d_in) to (B, L, d_out), plus facts for the record."""

    module: nn.Module
    d_in: int
    d_out: int
    info: dict = field(default_factory=dict)


class SequenceModel(nn.Module):
    def __init__(self, io: IOSpec, core: Core):
        super().__init__()
        self.encoder = (
            nn.Embedding(io.input_size, core.d_in)
            if io.input_kind == "tokens"
            else nn.Linear(io.input_size, core.d_in)
        )
        self.core = core.module
        self.head = nn.Linear(core.d_out, io.output_size)
        self.info = {"width": core.d_in, **core.info}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.core(self.encoder(inputs)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def search_width(io: IOSpec, budget: int, make: Callable[[int], Core]) -> int:
    """The width whose whole model's parameter count is closest to budget (counts grow with width).

    Doubling, then bisection, so no candidate is built at more than about twice the budget.
    """

    def count(width: int) -> int:
        return count_parameters(SequenceModel(io, make(width)))

    hi = 1
    while count(hi) < budget:
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # smallest width with count >= budget
        mid = (lo + hi) // 2
        if count(mid) >= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and budget - count(lo - 1) <= count(lo) - budget:
        return lo - 1
    return lo


@dataclass(frozen=True)
class Family:
    """A registered model family: build(io, width, hp, max_len) -> Core for one width; fit(io,
    budget, hp, max_len) -> Core sized to the budget (default: search the width)."""

    name: str
    summary: str
    hparams: type
    build: Callable[[IOSpec, int, Any, int], Core]
    fit: Callable[[IOSpec, int, Any, int], Core] | None = None

    def sized(self, io: IOSpec, budget: int, hp: Any, max_len: int) -> Core:
        if self.fit is not None:
            return self.fit(io, budget, hp, max_len)
        width = search_width(io, budget, lambda w: self.build(io, w, hp, max_len))
        return self.build(io, width, hp, max_len)
