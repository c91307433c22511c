"""Pieces shared by the sequence-model families: a linear scan, a causal long convolution, a short
causal depthwise convolution, and a stack of residual blocks that streams.

- scan (LRU, Mamba, the inter-chunk state of gated linear attention): x_t = a_t x_{t-1} + b_t by
  even-odd recursion, log depth and O(L) work, no loop over time steps.
- causal_conv (S4D, Hyena): y_t = sum_{s <= t} k_{t-s} u_s per channel, by FFT (O(L log L)) above
  DIRECT_MAX_LEN steps and as a Toeplitz product at or below it.
- ShortConv (Mamba, Hyena): a k-tap depthwise causal convolution with a k - 1 step buffer.
- Stack: residual blocks in order, then an optional final norm, streaming block by block.

Recurrences and FFTs run in float32 (float64 in a float64 model), never in half precision: under
bf16 autocast the projections may run in bf16, and their outputs are cast up first (as the LRU
does and as the references' kernels accumulate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIRECT_MAX_LEN = 32  # causal_conv's crossover: measured equal speed on one CPU thread at 32 steps


def precision(dtype: torch.dtype) -> torch.dtype:
    """The dtype a recurrence or FFT runs in for inputs of `dtype`: float64 for float64, float32
    otherwise (half precision is cast up)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x_t = a_t * x_{t-1} + b_t along dim 1 of b (B, L, ...) from x_{-1} = 0 (real or complex).

    a is time-varying when it has b's rank and a dim 1 of size L > 1 (its other dims broadcast
    against b's), constant in time otherwise (any shape that broadcasts against b[:, t], e.g.
    (N,)). Even-odd recursion (the work-efficient parallel prefix of Ladner & Fischer 1980 and
    Blelloch 1990, for the operator (a, b) o (a', b') = (a' a, a' b + b')): the pairs of steps
    (2i, 2i+1) collapse into one step with coefficient a_{2i+1} a_{2i} and input
    a_{2i+1} b_{2i} + b_{2i+1}; the scan of those L/2 steps gives x at the odd steps, and
    x_{2i} = a_{2i} x_{2i-1} + b_{2i} the even ones. ceil(log2 L) levels and O(L) work and memory
    in all, with only products of a's: no division, no exponential of a cumulative sum, so
    |a| <= 1 keeps every intermediate bounded at any length.
    """
    length = b.shape[1]
    if length < 2:
        return b
    half = length // 2
    varying = a.dim() == b.dim() and a.shape[1] > 1
    b_even, b_odd = b[:, 0::2], b[:, 1::2]
    a_even, a_odd = (a[:, 0::2], a[:, 1::2]) if varying else (a, a)
    a_pair = a_odd * a_even[:, :half] if varying else a * a
    x_odd = scan(a_pair, a_odd * b_even[:, :half] + b_odd)  # x_1, x_3, ...
    before = torch.cat([torch.zeros_like(x_odd[:, :1]), x_odd[:, : length - half - 1]], dim=1)
    x_even = b_even + a_even * before  # x_0, x_2, ...
    x = torch.stack([x_even[:, :half], x_odd], dim=2).flatten(1, 2)
    return torch.cat([x, x_even[:, half:]], dim=1) if length % 2 else x


def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s <= t} k_{t-s} u_s per channel: u (B, L, C), taps k (>= L, C) -> (B, L, C).

    Above DIRECT_MAX_LEN steps by FFT of size 2L (O(L log L)); there outputs depend on later
    inputs only through float round-off (~1e-7 relative in float32). At or below it as a product
    with the lower-triangular Toeplitz matrix of the taps, as fast there and exactly causal: no
    output or gradient touches a later input. In u's precision (half precision in float32),
    returned in u's dtype.
    """
    length, dtype = u.shape[1], precision(u.dtype)
    with torch.autocast(u.device.type, enabled=False):
        x, taps = u.to(dtype), k[:length].to(dtype)
        if length <= DIRECT_MAX_LEN:
            steps = torch.arange(length, device=u.device)
            lag = steps[:, None] - steps[None, :]  # (t, s) -> t - s
            toeplitz = torch.where((lag >= 0)[..., None], taps[lag.clamp(min=0)], 0.0)
            y = torch.einsum("tsc,bsc->btc", toeplitz, x)
        else:
            n = 2 * length
            spectrum = torch.fft.rfft(x, n=n, dim=1) * torch.fft.rfft(taps, n=n, dim=0)
            y = torch.fft.irfft(spectrum, n=n, dim=1)[:, :length]
    return y.to(u.dtype)


class ShortConv(nn.Module):
    """Depthwise causal convolution over kernel_size taps with a bias (Mamba's conv1d, Hyena's
    short filter): torch's Conv1d(C, C, k, groups=C), default initialisation, on the input
    left-padded by k - 1 zeros. Streaming state: the last k - 1 inputs (B, C, k - 1), zeros at the
    start as forward's padding."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)."""
        pad = self.conv.kernel_size[0] - 1
        return self.conv(F.pad(x.transpose(1, 2), (pad, 0))).transpose(1, 2)

    def init_state(self, batch_size: int, device, dtype) -> torch.Tensor:
        c, k = self.conv.in_channels, self.conv.kernel_size[0]
        return torch.zeros(batch_size, c, k - 1, device=device, dtype=dtype)

    def step(self, x_t: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, C) -> y_t (B, C) and the buffer shifted by one (new tensors)."""
        window = torch.cat([buffer, x_t.unsqueeze(-1)], dim=-1)  # (B, C, k), oldest first
        y = (window * self.conv.weight[:, 0]).sum(-1) + self.conv.bias
        return y, window[..., 1:]


class Stack(nn.Module):
    """Residual blocks applied in order, then `norm` if given. Each block maps (B, L, H) to
    (B, L, H) and streams with init_state(batch_size, device, dtype) and step(x_t, state); the
    stack's state is the tuple of the blocks' states."""

    def __init__(self, blocks: list[nn.Module], norm: nn.Module | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def init_state(self, batch_size: int, device, dtype) -> tuple:
        return tuple(block.init_state(batch_size, device, dtype) for block in self.blocks)

    def step(self, x_t, state):
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            x_t, s = block.step(x_t, s)
            new.append(s)
        return self.norm(x_t), tuple(new)
