"""Gated linear attention, GLA (Yang, Wang, Shen, Panda & Kim 2023, "Gated Linear Attention
Transformers with Hardware-Efficient Training"), in pure PyTorch; checked against the reference
layer and model (sustcsonglin/flash-linear-attention: fla/layers/gla.py, fla/ops/gla/naive.py,
fla/models/gla/modeling_gla.py).

Why GLA rather than RetNet's retention: GLA's decay is data-dependent (each step chooses how much
of each key dimension of the state to keep), retention's a fixed per-head constant. The
data-dependent gate is what the multi-query associative recall comparison of Arora et al. 2023
(Zoology) and the selective-copying argument of Gu & Dao 2023 turn on; with the gate held fixed,
GLA is retention with a per-dimension decay.

One GLA layer, model width d, H heads, per head key width d_k and value width d_v (defaults
d_k = round(0.5 d / H), d_v = round(d / H), the paper's d_k = d/2, d_v = d); per head, for x_t:

    q_t = x_t W_q d_k^-1/2,  k_t = x_t W_k,  v_t = x_t W_v             (d_k,), (d_k,), (d_v,)
    alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1/tau)                     (d_k,), rank 16, tau = 16
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,  o_t = q_t S_t           S (d_k, d_v), S_{-1} = 0
    y_t = (RMSNorm(o_t) * SiLU(x_t W_g)) W_o                           heads concatenated

Training uses the chunkwise-parallel form (their Sec. 4), chunks of C = 16 steps. With b_t the
cumulative log decay from the chunk's start through step t (b_t <= b_s <= 0 for s <= t):
intra-chunk, o_t gets sum_{s <= t} (sum_j q_tj k_sj exp(b_tj - b_sj)) v_s, the exponents taken
pairwise so that each is <= 0 (the paper's numerically stable "log-space" parallel form, which its
hardware-efficient version keeps only inside sub-chunks so that matmuls do the rest);
inter-chunk, o_t gets (q_t * exp(b_t)) S_prev, the state entering the chunk; the states at chunk
ends, S_c = diag(exp(b_last)) S_{c-1} + sum_s (k_s * exp(b_last - b_s))^T v_s, come from the shared
parallel scan over chunks (seqbench.models.primitives.scan). Every exponent is <= 0, so nothing
overflows at any length. Streaming runs the recurrence itself.

Block (fla's GLABlock, `layers` times): x + GLA(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)), the
SwiGLU W_down(SiLU(x W_gate) * x W_up) of hidden width round(2/3 * ff_mult * d); a final RMSNorm
before the model's head. RMSNorm eps 1e-5; the per-head RMSNorm of o_t has one weight (d_v,) shared
by the heads, as fla's.

Initialisation: torch's defaults for every projection (as the suite's other families); b_a is
Linear's default bias.

Departures from fla's GLA: its weights are N(0, 0.02^2) with o and the SwiGLU's down projection
scaled by 1/sqrt(2 layers), a language-model initialisation for widths in the hundreds, where at
this suite's widths (tens) torch's defaults keep unit-scale activations; per-head widths are
rounded (fla requires them to divide), and the SwiGLU width is not rounded up to a multiple of
256. As in fla's defaults there is no short convolution, no feature map on q and k, and no bias
on the projections but b_a. The recurrence runs in float32 (float64 in a float64 model) whatever
autocast says, as fla's kernels accumulate.

Streaming state: per layer S (B, H, d_k, d_v), O(1) in the position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqbench.models.base import Core, Family
from seqbench.models.primitives import Stack, no_autocast, precision, scan
from seqbench.strict import require

CHUNK = 16


@dataclass(frozen=True)
class GLAHP:
    layers: int = 2
    heads: int = 4
    expand_k: float = 0.5  # total key width over model width (the paper's d_k = d/2)
    expand_v: float = 1.0
    gate_rank: int = 16  # rank of W_a1 W_a2
    gate_temperature: float = 16.0  # tau in alpha = sigmoid(.)^(1/tau)
    ff_mult: float = 4.0  # SwiGLU hidden width round(2/3 * ff_mult * width), Llama's 8/3 d

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(self.heads >= 1, f"{where}.heads", f"must be >= 1, got {self.heads}")
        for name in ("expand_k", "expand_v", "gate_temperature", "ff_mult"):
            value = getattr(self, name)
            require(value > 0, f"{where}.{name}", f"must be > 0, got {value}")
        require(self.gate_rank >= 1, f"{where}.gate_rank", f"must be >= 1, got {self.gate_rank}")

    def head_dims(self, width: int) -> tuple[int, int]:
        """d_k and d_v per head."""
        return (max(1, round(self.expand_k * width / self.heads)),
                max(1, round(self.expand_v * width / self.heads)))


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor,
            chunk: int = CHUNK) -> torch.Tensor:
    """o_t = q_t S_t with S_t = diag(exp(log_alpha_t)) S_{t-1} + k_t^T v_t, S_{-1} = 0, per head,
    chunkwise: q, k, log_alpha (B, L, H, d_k) with log_alpha <= 0, v (B, L, H, d_v) ->
    (B, L, H, d_v). See the module docstring; a length that is not a multiple of `chunk` is
    padded at the end (after every real step, so no real output sees the padding)."""
    length = q.shape[1]
    pad = -length % chunk
    q, k, v, log_alpha = (F.pad(t, (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, chunk))
                          for t in (q, k, v, log_alpha))  # (B, n, C, H, d)
    b = log_alpha.cumsum(2)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()[..., None, None]
    gap = (b[:, :, :, None] - b[:, :, None, :]).masked_fill(~causal, float("-inf"))  # [t, s]
    scores = (q[:, :, :, None] * k[:, :, None, :] * torch.exp(gap)).sum(-1)  # (B, n, C, C, H)
    intra = torch.einsum("bntsh,bnshv->bnthv", scores, v)
    last = b[:, :, -1]  # (B, n, H, d_k): the chunk's whole log decay
    summary = torch.einsum("bnshk,bnshv->bnhkv", k * torch.exp(last[:, :, None] - b), v)
    ends = scan(torch.exp(last)[..., None], summary)  # the state at each chunk's end
    entering = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
    inter = torch.einsum("bnthk,bnhkv->bnthv", q * torch.exp(b), entering)
    return (intra + inter).flatten(1, 2)[:, :length]


class GatedLinearAttention(nn.Module):
    """One GLA layer: (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, hp: GLAHP):
        super().__init__()
        heads, (d_k, d_v) = hp.heads, hp.head_dims(width)
        self.q = nn.Linear(width, heads * d_k, bias=False)
        self.k = nn.Linear(width, heads * d_k, bias=False)
        self.v = nn.Linear(width, heads * d_v, bias=False)
        self.gate = nn.Sequential(nn.Linear(width, hp.gate_rank, bias=False),
                                  nn.Linear(hp.gate_rank, heads * d_k))
        self.g = nn.Linear(width, heads * d_v, bias=False)
        self.norm = nn.RMSNorm(d_v, eps=1e-5)
        self.o = nn.Linear(heads * d_v, width, bias=False)
        self.heads, self.d_k, self.d_v = heads, d_k, d_v
        self.temperature = hp.gate_temperature

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q (scaled), k, v and log alpha, split into heads (..., H, d), in the recurrence's
        precision."""
        real = precision(self.o.weight.dtype)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.to(real).unflatten(-1, (self.heads, -1))

        log_alpha = F.logsigmoid(heads(self.gate(x))) / self.temperature
        return heads(self.q(x)) * self.d_k**-0.5, heads(self.k(x)), heads(self.v(x)), log_alpha

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(..., H, d_v) attention output -> (..., d): per-head RMSNorm, SiLU gate, W_o."""
        return self.o(self.norm(o.to(x.dtype)).flatten(-2) * F.silu(self.g(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, log_alpha = self.project(x)
        with no_autocast(x):
            o = chunked(q, k, v, log_alpha)
        return self.output(o, x)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, d), S (B, H, d_k, d_v) -> (B, d), the new S."""
        q, k, v, log_alpha = self.project(x_t)
        state = torch.exp(log_alpha)[..., None] * state + k[..., None] * v[..., None, :]
        return self.output(torch.einsum("bhk,bhkv->bhv", q, state), x_t), state


class SwiGLU(nn.Module):
    """W_down(SiLU(x W_gate) * x W_up), no biases (fla's GLAMLP)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        gate, y = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * y)


class GLABlock(nn.Module):
    """x + GLA(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, width: int, hp: GLAHP):
        super().__init__()
        self.attn_norm = nn.RMSNorm(width, eps=1e-5)
        self.attn = GatedLinearAttention(width, hp)
        self.mlp_norm = nn.RMSNorm(width, eps=1e-5)
        self.mlp = SwiGLU(width, max(1, round(2 / 3 * hp.ff_mult * width)))

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def init_state(self, batch_size: int, device, dtype) -> torch.Tensor:
        a = self.attn
        shape = (batch_size, a.heads, a.d_k, a.d_v)
        return torch.zeros(shape, device=device, dtype=precision(dtype))

    def step(self, x_t, state):
        y, state = self.attn.step(self.attn_norm(x_t), state)
        x_t = x_t + y
        return x_t + self.mlp(self.mlp_norm(x_t)), state


def build_gla(io, width, hp: GLAHP, max_len) -> Core:
    stack = Stack([GLABlock(width, hp) for _ in range(hp.layers)], nn.RMSNorm(width, eps=1e-5))
    d_k, d_v = hp.head_dims(width)
    states = sum(b.attn.heads * b.attn.d_k * b.attn.d_v for b in stack.blocks)  # float32 S each
    info = {"layers": hp.layers, "heads": hp.heads, "d_k": d_k, "d_v": d_v,
            "state_bytes_per_sample": 4 * states, "state_bytes_per_position": 0}
    return Core(stack, width, width, info)


FAMILIES = [
    Family(
        "linear_attention",
        "gated linear attention, GLA (Yang et al. 2023): data-dependent decay, chunkwise-parallel "
        "training; pre-RMSNorm blocks with SwiGLU",
        GLAHP,
        build_gla,
        order=90, colour="#e7298a", marker=">",
    )
]
