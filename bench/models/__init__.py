"""Model families behind one registry, each sized to a shared parameter budget.

Every family's Core.info declares how its streaming state grows, from the built module's shapes:
"state_bytes_per_sample", the bytes per sample that do not depend on the position (float32
values; complex64 ones count 8), and "state_bytes_per_position", the bytes per sample added by
each step (0 for a constant-state family; a Transformer's KV cache, Hyena's long-convolution
inputs). After t steps a batch of B holds B * (per_sample + t * per_position) bytes. A model that
does not stream (a bidirectional recurrent net) declares neither.
"""
from __future__ import annotations

import warnings
from typing import Any

from seqbench.models import (
    hyena,
    linear_attention,
    lru,
    mamba,
    recurrent,
    s4d,
    tcn,
    transformer,
)
from seqbench.models.base import Family, SequenceModel, count_parameters, state_bytes
from seqbench.strict import check_choice, from_mapping
from seqbench.tasks.base import IOSpec

FAMILIES: dict[str, Family] = {
    f.name: f
    for module in (recurrent, tcn, transformer, lru, s4d, mamba, linear_attention, hyena)
    for f in module.FAMILIES
}


BUDGET_TOLERANCE = 0.10  # every model is meant to land within this fraction of the budget


class BudgetWarning(UserWarning):
    """The closest width still misses the parameter budget by more than BUDGET_TOLERANCE."""


def get_family(name: str, field: str = "model") -> Family:
    return FAMILIES[check_choice(field, name, FAMILIES)]


def parse_hparams(model: str, data: dict[str, Any] | Any, field: str = "hparams") -> Any:
    """The family's frozen hyper-parameter dataclass from a mapping (unknown keys are errors)."""
    family = get_family(model)
    if type(data) is family.hparams:
        return data
    return from_mapping(family.hparams, data or {}, field)


def build_model(model: str, io: IOSpec, budget: int, hp: Any, max_len: int) -> SequenceModel:
    """The model of family `model` whose parameter count is closest to budget.

    Fitting builds many candidates; each distinct warning they raise (for example a TCN receptive
    field that does not cover max_len) reaches the caller once.
    """
    family = get_family(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        core = family.sized(io, budget, hp, max_len)
    for message, category in dict.fromkeys((str(w.message), w.category) for w in caught):
        warnings.warn(message, category, stacklevel=2)
    model = SequenceModel(io, core)
    count = count_parameters(model)
    if abs(count - budget) > BUDGET_TOLERANCE * budget:
        warnings.warn(
            f"{family.name}: {count} parameters is "
            f"{abs(count - budget) / budget:.0%} off the budget {budget}: the width grid is too "
            "coarse at this size (the record stores the actual count)",
            BudgetWarning,
            stacklevel=2,
        )
    return model


__all__ = [
    "BUDGET_TOLERANCE",
    "FAMILIES",
    "BudgetWarning",
    "SequenceModel", "build_model", "count_parameters", "get_family",
    "parse_hparams", "state_bytes",
]
