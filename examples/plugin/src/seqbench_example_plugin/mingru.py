"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201, section 3.1): a GRU
whose gate and candidate depend on the input only,

    z_t = sigmoid(W_z x_t + b_z),   h~_t = W_h x_t + b_h,   h_t = (1 - z_t) * h_{t-1} + z_t * h~_t,

with h_0 = 0, stacked `layers` deep (each layer's h is the next layer's x). The width is the
hidden size, the knob seqbench searches to meet the parameter budget.

Departure: forward runs the recurrence as a loop over time (the paper's sequential mode); the
paper trains with a parallel scan in log space, which computes the same h_t and is left out to
keep the example short. step() is one iteration of the same loop, so streaming is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqbench.models import Family
from seqbench.models.base import Core
from seqbench.strict import require


@dataclass(frozen=True)
class MinGRUHP:
    layers: int = 1

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")


class MinGRULayer(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gate = nn.Linear(width, width)
        self.candidate = nn.Linear(width, width)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.gate(x))
        return (1 - z) * h + z * self.candidate(x)


class MinGRU(nn.Module):
    def __init__(self, width: int, layers: int):
        super().__init__()
        self.width = width
        self.layers = nn.ModuleList(MinGRULayer(width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, width) -> (B, L, width)
        state = self.init_state(x.shape[0], x.device, x.dtype)
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, 1)

    def init_state(self, batch_size: int, device, dtype) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros(batch_size, self.width, device=device, dtype=dtype)
                     for _ in self.layers)

    def step(self, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        new = []
        for layer, h in zip(self.layers, state):
            x = layer.step(x, h)
            new.append(x)
        return x, tuple(new)


def build(io, width: int, hp: MinGRUHP, max_len: int) -> Core:
    return Core(MinGRU(width, hp.layers), width, width, {"layers": hp.layers})


MINGRU = Family("mingru", "minGRU (Feng et al. 2024): input-only gates, sequential mode",
                MinGRUHP, build, label="minGRU", order=100, colour="#882255", marker="p")
