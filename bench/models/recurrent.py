"""Recurrent baselines: Elman RNN (tanh), LSTM (Hochreiter & Schmidhuber 1997), GRU (Cho et al.
2014), as the torch.nn modules so that GPUs run them through cuDNN."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.models.base import Core, Family
from bench.strict import require


@dataclass(frozen=True)
class RecurrentHP:
    layers: int = 1
    dropout: float = 0.0  # between stacked layers (torch semantics)

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class LSTMHP(RecurrentHP):
    forget_bias: float = 1.0  # initial forget-gate bias (Gers et al. 2000; Jozefowicz et al. 2015)


class Recurrent(nn.Module):
    """Wraps an nn.RNNBase to return only the per-step outputs.

    Streaming state: the hidden state h (layers, B, H), for an LSTM (h, c): O(1) in the position.
    A step runs the torch module itself on a length-1 sequence (cuDNN on GPUs), which returns a
    new state and leaves the one passed in untouched.
    """

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]

    def init_state(self, batch_size: int, device, dtype):
        shape = (self.rnn.num_layers, batch_size, self.rnn.hidden_size)
        h = torch.zeros(shape, device=device, dtype=dtype)
        return (h, torch.zeros_like(h)) if isinstance(self.rnn, nn.LSTM) else h

    def step(self, x_t, state):
        y, state = self.rnn(x_t.unsqueeze(1), state)
        return y[:, 0], state


def _torch_rnn(cls: type[nn.RNNBase], width: int, hp: RecurrentHP, **kwargs) -> nn.RNNBase:
    return cls(
        width,
        width,
        num_layers=hp.layers,
        dropout=hp.dropout if hp.layers > 1 else 0.0,
        batch_first=True,
        **kwargs,
    )


def build_rnn(io, width, hp: RecurrentHP, max_len):
    return Core(Recurrent(_torch_rnn(nn.RNN, width, hp, nonlinearity="tanh")), width, width)


def build_gru(io, width, hp: RecurrentHP, max_len):
    return Core(Recurrent(_torch_rnn(nn.GRU, width, hp)), width, width)


def build_lstm(io, width, hp: LSTMHP, max_len):
    lstm = _torch_rnn(nn.LSTM, width, hp)
    for name, bias in lstm.named_parameters():
        if name.startswith("bias_"):  # gate order i, f, g, o; total forget bias = b_ih + b_hh
            bias.data[width : 2 * width] = hp.forget_bias if name.startswith("bias_ih") else 0.0
    return Core(Recurrent(lstm), width, width)


FAMILIES = [
    Family("rnn", "Elman RNN with tanh (torch.nn.RNN)", RecurrentHP, build_rnn),
    Family("lstm", "LSTM with configurable forget-gate bias (torch.nn.LSTM)", LSTMHP, build_lstm),
    Family("gru", "GRU (torch.nn.GRU)", RecurrentHP, build_gru),
]
