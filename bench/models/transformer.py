"""Small decoder-only Transformer (Vaswani et al. 2017) with pre-LayerNorm (Xiong et al. 2020).

Causal self-attention through torch's scaled_dot_product_attention (SDPA), a GELU feed-forward
block, and one of four position schemes (`positions`):

- sinusoidal (default): the fixed table of Vaswani et al. 2017 added to the input; any length.
- learned: a learned absolute table added to the input (part of the parameter budget); it cannot
  extrapolate beyond the max_len the model was built for, and refuses to.
- rope: rotary embeddings (Su et al. 2021, RoFormer): in every layer, each query and key is
  rotated pairwise, dims (2i, 2i+1) of a head by the angle p * 10000^(-2i/d) at its position p, so
  that q_m . k_n depends on the positions only through m - n; nothing is added to the input. With
  an odd head width d the last dimension is left unrotated (it carries a position-free term), so
  every width stays valid. SDPA then runs with is_causal=True (fused kernels on GPUs).
- alibi: attention with linear biases (Press et al. 2022, "Train Short, Test Long"): head h adds
  -m_h * (i - j) to the score of query i on key j; m_h is the geometric sequence 2^(-8k/n),
  k = 1..n, for n heads a power of two, and the paper's recipe otherwise (alibi_slopes). Nothing is
  added to the input. SDPA gets a float mask (the bias, -inf above the diagonal), built once per
  forward and shared by the layers: it holds heads * L^2 values, so long sequences pay O(L^2)
  memory for it where the is_causal kernels need none.

rope, alibi and sinusoidal work at any length.

Variable-length batches (right-padded, forward(x, lengths)): a key-padding mask keeps every
query off the padded keys, combined with the causal mask (and ALiBi's bias) into one attention
mask, so no output is computed from padding. For a row's real queries the causal mask already
excludes the padding (it lies after them), so their outputs are the same with or without it; it
changes only what the padded positions compute, and costs the is_causal kernels (a (B, 1, L, L)
boolean mask is materialised).

Streaming state: a KV cache, per layer the keys and values of all past positions (B, heads, t,
head_dim), and the next position t: O(t). A step attends its one query over the cache (a single
query needs no causal mask; ALiBi adds the bias row of its position); under RoPE the cache holds
the rotated keys. The cache grows by concatenation, so a step returns new tensors and the state
passed in stays valid (the copy costs O(t), the same order as the attention's own reads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqbench.models.base import Core, Family, SequenceModel, count_parameters, search_width
from seqbench.strict import check_choice, require, setting

POSITIONS = ("sinusoidal", "learned", "rope", "alibi")


@dataclass(frozen=True)
class TransformerHP:
    layers: int = 2
    heads: int = 4
    ff_mult: float = 4.0  # feed-forward width over model width, before budget fitting
    dropout: float = 0.0
    positions: str = setting("sinusoidal", "positions: sinusoidal or learned (absolute, added "
                             "to the input), rope (rotary) or alibi (linear attention biases)",
                             choices=POSITIONS)

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(self.heads >= 1, f"{where}.heads", f"must be >= 1, got {self.heads}")
        require(self.ff_mult > 0, f"{where}.ff_mult", f"must be > 0, got {self.ff_mult}")
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")
        check_choice(f"{where}.positions", self.positions, POSITIONS)


def sinusoidal(length: int, width: int, device, start: int = 0) -> torch.Tensor:
    """The (length, width) sinusoidal table of Vaswani et al. 2017 for positions start, start + 1,
    ... (odd widths supported)."""
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return table


ROPE_BASE = 10000.0


def rope_angles(start: int, length: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (length, head_dim // 2) float32, of the rotary angles p * theta_i for
    positions p = start .. start + length - 1, theta_i = 10000^(-2i/head_dim) (Su et al. 2021)."""
    pairs = head_dim // 2
    theta = ROPE_BASE ** (
        -torch.arange(0, 2 * pairs, 2, device=device, dtype=torch.float32) / head_dim
    )
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = pos[:, None] * theta[None, :]
    return torch.cos(angles), torch.sin(angles)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, head_dim) with each pair of dims (2i, 2i+1) at step t rotated by the angle whose
    cos, sin (T, head_dim // 2) give; an odd last dim is left as it is."""
    pairs = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    even, odd = x[..., 0 : 2 * pairs : 2], x[..., 1 : 2 * pairs : 2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return torch.cat([rotated, x[..., 2 * pairs :]], dim=-1) if x.shape[-1] % 2 else rotated


def alibi_slopes(heads: int) -> list[float]:
    """The per-head slopes m_h of Press et al. 2022: for n a power of two the geometric sequence
    2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise those of the largest power of two below n,
    followed by every other slope of twice that power (the paper's code)."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]

    if heads & (heads - 1) == 0:
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: heads - closest]


def alibi_bias(slopes: torch.Tensor, start: int, queries: int, keys: int, dtype) -> torch.Tensor:
    """(1, heads, queries, keys) attention bias -m_h * (i - j) for queries at positions
    i = start .. start + queries - 1 over keys at j = 0 .. keys - 1, -inf where j > i (causal)."""
    device = slopes.device
    i = torch.arange(start, start + queries, device=device, dtype=torch.float32)[:, None]
    j = torch.arange(keys, device=device, dtype=torch.float32)[None, :]
    distance = i - j
    bias = -slopes[:, None, None] * distance
    return bias.masked_fill(distance < 0, float("-inf")).unsqueeze(0).to(dtype)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention scores get from x: autocast's where it is on, else x's."""
    kind = x.device.type
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    elif kind == "cuda":
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    else:
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return dtype if enabled else x.dtype


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ff_width: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, ff_width), nn.GELU(), nn.Linear(ff_width, width), nn.Dropout(dropout)
        )

    def split_heads(self, x):
        """(B, T, C) -> queries, keys, values, each (B, heads, T, head_dim)."""
        b, t, c = x.shape
        return self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)

    def merge_heads(self, y):
        """(B, heads, T, head_dim) attention output -> (B, T, C) after the output projection."""
        b, _, t, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))

    def attention(self, x, rope=None, bias=None):
        """Causal self-attention of x (B, T, C); rope: (cos, sin) of positions 0 .. T-1 to rotate
        queries and keys with; bias: an additive float mask (ALiBi) or a boolean one (True:
        attend) that also masks the future."""
        q, k, v = self.split_heads(x)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        drop = self.dropout if self.training else 0.0
        if bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        return F.dropout(self.merge_heads(y), drop, self.training)

    def forward(self, x, rope=None, bias=None):
        x = x + self.attention(self.ln1(x), rope, bias)
        return x + self.mlp(self.ln2(x))

    def step(self, x, cache, rope=None, bias=None):
        """forward for one new position, x (B, 1, C), given this layer's (keys, values) cache;
        rope: (cos, sin) of that position; bias: its ALiBi row over the keys (1, heads, 1, t+1)."""
        q, k, v = self.split_heads(self.ln1(x))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)  # the cache keeps rotated keys
        k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        x = x + self.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
        return x + self.mlp(self.ln2(x)), (k, v)


class KVCache(NamedTuple):
    """Transformer streaming state: the next position and each layer's (keys, values)."""

    position: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class Transformer(nn.Module):
    def __init__(self, width: int, hp: TransformerHP, ff_width: int, max_len: int):
        super().__init__()
        self.kind = hp.positions
        self.heads = hp.heads
        self.learned = nn.Embedding(max_len, width) if hp.positions == "learned" else None
        if hp.positions == "alibi":  # a buffer, not a parameter: outside the budget and state_dict
            slopes = torch.tensor(alibi_slopes(hp.heads), dtype=torch.float32)
            self.register_buffer("slopes", slopes, persistent=False)
        self.blocks = nn.Sequential(
            *(Block(width, hp.heads, ff_width, hp.dropout) for _ in range(hp.layers))
        )
        self.ln_f = nn.LayerNorm(width)

    def positions(self, start: int, length: int, x: torch.Tensor) -> torch.Tensor:
        """(length, C) absolute encodings of positions start, ..., start + length - 1, in x's
        dtype (sinusoidal or learned positions only)."""
        if self.learned is None:
            return sinusoidal(length, x.shape[-1], x.device, start).to(x.dtype)
        if start + length > self.learned.num_embeddings:
            raise ValueError(
                f"learned positions cover {self.learned.num_embeddings} steps (the max_len the "
                f"model was built for); position {start + length - 1} is beyond them"
            )
        return self.learned(torch.arange(start, start + length, device=x.device)).to(x.dtype)

    def relative(self, start: int, length: int, x: torch.Tensor) -> dict:
        """The blocks' position arguments for queries at positions start .. start + length - 1
        over keys at 0 .. start + length - 1: rope's (cos, sin) or alibi's bias, else none."""
        if self.kind == "rope":
            head_dim = x.shape[-1] // self.heads
            return {"rope": rope_angles(start, length, head_dim, x.device)}
        if self.kind == "alibi":
            return {"bias": alibi_bias(self.slopes, start, length, start + length, compute_dtype(x))}
        return {}

    def forward(self, x, lengths=None):
        """(B, L, C) -> (B, L, C); lengths (B,): each row's real steps of a right-padded batch,
        whose padded keys are masked (see the module docstring)."""
        length = x.shape[1]
        if self.kind in ("sinusoidal", "learned"):
            x = x + self.positions(0, length, x)
        relative = self.relative(0, length, x)
        if lengths is not None:
            steps = torch.arange(length, device=x.device)
            keys = (steps < lengths.to(x.device)[:, None])[:, None, None, :]  # (B, 1, 1, L)
            if "bias" in relative:  # ALiBi: -inf on padded keys too
                relative["bias"] = relative["bias"].masked_fill(~keys, float("-inf"))
            else:
                relative["bias"] = keys & (steps[None, :] <= steps[:, None])  # and causal
        for block in self.blocks:
            x = block(x, **relative)
        return self.ln_f(x)

    def init_state(self, batch_size: int, device, dtype) -> KVCache:
        width = self.ln_f.normalized_shape[0]
        empty = [
            torch.zeros(batch_size, b.heads, 0, width // b.heads, device=device, dtype=dtype)
            for b in self.blocks
        ]
        return KVCache(0, tuple((e, e) for e in empty))

    def step(self, x_t, state: KVCache):
        if self.kind in ("sinusoidal", "learned"):
            x_t = x_t + self.positions(state.position, 1, x_t)
        x = x_t.unsqueeze(1)
        relative = self.relative(state.position, 1, x)
        caches = []
        for block, cache in zip(self.blocks, state.layers, strict=True):
            x, cache = block.step(x, cache, **relative)
            caches.append(cache)
        return self.ln_f(x[:, 0]), KVCache(state.position + 1, tuple(caches))



def _build(width: int, hp: TransformerHP, max_len: int, ff_width: int | None = None) -> Core:
    d_model = width * hp.heads  # width counts head-sized units so that every width is valid
    ff_width = ff_width or max(1, round(hp.ff_mult * d_model))
    model = Transformer(d_model, hp, ff_width, max_len)
    info = {"ff_width": ff_width, "positions": hp.positions, "state_bytes_per_sample": 0,
            # a float32 key and value of width d_model per layer and position
            "state_bytes_per_position": len(model.blocks) * 2 * d_model * 4}
    return Core(model, d_model, d_model, info)


def build_transformer(io, width, hp: TransformerHP, max_len) -> Core:
    return _build(width, hp, max_len)


def fit_transformer(io, budget: int, hp: TransformerHP, max_len: int) -> Core:
    """Search d_model (a multiple of heads), then set the feed-forward width, on which the count
    depends linearly, to land on the budget as closely as whole units allow."""
    width = search_width(io, budget, lambda w: _build(w, hp, max_len))

    def count(ff: int) -> int:
        return count_parameters(SequenceModel(io, _build(width, hp, max_len, ff)))

    ff = max(1, round(1 + (budget - count(1)) / (count(2) - count(1))))
    return _build(width, hp, max_len, ff)


FAMILIES = [
    Family(
        "transformer",
        "decoder-only pre-LN Transformer, causal SDPA; sinusoidal, learned, rope or alibi positions",
        TransformerHP,
        build_transformer,
        fit=fit_transformer,
        order=50, colour="#cc78bc", marker="v",
    )
]
