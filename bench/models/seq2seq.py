"""Recurrent encoder-decoder, without attention (one context vector) or with it (a context over every
encoder state): the classic test of the fixed-vector bottleneck.

Sources: the encoder-decoder of Sutskever, Vinyals & Le 2014 and Cho et al. 2014, whose decoder
starts from the encoder's final state; additive attention of Bahdanau, Cho & Bengio 2015 ("Neural
Machine Translation by Jointly Learning to Align and Translate", appendix A.1.2: score
v^T tanh(W s + U h_j)); the global attention of Luong, Pham & Manning 2015 ("Effective Approaches
to Attention-based Neural Machine Translation", eq. 5-8: dot score s^T h_j, attentional vector
tanh(W_c [c; s])). Bahdanau et al.'s Figure 2: without attention quality falls with the source
length, with attention it holds. Teacher forcing: Williams & Zipser 1989.

Phases. A task with an answer phase declares its first answer step a = io.answer_phase(L) for a
sequence of L steps (seqbench.tasks.base.IOSpec): copy, the ten recall steps; reverse, the n
output-empty steps; selective copying, the K markers; MQAR, the D queries (the model answers at
each query step, so the encoder reads the D pairs and the decoder the D queries, reading each
query key as its step input). Steps 0..a-1 are the question, read by the encoder; steps a..L-1
the answer, emitted by the decoder. With E the input embedding (the model's encoder), F an
embedding of the output classes plus a start symbol, and one recurrent cell each (GRU or LSTM,
`cell`, width d):

    h_j = Enc(E x_j, h_{j-1})                           j < a;   output at j: W_o h_j
    s_{a-1} = h_{a-1}                                    the decoder starts from the final state
    s_t = Dec([E x_t ; F y_{t-1}], s_{t-1})              t >= a;  y_{a-1} = <start>
    attention "none":  o_t = s_t                         (the bottleneck: h_{a-1} carries it all)
    otherwise:         alpha_tj = softmax_j score(s_t, h_j) over j < a,  c_t = sum_j alpha_tj h_j
                       o_t = tanh(W_c [c_t ; s_t])
    score "additive":  v^T tanh(W s_t + U h_j)      "dot":  s_t^T h_j
    output at t: W_o o_t

y_{t-1} is the target at t-1 when the model is given the targets (teacher forcing, in training:
seqbench.cell.step passes them), else the argmax of its own output at t-1 (greedy decoding, at
evaluation): the output at t never reads the target at t or later. A target the loss ignores
(IGNORE: a training row equal to a held-out sequence, left out of the loss by seqbench.cell.seen)
is read as <start>.

Causality: every encoder state lies before the answer phase, and a decoder step reads inputs up to
its own step (x_t and its previous output), so the output at step t depends only on the inputs at
steps <= t, given the task's layout (where the answer phase starts, fixed by the task for each
sequence length, as a learned position table is fixed by max_len). seqbench.testing.check_causal
holds exactly. Where a(L) is no task's answer start (the contract checks and the memory preflight
run the model at other lengths), it is clipped into 1..L: at least one question step.

Streaming: a stream follows the layout of a sequence of max_len steps (the length the model is
built for; a later step is refused). The state is the recurrent state, the previous prediction
(int64), and with attention the encoder states read so far, the cache the decoder attends over: it
grows by d float32 values per question step and stops at a (Core.info: state_growth_steps).

Departures: a unidirectional encoder (Bahdanau et al.'s is bidirectional, which would make the
question's per-step outputs read later inputs); the score reads the decoder state after its step,
s_t, as Luong et al.'s does, for both scores (Bahdanau et al. score with s_{t-1}), so that the
attention sees the step's own input (MQAR's query key) and the variants differ in the score alone;
no input feeding (Luong et al. section 3.3), so a teacher-forced decoder runs as one recurrent call
over the answer phase; the decoder also reads the task's input at each answer step (a cue token,
or MQAR's query), which a translation decoder does not have; the decoder starts from the encoder's
final state itself (Bahdanau et al.: tanh(W_s h_1) of the backward encoder; Cho et al.: tanh(V c));
no maxout deep output; unscaled dot scores (as Luong et al.); greedy decoding, no beam search; one
layer each; the outputs of the question steps come from the shared W_o (the suite scores per step;
copy trains its blanks); an LSTM cell's forget-gate bias starts at 1, as the suite's LSTM.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqbench.models.base import Core, Family
from seqbench.models.recurrent import set_forget_bias, state_growth
from seqbench.strict import ConfigError, check_choice, setting
from seqbench.tasks.base import IGNORE

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
ATTENTION = ("none", "additive", "dot")


@dataclass(frozen=True)
class Seq2SeqHP:
    cell: str = setting("gru", "the recurrent cell of encoder and decoder", choices=CELLS)
    attention: str = setting("additive", "none (one context vector), additive (Bahdanau) or "
                             "dot (Luong)", choices=ATTENTION)

    def validate(self, where: str) -> None:
        check_choice(f"{where}.cell", self.cell, CELLS)
        check_choice(f"{where}.attention", self.attention, ATTENTION)


class Attention(nn.Module):
    """Scores of decoder states over encoder states, their softmax and the contexts."""

    def __init__(self, kind: str, width: int):
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.W = nn.Linear(width, width, bias=False)
            self.U = nn.Linear(width, width, bias=False)
            self.v = nn.Linear(width, 1, bias=False)

    def forward(self, s: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s (B, Q, d) decoder states, memory (B, J, d) encoder states -> contexts (B, Q, d) and
        weights (B, Q, J), each row a distribution over the J encoder states."""
        if self.kind == "dot":
            scores = s @ memory.transpose(1, 2)
        else:
            hidden = torch.tanh(self.W(s)[:, :, None] + self.U(memory)[:, None])
            scores = self.v(hidden)[..., 0]
        weights = scores.softmax(-1)
        return weights @ memory, weights


class EncoderDecoder(nn.Module):
    """The core: embedded inputs (B, L, d) -> outputs (B, L, classes); see the module docstring."""

    def __init__(self, io, width: int, hp: Seq2SeqHP, max_len: int):
        super().__init__()
        self.answer_phase, self.max_len, self.start = io.answer_phase, max_len, io.output_size
        self.encoder = CELLS[hp.cell](width, width, batch_first=True)
        self.decoder = CELLS[hp.cell](2 * width, width, batch_first=True)
        if hp.cell == "lstm":
            set_forget_bias(((m.bias_ih_l0, m.bias_hh_l0) for m in (self.encoder, self.decoder)),
                            width, 1.0)
        self.feedback = nn.Embedding(io.output_size + 1, width)  # F; row `start` is <start>
        self.attention = None if hp.attention == "none" else Attention(hp.attention, width)
        self.combine = None if self.attention is None else nn.Linear(2 * width, width, bias=False)
        self.out = nn.Linear(width, io.output_size)
        self.stream_start = self.split(max_len)

    def split(self, steps: int) -> int:
        """The first answer step of a sequence of `steps` steps, clipped into 1..steps."""
        return min(max(self.answer_phase(steps), 1), steps)

    def emit(self, s: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Outputs W_o o_t of decoder states s (B, Q, d) given the encoder states."""
        if self.attention is None:
            return self.out(s)
        context, _ = self.attention(s, memory)
        return self.out(torch.tanh(self.combine(torch.cat([context, s], -1))))

    def decode(self, x_t, prev, state, memory):
        """One decoder step: input x_t (B, d), previous output prev (B,) -> (B, classes), state."""
        s, state = self.decoder(torch.cat([x_t, self.feedback(prev)], -1)[:, None], state)
        return self.emit(s, memory)[:, 0], state

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        b, length, _ = x.shape
        a = self.split(length)
        memory, state = self.encoder(x[:, :a])
        outputs = [self.out(memory)]
        if a < length and teacher is not None:  # the whole answer phase in one recurrent call
            start = teacher.new_full((b, 1), self.start)
            prev = torch.cat([start, teacher[:, a:length - 1]], 1)  # y_{t-1} for t = a..L-1
            prev = torch.where(prev == IGNORE, self.start, prev)  # a row left out of the loss
            s, _ = self.decoder(torch.cat([x[:, a:], self.feedback(prev)], -1), state)
            outputs.append(self.emit(s, memory))
        elif a < length:  # greedy: each step reads the argmax of the last
            prev = torch.full((b,), self.start, dtype=torch.long, device=x.device)
            for t in range(a, length):
                y, state = self.decode(x[:, t], prev, state, memory)
                prev = y.argmax(-1)
                outputs.append(y[:, None])
        return torch.cat(outputs, 1)

    def init_state(self, batch_size: int, device, dtype) -> dict:
        width = self.out.in_features
        h = torch.zeros(1, batch_size, width, device=device, dtype=dtype)
        return {"t": 0,
                "state": (h, torch.zeros_like(h)) if isinstance(self.encoder, nn.LSTM) else h,
                "memory": torch.zeros(batch_size, 0, width, device=device, dtype=dtype),
                "prev": torch.full((batch_size,), self.start, dtype=torch.long, device=device)}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        t = state["t"]
        if t >= self.max_len:
            raise ValueError(f"seq2seq streams a sequence of {self.max_len} steps (the max_len "
                             f"the model was built for, answer phase from step "
                             f"{self.stream_start}); step {t} is beyond it")
        if t < self.stream_start:  # a question step
            h, rec = self.encoder(x_t[:, None], state["state"])
            memory = state["memory"]
            if self.attention is not None:
                memory = torch.cat([memory, h], 1)
            return self.out(h[:, 0]), {"t": t + 1, "state": rec, "memory": memory,
                                       "prev": state["prev"]}
        y, rec = self.decode(x_t, state["prev"], state["state"], state["memory"])
        return y, {"t": t + 1, "state": rec, "memory": state["memory"], "prev": y.argmax(-1)}


def build_seq2seq(io, width: int, hp: Seq2SeqHP, max_len: int) -> Core:
    if io.answer_phase is None:
        raise ConfigError("model: seq2seq needs a task whose answers follow the input (an io "
                          "declaring answer_phase)")
    core = EncoderDecoder(io, width, hp, max_len)
    info = state_growth(2 if hp.cell == "lstm" else 1, 1, width)
    info["state_bytes_per_sample"] += 8  # the previous prediction, int64
    info["state_bytes_per_position"] = 0 if core.attention is None else width * 4
    info["state_growth_steps"] = core.stream_start
    return Core(core, width, io.output_size, info, emits=True, teacher=True)


FAMILIES = [
    Family("seq2seq",
           "recurrent encoder-decoder (GRU or LSTM), attention none, additive (Bahdanau) or dot "
           "(Luong); on tasks whose answers follow the input",
           Seq2SeqHP, build_seq2seq, label="seq2seq", order=35, colour="#8c564b", marker="d",
           needs_answer_phase=True),
]
