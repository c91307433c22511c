"""Small decoder-only Transformer (Vaswani et al. 2017) with pre-LayerNorm (Xiong et al. 2020).

Causal self-attention through torch's scaled_dot_product_attention (is_causal=True, so GPUs get the
fused kernels), a GELU feed-forward block, and sinusoidal positions by default (learned absolute
positions as an option; they cannot extrapolate beyond the length they were built for).

Streaming state: a KV cache, per layer the keys and values of all past positions (B, heads, t,
head_dim), and the next position t: O(t). A step attends its one query over the cache (a single
query needs no causal mask); the cache grows by concatenation, so a step returns new tensors and
the state passed in stays valid (the copy costs O(t), the same order as the attention's own reads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.base import Core, Family, SequenceModel, count_parameters, search_width
from bench.strict import check_choice, require


@dataclass(frozen=True)
class TransformerHP:
    layers: int = 2
    heads: int = 4
    ff_mult: float = 4.0  # feed-forward width over model width, before budget fitting
    dropout: float = 0.0
    positions: str = "sinusoidal"

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

    def attention(self, x):
        q, k, v = self.split_heads(x)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        return F.dropout(self.merge_heads(y), drop, self.training)

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def step(self, x, cache):
        """forward for one new position, x (B, 1, C), given this layer's (keys, values) cache."""
        q, k, v = self.split_heads(self.ln1(x))
        k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        x = x + self.merge_heads(F.scaled_dot_product_attention(q, k, v))
        return x + self.mlp(self.ln2(x)), (k, v)


class KVCache(NamedTuple):
    """Transformer streaming state: the next position and each layer's (keys, values)."""

    position: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class Transformer(nn.Module):
    def __init__(self, width: int, hp: TransformerHP, ff_width: int, max_len: int):
        super().__init__()
        self.learned = nn.Embedding(max_len, width) if hp.positions == "learned" else None
        self.blocks = nn.Sequential(
            *(Block(width, hp.heads, ff_width, hp.dropout) for _ in range(hp.layers))
        )
        self.ln_f = nn.LayerNorm(width)

    def positions(self, start: int, length: int, x: torch.Tensor) -> torch.Tensor:
        """(length, C) encodings of positions start, ..., start + length - 1, in x's dtype."""
        if self.learned is None:
            return sinusoidal(length, x.shape[-1], x.device, start).to(x.dtype)
        if start + length > self.learned.num_embeddings:
            raise ValueError(
                f"learned positions cover {self.learned.num_embeddings} steps (the max_len the "
                f"model was built for); position {start + length - 1} is beyond them"
            )
        return self.learned(torch.arange(start, start + length, device=x.device)).to(x.dtype)

    def forward(self, x):
        return self.ln_f(self.blocks(x + self.positions(0, x.shape[1], x)))

    def init_state(self, batch_size: int, device, dtype) -> KVCache:
        width = self.ln_f.normalized_shape[0]
        empty = [
            torch.zeros(batch_size, b.heads, 0, width // b.heads, device=device, dtype=dtype)
            for b in self.blocks
        ]
        return KVCache(0, tuple((e, e) for e in empty))

    def step(self, x_t, state: KVCache):
        x = (x_t + self.positions(state.position, 1, x_t)).unsqueeze(1)
        caches = []
        for block, cache in zip(self.blocks, state.layers, strict=True):
            x, cache = block.step(x, cache)
            caches.append(cache)
        return self.ln_f(x[:, 0]), KVCache(state.position + 1, tuple(caches))


POSITIONS = ("sinusoidal", "learned")


def _build(width: int, hp: TransformerHP, max_len: int, ff_width: int | None = None) -> Core:
    d_model = width * hp.heads  # width counts head-sized units so that every width is valid
    ff_width = ff_width or max(1, round(hp.ff_mult * d_model))
    info = {"ff_width": ff_width}
    return Core(Transformer(d_model, hp, ff_width, max_len), d_model, d_model, info)


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
        "decoder-only pre-LN Transformer, causal SDPA, sinusoidal positions",
        TransformerHP,
        build_transformer,
        fit=fit_transformer,
    )
]
