"""Pieces shared by the sequence-model families: a linear scan, a causal long convolution, a short
causal depthwise convolution, and a stack of residual blocks that streams.

- scan (LRU, Mamba, the inter-chunk state of gated linear attention): x_t = a_t x_{t-1} + b_t as a
  chunked scan, O(L) work in log_16(L) levels of 16 vectorised steps (no loop over the L steps),
  with the adjoint scan as its backward.
- causal_conv (S4D, Hyena): y_t = sum_{s <= t} k_{t-s} u_s per channel, by FFT (O(L log L)) above
  DIRECT_MAX_LEN steps and as a Toeplitz product at or below it.
- ShortConv (Mamba, Hyena): a k-tap depthwise causal convolution with a k - 1 step buffer.
- Stack: residual blocks in order, then an optional final norm, streaming block by block.

Recurrences and FFTs run in float32 (float64 in a float64 model), never in half precision: under
bf16 autocast the projections may run in bf16, and their outputs are cast up first and the
recurrence runs with autocast off (as the LRU does and as the references' kernels accumulate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

DIRECT_MAX_LEN = 32  # causal_conv's crossover: measured equal speed on one CPU thread at 32 steps
SCAN_CHUNK = 16  # steps per chunk of the chunked scan


def precision(dtype: torch.dtype) -> torch.dtype:
    """The dtype a recurrence or FFT runs in for inputs of `dtype`: float64 for float64, float32
    otherwise (half precision is cast up)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def no_autocast(t: torch.Tensor) -> torch.autocast:
    """A context with autocast off on t's device, so that a recurrence's matmuls (einsum) run in
    the precision of their float32 inputs rather than in bf16."""
    return torch.autocast(t.device.type, enabled=False)


def scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x_t = a_t * x_{t-1} + b_t along dim 1 of b (B, L, ...) from x_{-1} = 0 (real or complex);
    x has b's shape.

    a is time-varying when it has b's rank and a dim 1 of size L > 1 (its other dims broadcast
    against b's), constant in time otherwise (any shape that broadcasts against b[:, t] without
    enlarging it, e.g. (N,)). Forward: chunked_scan. Backward: the adjoint recurrence, itself a
    scan run backwards in time, lambda_t = g_t + conj(a_{t+1}) lambda_{t+1}, giving
    grad b_t = lambda_t and grad a_t = lambda_t conj(x_{t-1}) (autograd's conjugate convention
    for complex tensors); only a and x are kept for it. (Differentiable once.)
    """
    return b if b.shape[1] < 2 else _Scan.apply(a, b)


def chunked_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False,
                 scratch: bool = False) -> torch.Tensor:
    """scan's forward, outside autograd; with reverse, x_t = a_t x_{t+1} + b_t from x_L = 0.
    With scratch, b and a time-varying a may serve as working memory (their contents are lost),
    which saves two copies of (B, L, ...) when L is a multiple of SCAN_CHUNK.

    The steps go in chunks of SCAN_CHUNK, every chunk at once: within each chunk a loop over its
    positions runs the recurrence from a zero state and accumulates the product of the
    coefficients since the chunk's entry; the states at the chunk exits then follow from the same
    scan over the L / SCAN_CHUNK chunks (recursively, each chunk's whole product its coefficient),
    and each step adds its product times the state that entered its chunk. log_SCAN_CHUNK(L)
    levels of at most SCAN_CHUNK vectorised steps, O(L) work and memory; only products of a's
    (no division, no exponential of a cumulative sum), so |a| <= 1 keeps every intermediate
    bounded at any length.
    """
    if a.dim() < b.dim():  # constant: to b's rank, dim 1 of size 1
        a = a.reshape((1,) * (b.dim() - 1 - a.dim()) + a.shape).unsqueeze(1)
    varying, length, chunk = a.shape[1] > 1, b.shape[1], min(SCAN_CHUNK, b.shape[1])
    pad = -length % chunk
    own = scratch and pad == 0
    x = (b if own else _pad(b, pad)).unflatten(1, (-1, chunk))  # (B, n, C, ...)
    if varying:
        product = (a if own else _pad(a, pad)).unflatten(1, (-1, chunk))
    else:
        product = a[:, None, 0]
    order = range(chunk - 2, -1, -1) if reverse else range(1, chunk)
    for t in order:  # within every chunk at once
        near = t + 1 if reverse else t - 1
        x[:, :, t].addcmul_(product[:, :, t] if varying else product, x[:, :, near])
        if varying:
            product[:, :, t].mul_(product[:, :, near])
    if x.shape[1] == 1:
        return x.flatten(1, 2)[:, :length]
    if not varying:  # a^(t+1) since the entry, a^(C-t) in reverse
        product = a.expand(-1, chunk, *a.shape[2:]).cumprod(1).unsqueeze(1)
        product = product.flip(2) if reverse else product
    exit_ = 0 if reverse else -1
    carry = chunked_scan(product[:, :, exit_], x[:, :, exit_], reverse)  # (B, n, ...)
    entering = shift(carry, later=reverse)[:, :, None]
    if not varying:
        x.addcmul_(product, entering)
    elif reverse:
        x[:, :-1].addcmul_(product[:, :-1], entering[:, :-1])
    else:
        x[:, 1:].addcmul_(product[:, 1:], entering[:, 1:])
    return x.flatten(1, 2)[:, :length]


def _pad(x: torch.Tensor, steps: int) -> torch.Tensor:
    """x with `steps` zero steps appended along dim 1 (always a new tensor)."""
    return torch.cat([x, x.new_zeros(x.shape[0], steps, *x.shape[2:])], dim=1)


def shift(x: torch.Tensor, later: bool) -> torch.Tensor:
    """x moved one step along dim 1, zero-filled: x_{t+1} at t if later, else x_{t-1}."""
    zero = torch.zeros_like(x[:, :1])
    return torch.cat([x[:, 1:], zero] if later else [zero, x[:, :-1]], dim=1)


class _Scan(torch.autograd.Function):
    """scan with its adjoint as the backward, so that autograd keeps none of the forward's
    intermediates and the backward is one more chunked scan."""

    @staticmethod
    def forward(ctx, a, b):
        x = chunked_scan(a, b)
        ctx.save_for_backward(a, x)
        ctx.b_shape = b.shape
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, x = ctx.saved_tensors
        varying = a.dim() == x.dim() and a.shape[1] > 1
        coefficient = shift(a.conj(), later=True) if varying else a.conj()
        adjoint = chunked_scan(coefficient, grad, reverse=True)
        grad_a = None
        if ctx.needs_input_grad[0]:
            grad_a = (adjoint * shift(x, later=False).conj()).sum_to_size(a.shape)
        return grad_a, adjoint.sum_to_size(ctx.b_shape)


def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s <= t} k_{t-s} u_s per channel: u (B, L, C), taps k (>= L, C) -> (B, L, C).

    Above DIRECT_MAX_LEN steps by FFT of size 2L (O(L log L)); there outputs depend on later
    inputs only through float round-off (~1e-7 relative in float32). At or below it as a product
    with the lower-triangular Toeplitz matrix of the taps, as fast there and exactly causal: no
    output or gradient touches a later input. In u's precision (half precision in float32),
    returned in u's dtype.
    """
    length, dtype = u.shape[1], precision(u.dtype)
    with no_autocast(u):
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
