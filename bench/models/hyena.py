"""Hyena (Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon & Re 2023, "Hyena Hierarchy:
Towards Larger Convolutional Language Models"), the gated long-convolution family of the Zoology
comparison (Arora et al. 2023), in pure PyTorch; checked against the reference operator
(HazyResearch/safari: src/models/sequence/hyena.py; HazyResearch/zoology: zoology/mixers/hyena.py).

One Hyena operator of order N (default 2), width d, on input u (B, L, d):

    z = ShortConv(u W_in + b_in)                          (N+1) d channels, 3 causal taps each
    x^1 .. x^N, v = split(z)                              d channels each
    for i = 1 .. N-1:  v = h^i * (x^{N+1-i} v) + beta^i (x^{N+1-i} v)      long causal convolution
    y = (x^1 v) W_out + b_out

(for N = 2: y = x^1 (h * (x^2 v) + beta (x^2 v)), then W_out). Each long filter is implicit
(their Sec. 3.3), h_t = window(t) FFN(z_t) per channel, for the N-1 filters at once:

    z_t = [t / (T-1), cos(f_b w_t), -sin(f_b w_t)]        w_t = 2 pi t / T
                                                          f_b = linspace(1e-4, B-1, B)
    FFN = Linear(e, o), Sin, Linear(o, o), Sin, Linear(o, o), Sin, Linear(o, (N-1) d, no bias)
    Sin(x) = sin(w * x), one trained frequency w (o,) shared by the three activations, w = 1 at init
    window(t) = exp(-(t / (T-1)) |delta_c|),  delta_c = linspace(ln(1e-2)/1.5, ln(1e-2)/0.3)

with T the max_len the model is built for, e = emb_dim (3: B = 1 band), o = filter_order (16) and
beta (N-1, d) ~ N(0, 1) the filters' skip term. The features are a function of the position
alone, so a sequence of any length L uses h_0 .. h_{L-1} (past T, t / (T-1) > 1 extrapolates the
features and the window keeps decaying). The long convolutions run by FFT (O(L log L);
seqbench.models.primitives.causal_conv, exactly causal as a Toeplitz product up to 32 steps).

Block (the reference language model's, `layers` times): x + Hyena(LayerNorm(x)), then
x + MLP(LayerNorm(x)), MLP = Linear(d, ff_mult d), GELU, Linear(ff_mult d, d), dropout; a final
LayerNorm before the model's head. Dropout as the reference's, on each gated product x^i v.

Initialisation: torch's defaults for the projections, the short convolution and the FFN (as the
reference); beta ~ N(0, 1); the window's delta fixed (a buffer, as the reference's modulation_lr
= 0).

Departures from the reference: the positional features are computed, not stored (the reference
stores them as a parameter with learning rate 1e-5, in effect fixed), which also lets any
length run; the filter FFN gets the suite's learning rate and weight decay (the reference: lr
1e-3, no weight decay); one head, one block in sequence (the reference's defaults); the long
convolutions run in float32 whatever autocast says.

Streaming state: per layer the short convolution's last 2 inputs (B, (N+1) d, 2), constant, and
the inputs of each of the N-1 long convolutions so far, (B, t, d) each: the state grows with the
position like a Transformer's KV cache ((N-1) d values per layer and step, where a KV cache holds
2 d), since an implicit filter has no recurrent form (distilling it into one, Massaroli et al.
2023, "Laughing Hyena Distillery", is left out; the reference has none). A step recomputes the
filter for positions 0 .. t and convolves its cache: O(t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqbench.models.base import Core, Family
from seqbench.models.primitives import ShortConv, Stack, causal_conv
from seqbench.strict import require

DECAY_TARGET, FAST_DECAY, SLOW_DECAY = 1e-2, 0.3, 1.5  # the reference's ExponentialModulation


@dataclass(frozen=True)
class HyenaHP:
    layers: int = 2
    order: int = 2  # N: gates x^1 .. x^N, N - 1 long convolutions
    filter_order: int = 16  # o, width of the implicit filter's FFN (the reference filter's default)
    emb_dim: int = 3  # e, positional features: t and (e - 1) / 2 cosine and sine bands
    short_filter: int = 3  # taps of the short convolution
    ff_mult: float = 4.0
    dropout: float = 0.0

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(self.order >= 2, f"{where}.order", f"must be >= 2, got {self.order}")
        require(self.filter_order >= 1, f"{where}.filter_order",
                f"must be >= 1, got {self.filter_order}")
        require(self.emb_dim >= 3 and self.emb_dim % 2 == 1, f"{where}.emb_dim",
                f"must be odd and >= 3 (time plus cosine and sine bands), got {self.emb_dim}")
        require(self.short_filter >= 1, f"{where}.short_filter",
                f"must be >= 1, got {self.short_filter}")
        require(self.ff_mult > 0, f"{where}.ff_mult", f"must be > 0, got {self.ff_mult}")
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")


class ImplicitFilter(nn.Module):
    """h_t = window(t) FFN(z_t) for `channels` channels (see the module docstring)."""

    def __init__(self, channels: int, emb_dim: int, order: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.bands = (emb_dim - 1) // 2
        self.linears = nn.ModuleList([nn.Linear(emb_dim, order), nn.Linear(order, order),
                                      nn.Linear(order, order)])
        self.last = nn.Linear(order, channels, bias=False)
        self.freq = nn.Parameter(torch.ones(order))
        delta = torch.linspace(math.log(DECAY_TARGET) / SLOW_DECAY,
                               math.log(DECAY_TARGET) / FAST_DECAY, channels).abs()
        self.register_buffer("delta", delta, persistent=False)

    def features(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (P, e) and the normalised time t / (T - 1) (P, 1) of integer positions (P,)."""
        t = (positions / max(self.max_len - 1, 1))[:, None]
        w = 2 * math.pi * positions[:, None] / self.max_len
        f = torch.linspace(1e-4, self.bands - 1, self.bands, device=positions.device)
        return torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1), t

    def forward(self, length: int) -> torch.Tensor:
        """The taps h_0 .. h_{L-1}, (L, channels)."""
        positions = torch.arange(length, device=self.freq.device, dtype=self.freq.dtype)
        z, t = self.features(positions)
        for linear in self.linears:
            z = torch.sin(self.freq * linear(z))
        return self.last(z) * torch.exp(-t * self.delta)


class Hyena(nn.Module):
    """One Hyena operator of order N: (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, hp: HyenaHP, max_len: int):
        super().__init__()
        self.width, self.order, self.dropout = width, hp.order, hp.dropout
        self.in_proj = nn.Linear(width, (hp.order + 1) * width)
        self.short = ShortConv((hp.order + 1) * width, hp.short_filter)
        self.filter = ImplicitFilter((hp.order - 1) * width, hp.emb_dim, hp.filter_order, max_len)
        self.beta = nn.Parameter(torch.randn(hp.order - 1, width))
        self.out_proj = nn.Linear(width, width)

    def split(self, z: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(..., (N+1) d) -> the gates x^1 .. x^N and v, (..., d) each."""
        *gates, v = z.split(self.width, dim=-1)
        return gates, v

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        gates, v = self.split(self.short(self.in_proj(u)))
        taps = self.filter(u.shape[1]).split(self.width, dim=-1)
        for i, gate in enumerate(reversed(gates[1:])):
            v = F.dropout(gate * v, self.dropout, self.training)
            v = causal_conv(v, taps[i]) + self.beta[i].to(v.dtype) * v
        return self.out_proj(gates[0] * v)

    def init_state(self, batch_size: int, device, dtype):
        empty = torch.zeros(batch_size, 0, self.width, device=device, dtype=dtype)
        return self.short.init_state(batch_size, device, dtype), (empty,) * (self.order - 1)

    def step(self, u_t: torch.Tensor, state):
        """u_t (B, d) -> (B, d); the state: the short convolution's buffer and, per long
        convolution, its inputs so far (B, t, d)."""
        buffer, caches = state
        z, buffer = self.short.step(self.in_proj(u_t), buffer)
        gates, v = self.split(z)
        taps = self.filter(caches[0].shape[1] + 1).flip(0).split(self.width, dim=-1)
        new = []
        for i, gate in enumerate(reversed(gates[1:])):
            v = gate * v
            cache = torch.cat([caches[i], v[:, None]], dim=1)  # inputs at 0 .. t
            v = (cache * taps[i]).sum(1) + self.beta[i] * v  # sum_s h_{t-s} v_s, plus beta v_t
            new.append(cache)
        return self.out_proj(gates[0] * v), (buffer, tuple(new))


class HyenaBlock(nn.Module):
    """x + Hyena(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

    def __init__(self, width: int, hp: HyenaHP, max_len: int):
        super().__init__()
        hidden = max(1, round(hp.ff_mult * width))
        self.mixer_norm = nn.LayerNorm(width)
        self.mixer = Hyena(width, hp, max_len)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width),
                                 nn.Dropout(hp.dropout))

    def forward(self, x):
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def init_state(self, batch_size: int, device, dtype):
        return self.mixer.init_state(batch_size, device, dtype)

    def step(self, x_t, state):
        y, state = self.mixer.step(self.mixer_norm(x_t), state)
        x_t = x_t + y
        return x_t + self.mlp(self.mlp_norm(x_t)), state


def build_hyena(io, width, hp: HyenaHP, max_len) -> Core:
    stack = Stack([HyenaBlock(width, hp, max_len) for _ in range(hp.layers)], nn.LayerNorm(width))
    mixers = [block.mixer for block in stack.blocks]
    info = {  # float32: the short convolutions' buffers, and each long convolution's inputs
        "layers": hp.layers, "order": hp.order,
        "state_bytes_per_sample": 4 * sum(m.short.conv.in_channels * (hp.short_filter - 1)
                                          for m in mixers),
        "state_bytes_per_position": 4 * sum(m.beta.numel() for m in mixers),
    }
    return Core(stack, width, width, info)


FAMILIES = [
    Family(
        "hyena",
        "Hyena (Poli et al. 2023): order-2 gated implicit long convolutions by FFT, short "
        "convolutions on the projections; pre-LN blocks with MLP",
        HyenaHP,
        build_hyena,
        order=100, colour="#b8860b", marker="<",
    )
]
