"""Synthetic long-dependency tasks, one module each, behind one registry."""
from __future__ import annotations

from bench.strict import check_choice
from tasks.adding import Adding
from tasks.base import Batch, IOSpec, Task
from tasks.copy_memory import CopyMemory
from tasks.parity import Parity

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (CopyMemory, Adding, Parity)}


def get_task(name: str, field: str = "task") -> Task:
    """The task registered under name; unknown names raise ConfigError listing the choices."""
    return TASKS[check_choice(field, name, TASKS)]()


__all__ = ["TASKS", "Batch", "IOSpec", "Task", "get_task"]
