"""Model families behind one registry, each sized to a shared parameter budget.

FAMILIES holds the built-ins (seqbench.registry.BUILTIN); get_family also resolves a plug-in,
named by import path or entry point (seqbench.registry), in whichever process asks.

Every family's Core.info declares how its streaming state grows, from the built module's shapes:
"state_bytes_per_sample", the bytes per sample that do not depend on the position (float32
values; complex64 ones count 8), and "state_bytes_per_position", the bytes per sample added by
each step (0 for a constant-state family; a Transformer's KV cache, Hyena's long-convolution
inputs). After t steps a batch of B holds B * (per_sample + t * per_position) bytes. A family whose
state stops growing also declares "state_growth_steps" n: B * (per_sample + min(t, n) *
per_position) (an encoder-decoder caches the encoder states of the question only). A model that
does not stream (a bidirectional recurrent net) declares neither.
"""
from __future__ import annotations

import types
import warnings
from typing import Any

from seqbench import registry
from seqbench.models.base import Family, SequenceModel, count_parameters, state_bytes
from seqbench.strict import ConfigError, from_mapping
from seqbench.tasks.base import IOSpec


def as_family(obj: Any, name: str, where: str, field: str = "model") -> Family:
    """obj as a Family: a Family instance, or a module whose FAMILIES (a list or dict of Family)
    holds exactly one, or one named `name`; ConfigError naming field and where otherwise."""
    if isinstance(obj, Family):
        return obj
    if isinstance(obj, types.ModuleType) and hasattr(obj, "FAMILIES"):
        families = obj.FAMILIES
        families = list(families.values() if isinstance(families, dict) else families)
        wrong = [f for f in families if not isinstance(f, Family)]
        if wrong:
            raise ConfigError(f"{field}: {where}: {obj.__name__}.FAMILIES holds "
                              f"{type(wrong[0]).__name__} {wrong[0]!r:.60}, expected Family "
                              "instances")
        named = [f for f in families if f.name == name]
        if len(families) == 1 or len(named) == 1:
            return (named or families)[0]
        raise ConfigError(f"{field}: {where}: {obj.__name__}.FAMILIES holds "
                          f"{len(families)} families ({', '.join(f.name for f in families)}) "
                          "and none is named so; name one Family instance instead")
    kind = "module without FAMILIES" if isinstance(obj, types.ModuleType) else (
        type(obj).__name__)
    raise ConfigError(f"{field}: {where} is a {kind} ({obj!r:.60}); expected a "
                      f"{registry.WHAT['model']}")


FAMILIES: dict[str, Family] = {
    name: as_family(registry.load("model", name, "model")[0], name, f"built-in {name!r}")
    for name in registry.BUILTIN["model"]
}
_PLUGINS: dict[str, Family] = {}  # plug-ins resolved in this process, by the name configs use

BUDGET_TOLERANCE = 0.10  # every model is meant to land within this fraction of the budget


class BudgetWarning(UserWarning):
    """The closest width still misses the parameter budget by more than BUDGET_TOLERANCE."""


def get_family(name: str | Family, field: str = "model") -> Family:
    """The family a config names: a built-in, an import path or an entry point (resolved once
    per process); unknown names raise ConfigError listing the choices. A Family passes through
    (plug-in authors test theirs before registering it: seqbench.testing)."""
    if isinstance(name, Family):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"{field}: expected a name, got {type(name).__name__} {name!r}")
    if name in FAMILIES:
        return FAMILIES[name]
    if name not in _PLUGINS:
        obj, where = registry.load("model", name, field)
        _PLUGINS[name] = as_family(obj, name, where, field)
    return _PLUGINS[name]


def parse_hparams(model: str | Family, data: dict[str, Any] | Any,
                  field: str = "hparams") -> Any:
    """The family's frozen hyper-parameter dataclass from a mapping (unknown keys are errors)."""
    family = get_family(model)
    if type(data) is family.hparams:
        return data
    return from_mapping(family.hparams, data or {}, field)


def build_model(model: str | Family, io: IOSpec, budget: int, hp: Any,
                max_len: int) -> SequenceModel:
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
    "Family", "SequenceModel", "as_family", "build_model", "count_parameters", "get_family",
    "parse_hparams", "state_bytes",
]
