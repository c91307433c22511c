"""Synthetic long-dependency tasks, one module each, behind one registry."""
from __future__ import annotations

from seqbench.strict import check_choice
from seqbench.tasks.adding import Adding
from seqbench.tasks.assoc_recall import AssocRecall
from seqbench.tasks.base import Batch, IOSpec, Task
from seqbench.tasks.copy_memory import CopyMemory
from seqbench.tasks.cycle_nav import CycleNav
from seqbench.tasks.delay import Delay
from seqbench.tasks.dyck import Dyck
from seqbench.tasks.even_pairs import EvenPairs
from seqbench.tasks.induction import Induction
from seqbench.tasks.mod_arith import ModArith
from seqbench.tasks.parity import Parity
from seqbench.tasks.reverse import Reverse
from seqbench.tasks.selective_copy import SelectiveCopy
from seqbench.tasks.temporal_order import TemporalOrder

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    CopyMemory, Adding, Parity, SelectiveCopy, Delay, Reverse, TemporalOrder,
    AssocRecall, Induction, EvenPairs, CycleNav, ModArith, Dyck,
)}


def get_task(name: str, field: str = "task") -> Task:
    """The task registered under name; unknown names raise ConfigError listing the choices."""
    return TASKS[check_choice(field, name, TASKS)]()


__all__ = ["TASKS", "Batch", "IOSpec", "Task", "get_task"]

if __name__ != "seqbench.tasks":  # imported by its folder name from a checkout, the pre-0.2 way
    import warnings

    warnings.warn("`import tasks` is deprecated: it is `seqbench.tasks` since 0.2",
                  DeprecationWarning, stacklevel=2)
