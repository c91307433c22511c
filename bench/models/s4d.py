"""S4D, the diagonal structured state space model (Gu, Goel, Gupta & Re 2022, "On the
Parameterization and Initialization of Diagonal State Space Models"), in a deep residual stack,
in pure PyTorch; checked against the reference's minimal S4D (state-spaces/s4, models/s4/s4d.py).

One S4D layer, H channels, each an independent single-input single-output SSM of state size N
held as M = N/2 complex modes (their conjugates implicit: the 2 Re below), per channel h:

    x'(t) = A x(t) + B u(t),  y(t) = 2 Re(C x(t)) + D u(t)       A = -exp(log_A_real) + i A_imag
    A_bar = exp(dt A),  B_bar = (exp(dt A) - 1) / A * B           zero-order hold (their eq. 5)
    K_l = 2 Re(sum_m C_m A_bar_m^l B_bar_m),  l = 0 .. L-1       the kernel, a Vandermonde product
    y = K * u + D u                                               causal convolution

Training computes the kernel for the sequence length and convolves by FFT (O(L log L);
seqbench.models.primitives.causal_conv, which uses an exactly causal Toeplitz product up to 32 steps).
Streaming runs the recurrence x_t = A_bar x_{t-1} + B_bar u_t, y_t = 2 Re(C x_t) + D u_t, which
gives the same outputs (K_l is its impulse response).

Initialisation (S4D-Lin, their Sec. 4 and the reference): A_m = -1/2 + i pi m, m = 0 .. M-1;
log dt ~ U(log dt_min, log dt_max) per channel (1e-3, 1e-1); C ~ complex normal with unit
variance (real and imaginary parts N(0, 1/2)); D ~ N(0, 1); B = 1, fixed as in the reference's
minimal S4D (only the products B_m C_m reach the kernel, so a trained B adds nothing a trained C
cannot express). log_A_real, A_imag, log_dt and C are trained.

Block (the reference's example model, `layers` times): x + Dropout(GLU(Linear(Dropout(GELU(
S4D(LayerNorm(x))))))), the GLU a Linear(H, 2H) (their 1x1 Conv1d) whose halves a, b give
a * sigmoid(b). No final norm: the model's linear head reads the residual stream.

Departures from the reference: pre-norm (the example model's default is post-norm; pre-norm is
its other option, and what the LRU here uses); the SSM parameters get the suite's learning rate
and weight decay (the reference gives A and dt lr 1e-3 and no weight decay); the kernel and the
convolution run in float32 (complex64) whatever autocast says, as the LRU's recurrence does.

Streaming state: per layer the complex state (B, H, M), complex64 (complex128 in a float64
model), O(1) in the position; a step returns new tensors and leaves the given state untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqbench.models.base import Core, Family
from seqbench.models.primitives import Stack, causal_conv, precision
from seqbench.strict import require


@dataclass(frozen=True)
class S4DHP:
    layers: int = 2
    d_state: int = 64  # N as in the reference: N/2 complex modes plus their conjugates
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dropout: float = 0.0

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(self.d_state >= 2 and self.d_state % 2 == 0, f"{where}.d_state",
                f"must be an even number >= 2 (conjugate pairs), got {self.d_state}")
        require(0 < self.dt_min <= self.dt_max, f"{where}.dt_min",
                f"must be in (0, dt_max = {self.dt_max}], got {self.dt_min}")
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")


class S4D(nn.Module):
    """One S4D layer: (B, L, H) -> (B, L, H)."""

    def __init__(self, width: int, modes: int, dt_min: float, dt_max: float):
        super().__init__()
        log_dt = torch.rand(width) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.full((width, modes), math.log(0.5)))
        modes_n = torch.arange(modes, dtype=torch.float32).repeat(width, 1)
        self.A_imag = nn.Parameter(math.pi * modes_n)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(width, modes, dtype=torch.complex64)))
        self.D = nn.Parameter(torch.randn(width))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """dt A, A_bar, B_bar and C, each (H, M) complex, in the layer's precision."""
        real = precision(self.log_dt.dtype)
        a = torch.complex(-torch.exp(self.log_A_real.to(real)), self.A_imag.to(real))
        dt_a = a * torch.exp(self.log_dt.to(real))[:, None]
        a_bar = torch.exp(dt_a)
        return dt_a, a_bar, (a_bar - 1) / a, torch.view_as_complex(self.C.to(real).contiguous())

    def kernel(self, length: int) -> torch.Tensor:
        """K (L, H) real: 2 Re(sum_m C_m B_bar_m exp(l dt A_m)) for l = 0 .. L-1; each power of
        A_bar taken as one exponential (|A_bar| < 1, so every term is bounded), as modulus
        exp(l Re(dt A)) and phase l Im(dt A) (a complex exp is ~4x slower on CPU)."""
        dt_a, _, b_bar, c = self.discrete()
        steps = torch.arange(length, device=dt_a.device, dtype=dt_a.real.dtype)
        vandermonde = torch.polar(torch.exp(dt_a.real[:, :, None] * steps),
                                  dt_a.imag[:, :, None] * steps)  # (H, M, L)
        return 2 * torch.einsum("hm,hml->lh", c * b_bar, vandermonde).real

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return causal_conv(u, self.kernel(u.shape[1])) + self.D.to(u.dtype) * u

    def step(self, u_t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u_t (B, H), x (B, H, M) complex -> y_t (B, H), the new x."""
        _, a_bar, b_bar, c = self.discrete()
        x = a_bar * x + b_bar * u_t.to(a_bar.real.dtype)[..., None]
        y = 2 * (c * x).real.sum(-1)
        return y.to(u_t.dtype) + self.D.to(u_t.dtype) * u_t, x


class S4DBlock(nn.Module):
    """x + Dropout(GLU(Linear(Dropout(GELU(S4D(LayerNorm(x)))))))."""

    def __init__(self, width: int, hp: S4DHP):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ssm = S4D(width, hp.d_state // 2, hp.dt_min, hp.dt_max)
        self.out = nn.Linear(width, 2 * width)
        self.dropout = hp.dropout

    def residual(self, y: torch.Tensor, training: bool) -> torch.Tensor:
        p = self.dropout if training else 0.0
        y = self.out(F.dropout(F.gelu(y), p, training))
        return F.dropout(F.glu(y, dim=-1), p, training)

    def forward(self, x):
        return x + self.residual(self.ssm(self.norm(x)), self.training)

    def init_state(self, batch_size: int, device, dtype) -> torch.Tensor:
        kind = torch.complex128 if dtype == torch.float64 else torch.complex64
        return torch.zeros(batch_size, *self.ssm.A_imag.shape, device=device, dtype=kind)

    def step(self, x_t, state):
        y, state = self.ssm.step(self.norm(x_t), state)
        return x_t + self.residual(y, False), state


def build_s4d(io, width, hp: S4DHP, max_len) -> Core:
    stack = Stack([S4DBlock(width, hp) for _ in range(hp.layers)])
    modes = sum(block.ssm.A_imag.numel() for block in stack.blocks)  # H * M per layer
    info = {"layers": hp.layers, "d_state": hp.d_state,
            "state_bytes_per_sample": modes * 8, "state_bytes_per_position": 0}  # complex64
    return Core(stack, width, width, info)


FAMILIES = [
    Family(
        "s4d",
        "S4D (Gu et al. 2022): diagonal complex LTI state space model, S4D-Lin init, FFT "
        "convolution; pre-LN residual blocks with GLU",
        S4DHP,
        build_s4d,
        order=70, colour="#008080", marker="p",
    )
]
