"""Temporal convolutional network (Bai, Kolter & Koltun 2018, "An Empirical Evaluation of Generic
Convolutional and Recurrent Networks for Sequence Modeling").

Residual block: [weight-normalised dilated causal Conv1d -> ReLU -> dropout] x 2, a 1x1 convolution
on the residual when widths differ, output ReLU(out + residual); dilation 2^i at level i. Causality
comes from left padding by (k - 1) * d alone (the reference pads both sides and chomps, computing
(k - 1) * d outputs per convolution that it throws away). Receptive field: 1 + 2 (k - 1)(2^n - 1).

Streaming state: per causal convolution a buffer of its last (k - 1) * d inputs, zeros at the start
as forward's left padding, so field - 1 past inputs per channel in all: O(receptive field).

Variable-length batches (right-padded, forward(x, lengths)): the padded tail is zeroed at the
input and after every block, so no activation there is computed from padding. A causal
convolution's output at a real step reads only earlier steps, so the real outputs are the same
with or without the mask (it costs one multiply per block).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from seqbench.models.base import Core, Family
from seqbench.strict import require


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

    def init_state(self, batch_size: int, device, dtype):
        return torch.zeros(batch_size, self.conv.in_channels, self.pad, device=device, dtype=dtype)

    def step(self, x_t, buffer):
        """The output at the new step alone: the k dilated taps of [buffer, x_t] against the
        weight (read through weight_norm each call), and the buffer shifted by one."""
        window = torch.cat([buffer, x_t.unsqueeze(-1)], dim=-1)  # (B, C_in, pad + 1)
        taps = window[..., :: self.conv.dilation[0]]  # (B, C_in, k)
        y = F.linear(taps.flatten(1), self.conv.weight.flatten(1), self.conv.bias)
        return y, window[..., 1:]


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

    def init_state(self, batch_size: int, device, dtype):
        return tuple(
            conv.init_state(batch_size, device, dtype)
            for conv in self.net
            if isinstance(conv, CausalConv1d)
        )

    def step(self, x_t, state):
        """forward for one step: the layers of net in order, convolutions through their buffers."""
        h, buffers, new = x_t, iter(state), []
        for layer in self.net:
            if isinstance(layer, CausalConv1d):
                h, buffer = layer.step(h, next(buffers))
                new.append(buffer)
            else:
                h = layer(h)
        return F.relu(h + self.downsample(x_t.unsqueeze(-1)).squeeze(-1)), tuple(new)


class TCN(nn.Module):
    """(B, L, C) -> (B, L, C) stack of temporal blocks with dilations 1, 2, 4, ..."""

    def __init__(self, width: int, levels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.blocks = nn.Sequential(
            *(TemporalBlock(width, width, kernel_size, 2**i, dropout) for i in range(levels))
        )

    def forward(self, x, lengths=None):
        """(B, L, C) -> (B, L, C); lengths (B,): each row's real steps of a right-padded batch,
        whose padded tail is masked (see the module docstring)."""
        if lengths is None:
            return self.blocks(x.transpose(1, 2)).transpose(1, 2)
        steps = torch.arange(x.shape[1], device=x.device)
        real = (steps < lengths.to(x.device)[:, None]).unsqueeze(1).to(x.dtype)  # (B, 1, L)
        h = x.transpose(1, 2) * real
        for block in self.blocks:
            h = block(h) * real
        return h.transpose(1, 2)

    def init_state(self, batch_size: int, device, dtype):
        return tuple(block.init_state(batch_size, device, dtype) for block in self.blocks)

    def step(self, x_t, state):
        new = []
        for block, block_state in zip(self.blocks, state, strict=True):
            x_t, block_state = block.step(x_t, block_state)
            new.append(block_state)
        return x_t, tuple(new)


def build_tcn(io, width, hp: TCNHP, max_len):
    levels = hp.levels or levels_to_cover(hp.kernel_size, max_len)
    field = receptive_field(hp.kernel_size, levels)
    if field < max_len:
        warnings.warn(
            f"tcn: receptive field {field} (kernel {hp.kernel_size}, {levels} levels) does not "
            f"cover sequence length {max_len}",
            stacklevel=2,
        )
    tcn = TCN(width, levels, hp.kernel_size, hp.dropout)
    buffered = sum(m.pad * m.conv.in_channels for m in tcn.modules() if isinstance(m, CausalConv1d))
    info = {"levels": levels, "receptive_field": field,
            "state_bytes_per_sample": buffered * 4, "state_bytes_per_position": 0}  # float32
    return Core(tcn, width, width, info)


FAMILIES = [Family("tcn", "temporal convolutional network (Bai et al. 2018)", TCNHP, build_tcn,
                   order=40, colour="#d55e00", marker="D")]
