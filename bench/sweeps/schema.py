"""JSON Schema (draft 2020-12) of sweep files, generated from what load_spec parses: SweepSpec and
the dataclasses it nests, each field's type, default, help text and choices (seqbench.strict.
setting), every table closed (`additionalProperties: false`, as from_mapping rejects unknown keys),
and the hyper-parameter table of each built-in model family from its hparams dataclass.

Task and family names are open: each table keyed by them lists the built-ins (editors complete
them) and admits any other name, since a sweep may name plug-ins (import paths, entry points) and
`models` lists variant names; load_spec rejects an unknown name with the list of allowed ones. The
schema checks structure, types, choices and unknown keys; ranges and rules across fields (a
length >= the task's minimum aside) stay with load_spec (`seqbench sweep --dry-run`), as does a
whole float for an integer (`steps = 1e3`: JSON Schema counts 1000.0 as an integer).

`python -m seqbench.sweeps.schema > bench/sweeps/sweep.schema.json` writes the committed copy.
Importing this module is torch-free; sweep_schema() imports the registries, hence torch.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from typing import Any

from seqbench.cell.record import LABEL
from seqbench.registry import GROUPS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
Defs = dict[str, dict]


def _plain(value: Any) -> Any:
    """A default as JSON: tuples become lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _doc(cls: type) -> str:
    """The first paragraph of cls's own docstring ("" for dataclass's generated signature)."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split("\n\n")[0].split())


def _type(kind: Any, defs: Defs) -> dict:
    """The schema of an annotation from_mapping accepts (seqbench.strict.coerce); a nested
    dataclass goes to defs and is referred to. X | None is X: TOML has no null, None is absence."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        (kind,) = args
        return _type(kind, defs)
    if typing.get_origin(kind) is tuple:
        return {"type": "array", "items": _type(args[0], defs), "minItems": 1}
    if dataclasses.is_dataclass(kind):
        if kind.__name__ not in defs:
            defs[kind.__name__] = table(kind, defs)
        return {"$ref": f"#/$defs/{kind.__name__}"}
    if kind not in TYPES:
        raise TypeError(f"no JSON type for annotation {kind!r}; give the field a schema")
    return {"type": TYPES[kind]}


def table(cls: type, defs: Defs, fields: dict[str, dict] | None = None) -> dict:
    """A closed object schema of dataclass cls; fields: schemas of fields whose annotation does
    not say their shape (Any: tables parsed by SweepSpec itself), replacing the derived one."""
    fields = fields or {}
    hints = typing.get_type_hints(cls)
    own = {f.name: f for f in dataclasses.fields(cls) if f.init}
    stale = sorted(set(fields) - set(own))
    if stale:
        raise KeyError(f"{cls.__name__} has no field {stale[0]!r}")
    props = {}
    for name, f in own.items():
        schema = dict(fields[name]) if name in fields else _type(hints[name], defs)
        if f.metadata.get("help"):
            schema["description"] = f.metadata["help"]
        if "choices" in f.metadata:
            schema["enum"] = list(f.metadata["choices"])
        if f.default not in (dataclasses.MISSING, None):
            schema["default"] = _plain(f.default)
        props[name] = schema
    required = [n for n, f in own.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    out = {"type": "object", "description": _doc(cls), "properties": props,
           "additionalProperties": False, "required": required}
    return {k: v for k, v in out.items() if v != "" and v != []}


def _names(kind: str, builtins: typing.Iterable[str]) -> dict:
    """A task or family name: a built-in, or any other string (a plug-in)."""
    return {"anyOf": [{"enum": list(builtins)}, {"type": "string"}],
            "description": f"a built-in {kind} or a plug-in's name (an import path module:attribute"
                           f" or an entry point of the group {GROUPS[kind]}); plug-in names are "
                           "not listed here, so a validator cannot tell them from typos"}


def _keyed(kind: str, per_name: dict[str, dict], other: dict) -> dict:
    """A table keyed by task or family names: the built-ins' schemas, `other` for plug-ins."""
    return {"type": "object", "properties": per_name,
            "additionalProperties": other | {"description": f"a plug-in {kind}"}}


def sweep_schema() -> dict:
    """The JSON Schema of a sweep file (see the module docstring)."""
    from seqbench.cell.config import Generalise, TrainConfig
    from seqbench.models import FAMILIES
    from seqbench.sweeps.spec import MeasureSpec, SweepSpec, Variant
    from seqbench.tasks import TASKS

    defs: Defs = {}
    task, family = _names("task", TASKS), _names("model", FAMILIES)
    train, generalise = _type(TrainConfig, defs), _type(Generalise, defs)
    hparams = {name: _type(f.hparams, defs) | {"description": f"{name}: {f.summary}"}
               for name, f in FAMILIES.items()}
    lengths = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1}
    label = {"type": "string", "pattern": f"^{LABEL.pattern}$"}
    chosen = {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True,
              "description": "entries of models to run on this task"}
    defs["MeasureSpec"] = table(MeasureSpec, defs, {"task": task})  # before SweepSpec refers
    defs["Variant"] = table(Variant, defs, {
        "model": family, "hparams": {"type": "object"},
        "tasks": {"type": "array", "items": task, "minItems": 1},
    }) | {"allOf": [{"if": {"properties": {"model": {"const": name}}, "required": ["model"]},
                     "then": {"properties": {"hparams": {"$ref": hp["$ref"]}}}}
                    for name, hp in hparams.items()]}
    top = table(SweepSpec, defs, {
        "tasks": {"type": "array", "items": task, "minItems": 1},
        "models": {"type": "array", "minItems": 1, "items": family | {
            "description": "a built-in family, a variant's name (see variants) or a plug-in's"}},
        "lengths": {"anyOf": [lengths, _keyed("task", {
            name: lengths | {"items": {"type": "integer", "minimum": cls.min_length},
                             "description": f"{name}: {cls.summary}"}
            for name, cls in TASKS.items()}, lengths)]},
        "task_train": _keyed("task", dict.fromkeys(TASKS, train), train),
        "hparams": _keyed("model", hparams, {"type": "object"}),
        "hpsets": {"type": "object", "propertyNames": label,
                   "additionalProperties": train | {"minProperties": 1}},
        "variants": {"type": "object", "propertyNames": label,
                     "additionalProperties": {"$ref": "#/$defs/Variant"}},
        "generalise": _keyed("task", dict.fromkeys(TASKS, generalise), generalise),
        "task_models": _keyed("task", dict.fromkeys(TASKS, chosen), chosen),
    })
    return {"$schema": DRAFT, "title": "seqbench sweep file", **top, "$defs": defs}


if __name__ == "__main__":
    print(json.dumps(sweep_schema(), indent=2))
