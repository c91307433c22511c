"""The frozen, typed configuration of one cell and its stable key.

A cell is (task, model, length, seed, parameter budget, training and model hyper-parameters,
device). Its key hashes the full config together with the task's and the model family's definition
versions (payload()), so a stored record is reused only for exactly the same experiment run by the
same definitions; the record stores that payload, so readers check the key without this module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from seqbench.models import FAMILIES, get_family, parse_hparams
from seqbench.registry import provenance
from seqbench.strict import (
    ConfigError,
    added,
    check_choice,
    from_mapping,
    key_payload,
    require,
    setting,
    stable_key,
)
from seqbench.tasks import TASKS, get_task

DEVICES = ("cpu", "cuda")
# Upper bounds on what one cell may ask for: far above any published setting of these tasks, far
# below sizes that cannot run (those would only burn minutes before ending as `oom` or `error`).
MAX_PARAMS = 10**9  # parameter budget
MAX_BATCH = 65_536  # training sequences per step
MAX_EVAL_SAMPLES = 10**6  # held-out sequences (per set; per test length for generalisation)
MAX_SEQ_LEN = 2**20  # time steps fed to the model (task.seq_len of a length)
COMPILE_MODES = ("none", "default", "reduce-overhead")
PRECISIONS = ("fp32", "bf16", "fp16")  # torch.autocast dtypes (seqbench.cell.step.AUTOCAST)
TBPTT_UPDATES = ("sequence", "chunk")
PACKINGS = ("padded", "packed")
# the training-technique settings of TrainConfig (seqbench list shows them), each with the model
# technique (seqbench.models.base) it needs, if any
TECHNIQUES = {"tbptt": "tbptt", "tbptt_update": "tbptt", "precision": None,
              "length_spread": None, "packing": "packed"}
# The training and evaluation protocol every cell follows (seqbench.cell.train): bump it whenever
# a change there changes what a config produces (streams, stopping rules, the step), so that no
# record of the old protocol is reused. 2: train/validation/test streams, choices on validation.
# 3: a fourth stream (the shortcut learner's), held-out sequences left out of training where they
# cover under 1% of the inputs (seqbench.cell.seen), shortcut, seen and convergence in the record.
PROTOCOL = 3


def display_of(model: str, task: str) -> dict[str, dict]:
    """model_display and task_display of a record (seqbench.display): what the family and task
    declare, defaults filled in."""
    return {"model_display": get_family(model).display(), "task_display": get_task(task).display()}


def plugins_env(model: str, task: str) -> dict[str, list]:
    """{"plugins": [...]} for a record's env: where each plug-in among model and task comes from
    (seqbench.registry.provenance); {} when both are built-ins."""
    found = [p for p in (provenance("model", model), provenance("task", task)) if p]
    return {"plugins": found} if found else {}


def check_applies(model: str, task: str, field: str = "model") -> None:
    """ConfigError naming `field` unless the family applies to the task (Family.accepts: an
    encoder-decoder needs a task whose answers follow the input), listing the built-in tasks it
    applies to."""
    family = get_family(model)
    if not family.accepts(get_task(task).io):
        allowed = sorted(n for n, cls in TASKS.items() if family.accepts(cls.io))
        raise ConfigError(
            f"{field}: {model!r} reads the whole question before it answers (an encoder-decoder), "
            f"so it needs a task whose answers follow the input (io.answer_phase); task {task!r} "
            f"has no separate answer phase; allowed only on: {', '.join(allowed)}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one cell: fresh batches every step (infinite data), AdamW, clipping."""

    steps: int = setting(1000, "step budget (optimiser steps)")
    batch_size: int = setting(32, "training sequences per step")
    lr: float = setting(1e-3, "AdamW learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    clip: float = setting(1.0, "max global gradient norm; 0 disables clipping")
    eval_every: int = setting(100, "steps between held-out evaluations (and early-stop checks)")
    eval_samples: int = setting(512, "size of each separately seeded held-out set")
    timeout_s: float = setting(0.0, "wall-clock limit of the cell in seconds (status timeout); "
                               "0: none", added=True)
    compile: str = setting("none", "torch.compile the model's forward: none, default, or "
                           "reduce-overhead (CUDA graphs); compile time is recorded; it dominates "
                           "a short CPU cell", choices=COMPILE_MODES, added=True)
    # training techniques (README "Training techniques"; seqbench.cell.step, .tbptt, .varlen)
    tbptt: int = setting(0, "truncated BPTT (Williams & Peng 1990): train each sequence in chunks "
                         "of this many time steps, the state carried detached between them "
                         "(rnn, lstm, gru, lru); 0: off", added=True)
    tbptt_update: str = setting("sequence", "under tbptt: one optimiser step per sequence (its "
                                "chunks' gradients summed) or one per chunk",
                                choices=TBPTT_UPDATES, added=True)
    precision: str = setting("fp32", "mixed precision: forward and loss under torch.autocast in "
                             "bf16 or fp16 (fp16 with a GradScaler); weights, optimiser and "
                             "recurrences of the scan families stay fp32", choices=PRECISIONS,
                             added=True)
    length_spread: float = setting(0.0, "variable lengths: each training sequence's length is "
                                   "drawn uniformly from the task's valid lengths in "
                                   "[(1 - s) N, N], batches right-padded; evaluation stays at N; "
                                   "0: every sequence at N", added=True)
    packing: str = setting("padded", "under length_spread: run variable-length batches padded, "
                           "or packed (rnn, lstm, gru: pack_padded_sequence)", choices=PACKINGS,
                           added=True)

    def validate(self, where: str) -> None:
        p = f"{where}." if where else ""
        for name in ("steps", "batch_size", "eval_every", "eval_samples"):
            value = getattr(self, name)
            require(value >= 1, p + name, f"must be >= 1, got {value}")
        require(self.batch_size <= MAX_BATCH, p + "batch_size",
                f"must be <= {MAX_BATCH}, got {self.batch_size}")
        require(self.eval_samples <= MAX_EVAL_SAMPLES, p + "eval_samples",
                f"must be <= {MAX_EVAL_SAMPLES:,}, got {self.eval_samples:,}")
        require(self.lr > 0, p + "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, p + "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.clip >= 0, p + "clip", f"must be >= 0 (0 disables), got {self.clip}")
        require(self.timeout_s >= 0, p + "timeout_s", f"must be >= 0 (0: none), got "
                f"{self.timeout_s}")
        check_choice(p + "compile", self.compile, COMPILE_MODES)
        require(self.tbptt >= 0, p + "tbptt", f"must be >= 0 (0: off), got {self.tbptt}")
        check_choice(p + "tbptt_update", self.tbptt_update, TBPTT_UPDATES)
        require(self.tbptt > 0 or self.tbptt_update == "sequence", p + "tbptt_update",
                "applies only with tbptt > 0")
        require(self.tbptt == 0 or self.compile == "none", p + "tbptt",
                "runs the model's forward_from, which compile does not wrap: set compile = none")
        check_choice(p + "precision", self.precision, PRECISIONS)
        require(0 <= self.length_spread < 1, p + "length_spread",
                f"must be in [0, 1) (0: every sequence at N), got {self.length_spread}")
        check_choice(p + "packing", self.packing, PACKINGS)
        require(self.length_spread > 0 or self.packing == "padded", p + "packing",
                "applies only with length_spread > 0")
        require(self.tbptt == 0 or self.length_spread == 0, p + "tbptt",
                "truncated BPTT runs fixed-length batches: set length_spread = 0")


TRAIN_LENGTHS = ("range", "fixed")


@dataclass(frozen=True)
class Generalise:
    """Length generalisation (Delétang et al. 2022, "Neural Networks and the Chomsky Hierarchy").

    With N the cell's length: train on a length drawn uniformly from the task's valid lengths in
    min_length..N at every step ("range", their protocol) or on N alone ("fixed"), for the whole
    step budget (no early stop: in-distribution success says nothing about longer lengths); then
    score `samples` held-out sequences at each of `lengths` (all longer than N). The cell's
    headline is the mean over those lengths; each length's score is kept too.
    """

    lengths: tuple[int, ...] = field(metadata={"help": "test lengths, all longer than N"})
    train: str = setting("range", "training lengths: uniform over the valid lengths up to N "
                         "(range) or N alone (fixed)", choices=TRAIN_LENGTHS)
    samples: int = setting(512, "held-out sequences per test length")

    def validate(self, where: str) -> None:
        p = f"{where}." if where else ""
        check_choice(p + "train", self.train, TRAIN_LENGTHS)
        require(self.samples >= 1, p + "samples", f"must be >= 1, got {self.samples}")
        require(self.samples <= MAX_EVAL_SAMPLES, p + "samples",
                f"must be <= {MAX_EVAL_SAMPLES:,}, got {self.samples:,}")
        require(list(self.lengths) == sorted(set(self.lengths)), p + "lengths",
                f"must be strictly increasing, got {list(self.lengths)}")


def techniques(hparams: Any) -> tuple[str, ...]:
    """The training techniques a model's hyper-parameters offer (seqbench.models.base)."""
    offered = getattr(hparams, "techniques", None)
    return offered() if offered is not None else ()


def offering(technique: str) -> list[str]:
    """The built-in families that offer a technique at their default hyper-parameters."""
    return sorted(n for n, f in FAMILIES.items() if technique in techniques(f.hparams()))


def _check_seq_len(task, length: int, field_name: str) -> None:
    steps = task.seq_len(length)
    require(steps <= MAX_SEQ_LEN, field_name, f"task {task.name!r} at length {length:,} feeds "
            f"{steps:,} time steps; at most {MAX_SEQ_LEN:,} (2^20) are allowed")


@dataclass(frozen=True)
class CellConfig:
    task: str = field(metadata={"help": "task: a name (seqbench list) or an import path "
                                        "module:Class"})
    model: str = field(metadata={"help": "model family: a name (seqbench list) or an import "
                                         "path module:attribute"})
    length: int = field(metadata={"help": "the task's length N (its meaning: seqbench list)"})
    seed: int = setting(0, "seed of initialisation and of the data streams")
    params: int = setting(20_000, "parameter budget shared by all models (+-10%)")
    device: str = setting("cpu", "device", choices=DEVICES)
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation"})
    hparams: Any = field(default=None, metadata={
        "help": "the model family's hyper-parameters (a mapping is parsed strictly)"})
    generalise: Generalise | None = added(None, "length-generalisation protocol, if any")

    def __post_init__(self):
        task = get_task(self.task)
        family = get_family(self.model)
        check_applies(self.model, self.task)
        task.check_length(self.length)
        _check_seq_len(task, self.length, "length")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.params >= 100, "params", f"must be >= 100, got {self.params}")
        require(self.params <= MAX_PARAMS, "params",
                f"must be <= {MAX_PARAMS:,}, got {self.params:,}")
        check_choice("device", self.device, DEVICES)
        if type(self.hparams) is not family.hparams:
            object.__setattr__(self, "hparams", parse_hparams(self.model, self.hparams))
        if self.generalise is not None:
            if not isinstance(self.generalise, Generalise):
                object.__setattr__(
                    self, "generalise", from_mapping(Generalise, self.generalise, "generalise"))
            for i, n in enumerate(self.generalise.lengths):
                field_name = f"generalise.lengths[{i}]"
                task.check_length(n, field=field_name)
                _check_seq_len(task, n, field_name)
                require(n > self.length, field_name,
                        f"must be longer than the training length {self.length}, got {n}")
        self._check_techniques()
        if getattr(self.hparams, "bidirectional", False) and not task.bidirectional_ok:
            allowed = sorted(n for n, cls in TASKS.items() if cls.bidirectional_ok)
            raise ConfigError(
                f"hparams.bidirectional: task {self.task!r} is causal (outputs are due step by "
                f"step), so a bidirectional model would read its answers; allowed only on: "
                f"{', '.join(allowed) or '(none)'}")

    def _check_techniques(self) -> None:
        """The training techniques the cell asks for are ones its model offers (its
        hyper-parameters' techniques(), seqbench.models.base)."""
        tc = self.train
        wanted = [("train.tbptt", "tbptt", tc.tbptt > 0),
                  ("train.packing", "packed", tc.packing == "packed")]
        for field_name, technique, asked in wanted:
            if asked and technique not in techniques(self.hparams):
                raise ConfigError(
                    f"{field_name}: model {self.model!r} with these hyper-parameters does not "
                    f"support {technique!r}; supported by: {', '.join(offering(technique))} "
                    "(bidirectional models carry no state between chunks; the peephole LSTM "
                    "does not pack)")
        if tc.length_spread > 0:
            require(self.generalise is None, "train.length_spread",
                    "length generalisation draws each batch's length itself: set it to 0")
            bidirectional = getattr(self.hparams, "bidirectional", False)
            require(tc.packing == "packed" or not bidirectional, "train.packing",
                    f"model {self.model!r} is not causal (bidirectional): a padded batch would "
                    "reach its backward direction; use packed")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellConfig:
        """Parse a plain mapping strictly (as stored in records or written in TOML)."""
        return from_mapping(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_lengths(self) -> list[int]:
        """Lengths a training batch may have: N alone, or the task's valid lengths up to N."""
        if self.generalise is None or self.generalise.train == "fixed":
            return [self.length]
        task = get_task(self.task)
        return [n for n in range(task.min_length, self.length + 1) if task.accepts(n)]

    def max_length(self) -> int:
        """The longest length the model will see (it is built for this many steps)."""
        return max(self.generalise.lengths) if self.generalise else self.length

    def payload(self) -> dict[str, Any]:
        """What the key hashes: the config (added() fields at their default left out), the current
        definition versions of its task and model family, and the protocol version."""
        return {"config": key_payload(self), "task_version": get_task(self.task).version,
                "model_version": get_family(self.model).version, "protocol": PROTOCOL}

    def key(self) -> str:
        """Stable 16-hex-digit hash of payload()."""
        return stable_key(self.payload())
