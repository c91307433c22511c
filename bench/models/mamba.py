"""Mamba, the selective state space model (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces"), in pure PyTorch; checked against the reference implementation
(state-spaces/mamba: mamba_ssm/modules/mamba_simple.py, selective_scan_ref, mixer_seq_simple.py).

One Mamba layer, model width d, inner width E = expand * d, state size N per inner channel,
dt rank R (default ceil(d / 16)); for input u_t (d,):

    x_t, z_t = in_proj(u_t)                            Linear(d, 2E), no bias; two halves (E,)
    x_t = SiLU(conv(x)_t)                              depthwise causal conv, d_conv = 4 taps, bias
    dt_t = softplus(W_up W_down x_t + b_dt)            (E,); W_down (R, E) in x_proj, W_up (E, R)
    B_t = W_B x_t,  C_t = W_C x_t                      (N,) each, no bias (x_proj's other rows)
    h_t = exp(dt_t A) * h_{t-1} + (dt_t x_t) B_t       (E, N), h_{-1} = 0; A = -exp(A_log) (E, N)
    y_t = h_t C_t + D * x_t                            (E,)
    out_t = out_proj(y_t * SiLU(z_t))                  Linear(E, d), no bias

The discretisation is the reference's (selective_scan_ref): A_bar = exp(dt A) (zero-order hold),
B_bar = dt B (its first-order simplification), so the state update takes dt_t x_t B_t.

Training runs the recurrence, time-varying and real, as the shared chunked scan
(seqbench.models.primitives.chunked_scan: O(L) work in log_16(L) levels of 16 vectorised steps, no
loop over the sequence's steps) inside SelectiveScan, an autograd function whose backward is the
adjoint recurrence, one more such scan run backwards (the reference's selective_scan_fn also has
its own backward). Every coefficient exp(dt_t A) lies in (0, 1] and the scan multiplies
coefficients only, so nothing grows with L (no exponential of a cumulative sum). The state
(B, L, E, N) is materialised, in groups of inner channels, and kept for the backward, as the
reference's PyTorch path (selective_scan_ref) materialises it; its fused CUDA kernel keeps it in
SRAM and recomputes it instead.

Initialisation as the reference: A_n = -(n + 1) for n = 0 .. N-1 in every channel (S4D-Real),
stored as A_log = log(n + 1); D = 1; dt_proj's weight U(-R^-1/2, R^-1/2) and its bias the
inverse softplus of dt ~ exp(U(log dt_min, log dt_max)) floored at 1e-4, so that softplus(bias)
lies in [dt_min, dt_max] = [1e-3, 1e-1]; the other projections and the convolution torch's
defaults, out_proj then scaled by 1/sqrt(layers) (the reference's rescale_prenorm_residual, one
residual branch per layer).

Block (mixer_seq_simple's Block, `layers` times): x + Mamba(RMSNorm(x)); a final RMSNorm (eps
1e-5) before the model's head, as the reference's norm_f.

Departures: none in the layer's arithmetic; A_log and D get the suite's weight decay (the
reference exempts them); the recurrence runs in float32 (float64 in a float64 model) whatever
autocast says, as the reference's selective scan does.

Streaming state: per layer the convolution buffer, the last d_conv - 1 inner inputs (B, E, 3),
and the SSM state h (B, E, N): O(1) in the position. A step is one update of the recurrence
(new tensors, the given state untouched).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from seqbench.models.base import Core, Family
from seqbench.models.primitives import ShortConv, Stack, chunked_scan, no_autocast, precision, shift
from seqbench.strict import require

DT_FLOOR = 1e-4  # the reference's dt_init_floor
# (B, L, channels, N) elements per selective-scan call: the inner channels are independent, so the
# scan runs on groups of them, 8 MB of float32 each at most, which on CPU keeps its tensors in
# reused memory and cache (fresh pages for each large temporary made it ~1.8x slower at L = 256).
BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class MambaHP:
    layers: int = 2
    d_state: int = 16  # N
    expand: int = 2  # E = expand * width
    d_conv: int = 4
    dt_rank: int = 0  # 0: ceil(width / 16), the reference's "auto"
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(self.d_state >= 1, f"{where}.d_state", f"must be >= 1, got {self.d_state}")
        require(self.expand >= 1, f"{where}.expand", f"must be >= 1, got {self.expand}")
        require(self.d_conv >= 1, f"{where}.d_conv", f"must be >= 1, got {self.d_conv}")
        require(self.dt_rank >= 0, f"{where}.dt_rank",
                f"must be >= 1, or 0 for ceil(width / 16), got {self.dt_rank}")
        require(DT_FLOOR <= self.dt_min <= self.dt_max, f"{where}.dt_min",
                f"must be in [{DT_FLOOR}, dt_max = {self.dt_max}], got {self.dt_min}")

    def rank(self, width: int) -> int:
        return self.dt_rank or math.ceil(width / 16)


class SelectiveScan(torch.autograd.Function):
    """y_t = h_t C_t with h_t = exp(dt_t A) h_{t-1} + u_t B_t (u = dt x), over (B, L, E, N):
    dt, u (B, L, E), A (E, N), B, C (B, L, N) -> y (B, L, E); the reference's selective_scan_fn
    without D and z, with its own backward (as the reference's). The backward is the adjoint
    scan, lambda_t = exp(dt_{t+1} A) lambda_{t+1} + grad_y_t C_t, and every gradient is
    contracted from lambda and h: grad (u B)_t = lambda_t, grad (dt A)_t = lambda_t *
    exp(dt_t A) h_{t-1} = lambda_t (h_t - u_t B_t). Of the (B, L, E, N) tensors only h is kept,
    and two are made in the forward and three in the backward (on CPU a fresh large tensor costs
    more than a pass over one in memory)."""

    @staticmethod
    def forward(ctx, dt, a, u, b, c):
        decay = torch.exp_(dt[..., None] * a)
        h = chunked_scan(decay, outer(u, b), scratch=True)
        ctx.save_for_backward(dt, a, u, b, c, h)
        return torch.matmul(h, c[..., None])[..., 0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        dt, a, u, b, c, h = ctx.saved_tensors
        later = torch.exp_(shift(dt, later=True)[..., None] * a)  # exp(dt_{t+1} A), 0 at the end
        adjoint = chunked_scan(later, outer(grad_y, c), reverse=True, scratch=True)
        grad_arg = torch.addcmul(h, u[..., None], b[:, :, None, :], value=-1).mul_(adjoint)
        grad_dt = (grad_arg * a).sum(-1)
        grad_a = grad_arg.mul_(dt[..., None]).sum((0, 1))
        grad_u = torch.matmul(adjoint, b[..., None])[..., 0]
        grad_b = torch.matmul(u[:, :, None, :], adjoint)[:, :, 0]
        grad_c = torch.matmul(grad_y[:, :, None, :], h)[:, :, 0]
        return grad_dt, grad_a, grad_u, grad_b, grad_c


def outer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, L, E) and (B, L, N) -> (B, L, E, N), x_ble y_bln (einsum: faster on CPU than a
    broadcast multiplication)."""
    return torch.einsum("ble,bln->blen", x, y)


class Mamba(nn.Module):
    """One Mamba layer (the reference's Mamba mixer): (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, hp: MambaHP):
        super().__init__()
        inner, rank, n = hp.expand * width, hp.rank(width), hp.d_state
        self.in_proj = nn.Linear(width, 2 * inner, bias=False)
        self.conv = ShortConv(inner, hp.d_conv)
        self.x_proj = nn.Linear(inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        a = torch.arange(1, n + 1, dtype=torch.float32).repeat(inner, 1)  # -A, S4D-Real
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, width, bias=False)
        with torch.no_grad():
            bound = rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
            log_dt = torch.rand(inner) * (math.log(hp.dt_max) - math.log(hp.dt_min))
            dt = torch.exp(log_dt + math.log(hp.dt_min)).clamp(min=DT_FLOOR)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            self.out_proj.weight /= math.sqrt(hp.layers)

    def selection(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From the convolved inner input x (..., E): x, dt (..., E), B and C (..., N), all in the
        recurrence's precision."""
        rank, n = self.dt_proj.in_features, self.A_log.shape[1]
        dt_low, b, c = self.x_proj(x).split([rank, n, n], dim=-1)
        real = precision(self.A_log.dtype)
        dt = F.softplus(self.dt_proj(dt_low).to(real))
        return x.to(real), dt, b.to(real), c.to(real)

    def gates(self, u: torch.Tensor, conv: torch.Tensor | None = None):
        """in_proj, then the convolution (whole sequence, or one step given its buffer)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, buffer = (self.conv(x), None) if conv is None else self.conv.step(x, conv)
        return F.silu(x), z, buffer

    def output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y + self.D.to(y.dtype) * x
        return self.out_proj(y.to(z.dtype) * F.silu(z))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z, _ = self.gates(u)
        x, dt, b, c = self.selection(x)
        with no_autocast(u):
            a, dtx = -torch.exp(self.A_log.to(dt.dtype)), dt * x
            group = max(1, BLOCK_ELEMENTS // (dt.shape[0] * dt.shape[1] * a.shape[1]))
            y = torch.cat([SelectiveScan.apply(dt[..., s : s + group], a[s : s + group],
                                               dtx[..., s : s + group], b, c)
                           for s in range(0, a.shape[0], group)], dim=-1)
        return self.output(y, x, z)

    def step(self, u_t: torch.Tensor, state):
        """u_t (B, d), state (conv buffer (B, E, d_conv - 1), h (B, E, N)) -> (B, d), new state."""
        buffer, h = state
        x, z, buffer = self.gates(u_t, buffer)
        x, dt, b, c = self.selection(x)
        a = -torch.exp(self.A_log.to(dt.dtype))
        h = torch.exp(dt[..., None] * a) * h + (dt * x)[..., None] * b[:, None, :]
        return self.output((h * c[:, None, :]).sum(-1), x, z), (buffer, h)


class MambaBlock(nn.Module):
    """x + Mamba(RMSNorm(x))."""

    def __init__(self, width: int, hp: MambaHP):
        super().__init__()
        self.norm = nn.RMSNorm(width, eps=1e-5)
        self.mixer = Mamba(width, hp)

    def forward(self, x):
        return x + self.mixer(self.norm(x))

    def init_state(self, batch_size: int, device, dtype):
        shape = (batch_size, *self.mixer.A_log.shape)
        h = torch.zeros(shape, device=device, dtype=precision(dtype))
        return self.mixer.conv.init_state(batch_size, device, dtype), h

    def step(self, x_t, state):
        y, state = self.mixer.step(self.norm(x_t), state)
        return x_t + y, state


def build_mamba(io, width, hp: MambaHP, max_len) -> Core:
    stack = Stack([MambaBlock(width, hp) for _ in range(hp.layers)], nn.RMSNorm(width, eps=1e-5))
    per_sample = sum(  # float32 conv buffer (E, d_conv - 1) and SSM state (E, N) per layer
        block.mixer.conv.conv.in_channels * (hp.d_conv - 1) + block.mixer.A_log.numel()
        for block in stack.blocks
    )
    info = {"layers": hp.layers, "d_state": hp.d_state, "inner": hp.expand * width,
            "dt_rank": hp.rank(width), "state_bytes_per_sample": 4 * per_sample,
            "state_bytes_per_position": 0}
    return Core(stack, width, width, info)


FAMILIES = [
    Family(
        "mamba",
        "Mamba (Gu & Dao 2023): selective SSM with input-dependent dt, B, C, parallel scan; "
        "pre-RMSNorm residual blocks",
        MambaHP,
        build_mamba,
        order=80, colour="#7b3294", marker="*",
    )
]
