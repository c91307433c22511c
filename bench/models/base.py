"""The one model interface: encoder -> family core -> linear head, causal by construction.

A model maps a batch of length L, (B, L) tokens or (B, L, F) features, to per-step outputs
(B, L, output_size); the output at step t depends only on inputs at steps <= t. (The one exception
is a bidirectional recurrent model, info["causal"] False, allowed only on tasks that declare
bidirectional_ok; it has no streaming step.) Families are sized
to a shared parameter budget by searching their single width knob.

Streaming: every core also runs one step at a time with carried state, init_state(batch_size,
device, dtype) -> state and step(x_t (B, d_in), state) -> (y_t (B, d_out), new_state), giving the
same outputs as forward. step is functional (it never mutates the state it is given, so one state
can be stepped repeatedly, as timing does) and computes eval-mode outputs (no dropout).

An encoder-decoder (seqbench.models.seq2seq) departs in three declared ways: its core computes the
outputs itself (Core.emits: it feeds its own predictions back, so the head is inside it), it takes
the targets in training (Core.teacher: forward(x, teacher=targets), teacher forcing; without them
it decodes greedily), and its family applies only to tasks whose io declares an answer phase
(Family.needs_answer_phase; IOSpec.answer_phase).

Training techniques a core may implement (seqbench.cell.step; which ones a family offers is
declared by its hyper-parameters' techniques(), checked when a cell is configured):
- lengths (variable-length batches, right-padded; Batch.lengths): forward(x, lengths=...), and
  for torch's recurrent modules also packed=True (torch.nn.utils.rnn.pack_padded_sequence). A
  causal core without a `lengths` argument runs padded batches as they are: with right padding
  its outputs at a row's real steps never depend on the padding.
- "tbptt" (truncated backpropagation through time): forward_from(x, state) -> (y, final state),
  state None for the zero initial state; chunks glued without detaching give forward's outputs.
- "packed": forward(x, lengths=..., packed=True).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from seqbench import display
from seqbench.strict import ConfigError
from seqbench.tasks.base import IOSpec


@dataclass
class Core:
    """A family's core module, mapping (B, L, d_in) to (B, L, d_out) and streaming one step at a
    time (init_state, step), plus facts for the record."""

    module: nn.Module
    d_in: int
    d_out: int
    info: dict = field(default_factory=dict)
    emits: bool = False  # the module's outputs are the model's (d_out = io.output_size, no head)
    teacher: bool = False  # module(x, teacher=targets) in training: teacher forcing


class SequenceModel(nn.Module):
    def __init__(self, io: IOSpec, core: Core):
        super().__init__()
        self.encoder = (
            nn.Embedding(io.input_size, core.d_in)
            if io.input_kind == "tokens"
            else nn.Linear(io.input_size, core.d_in)
        )
        self.core = core.module
        self.head = nn.Identity() if core.emits else nn.Linear(core.d_out, io.output_size)
        self.teacher = core.teacher  # forward takes teacher=targets (seqbench.cell.step passes them)
        self.info = {"width": core.d_in, **core.info}
        self.takes_lengths = "lengths" in inspect.signature(self.core.forward).parameters

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None,
                packed: bool = False, teacher: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step outputs; lengths: each row's real steps of a right-padded batch (the core
        masks or packs if it takes them; a causal core needs nothing), packed: run them packed;
        teacher: the batch's targets, for a core that declares it takes them (teacher forcing in
        training; without them it runs on its own predictions)."""
        x, kw = self.encoder(inputs), {}
        if teacher is not None:
            if not self.teacher:
                raise TypeError("this model's core does not take targets (Core.teacher is False)")
            kw["teacher"] = teacher
        if lengths is not None:
            if self.takes_lengths:
                kw |= {"lengths": lengths, **({"packed": True} if packed else {})}
            elif packed or not self.info.get("causal", True):
                raise ValueError("this core takes no lengths: it can run a right-padded batch "
                                 "only if causal, and never packed")
        return self.head(self.core(x, **kw))

    def forward_from(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Outputs of inputs continuing from a carried core state (None: the zero state), and the
        state after the last step, for truncated BPTT (cores that implement forward_from)."""
        y, state = self.core.forward_from(self.encoder(inputs), state)
        return self.head(y), state

    def init_state(self, batch_size: int, device=None, dtype=None) -> Any:
        """The core's streaming state before the first step (default: the encoder's device,
        dtype)."""
        weight = self.encoder.weight
        return self.core.init_state(batch_size, device or weight.device, dtype or weight.dtype)

    def step(self, inputs_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One streaming step: inputs_t (B,) tokens or (B, F) features -> (B, output_size) and the
        new state; the input state is left untouched. Eval mode only: forward's dropout has no
        single-step counterpart, so a training-mode call is refused rather than silently differ."""
        if self.training:
            raise RuntimeError("streaming computes eval-mode outputs: call model.eval() first")
        y, state = self.core.step(self.encoder(inputs_t), state)
        return self.head(y), state


def state_bytes(state: Any) -> int:
    """Bytes held by the tensors of a streaming state (nested tuples, lists, dicts; other leaves,
    such as a position counter, count as zero)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return state_bytes(list(state.values()))
    if isinstance(state, (tuple, list)):
        return sum(state_bytes(s) for s in state)
    return 0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def search_width(io: IOSpec, budget: int, make: Callable[[int], Core]) -> int:
    """The width whose whole model's parameter count is closest to budget (counts grow with width).

    Doubling, then bisection, so no candidate is built at more than about twice the budget.
    """

    def count(width: int) -> int:
        return count_parameters(SequenceModel(io, make(width)))

    hi = 1
    while count(hi) < budget:
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # smallest width with count >= budget
        mid = (lo + hi) // 2
        if count(mid) >= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and budget - count(lo - 1) <= count(lo) - budget:
        return lo - 1
    return lo


@dataclass(frozen=True)
class Family:
    """A model family: build(io, width, hp, max_len) -> Core for one width; fit(io, budget, hp,
    max_len) -> Core sized to the budget (default: search the width). hparams: its frozen
    hyper-parameter dataclass (parsed strictly; an optional validate(where) checks ranges).
    version: bump it whenever the family's computation or initialisation changes; it is part of
    every cell key, so records of the old definition are never reused (like Task.version).

    Display (seqbench.display; stored in every record): label (default: name), order (rows sort
    by it; built-ins use 0..999, the default puts a plug-in after them), colour ("#rrggbb") and
    marker (one of seqbench.display.MARKERS); left empty, the colour and marker are derived from
    the name.

    needs_answer_phase: the family reads the whole question before it answers (an
    encoder-decoder), so it applies only to tasks whose io declares where the answers start
    (IOSpec.answer_phase); accepts(io) says whether it applies, and a cell asking for another task
    is refused."""

    name: str
    summary: str
    hparams: type
    build: Callable[[IOSpec, int, Any, int], Core]
    fit: Callable[[IOSpec, int, Any, int], Core] | None = None
    version: int = 1
    label: str = ""
    order: int | None = None
    colour: str = ""
    marker: str = ""
    needs_answer_phase: bool = False

    def __post_init__(self):
        where = f"model family {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model family: name must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.hparams, type) and dataclasses.is_dataclass(self.hparams)):
            raise ConfigError(f"{where}: hparams must be a dataclass, got {self.hparams!r}")
        if type(self.version) is not int or self.version < 1:
            raise ConfigError(f"{where}: version must be an integer >= 1, got {self.version!r}")
        try:
            self.display()
        except display.DisplayError as exc:
            raise ConfigError(str(exc)) from None

    def display(self) -> dict:
        """label, order, colour and marker, defaults filled in (seqbench.display.model)."""
        return display.model(self.name, self.label, self.order, self.colour, self.marker)

    def accepts(self, io: IOSpec) -> bool:
        """Whether the family applies to a task with this io (see needs_answer_phase)."""
        return not self.needs_answer_phase or io.answer_phase is not None

    def sized(self, io: IOSpec, budget: int, hp: Any, max_len: int) -> Core:
        if self.fit is not None:
            return self.fit(io, budget, hp, max_len)
        width = search_width(io, budget, lambda w: self.build(io, w, hp, max_len))
        return self.build(io, width, hp, max_len)
