"""Linear Recurrent Unit, LRU (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for
Long Sequences"), in a deep residual stack, in pure PyTorch.

One LRU layer, model width H, state size N (their Appendix A):

    Lambda = exp(-exp(nu_log) + i exp(theta_log))           (N,) complex, |Lambda| < 1 always
    gamma = exp(gamma_log)                                   (N,) real, trained
    x_k = Lambda * x_{k-1} + gamma * ((B_re + i B_im) u_k)  x_{-1} = 0, complex (N,)
    y_k = Re((C_re + i C_im) x_k) + D * u_k                  real (H,)

Initialisation as theirs: |Lambda|^2 uniform on [r_min^2, r_max^2] (the ring), phase uniform on
[0, max_phase], gamma = sqrt(1 - |Lambda|^2) (the forward-pass normalisation: white-noise input
gives a state of the same scale whatever |Lambda|), B ~ N(0, 1/(2H)) per real and imaginary part,
C ~ N(0, 1/N) likewise, D ~ N(0, 1). The exponential parametrisation keeps every eigenvalue inside
the unit disc for any finite nu_log (in float32, |Lambda| rounds to 1 only below nu_log ~ -16.6, a
time constant of ~1e7 steps).

Block (their Fig. 1, Norm-Recurrence-GLU-Skip), `layers` times: x + Dropout(GLU(Dropout(GELU(
LRU(LayerNorm(x)))))), the GLU a Linear(H, 2H) whose halves a, b give a * sigmoid(b). No final
norm: the model's linear head reads the residual stream.

Training runs the recurrence as a chunked parallel scan over time (seqbench.models.primitives.scan,
shared with Mamba and gated linear attention): O(L) work and memory in log_16(L) levels of 16
vectorised steps, no Python loop over the sequence's steps, and its adjoint as the backward. The
recurrence always runs in float32/complex64 (complex128 for a float64 model): autocast has no
bfloat16 complex, so the projections may run in bf16 under autocast but the input projection is
cast to float32 before the scan.

Streaming state: per layer the complex state x (B, N), O(1) in the position; a step is one
update of the recurrence (new tensors, the given state untouched).

Truncated BPTT (forward_from): a chunk that starts from a carried state x_{-1} = s runs the same
scan with Lambda s added to its first drive term, x_0 = Lambda s + gamma B u_0, and returns its
last state; glued without detaching, chunks give forward's outputs and gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqbench.models.base import Core, Family
from seqbench.models.primitives import scan
from seqbench.strict import require


@dataclass(frozen=True)
class LRUHP:
    layers: int = 2
    state_mult: float = 1.0  # state size N = max(1, round(state_mult * width)); the paper has N >= H
    r_min: float = 0.0  # eigenvalue ring at init; the paper uses 0.9 .. 0.999 for long range
    r_max: float = 0.99
    max_phase: float = 2 * math.pi  # the paper uses pi / 10 on some LRA tasks
    dropout: float = 0.0

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(self.state_mult > 0, f"{where}.state_mult", f"must be > 0, got {self.state_mult}")
        require(0 <= self.r_min <= self.r_max, f"{where}.r_min",
                f"must be in [0, r_max = {self.r_max}], got {self.r_min}")
        require(0 <= self.r_max < 1, f"{where}.r_max", f"must be in [0, 1), got {self.r_max}")
        require(0 < self.max_phase <= 2 * math.pi, f"{where}.max_phase",
                f"must be in (0, 2 pi], got {self.max_phase}")
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")

    def state_size(self, width: int) -> int:
        return max(1, round(self.state_mult * width))

    def techniques(self) -> tuple[str, ...]:
        """Training techniques (seqbench.models.base): a carried state for truncated BPTT."""
        return ("tbptt",)


class LRU(nn.Module):
    def __init__(self, width: int, state: int, r_min: float, r_max: float, max_phase: float):
        super().__init__()
        self.nu_log = nn.Parameter(torch.empty(state))
        self.theta_log = nn.Parameter(torch.empty(state))
        self.gamma_log = nn.Parameter(torch.empty(state))
        self.B_re = nn.Parameter(torch.empty(state, width))
        self.B_im = nn.Parameter(torch.empty(state, width))
        self.C_re = nn.Parameter(torch.empty(width, state))
        self.C_im = nn.Parameter(torch.empty(width, state))
        self.D = nn.Parameter(torch.empty(width))
        self.reset_parameters(r_min, r_max, max_phase)

    @torch.no_grad()
    def reset_parameters(self, r_min: float, r_max: float, max_phase: float) -> None:
        state, width = self.B_re.shape
        tiny = torch.finfo(torch.float64).tiny  # r_min = 0 and a uniform draw of exactly 0
        u1 = torch.rand(state, dtype=torch.float64)
        u2 = torch.rand(state, dtype=torch.float64)
        radius2 = (u1 * (r_max**2 - r_min**2) + r_min**2).clamp_min(tiny)  # |Lambda|^2
        self.nu_log.copy_(torch.log(-0.5 * torch.log(radius2)))
        self.theta_log.copy_(torch.log((max_phase * u2).clamp_min(tiny)))
        self.gamma_log.copy_(0.5 * torch.log1p(-radius2))  # log sqrt(1 - |Lambda|^2)
        for p in (self.B_re, self.B_im):
            nn.init.normal_(p, std=1 / math.sqrt(2 * width))
        for p in (self.C_re, self.C_im):
            nn.init.normal_(p, std=1 / math.sqrt(state))
        nn.init.normal_(self.D)

    def real_dtype(self) -> torch.dtype:
        """float32 for the recurrence, float64 only in a float64 model."""
        return torch.float64 if self.nu_log.dtype == torch.float64 else torch.float32

    def eigenvalues(self) -> torch.Tensor:
        """Lambda (N,) complex: modulus exp(-exp(nu_log)), phase exp(theta_log)."""
        real = self.real_dtype()
        modulus = torch.exp(-torch.exp(self.nu_log.to(real)))
        phase = torch.exp(self.theta_log.to(real))
        return torch.complex(modulus * torch.cos(phase), modulus * torch.sin(phase))

    def drive(self, u: torch.Tensor) -> torch.Tensor:
        """gamma * B u: (..., H) real -> (..., N) complex, in the recurrence's precision."""
        real, state = self.real_dtype(), self.B_re.shape[0]
        bu = F.linear(u, torch.cat([self.B_re, self.B_im])).to(real)
        gamma = torch.exp(self.gamma_log.to(real))
        return torch.complex(bu[..., :state] * gamma, bu[..., state:] * gamma)

    def readout(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Re(C x) + D * u = C_re Re(x) - C_im Im(x) + D * u, in u's dtype."""
        c = torch.cat([self.C_re, -self.C_im], dim=1)
        y = F.linear(torch.cat([x.real, x.imag], dim=-1).to(u.dtype), c.to(u.dtype))
        return y + self.D.to(u.dtype) * u

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H) through the parallel scan."""
        return self.forward_from(u, None)[0]

    def forward_from(self, u: torch.Tensor, x0: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward from the state x_{-1} = x0 (B, N) complex (None: zero) -> (outputs, the state
        at the last step)."""
        lam, b = self.eigenvalues(), self.drive(u)
        if x0 is not None:  # the initial-state term enters through the first step's drive
            b = torch.cat([b[:, :1] + (lam * x0)[:, None], b[:, 1:]], dim=1)
        x = scan(lam, b)
        return self.readout(x, u), x[:, -1]

    def step(self, u_t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the recurrence: u_t (B, H), x (B, N) complex -> y_t (B, H), new x."""
        x = self.eigenvalues() * x + self.drive(u_t)
        return self.readout(x, u_t), x


class LRUBlock(nn.Module):
    """x + Dropout(GLU(Dropout(GELU(LRU(LayerNorm(x))))))."""

    def __init__(self, width: int, state: int, hp: LRUHP):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lru = LRU(width, state, hp.r_min, hp.r_max, hp.max_phase)
        self.glu = nn.Linear(width, 2 * width)
        self.dropout = hp.dropout

    def mix(self, y: torch.Tensor, training: bool) -> torch.Tensor:
        p = self.dropout if training else 0.0
        y = F.dropout(F.gelu(y), p, training)
        return F.dropout(F.glu(self.glu(y), dim=-1), p, training)

    def forward(self, x):
        return x + self.mix(self.lru(self.norm(x)), self.training)

    def forward_from(self, x, h):
        y, h = self.lru.forward_from(self.norm(x), h)
        return x + self.mix(y, self.training), h

    def step(self, x_t, h):
        y, h = self.lru.step(self.norm(x_t), h)
        return x_t + self.mix(y, False), h


class DeepLRU(nn.Module):
    def __init__(self, width: int, hp: LRUHP):
        super().__init__()
        self.state = hp.state_size(width)
        self.blocks = nn.ModuleList(LRUBlock(width, self.state, hp) for _ in range(hp.layers))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def forward_from(self, x, state):
        """forward from the per-layer states (None: zeros) -> (outputs, the states at the last
        step)."""
        new = []
        for block, h in zip(self.blocks, state or (None,) * len(self.blocks), strict=True):
            x, h = block.forward_from(x, h)
            new.append(h)
        return x, tuple(new)

    def first_layer(self) -> list[nn.Parameter]:
        """The first block's recurrence (nu, theta, gamma, B, C, D)."""
        return list(self.blocks[0].lru.parameters())

    def init_state(self, batch_size: int, device, dtype) -> tuple[torch.Tensor, ...]:
        """Per layer a zero complex state (B, N): complex64, complex128 for float64."""
        kind = torch.complex128 if dtype == torch.float64 else torch.complex64
        return tuple(
            torch.zeros(batch_size, self.state, device=device, dtype=kind) for _ in self.blocks
        )

    def step(self, x_t, state):
        new = []
        for block, h in zip(self.blocks, state, strict=True):
            x_t, h = block.step(x_t, h)
            new.append(h)
        return x_t, tuple(new)


def build_lru(io, width, hp: LRUHP, max_len) -> Core:
    core = DeepLRU(width, hp)
    info = {"state_size": core.state, "layers": hp.layers, "r_min": hp.r_min,
            "r_max": hp.r_max, "max_phase": hp.max_phase,
            "state_bytes_per_sample": len(core.blocks) * core.state * 8,  # complex64 (B, N) each
            "state_bytes_per_position": 0}
    return Core(core, width, width, info)


FAMILIES = [
    Family(
        "lru",
        "Linear Recurrent Unit (Orvieto et al. 2023): complex diagonal linear recurrence, "
        "parallel scan; pre-LN residual blocks with GLU",
        LRUHP,
        build_lru,
        version=2,  # 2: the chunked scan (seqbench.models.primitives) replaced Hillis-Steele
        order=60, colour="#ca9161", marker="h",
    )
]
