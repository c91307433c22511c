"""The record of one cell: what was run, what came out, and where it ran. Torch-free.

A record holds its config as the plain mapping CellConfig.to_dict() gives, and the exact payload
its key hashes (seqbench.strict.stable_key): so every command that only reads results (report,
plot, the accuracy gate) can check a record and its key without importing the model code or torch.
Reading validates types and ranges (CellRecord.from_dict): a record that fails is never trusted.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from seqbench.cell.convergence import VERDICTS, converged
from seqbench.strict import stable_key

SCHEMA = 2
STATUSES = ("solved", "budget", "diverged", "oom", "error", "timeout")
FAILED = ("diverged", "oom", "error", "timeout")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a set or variant name (or "")
KEY = re.compile(r"[0-9a-f]{16}")
SEEN_METHODS = ("exact", "hash64", "real-valued")  # how seqbench.cell.seen counted
# the shortcut learner's result (seqbench.cell.shortcut.shortcut_score plus its cost): name ->
# (JSON types, required); scores lie in [0, 1]; the ood_ entries only for length generalisation
CHOICE_FIELDS = {"family": ((str,), True), "learner": ((str,), True), "k": ((int,), True),
                 "ngrams": ((int, type(None)), True), "alpha": ((float, int, type(None)), True)}
SHORTCUT_FIELDS = CHOICE_FIELDS | {
    "score": ((float, int), True), "val_score": ((float, int), True),
    "window_score": ((float, int), True), "pooled_score": ((float, int), True),
    "train_samples": ((int,), True), "seconds": ((float, int), True),
    "ood_score": ((float, int), False), "ood_scores": ((list,), False),
    "ood_val_score": ((float, int), False), "ood_choice": ((dict,), False)}


class CorruptRecord(ValueError):
    """A stored record that cannot be trusted (truncated, edited, of another schema, or holding a
    value of the wrong type); the message says which field and why."""


class InvalidValue(CorruptRecord):
    """A well-formed record whose result is impossible: a score that is not a finite number in
    [0, 1]. The accuracy gate counts it as a regression of that cell rather than unusable input."""


@dataclass
class CellRecord:
    key: str
    config: dict  # CellConfig.to_dict(): task, model (the family), length, seed, params, ...
    key_payload: dict  # exactly what `key` hashes: config (added() fields at default left out),
    #                    task_version, model_version
    task_version: int
    model_version: int
    status: str  # one of STATUSES
    seq_len: int  # time steps fed to the model (copy: T + 20)
    params_actual: int | None = None
    model_info: dict = field(default_factory=dict)
    steps: int = 0  # optimiser steps taken
    train_loss: float | None = None  # mean training loss over the last evaluation window
    val_loss: float | None = None  # validation loss at the last evaluation
    val_score: float | None = None  # validation score at the last evaluation (decides `solved`)
    test_loss: float | None = None  # test loss after training
    score: float | None = None  # test score after training: the headline, in [0, 1]
    score_name: str = ""
    chance: float | None = None
    baseline_loss: float | None = None  # memoryless / constant-predictor loss where defined
    solve_threshold: float | None = None
    solved: bool = False
    wall_time_s: float = 0.0
    train_time_s: float = 0.0  # optimisation only, evaluation excluded
    train_tokens_per_s: float | None = None
    compile_s: float | None = None  # train.compile: the time compilation took (kept apart)
    error: str | None = None
    history: list = field(default_factory=list)  # {step, train_loss, val_loss, val_score}
    # gradient flow through time (seqbench.cell.gradflow): {"untrained": flow, "trained": flow},
    # each {"distance": [...], "norm": [...]}; "trained" is absent when training diverged
    grad_flow: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    # name of the sweep's hyper-parameter set ([hpsets.NAME]) that gave this cell its training
    # settings; "" outside a set. A label, not part of the key: the key already covers the
    # settings themselves.
    hpset: str = ""
    # name of the sweep's model variant ([variants.NAME], for example a Transformer with RoPE)
    # that built this cell; "" for a plain family. A label like hpset; tables show it as the model.
    variant: str = ""
    # length generalisation (config.generalise): the score at each test length, in the order of
    # config.generalise.lengths, and their mean, the cell's headline for such cells
    ood_scores: list = field(default_factory=list)  # test scores
    ood_val_scores: list = field(default_factory=list)  # validation scores (choices use these)
    ood_score: float | None = None
    ood_chance: list = field(default_factory=list)  # chance at each test length
    # ---- can the comparison be trusted (seqbench.cell.seen, .convergence, .shortcut)
    # the shortcut learner's result on this cell's validation and test sets (SHORTCUT_FIELDS)
    shortcut: dict | None = None
    seen_fraction: float | None = None  # test sequences also drawn in training, a fraction
    val_seen_fraction: float | None = None  # the same for the validation sequences
    seen_method: str = ""  # how they were counted: one of SEEN_METHODS ("" before training)
    heldout_coverage: float | None = None  # distinct held-out inputs / the task's input space
    test_excluded: bool = False  # training left out every row equal to a held-out sequence
    converged: bool = False  # solved, or the validation loss reached a plateau
    convergence: str | None = None  # one of convergence.VERDICTS; None for a failed cell
    schema: int = SCHEMA

    # ---- what tables need, without the config classes

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def family(self) -> str:
        return self.config["model"]

    @property
    def length(self) -> int:
        return self.config["length"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def model_name(self) -> str:
        """The model as tables show it: the variant's name, else the family."""
        return self.variant or self.family

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> CellRecord:
        """Rebuild a stored record, refusing anything whose types, values or key do not hold."""
        record = build(cls, data, SCHEMA, "rerun its cells")
        record._check()
        return record

    def _check(self) -> None:
        if not KEY.fullmatch(self.key):
            raise CorruptRecord(f"key {self.key!r} is not 16 hex digits")
        for name in ("task", "model"):
            if not isinstance(self.config.get(name), str):
                raise CorruptRecord(f"config.{name}: expected a name")
        for name, low in (("length", 1), ("seed", 0)):
            value = self.config.get(name)
            if type(value) is not int or value < low:
                raise CorruptRecord(f"config.{name}: expected an integer >= {low}, got {value!r}")
        if self.status not in STATUSES:
            raise CorruptRecord(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        for name in ("hpset", "variant"):
            value = getattr(self, name)
            if value and not LABEL.fullmatch(value):
                raise CorruptRecord(f"{name} {value!r} is not a plain label (letters, digits, "
                                    "'.', '-', '_'; at most 64)")
        payload = self.key_payload
        if stable_key(payload) != self.key:
            raise CorruptRecord(f"key {self.key} does not match its key_payload")
        if (payload.get("task_version"), payload.get("model_version")) != (
                self.task_version, self.model_version) or not _within(payload.get("config"),
                                                                     self.config):
            raise CorruptRecord(f"key {self.key} does not match its config or definition versions "
                                "(edited?)")
        for name in ("score", "val_score", "ood_score"):
            _score(name, getattr(self, name))
        for name in ("ood_scores", "ood_val_scores"):
            for i, value in enumerate(getattr(self, name)):
                _score(f"{name}[{i}]", value)
        self._check_trust()

    def _check_trust(self) -> None:
        for name in ("seen_fraction", "val_seen_fraction", "heldout_coverage"):
            _score(name, getattr(self, name))  # fractions: finite, in [0, 1]
        if self.seen_method not in ("", *SEEN_METHODS):
            raise CorruptRecord(f"seen_method {self.seen_method!r} is not one of "
                                f"{', '.join(SEEN_METHODS)} (or empty)")
        if self.convergence not in (None, *VERDICTS):
            raise CorruptRecord(f"convergence {self.convergence!r} is not one of "
                                f"{', '.join(VERDICTS)} (or null)")
        if self.converged != converged(self.convergence):
            raise CorruptRecord(f"converged {self.converged} contradicts convergence "
                                f"{self.convergence!r}")
        if self.shortcut is not None:
            _fields("shortcut", self.shortcut, SHORTCUT_FIELDS)
            for name in ("score", "val_score", "window_score", "pooled_score", "ood_score",
                         "ood_val_score"):
                _score(f"shortcut.{name}", self.shortcut.get(name))
            for i, value in enumerate(self.shortcut.get("ood_scores", [])):
                if type(value) not in (float, int):
                    raise CorruptRecord(f"shortcut.ood_scores[{i}]: expected a number")
                _score(f"shortcut.ood_scores[{i}]", value)
            if "ood_choice" in self.shortcut:
                _fields("shortcut.ood_choice", self.shortcut["ood_choice"], CHOICE_FIELDS)
            if self.shortcut["seconds"] < 0 or self.shortcut["train_samples"] < 1:
                raise CorruptRecord("shortcut: seconds must be >= 0 and train_samples >= 1")


def _fields(name: str, data: dict, spec: dict) -> None:
    """Raise CorruptRecord unless data has only spec's keys, the required ones at least, each of
    one of its JSON types (bool is not a number)."""
    for key, (types, required) in spec.items():
        if key not in data:
            if required:
                raise CorruptRecord(f"{name}: missing {key!r}")
        elif type(data[key]) not in types:
            raise CorruptRecord(f"{name}.{key}: unexpected {type(data[key]).__name__} "
                                f"{data[key]!r:.60}")
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise CorruptRecord(f"{name}: unknown entry {unknown[0]!r}")


def _score(name: str, value: Any) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidValue(f"{name} {value!r} is not a number in [0, 1]")


def _within(payload: Any, config: Any) -> bool:
    """Whether every entry of the key's payload equals the config's (the payload omits added()
    fields at their default, so the config may hold more)."""
    if isinstance(payload, dict):
        return isinstance(config, dict) and all(
            k in config and _within(v, config[k]) for k, v in payload.items())
    if isinstance(payload, list):
        return (isinstance(config, list) and len(payload) == len(config)
                and all(_within(p, c) for p, c in zip(payload, config, strict=True)))
    return payload == config and type(payload) is type(config)


def build(cls: type, data: Any, schema: int, remedy: str):
    """cls(**data) for a stored JSON object of the given schema with exactly cls's fields, each of
    its annotated type; CorruptRecord otherwise (remedy: what the user should do about an old
    schema)."""
    if not isinstance(data, dict):
        raise CorruptRecord(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != schema:
        raise CorruptRecord(f"schema {data.get('schema')!r}: written by another seqbench version "
                            f"(this one reads schema {schema}); {remedy}")
    check_fields(cls, data)
    return cls(**data)


def check_fields(cls: type, data: dict) -> None:
    """Raise CorruptRecord unless data has exactly cls's fields (the required ones at least) with
    values of the annotated JSON types (int accepted for float; None only where allowed)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CorruptRecord(f"unknown field {unknown[0]!r}")
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CorruptRecord(f"missing field {name!r}")
            continue
        if not _is(data[name], hints[name]):
            raise CorruptRecord(f"{name}: expected {_type_name(hints[name])}, got "
                                f"{type(data[name]).__name__} {data[name]!r:.60}")


def _is(value: Any, kind: Any) -> bool:
    args = typing.get_args(kind)
    if args and type(None) in args:
        return value is None or any(_is(value, a) for a in args if a is not type(None))
    kind = typing.get_origin(kind) or kind
    if kind is float:
        return type(value) in (int, float)
    if kind is int:
        return type(value) is int
    return type(value) is kind


def _type_name(kind: Any) -> str:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = typing.get_origin(kind) or kind
    if args and typing.get_origin(kind) is not None and base not in (list, dict):
        return " or ".join(_type_name(a) for a in args) + " or null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            list: "a list", dict: "an object"}.get(base, str(kind))
