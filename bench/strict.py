"""Strict parsing of plain mappings (TOML, CLI) into frozen dataclasses.

Unknown keys, wrong types and out-of-range values raise ConfigError naming the field and what is
allowed; nothing is ever silently dropped or coerced beyond int -> float.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid user input; the CLI prints it and exits with status 2."""


def check_choice(field: str, value: str, allowed: typing.Iterable[str]) -> str:
    """Return value if it is one of allowed, else raise naming the field and the choices."""
    allowed = sorted(allowed)
    if value not in allowed:
        raise ConfigError(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value


def coerce(field: str, value: Any, kind: Any) -> Any:
    """Check value against an annotation: int, float, str, bool, tuple[X, ...], X | None, or a
    dataclass (parsed from a mapping with from_mapping)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(field, value, inner)
    if origin is tuple:
        (inner, _) = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{field}: expected a list, got {type(value).__name__} {value!r}")
        if not value:
            raise ConfigError(f"{field}: must not be empty")
        return tuple(coerce(f"{field}[{i}]", v, inner) for i, v in enumerate(value))
    if dataclasses.is_dataclass(kind):
        return value if isinstance(value, kind) else from_mapping(kind, value, field)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and (type(value) is not kind):
        raise ConfigError(
            f"{field}: expected {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass cls from data, rejecting unknown keys and wrong types.

    Nested dataclass fields accept a mapping; each dataclass may define validate() for range checks.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where + '.' if where else ''}{unknown[0]}: unknown key; "
            f"allowed: {', '.join(sorted(fields)) or '(none)'}"
        )
    values = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        values[name] = coerce(path, value, hints[name])
    missing = [
        n for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where + '.' if where else ''}{missing[0]}: required key is missing")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def setting(default: Any, help: str, *, choices: typing.Iterable[str] | None = None,
            added: bool = False) -> Any:
    """A config field with its one default and its help text (the CLI's options and the JSON
    schema are derived from these); choices: the allowed values of a string field. added: a field
    introduced after records were stored: key_payload() leaves it out while it holds this default,
    so every earlier key stays valid; set to anything else, it enters."""
    metadata = {"help": help, "added": added}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def added(default: Any, help: str = "") -> Any:
    """setting(default, help, added=True): a field introduced after records were stored."""
    return setting(default, help, added=True)


def key_payload(obj: Any) -> Any:
    """The plain, hashable-as-JSON form of a config for its key: dataclasses become dicts
    (recursively) without their added() fields that still hold the default."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: key_payload(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get("added") and getattr(obj, f.name) == f.default)
        }
    if isinstance(obj, list | tuple):
        return [key_payload(v) for v in obj]
    if isinstance(obj, dict):
        return {k: key_payload(v) for k, v in obj.items()}
    return obj


def stable_key(payload: Any) -> str:
    """16 hex digits of the SHA-256 of payload's canonical JSON (sorted keys, no spaces): the key
    of a cell or measured point, computable from the stored payload alone (torch-free)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError(field: message) unless condition holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def parse_count(field: str, text: str | int) -> int:
    """Parse a count such as 20000, '20k' or '1.5M'."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"{field}: expected an integer such as 20000 or '20k', got {text!r}")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise ConfigError(f"{field}: expected an integer such as 20000 or '20k', got {text!r}") from None
    if value != int(value):
        raise ConfigError(f"{field}: {text!r} is not a whole number")
    return int(value)
