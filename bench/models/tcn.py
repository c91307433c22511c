"""Temporal convolutional network (Bai, Kolter & Koltun 2018, "An Empirical Evaluation of Generic
Convolutional and Recurrent Networks for Sequence Modeling").

Residual block: [weight-normalised dilated causal Conv1d -> ReLU -> dropout] x 2, a 1x1 convolution
on the residual when widths differ, output ReLU(out + residual); dilation 2^i at level i. Causality
comes from left padding by (k - 1) * d alone (the reference pads both sides and chomps, computing
(k - 1) * d outputs per convolution that it throws away). Receptive field: 1 + 2 (k - 1)(2^n - 1).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from bench.models.base import Core, Family
from bench.strict import require


@dataclass(frozen=True)
class TCNHP:
    kernel_size: int = 8  # the paper's choice for copy memory and adding
    levels: int = 0  # 0: the fewest levels whose receptive field covers the sequence
    dropout: float = 0.0

    def validate(self, where: str) -> None:
        require(self.kernel_size >= 2, f"{where}.kernel_size", f"must be >= 2, got {self.kernel_size}")
        require(self.levels >= 0, f"{where}.levels", f"must be >= 0 (0 = auto), got {self.levels}")
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")


def receptive_field(kernel_size: int, levels: int) -> int:
    return 1 + 2 * (kernel_size - 1) * (2**levels - 1)


def levels_to_cover(kernel_size: int, length: int) -> int:
    """Fewest levels whose receptive field is at least length."""
    return max(1, math.ceil(math.log2((length - 1) / (2 * (kernel_size - 1)) + 1)))


class CausalConv1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        # Default init: the reference's normal_(0, 0.01) is written to `weight` after weight_norm
        # has split it into g and v, so it never takes effect; we keep what actually runs there.
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation))

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad, 0)))


class TemporalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            CausalConv1d(c_in, c_out, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
            CausalConv1d(c_out, c_out, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.downsample = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return F.relu(self.net(x) + self.downsample(x))


class TCN(nn.Module):
    """(B, L, C) -> (B, L, C) stack of temporal blocks with dilations 1, 2, 4, ..."""

    def __init__(self, width: int, levels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.blocks = nn.Sequential(
            *(TemporalBlock(width, width, kernel_size, 2**i, dropout) for i in range(levels))
        )

    def forward(self, x):
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)


def build_tcn(io, width, hp: TCNHP, max_len):
    levels = hp.levels or levels_to_cover(hp.kernel_size, max_len)
    field = receptive_field(hp.kernel_size, levels)
    if field < max_len:
        warnings.warn(
            f"tcn: receptive field {field} (kernel {hp.kernel_size}, {levels} levels) does not "
            f"cover sequence length {max_len}",
            stacklevel=2,
        )
    info = {"levels": levels, "receptive_field": field}
    return Core(TCN(width, levels, hp.kernel_size, hp.dropout), width, width, info)


FAMILIES = [Family("tcn", "temporal convolutional network (Bai et al. 2018)", TCNHP, build_tcn)]
