"""Names of model families and tasks: built-ins, import paths and entry points. Torch-free.

A config names a family or task (`model = "lstm"`, `tasks = ["copy"]`) in one of three ways:

* a built-in: a short name registered below (one line per family or task);
* an import path `module:attribute` (`mypkg.blocks:GatedConv`): for a family the attribute is a
  seqbench.models.Family instance, or a module whose FAMILIES holds exactly one; for a task it is
  a seqbench.tasks.Task subclass;
* the name of an entry point of an installed distribution, in the group `seqbench.models` or
  `seqbench.tasks` (`mingru = "mypkg.mingru:MINGRU"` in its pyproject.toml); its object follows
  the same rules, and a module whose FAMILIES holds several families gives the one with the
  entry point's name.

The name in the config is what every process resolves (spawn workers, Ray workers), and it is
stored in each record and part of each key. Commands that only read results check that every
record's names still resolve without importing anything (missing()), so a record whose plug-in is
not installed stops them with a message naming it instead of vanishing from their tables.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Iterable
from typing import Any

from seqbench.strict import ConfigError

KINDS = ("model", "task")
GROUPS = {"model": "seqbench.models", "task": "seqbench.tasks"}
WHAT = {"model": "seqbench.models.Family instance or a module with FAMILIES",
        "task": "seqbench.tasks.Task subclass"}
# Built-ins: name -> "module" (a module with FAMILIES: the family of that name) or
# "module:attribute". Adding one is one line here.
BUILTIN = {
    "model": {
        "rnn": "seqbench.models.recurrent",
        "lstm": "seqbench.models.recurrent",
        "gru": "seqbench.models.recurrent",
        "tcn": "seqbench.models.tcn",
        "transformer": "seqbench.models.transformer",
        "lru": "seqbench.models.lru",
        "s4d": "seqbench.models.s4d",
        "mamba": "seqbench.models.mamba",
        "linear_attention": "seqbench.models.linear_attention",
        "hyena": "seqbench.models.hyena",
        "seq2seq": "seqbench.models.seq2seq",
    },
    "task": {
        "copy": "seqbench.tasks.copy_memory:CopyMemory",
        "adding": "seqbench.tasks.adding:Adding",
        "parity": "seqbench.tasks.parity:Parity",
        "selective_copy": "seqbench.tasks.selective_copy:SelectiveCopy",
        "delay": "seqbench.tasks.delay:Delay",
        "reverse": "seqbench.tasks.reverse:Reverse",
        "temporal_order": "seqbench.tasks.temporal_order:TemporalOrder",
        "assoc_recall": "seqbench.tasks.assoc_recall:AssocRecall",
        "induction": "seqbench.tasks.induction:Induction",
        "even_pairs": "seqbench.tasks.even_pairs:EvenPairs",
        "cycle_nav": "seqbench.tasks.cycle_nav:CycleNav",
        "mod_arith": "seqbench.tasks.mod_arith:ModArith",
        "dyck": "seqbench.tasks.dyck:Dyck",
    },
}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")


def is_import_path(name: str) -> bool:
    return ":" in name


def entry_points(kind: str) -> dict[str, list[importlib.metadata.EntryPoint]]:
    """The installed entry points of kind's group by name (a name may come from several
    distributions; resolving it is then an error)."""
    out: dict[str, list] = {}
    for ep in importlib.metadata.entry_points(group=GROUPS[kind]):
        if not any(ep.value == e.value and _dist(e) == _dist(ep) for e in out.get(ep.name, [])):
            out.setdefault(ep.name, []).append(ep)  # a dist seen twice on sys.path counts once
    return out


def names(kind: str) -> list[str]:
    """Every short name of kind: the built-ins in their order, then the installed entry points
    (one of a built-in's name is never used: the built-in wins)."""
    return [*BUILTIN[kind], *sorted(set(entry_points(kind)) - set(BUILTIN[kind]))]


def _dist(ep) -> str | None:
    dist = getattr(ep, "dist", None)
    return None if dist is None else f"{dist.metadata['Name']} {dist.version}"


def _unknown(kind: str, field: str, name: str) -> ConfigError:
    return ConfigError(
        f"{field}: unknown value {name!r}; allowed: {', '.join(sorted(names(kind)))}; or a "
        f"{kind} of your own as an import path module:attribute (a {WHAT[kind]}) or an entry point in the "
        f"group {GROUPS[kind]}")


def _import(target: str, field: str, where: str) -> Any:
    """The object at "module" or "module:attr.attr"; ConfigError naming field and where."""
    module_name, _, attrs = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"{field}: {where}: no module named {exc.name!r}; install the distribution that "
                "provides it (pip install ...) or put its folder on PYTHONPATH") from None
        raise ConfigError(f"{field}: {where}: importing {module_name!r} failed: {exc} (a "
                          "dependency of the plug-in is missing)") from None
    except Exception as exc:  # noqa: BLE001 - a plug-in's import error, named
        raise ConfigError(f"{field}: {where}: importing {module_name!r} raised "
                          f"{type(exc).__name__}: {exc}") from None
    for attr in attrs.split(".") if attrs else ():
        if not hasattr(obj, attr):
            raise ConfigError(f"{field}: {where}: {getattr(obj, '__name__', module_name)!r} has "
                              f"no attribute {attr!r}")
        obj = getattr(obj, attr)
    return obj


def load(kind: str, name: str, field: str) -> tuple[Any, str]:
    """(the object `name` stands for, a phrase saying where it came from) for kind "model" or
    "task"; ConfigError naming the field for an unknown name or an import that fails. The caller
    checks the object's type (seqbench.models.get_family, seqbench.tasks.get_task)."""
    if name in BUILTIN[kind]:
        where = f"built-in {kind} {name!r}"
        return _import(BUILTIN[kind][name], field, where), where
    if is_import_path(name):
        if not IMPORT_PATH.fullmatch(name):
            raise ConfigError(f"{field}: {name!r} is not an import path module:attribute "
                              "(e.g. mypkg.blocks:GatedConv)")
        where = f"import path {name!r}"
        return _import(name, field, where), where
    found = entry_points(kind).get(name)
    if not found:
        raise _unknown(kind, field, name)
    if len(found) > 1:
        raise ConfigError(f"{field}: {name!r} is an entry point of several distributions ("
                          + "; ".join(f"{_dist(ep)}: {ep.value}" for ep in found)
                          + "); uninstall all but one, or use an import path")
    ep = found[0]
    where = f"entry point {name!r} ({GROUPS[kind]}: {ep.value} of {_dist(ep) or 'unknown'})"
    try:
        return ep.load(), where
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{field}: {where} failed to load: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a plug-in's import error, named
        raise ConfigError(f"{field}: {where} failed to load: {type(exc).__name__}: {exc}") from None


def provenance(kind: str, name: str) -> dict | None:
    """Where a plug-in comes from, for records and env.json: kind, name, source (import path or
    entry point), distribution and version where known; None for a built-in."""
    if name in BUILTIN[kind]:
        return None
    out = {"kind": kind, "name": name, "source": None, "distribution": None, "version": None}
    if is_import_path(name):
        out["source"] = f"import path {name}"
        top = name.partition(":")[0].partition(".")[0]
        dists = importlib.metadata.packages_distributions().get(top, [])
        if len(dists) == 1:
            out["distribution"] = dists[0]
            out["version"] = importlib.metadata.version(dists[0])
        return out
    found = entry_points(kind).get(name, [])
    if len(found) == 1:
        out["source"] = f"entry point {GROUPS[kind]}: {name} = {found[0].value}"
        dist = getattr(found[0], "dist", None)
        if dist is not None:
            out["distribution"], out["version"] = dist.metadata["Name"], dist.version
    return out


def _module_found(dotted: str) -> bool:
    """Whether module `dotted` could be imported, found without importing it or its parent
    packages (importlib.util.find_spec would run the parents' __init__)."""
    if dotted in sys.modules:
        return True
    parts = dotted.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for i in range(1, len(parts)):
            if spec is None or spec.submodule_search_locations is None:
                return False
            spec = importlib.machinery.PathFinder.find_spec(
                ".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return False
    return spec is not None


def missing(kind: str, name: str) -> str | None:
    """Why `name` cannot be resolved here, found without importing anything; None if it can
    (a built-in, an import path whose module is found, an installed entry point whose module is
    found). It does not prove the import will succeed: only that what it needs is installed."""
    if name in BUILTIN[kind]:
        return None
    if is_import_path(name):
        module = name.partition(":")[0]
        return None if _module_found(module) else f"module {module!r} is not installed"
    found = entry_points(kind).get(name)
    if not found:
        return (f"no built-in {kind} and no installed entry point in the group {GROUPS[kind]} "
                "is named so")
    if not _module_found(found[0].module):
        return f"its entry point's module {found[0].module!r} is not installed"
    return None


def _install_hint(hints: Iterable[dict]) -> str:
    for hint in hints:
        if hint.get("distribution"):
            pin = f"=={hint['version']}" if hint.get("version") else ""
            wanted = f"{hint['distribution']}{pin}"
            return f"install {wanted} (pip install '{wanted}')"
    return "install the distribution that provides it"


def check_resolvable(used: Iterable[tuple[str, str]], hints: Iterable[dict], command: str) -> None:
    """ConfigError (exit 2) if any (kind, name) in used cannot be resolved here, naming each
    such plug-in and, where a hint (a provenance() mapping from a record or env.json) knows it,
    the distribution and version to install; records of a plug-in that is missing would
    otherwise have to be left out of every table and figure."""
    hints = list(hints)
    problems = []
    for kind, name in sorted(set(used)):
        reason = missing(kind, name)
        if reason is not None:
            mine = [h for h in hints if isinstance(h, dict) and h.get("kind") == kind
                    and h.get("name") == name]
            source = next((h["source"] for h in mine if h.get("source")), None)
            problems.append(f"{kind} {name!r}" + (f" ({source})" if source else "")
                            + f": {reason}; {_install_hint(mine)}")
    if problems:
        raise ConfigError(f"{command}: records use plug-ins that cannot be resolved here, so "
                          "their cells cannot be reported: " + "; ".join(problems))
