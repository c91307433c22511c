"""How a model family or task is shown in tables and figures: its display metadata. Torch-free.

A family declares a label, an order (rows sort by it), a colour ("#rrggbb") and a marker; a task
declares a label, an order and the symbol and meaning of its length axis (copy: T, the delay).
Whatever a plug-in leaves out gets a default: the label is its name, the order comes after the
built-ins, the colour and marker are derived from the name (a stable hash into palettes unlike the
built-ins'). Records store the filled-in metadata (CellRecord.model_display, .task_display), so
the results layer reads it from records only, never from the model code. A sweep variant gets a
colour and marker derived from its own name and different from its family's.

The shown name of a family or task is its label, except where a plug-in's label is the name of a
built-in (a plug-in family labelled `gru`): then the name it was configured with (its import path
or entry-point name) is shown, so it is never mistaken for the built-in.
"""
from __future__ import annotations

import re
import zlib
from typing import Any

DEFAULT_ORDER = 1000  # plug-ins sort after the built-ins (0..999), then by label
COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,7}")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")
# Filled matplotlib markers a family may take; x, X and P mark failed cells in figures.
MARKERS = ("o", "s", "^", "D", "v", "h", "*", "p", "<", ">", "d", "8", "H")
# Defaults for plug-ins and the colours of variants: colour-blind-safe where possible, none of
# them a built-in family's colour, grey kept for reference lines.
EXTRA_COLOURS = ("#56b4e9", "#ece133", "#fbafe4", "#1a1a1a", "#bcbd22", "#17becf", "#1f3b73",
                 "#8b0000")
EXTRA_MARKERS = ("*", "p", "<", ">", "d", "8", "H")
MODEL_KEYS = ("label", "order", "colour", "marker")
TASK_KEYS = ("label", "order", "length_symbol", "length_meaning")


class DisplayError(ValueError):
    """Display metadata that does not hold (a declaration or a stored record's)."""


def _pick(options: tuple[str, ...], name: str, avoid: str | None = None) -> str:
    choices = [o for o in options if o.lower() != (avoid or "").lower()]
    return choices[zlib.crc32(name.encode()) % len(choices)]


def _check(where: str, data: dict, keys: tuple[str, ...]) -> dict:
    if not isinstance(data, dict) or set(data) != set(keys):
        raise DisplayError(f"{where.rstrip('.: ')}: expected exactly the keys {', '.join(keys)}, "
                           f"got {sorted(data) if isinstance(data, dict) else data!r}")
    label, order = data["label"], data["order"]
    if not isinstance(label, str) or not LABEL.fullmatch(label):
        raise DisplayError(f"{where}label: {label!r} is not a plain label (letters, digits, "
                           "space, '.', '_', '+', '-'; at most 64)")
    if type(order) is not int:
        raise DisplayError(f"{where}order: expected an integer, got {order!r}")
    return data


def check_model(data: Any, where: str = "model_display.") -> dict:
    """data if it is a valid family display mapping; DisplayError naming the field (after the
    prefix `where`) otherwise."""
    _check(where, data, MODEL_KEYS)
    if not isinstance(data["colour"], str) or not COLOUR.fullmatch(data["colour"]):
        raise DisplayError(f"{where}colour: {data['colour']!r} is not a colour '#rrggbb'")
    if data["marker"] not in MARKERS:
        raise DisplayError(f"{where}marker: {data['marker']!r} is not one of {' '.join(MARKERS)}")
    return data


def check_task(data: Any, where: str = "task_display.") -> dict:
    """data if it is a valid task display mapping; DisplayError naming the field (after the
    prefix `where`) otherwise."""
    _check(where, data, TASK_KEYS)
    if not isinstance(data["length_symbol"], str) or not SYMBOL.fullmatch(data["length_symbol"]):
        raise DisplayError(f"{where}length_symbol: {data['length_symbol']!r} is not a short "
                           "symbol (a letter, then up to 7 letters, digits or '_')")
    meaning = data["length_meaning"]
    if not isinstance(meaning, str) or not 0 < len(meaning) <= 80 or "\n" in meaning:
        raise DisplayError(f"{where}length_meaning: expected one line of at most 80 "
                           f"characters, got {meaning!r}")
    return data


def model(name: str, label: str = "", order: int | None = None, colour: str = "",
          marker: str = "") -> dict:
    """The display of family `name` with its declared values and defaults for the rest."""
    return check_model({"label": label or name,
                        "order": DEFAULT_ORDER if order is None else order,
                        "colour": colour or _pick(EXTRA_COLOURS, name),
                        "marker": marker or _pick(EXTRA_MARKERS, name)},
                       f"model family {name!r}: ")


def task(name: str, label: str = "", order: int | None = None, length_symbol: str = "L",
         length_meaning: str = "sequence length") -> dict:
    """The display of task `name` with its declared values and defaults for the rest."""
    return check_task({"label": label or name,
                       "order": DEFAULT_ORDER if order is None else order,
                       "length_symbol": length_symbol, "length_meaning": length_meaning},
                      f"task {name!r}: ")


def variant(name: str, family: dict) -> dict:
    """A variant's display: its own name, its family's order, and a colour and marker derived
    from its name, never its family's."""
    return {"label": name, "order": family["order"],
            "colour": _pick(EXTRA_COLOURS, name, family["colour"]),
            "marker": _pick(EXTRA_MARKERS, name, family["marker"])}


def shown(label: str, name: str, builtins) -> str:
    """The name tables show: the label, or the configured name where a plug-in's label is a
    built-in's name."""
    return name if label != name and label in builtins else label


def columns(model: dict, task: dict) -> dict:
    """The display columns of a tidy row from a record's model and task styles."""
    return {"model": model["label"], "model_order": model["order"],
            "model_colour": model["colour"], "model_marker": model["marker"],
            "task": task["label"], "task_order": task["order"],
            "length_symbol": task["length_symbol"], "length_meaning": task["length_meaning"]}
