"""Synthetic long-dependency tasks, one module each, behind one registry.

TASKS holds the built-ins (seqbench.registry.BUILTIN); get_task also resolves a plug-in, named by
import path or entry point (seqbench.registry), in whichever process asks.
"""
from __future__ import annotations

from typing import Any

from seqbench import display, registry
from seqbench.strict import ConfigError
from seqbench.tasks.base import Batch, IOSpec, Task

REQUIRED = ("name", "summary", "io", "readout", "solve_threshold")  # class attributes to set


def as_task(obj: Any, where: str, field: str = "task") -> type[Task]:
    """obj as a task class: a Task subclass that sets REQUIRED and valid display declarations;
    ConfigError naming field and where otherwise."""
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ConfigError(f"{field}: {where} is a {type(obj).__name__} ({obj!r:.60}); expected a "
                          f"{registry.WHAT['task']}")
    unset = [a for a in REQUIRED if not hasattr(obj, a)]
    if unset:
        raise ConfigError(f"{field}: {where}: {obj.__name__} does not set {', '.join(unset)} "
                          f"(a Task sets {', '.join(REQUIRED)})")
    if not isinstance(obj.io, IOSpec) or obj.readout not in ("per_step", "final"):
        raise ConfigError(f"{field}: {where}: {obj.__name__}.io must be an IOSpec and readout "
                          "'per_step' or 'final'")
    try:
        obj.display()
    except display.DisplayError as exc:
        raise ConfigError(f"{field}: {where}: {exc}") from None
    return obj


TASKS: dict[str, type[Task]] = {
    name: as_task(registry.load("task", name, "task")[0], f"built-in {name!r}")
    for name in registry.BUILTIN["task"]
}
_PLUGINS: dict[str, type[Task]] = {}  # plug-ins resolved in this process, by the name configs use


def get_task(name: str, field: str = "task") -> Task:
    """The task a config names: a built-in, an import path or an entry point (resolved once per
    process); unknown names raise ConfigError listing the choices."""
    if not isinstance(name, str):
        raise ConfigError(f"{field}: expected a name, got {type(name).__name__} {name!r}")
    if name in TASKS:
        return TASKS[name]()
    if name not in _PLUGINS:
        _PLUGINS[name] = as_task(*registry.load("task", name, field), field)
    return _PLUGINS[name]()


__all__ = ["TASKS", "Batch", "IOSpec", "Task", "as_task", "get_task"]

if __name__ != "seqbench.tasks":  # imported by its folder name from a checkout, the pre-0.2 way
    import warnings

    warnings.warn("`import tasks` is deprecated: it is `seqbench.tasks` since 0.2",
                  DeprecationWarning, stacklevel=2)
