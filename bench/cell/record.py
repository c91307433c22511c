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

from seqbench import display
from seqbench.cell.convergence import VERDICTS, converged
from seqbench.registry import BUILTIN
from seqbench.strict import stable_key

SCHEMA = 2
STATUSES = ("solved", "budget", "diverged", "oom", "error", "timeout")
FAILED = ("diverged", "oom", "error", "timeout")
# Failures of the run rather than results: a sweep runs such a cell again (seqbench.sweeps.driver),
# keeping each earlier attempt in the record's `attempts`. `diverged` is a result (a deterministic
# run that diverges again), so it is kept.
RETRIED = ("oom", "error", "timeout")
GIVE_UP = 3  # identical failures in a row after which a sweep stops retrying a cell
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a set or variant name (or "")
KEY = re.compile(r"[0-9a-f]{16}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # an attempt's time, UTC
ATTEMPT = ("status", "error", "time")  # the fields of one entry of CellRecord.attempts
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
    # {step, train_loss, val_loss, val_score, and the window's gradient figures
    # (seqbench.cell.monitor): grad_norm, grad_norm_max, clipped[, layer_ratio][, skipped]}
    history: list = field(default_factory=list)
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
    # how tables and figures show the family and the task (seqbench.display; labels like hpset,
    # not part of the key): {label, order, colour, marker} and {label, order, length_symbol,
    # length_meaning}; empty in records written before they existed (defaults are derived)
    model_display: dict = field(default_factory=dict)
    task_display: dict = field(default_factory=dict)
    # earlier failed attempts of this cell, oldest first, each {"status": one of RETRIED, "error":
    # its message or null, "time": when it was stored, "YYYY-MM-DDTHH:MM:SSZ"}; the record itself
    # is the latest attempt
    attempts: list = field(default_factory=list)
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
        """The model as tables show it: the variant's name, else the family's label."""
        return self.variant or self.model_style()["label"]

    @property
    def task_name(self) -> str:
        """The task as tables show it: its label."""
        return self.task_style()["label"]

    def model_style(self) -> dict:
        """label (the shown name), order, colour and marker of the model (seqbench.display)."""
        return styles(self.family, self.model_display, self.task, self.task_display,
                      self.variant)[0]

    def task_style(self) -> dict:
        """label (the shown name), order, length_symbol and length_meaning of the task."""
        return styles(self.family, self.model_display, self.task, self.task_display)[1]

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
        try:
            if self.model_display:
                display.check_model(self.model_display)
            if self.task_display:
                display.check_task(self.task_display)
        except display.DisplayError as exc:
            raise CorruptRecord(str(exc)) from None
        for name in ("score", "val_score", "ood_score"):
            _score(name, getattr(self, name))
        for name in ("ood_scores", "ood_val_scores"):
            for i, value in enumerate(getattr(self, name)):
                _score(f"{name}[{i}]", value)
        if self.status in ("solved", "budget"):  # a finished run was scored
            name = "ood_score" if self.config.get("generalise") else "score"
            if getattr(self, name) is None:
                raise InvalidValue(f"{name} missing from a record with status {self.status!r}")
        for i, attempt in enumerate(self.attempts):
            _check_attempt(f"attempts[{i}]", attempt)
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

    def identical_failures(self) -> int:
        """How many attempts in a row, ending with this record, failed the same way (same status
        and same last line of the error, where a traceback ends): 0 unless this one failed with a
        status of RETRIED."""
        if self.status not in RETRIED:
            return 0
        same = _failure(self.status, self.error)
        n = 1
        for attempt in reversed(self.attempts):
            if _failure(attempt["status"], attempt["error"]) != same:
                break
            n += 1
        return n

    def as_attempt(self, time: str) -> dict:
        """This (failed) record as an entry of a later record's attempts, stored at `time`."""
        return {"status": self.status, "error": self.error, "time": time}


def _failure(status: str, error: str | None) -> tuple[str, str]:
    lines = (error or "").strip().splitlines()
    return status, lines[-1] if lines else ""


def _check_attempt(name: str, attempt: Any) -> None:
    if not isinstance(attempt, dict) or sorted(attempt) != sorted(ATTEMPT):
        raise CorruptRecord(f"{name}: expected an object with exactly {', '.join(ATTEMPT)}")
    if attempt["status"] not in RETRIED:
        raise CorruptRecord(f"{name}.status {attempt['status']!r} is not one of "
                            f"{', '.join(RETRIED)}")
    if not (attempt["error"] is None or isinstance(attempt["error"], str)):
        raise CorruptRecord(f"{name}.error: expected a string or null")
    if not (isinstance(attempt["time"], str) and TIME.fullmatch(attempt["time"])):
        raise CorruptRecord(f"{name}.time: expected YYYY-MM-DDTHH:MM:SSZ, got "
                            f"{attempt['time']!r:.40}")


def styles(family: str, model_display: dict, task: str, task_display: dict,
           variant: str = "") -> tuple[dict, dict]:
    """(model style, task style) as shown: the stored display, or defaults derived from the
    names for records without one; a variant's colour and marker derived from its name; labels
    replaced by the configured name where a plug-in's label is a built-in's name."""
    model = dict(model_display or display.model(family))
    model["label"] = display.shown(model["label"], family, BUILTIN["model"])
    if variant:
        model = display.variant(variant, model)
    shown_task = dict(task_display or display.task(task))
    shown_task["label"] = display.shown(shown_task["label"], task, BUILTIN["task"])
    return model, shown_task


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
