"""Recurrent baselines: Elman RNN (tanh), LSTM (Hochreiter & Schmidhuber 1997), GRU (Cho et al.
2014), as the torch.nn modules so that GPUs run them through cuDNN; optionally stacked
(`layers`), bidirectional (`bidirectional`, only on tasks with one label for the whole string), and
for the LSTM with peephole connections (`peephole`, a custom cell looping over time).

Bidirectional (Schuster & Paliwal 1997): the core's output at step t is the concatenation of the
forward direction's output at t and the backward direction's output at L-1-t, that is each
direction after reading t + 1 tokens (the forward one the first t + 1, the backward one the last
t + 1). At the last step both have read the whole string, so a 'final' readout sees it from both
ends (for one layer these are exactly the final hidden states h_n of the two directions). Outputs
before the last step depend on later inputs (the first already on the last input): a bidirectional
model is not causal and has no streaming step.

Peephole LSTM (Gers & Schmidhuber 2000; Gers, Schraudolph & Schmidhuber 2002), in the form of
Graves 2013, eq. 7-11, and Greff et al. 2017: diagonal peephole weights carry the cell state into
the gates, c_{t-1} into the input and forget gates, c_t into the output gate:
    i_t = sigmoid(W_i x_t + U_i h_{t-1} + w_ci * c_{t-1} + b_i)
    f_t = sigmoid(W_f x_t + U_f h_{t-1} + w_cf * c_{t-1} + b_f)
    c_t = f_t * c_{t-1} + i_t * tanh(W_c x_t + U_c h_{t-1} + b_c)
    o_t = sigmoid(W_o x_t + U_o h_{t-1} + w_co * c_t + b_o)
    h_t = o_t * tanh(c_t)
Its parameters are laid out as torch.nn.LSTM's (weight_ih, weight_hh, bias_ih, bias_hh per layer,
gate order i, f, g, o, the same uniform initialisation), plus w_ci, w_cf, w_co, initialised from
the same uniform distribution; with the peephole weights at zero it computes torch.nn.LSTM exactly.

Training techniques (seqbench.models.base): every causal model here carries its state for
truncated BPTT (forward_from: torch's h0 / (h0, c0), or the peephole layers' (h, c)); the torch
modules also run variable-length batches packed (torch.nn.utils.rnn.pack_padded_sequence with the
lengths on the host, enforce_sorted=False, so the rows need no sorting): the padded steps are not
computed at all, and a bidirectional model's backward direction starts at each row's own last
step (padded, it would start in the padding, so it refuses a padded batch). The peephole LSTM is
a Python loop over time and runs padded batches only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqbench.models.base import Core, Family
from seqbench.strict import added, require

NO_STREAMING = (
    "a bidirectional model has no streaming step: its backward direction starts at the last "
    "input, so no output is available before the whole sequence has been read"
)


@dataclass(frozen=True)
class RecurrentHP:
    layers: int = 1
    dropout: float = 0.0  # between stacked layers (torch semantics)
    bidirectional: bool = added(False)  # only on tasks with one label for the whole string

    def validate(self, where: str) -> None:
        require(self.layers >= 1, f"{where}.layers", f"must be >= 1, got {self.layers}")
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")

    def techniques(self) -> tuple[str, ...]:
        """Training techniques these models support (seqbench.models.base): no carried state
        for a bidirectional model."""
        return ("packed",) if self.bidirectional else ("tbptt", "packed")


@dataclass(frozen=True)
class LSTMHP(RecurrentHP):
    forget_bias: float = 1.0  # initial forget-gate bias (Gers et al. 2000; Jozefowicz et al. 2015)
    peephole: bool = added(False)  # peephole connections (Gers & Schmidhuber 2000)

    def validate(self, where: str) -> None:
        super().validate(where)
        require(
            not (self.peephole and self.bidirectional),
            f"{where}.peephole",
            "the peephole LSTM is a causal custom cell with no bidirectional form; "
            "set peephole = false or bidirectional = false",
        )

    def techniques(self) -> tuple[str, ...]:
        return ("tbptt",) if self.peephole else super().techniques()


class Recurrent(nn.Module):
    """Wraps an nn.RNNBase to return only the per-step outputs (for a bidirectional module, the
    backward direction's outputs reversed in time; see the module docstring).

    Streaming state: the hidden state h (layers, B, H), for an LSTM (h, c): O(1) in the position.
    A step runs the torch module itself on a length-1 sequence (cuDNN on GPUs), which returns a
    new state and leaves the one passed in untouched. Bidirectional modules do not stream.
    """

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths=None, packed=False):
        """Per-step outputs; lengths (B,): each row's real steps of a right-padded batch, run
        padded (a causal module needs nothing more) or packed (padded steps not computed; the
        outputs there are zeros)."""
        if packed:
            seq = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            y = pad_packed_sequence(self.rnn(seq)[0], batch_first=True, total_length=x.shape[1])[0]
        elif lengths is not None and self.rnn.bidirectional:
            raise ValueError("a bidirectional model runs a padded batch packed only: its backward "
                             "direction would start in the padding")
        else:
            y = self.rnn(x)[0]
        if not self.rnn.bidirectional:
            return y
        h = self.rnn.hidden_size  # y[:, t, h:] is the backward output after reading L - t tokens
        if lengths is None:
            return torch.cat([y[..., :h], y[..., h:].flip(1)], dim=-1)
        # per row of length n: the backward output at n - 1 - t (the padded steps read step 0)
        steps = torch.arange(x.shape[1], device=y.device)
        back = (lengths.to(y.device)[:, None] - 1 - steps).clamp(min=0)
        return torch.cat([y[..., :h], y[..., h:].gather(1, back[..., None].expand(-1, -1, h))],
                         dim=-1)

    def forward_from(self, x, state):
        """forward from a carried state (None: zeros) -> (outputs, final state), causal only."""
        if self.rnn.bidirectional:
            raise NotImplementedError(NO_STREAMING)
        return self.rnn(x, state)

    def first_layer(self) -> list[nn.Parameter]:
        """The parameters of the first layer (both directions): weight_ih_l0, weight_hh_l0, ..."""
        return [p for name, p in self.rnn.named_parameters()
                if name.endswith("_l0") or name.endswith("_l0_reverse")]

    def init_state(self, batch_size: int, device, dtype):
        if self.rnn.bidirectional:
            raise NotImplementedError(NO_STREAMING)
        shape = (self.rnn.num_layers, batch_size, self.rnn.hidden_size)
        h = torch.zeros(shape, device=device, dtype=dtype)
        return (h, torch.zeros_like(h)) if isinstance(self.rnn, nn.LSTM) else h

    def step(self, x_t, state):
        if self.rnn.bidirectional:
            raise NotImplementedError(NO_STREAMING)
        y, state = self.rnn(x_t.unsqueeze(1), state)
        return y[:, 0], state


class PeepholeLSTMLayer(nn.Module):
    """One layer of the peephole LSTM: torch.nn.LSTM's parameters plus the peephole weights."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        h = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * h, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * h, h))
        self.bias_ih = nn.Parameter(torch.empty(4 * h))
        self.bias_hh = nn.Parameter(torch.empty(4 * h))
        self.w_ci = nn.Parameter(torch.empty(h))
        self.w_cf = nn.Parameter(torch.empty(h))
        self.w_co = nn.Parameter(torch.empty(h))
        bound = 1 / math.sqrt(h)  # torch.nn.LSTM's initialisation, for every parameter
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def cell(self, xw_t, h, c):
        """One step given xw_t = W_ih x_t + b_ih: the new (h, c)."""
        i, f, g, o = (xw_t + F.linear(h, self.weight_hh, self.bias_hh)).chunk(4, dim=-1)
        i = torch.sigmoid(i + self.w_ci * c)
        f = torch.sigmoid(f + self.w_cf * c)
        c = f * c + i * torch.tanh(g)
        o = torch.sigmoid(o + self.w_co * c)
        return o * torch.tanh(c), c

    def forward(self, x, h, c):
        """(B, L, input_size) from state (h, c) -> outputs (B, L, H) and the final (h, c)."""
        xw = F.linear(x, self.weight_ih, self.bias_ih)  # the input projections of all steps at once
        outputs = []
        for t in range(x.shape[1]):
            h, c = self.cell(xw[:, t], h, c)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h, c


class PeepholeLSTM(nn.Module):
    """Stacked peephole LSTM, batch first, with dropout between layers (torch semantics), looping
    over time in Python (no fused kernel: it is slower than cuDNN's LSTM, and measured as such).

    Streaming state: (h, c), each (layers, B, H), as torch.nn.LSTM's: O(1) in the position. A step
    builds new tensors and leaves the state passed in untouched.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.hidden_size, self.num_layers, self.dropout = hidden_size, num_layers, dropout
        self.layers = nn.ModuleList(
            PeepholeLSTMLayer(input_size if k == 0 else hidden_size, hidden_size)
            for k in range(num_layers)
        )

    def forward(self, x):
        return self.forward_from(x, None)[0]

    def forward_from(self, x, state):
        """forward from a carried (h, c), each (layers, B, H) (None: zeros) -> (outputs, final
        (h, c))."""
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        hs, cs = [], []
        for k, (layer, h, c) in enumerate(zip(self.layers, *state, strict=True)):
            if k > 0:
                x = F.dropout(x, self.dropout, self.training)
            x, h, c = layer(x, h, c)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))

    def first_layer(self) -> list[nn.Parameter]:
        return list(self.layers[0].parameters())

    def init_state(self, batch_size: int, device, dtype):
        h = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device, dtype=dtype)
        return h, torch.zeros_like(h)

    def step(self, x_t, state):
        hs, cs = [], []
        for layer, h, c in zip(self.layers, *state, strict=True):
            x_t, c = layer.cell(F.linear(x_t, layer.weight_ih, layer.bias_ih), h, c)
            hs.append(x_t)
            cs.append(c)
        return x_t, (torch.stack(hs), torch.stack(cs))


def _torch_rnn(cls: type[nn.RNNBase], width: int, hp: RecurrentHP, **kwargs) -> nn.RNNBase:
    return cls(
        width,
        width,
        num_layers=hp.layers,
        dropout=hp.dropout if hp.layers > 1 else 0.0,
        batch_first=True,
        bidirectional=hp.bidirectional,
        **kwargs,
    )


def state_growth(tensors: int, layers: int, hidden: int) -> dict:
    """Streaming state info: `tensors` float32 (layers, B, hidden) tensors, constant in t."""
    return {"state_bytes_per_sample": tensors * layers * hidden * 4, "state_bytes_per_position": 0}


def _core(rnn: nn.RNNBase, width: int) -> Core:
    """The Core of a torch recurrent module: input width, output width times the directions; a
    bidirectional one does not stream, so it declares no state growth."""
    if rnn.bidirectional:
        info = {"bidirectional": True, "causal": False}
    else:
        info = state_growth(2 if isinstance(rnn, nn.LSTM) else 1, rnn.num_layers, rnn.hidden_size)
    return Core(Recurrent(rnn), width, width * (2 if rnn.bidirectional else 1), info)


def build_rnn(io, width, hp: RecurrentHP, max_len):
    return _core(_torch_rnn(nn.RNN, width, hp, nonlinearity="tanh"), width)


def build_gru(io, width, hp: RecurrentHP, max_len):
    return _core(_torch_rnn(nn.GRU, width, hp), width)


def set_forget_bias(layers, width: int, forget_bias: float) -> None:
    """Set the forget-gate bias (gate order i, f, g, o; the total is b_ih + b_hh) of each
    (bias_ih, bias_hh) pair to forget_bias, through b_ih (b_hh's slice is zeroed)."""
    with torch.no_grad():
        for bias_ih, bias_hh in layers:
            bias_ih[width : 2 * width] = forget_bias
            bias_hh[width : 2 * width] = 0.0


def build_lstm(io, width, hp: LSTMHP, max_len):
    if hp.peephole:
        dropout = hp.dropout if hp.layers > 1 else 0.0
        lstm = PeepholeLSTM(width, width, hp.layers, dropout)
        set_forget_bias(((m.bias_ih, m.bias_hh) for m in lstm.layers), width, hp.forget_bias)
        info = {"peephole": True} | state_growth(2, lstm.num_layers, lstm.hidden_size)
        return Core(lstm, width, width, info)
    lstm = _torch_rnn(nn.LSTM, width, hp)
    params = dict(lstm.named_parameters())
    pairs = [
        (params[f"bias_ih_l{k}{suffix}"], params[f"bias_hh_l{k}{suffix}"])
        for k in range(hp.layers)
        for suffix in (("", "_reverse") if hp.bidirectional else ("",))
    ]
    set_forget_bias(pairs, width, hp.forget_bias)
    return _core(lstm, width)


FAMILIES = [
    Family("rnn", "Elman RNN with tanh (torch.nn.RNN)", RecurrentHP, build_rnn,
           order=10, colour="#0173b2", marker="o"),
    Family(
        "lstm",
        "LSTM with configurable forget-gate bias (torch.nn.LSTM), optionally with peepholes",
        LSTMHP,
        build_lstm,
        order=20, colour="#de8f05", marker="s",
    ),
    Family("gru", "GRU (torch.nn.GRU)", RecurrentHP, build_gru,
           order=30, colour="#029e73", marker="^"),
]
