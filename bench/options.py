"""Command-line options derived from the config dataclasses, so each setting has one default and
one help text (its field, see seqbench.strict.setting) whether it is given in a sweep file, a
stored record or on the command line. Torch-free.

add_options(parser, cls, prefix) adds `--<prefix><field>` for every scalar field of cls (ints,
floats, strings, booleans as --x/--no-x, tuples of ints as comma lists); their argparse default is
None, so given(args, cls, prefix) returns only what the user set and the dataclass supplies the
rest (the help shows the dataclass default).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from seqbench.strict import ConfigError

_SCALARS = (int, float, str, bool)


def _kind(annotation: Any) -> tuple[Any, bool]:
    """(scalar type or tuple[int, ...], optional?) of a field annotation; (None, _) otherwise."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        (annotation,) = [a for a in args if a is not type(None)]
    if annotation in _SCALARS:
        return annotation, optional
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation)[0] in _SCALARS:
        return annotation, optional
    return None, optional


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def _comma_list(inner: type):
    def parse(text: str) -> list:
        try:
            values = [inner(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {inner.__name__}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("must not be empty")
        return values
    return parse


def _default_text(f: dataclasses.Field, required: bool) -> str:
    if f.default is not dataclasses.MISSING:
        return "" if f.default is None else f" (default: {f.default})"
    return " (required)" if required else ""


def add_options(parser, cls: type, prefix: str = "", skip=(), required=(), types=None) -> None:
    """One option per scalar field of cls (see the module docstring); types: a parser per field
    name where the option takes another spelling (e.g. a parameter count as 20k)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, _ = _kind(hints[f.name])
        if kind is None or f.name in skip:
            continue
        choices = f.metadata.get("choices")
        allowed = f"; one of {', '.join(choices)}" if choices else ""
        help_ = (f.metadata.get("help", "") + allowed + _default_text(f, f.name in required))
        help_ = help_.replace("%", "%%")  # argparse formats help with %
        flag, dest = _flag(prefix, f.name), _dest(prefix, f.name)
        if kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                default=None, help=help_)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, dest=dest, type=_comma_list(typing.get_args(kind)[0]),
                                default=None, metavar="A,B,...", help=help_)
        else:
            # values are checked by the config class itself, so that the CLI, sweep files and
            # stored records get the same messages
            parser.add_argument(flag, dest=dest, type=(types or {}).get(f.name, kind),
                                default=None, required=f.name in required, help=help_,
                                metavar=f.name.upper())


def given(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of cls the user set on the command line (others are left to the dataclass)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, _dest(prefix, f.name), None)
        if value is not None:
            out[f.name] = value
    return out


def comma_list(field: str, text: str, kind=str) -> list:
    """A comma-separated list option, e.g. --models lstm,gru; ConfigError naming the field."""
    try:
        return _comma_list(kind)(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def add_threads(parser, default_text: str) -> None:
    """The --threads option (torch intra-op threads) of a command that computes."""
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch intra-op threads (default: {default_text})")


def apply_threads(threads: int | None, default: int | None) -> int:
    """Set torch's intra-op threads to threads, else default (None: torch's own choice); return
    the count in effect."""
    import torch

    n = threads if threads is not None else default
    if n is not None:
        if n < 1:
            raise ConfigError(f"--threads: must be >= 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()
