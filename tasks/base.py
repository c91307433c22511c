"""The task interface: a seeded, vectorised batch generator plus the rules that score it.

A task declares its input (tokens or real features), its readout (one target per step, or one at
the last step), its target kind (classes or a real value), which positions are scored, and its
chance level. Loss and score are computed here, once, from those declarations.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from seqbench import display
from seqbench.strict import ConfigError, require


@dataclass(frozen=True)
class Batch:
    """One batch. inputs: (B, L) int64 tokens or (B, L, F) float features.

    targets: (B, L) int64 for per-step tasks, (B,) int64 for final-class tasks, (B,) float for
    regression. mask: (B, L) bool, the scored positions of a per-step task (None otherwise).
    lengths: (B,) int64 on the batch's device, the time steps of each row when rows have lengths
    of their own (seqbench.cell.varlen): each row is right-padded to L, its per-step targets there
    IGNORE and its mask False; a final readout reads each row at its own last step. None: every
    row fills all L steps.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor | None = None
    lengths: torch.Tensor | None = None


@dataclass(frozen=True)
class IOSpec:
    """What a model must accept and emit for a task.

    answer_phase: for a task whose answers all follow the input they depend on (copy, reverse,
    selective copying, MQAR), the first answer step of a sequence of n steps, answer_phase(n);
    every step before it is the question. An encoder-decoder (seqbench.models.seq2seq) reads the
    question, then answers; it applies only to tasks that declare this. None: no separate answer
    phase. A module-level function of n (picklable)."""

    input_kind: Literal["tokens", "features"]
    input_size: int  # vocabulary size, or number of real-valued features
    output_size: int  # classes per position, or 1 for regression
    answer_phase: Callable[[int], int] | None = None


def scored_tail(batch_size: int, seq_len: int, n: int, device) -> torch.Tensor:
    """The (batch_size, seq_len) mask of a per-step task whose last n steps are scored."""
    mask = torch.zeros(seq_len, dtype=torch.bool, device=device)
    mask[seq_len - n :] = True
    return mask.expand(batch_size, -1)


IGNORE = -100  # a target the loss skips (cross-entropy's ignore_index)


class Task:
    """Base class; subclasses set the class attributes and implement sample() and chance()."""

    name: ClassVar[str]
    summary: ClassVar[str]
    version: ClassVar[int] = 1  # bump whenever the definition changes: it is part of every cell key
    io: ClassVar[IOSpec]
    readout: ClassVar[Literal["per_step", "final"]]
    target: ClassVar[Literal["classes", "regression"]] = "classes"
    loss_on: ClassVar[Literal["all", "scored"]] = "scored"  # per-step tasks: where the loss applies
    score_name: ClassVar[str] = "accuracy"
    solve_threshold: ClassVar[float]
    min_length: ClassVar[int] = 1
    tolerance: ClassVar[float] = 0.0  # regression: |error| below this counts as correct
    # May a model read the whole input before answering (bidirectional recurrent models)? Only
    # where the answer is one label for the whole string; never where outputs are due step by step.
    bidirectional_ok: ClassVar[bool] = False
    # Display (seqbench.display; stored in every record): the label tables show (default: name),
    # the order of tasks in tables (built-ins 0..999; the default puts a plug-in after them), and
    # the symbol and meaning of the length a config gives (axis labels, column headers).
    label: ClassVar[str] = ""
    order: ClassVar[int | None] = None
    length_symbol: ClassVar[str] = "L"
    length_meaning: ClassVar[str] = "sequence length"

    @classmethod
    def display(cls) -> dict:
        """label, order, length_symbol and length_meaning, defaults filled in."""
        return display.task(cls.name, cls.label, cls.order, cls.length_symbol,
                            cls.length_meaning)

    def seq_len(self, length: int) -> int:
        """Number of time steps fed to the model for the task's nominal length."""
        return length

    def answer_start(self, length: int) -> int | None:
        """The first answer position of a sequence at this length (io.answer_phase of its
        steps), or None where the task has no separate answer phase."""
        phase = self.io.answer_phase
        return None if phase is None else phase(self.seq_len(length))

    def check_length(self, length: int, field: str = "length") -> None:
        require(
            isinstance(length, int) and length >= self.min_length,
            field,
            f"task {self.name!r} needs an integer length >= {self.min_length}, got {length!r}",
        )

    def accepts(self, length: int) -> bool:
        """Whether check_length would pass (for example: dyck takes even lengths only)."""
        try:
            self.check_length(length)
        except ConfigError:
            return False
        return True

    def sample(
        self, length: int, batch_size: int, generator: torch.Generator, device: torch.device | str
    ) -> Batch:
        raise NotImplementedError

    def chance(self, length: int) -> float:
        """Headline score of the best input-independent guesser (exact)."""
        raise NotImplementedError

    def input_space(self, length: int) -> int | None:
        """How many distinct inputs the sampler draws from at this length, or None where that is
        not enumerable (real-valued inputs). Exactly: the number N such that no single input has
        probability above 1/N (the support's size for a sampler whose inputs are all equally
        likely, as in every task but dyck), so that H held-out sequences carry at most H / N of
        the training distribution (seqbench.cell.seen decides on it whether to keep held-out
        sequences out of training)."""
        return None

    def baseline_loss(self, length: int) -> float | None:
        """Loss of the best memoryless/constant predictor, where the literature quotes one."""
        return None

    # Loss and score, derived from the declarations above.

    def _readout(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The outputs the targets are compared with: every step, or each row's last step (its
        own, under batch.lengths: a gather, no device sync)."""
        if self.readout == "per_step":
            return outputs
        if batch.lengths is None:
            return outputs[:, -1]
        last = (batch.lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
        return outputs.gather(1, last)[:, 0]

    def _step_targets(self, batch: Batch) -> torch.Tensor:
        """A per-step task's targets with the positions outside the loss at the ignored index
        (no boolean indexing, so no device sync)."""
        if self.loss_on == "all":
            return batch.targets
        return batch.targets.masked_fill(~batch.mask, IGNORE)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean loss of model outputs (B, L, output_size) on the batch."""
        out = self._readout(outputs, batch)
        if self.target == "regression":
            return F.mse_loss(out[..., 0].float(), batch.targets)
        if self.readout == "final":
            return F.cross_entropy(out.float(), batch.targets)
        return F.cross_entropy(out.flatten(0, 1).float(), self._step_targets(batch).flatten(),
                               ignore_index=IGNORE)

    def loss_count(self, batch: Batch) -> torch.Tensor | int:
        """How many positions (per-step) or rows (final) enter the loss: a device tensor, or an
        int for regression (every row)."""
        if self.target == "regression":
            return len(batch.targets)
        targets = batch.targets if self.readout == "final" else self._step_targets(batch)
        return (targets != IGNORE).sum()

    def loss_terms(self, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Any]:
        """(sum, count) with loss = sum / count: the summed loss over what enters it and
        loss_count. Chunks of one sequence (truncated BPTT, seqbench.cell.tbptt) add up to the
        whole sequence's terms."""
        out = self._readout(outputs, batch)
        if self.target == "regression":
            total = F.mse_loss(out[..., 0].float(), batch.targets, reduction="sum")
        elif self.readout == "final":
            total = F.cross_entropy(out.float(), batch.targets, reduction="sum")
        else:
            total = F.cross_entropy(out.flatten(0, 1).float(), self._step_targets(batch).flatten(),
                                    ignore_index=IGNORE, reduction="sum")
        return total, self.loss_count(batch)

    def score(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-sample headline score in [0, 1], shape (B,); its mean is the task's score."""
        out = self._readout(outputs, batch)
        if self.target == "regression":
            return ((out[..., 0].float() - batch.targets).abs() < self.tolerance).float()
        hit = out.argmax(-1) == batch.targets
        if self.readout == "final":
            return hit.float()
        return (hit & batch.mask).sum(1) / batch.mask.sum(1)
