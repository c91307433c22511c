"""The results store of one sweep: a folder of JSON records plus the tables derived from them.
Torch-free: every command that only reads results goes through Store.read(), the one loader.

Layout of results/<name>/: cells/<task>_<model>_L<length>_s<seed>_<key>.json (one per cell, written
atomically: seqbench.fileio.atomic), results.csv (tidy, one row per cell), generalisation.csv (one
row per length-generalisation cell and test length), env.json, summary.md, report.html; for speed
and memory, measurements/<model>_L<length>_<key>.json (one per measured point), measurements.csv,
calibration.json (this machine's matmul peak).

Reading validates every file (CellRecord.from_dict, MeasureRecord.from_dict): a file that is not
JSON, not an object, of another schema, with a value of the wrong type or range, or whose key does
not match its payload or its file name is never trusted. Store.read() returns such files as
problems, each with its path and reason; commands decide what that means (report and plot skip and
name them, the gate refuses to judge).
"""
from __future__ import annotations

import copy
import json
import re
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from seqbench import display, registry
from seqbench.cell.record import CellRecord, CorruptRecord, InvalidValue
from seqbench.fileio import atomic_write, stale_temporaries
from seqbench.measure.record import MeasureRecord
from seqbench.strict import ConfigError


@dataclass(frozen=True)
class Problem:
    """A stored file that could not be trusted, and why."""

    path: Path
    reason: str
    invalid_value: bool = False  # well-formed, but an impossible result (a score out of range)
    key: str | None = None  # the key in the file name, where it has one

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    @property
    def cell(self) -> tuple[str, str, int, int] | None:
        """(task, family, length, seed) of a cell record's file, from its name (the store's naming
        scheme), or None for another file; the untrusted content is never read for this."""
        match = CELL_NAME.fullmatch(self.path.stem)
        if self.path.parent.name != "cells" or match is None:
            return None
        task, family = split_cell_prefix(match["prefix"])
        return task, family, int(match["length"]), int(match["seed"])


@dataclass
class Loaded:
    """Everything a store holds, parsed once: records by key, measurements by key, problems."""

    records: dict[str, CellRecord] = field(default_factory=dict)
    measurements: dict[str, MeasureRecord] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise CorruptRecord("not a text file") from None
    except json.JSONDecodeError as exc:
        raise CorruptRecord(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _slug(name: str) -> str:
    """A name as part of a file name (an import path's ':' is not portable)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


# cells/<task>_<family>_L<length>_s<seed>_<key>.json
CELL_NAME = re.compile(r"(?P<prefix>.+)_L(?P<length>\d+)_s(?P<seed>\d+)_(?P<key>[0-9a-f]{16})")


def split_cell_prefix(prefix: str) -> tuple[str, str]:
    """(task, family) of a cell file name's <task>_<family> part: names may hold underscores
    (selective_copy, linear_attention), so a built-in task name that prefixes it is taken first,
    else the text up to the first underscore."""
    tasks = sorted((n for n in registry.BUILTIN["task"] if prefix.startswith(n + "_")), key=len)
    task = tasks[-1] if tasks else prefix.partition("_")[0]
    return task, prefix[len(task) + 1:]
TEMPORARY_MAX_AGE_S = 600  # an atomic write lasts milliseconds; older temporaries are orphans


def _key_in_name(path: Path) -> str:
    return path.stem.rpartition("_")[2]


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.measurements = self.root / "measurements"

    def path_for(self, record: CellRecord) -> Path:
        return self.cell_path(record.task, record.family, record.length, record.seed, record.key)

    def cell_path(self, task: str, family: str, length: int, seed: int, key: str) -> Path:
        """Where the record of a cell is stored."""
        return self.cells / f"{_slug(task)}_{_slug(family)}_L{length}_s{seed}_{key}.json"

    def read_cell(self, path: Path) -> CellRecord | None:
        """The trustworthy record stored at path, or None (absent or unusable): one cell's view
        of read(), for a driver checking whether another driver has stored a cell meanwhile."""
        try:
            record = CellRecord.from_dict(_read_json(path))
        except (OSError, CorruptRecord):
            return None
        return record if _key_in_name(path) == record.key else None

    def remove_stale_temporaries(self, max_age_s: float = TEMPORARY_MAX_AGE_S) -> list[Path]:
        """Delete the temporary files (seqbench.fileio.atomic's `.NAME.*.tmp`) that writers killed
        mid-write left here, once older than max_age_s: a live writer (this or another driver)
        holds its temporary for milliseconds, so a younger one is never touched. Returns them."""
        removed = []
        now = time.time()
        for folder in (self.root, self.cells, self.measurements):
            for path in stale_temporaries(folder):
                try:
                    if now - path.stat().st_mtime > max_age_s:
                        path.unlink()
                        removed.append(path)
                except FileNotFoundError:  # renamed or removed by its writer meanwhile
                    continue
        return removed

    def save(self, record: CellRecord) -> Path:
        path = self.path_for(record)
        atomic_write(path, json.dumps(record.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    def save_measurement(self, record: MeasureRecord) -> Path:
        """Store a measurement (a new measurement of a point replaces the old)."""
        p = record.point
        path = self.measurements / f"{_slug(p['model'])}_L{p['length']}_{record.key}.json"
        atomic_write(path, json.dumps(record.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    def read(self) -> Loaded:
        """Every stored record and measurement, validated; the files that fail, as problems."""
        out = Loaded()
        for folder, parse, into in ((self.cells, CellRecord.from_dict, out.records),
                                    (self.measurements, MeasureRecord.from_dict, out.measurements)):
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
                try:
                    record = parse(_read_json(path))
                    if _key_in_name(path) != record.key:
                        raise CorruptRecord(f"file name does not match the record's key "
                                            f"{record.key}")
                except OSError as exc:
                    out.problems.append(Problem(path, f"cannot read: {exc.strerror}"))
                    continue
                except CorruptRecord as exc:
                    out.problems.append(Problem(path, str(exc), isinstance(exc, InvalidValue),
                                                _key_in_name(path)))
                    continue
                into[record.key] = record
        return out

    def load(self) -> dict[str, CellRecord]:
        """The trustworthy cell records by key (a warning names each file skipped); commands use
        read() instead, which returns the problems."""
        loaded = self.read()
        for problem in loaded.problems:
            warnings.warn(f"ignoring unusable record {problem}", stacklevel=2)
        return loaded.records

    def write_tables(self, loaded: Loaded, env: dict) -> None:
        """Write results.csv, generalisation.csv and measurements.csv (where there are any) and
        env.json (env; see with_plugins) from the stored records."""
        for name, frame in (("results.csv", cell_frame(loaded.records.values())),
                            ("generalisation.csv", generalisation_frame(loaded.records.values())),
                            ("measurements.csv", measurement_frame(loaded.measurements.values()))):
            if not frame.empty:
                atomic_write(self.root / name, frame.to_csv(index=False))
        atomic_write(self.root / "env.json", json.dumps(env, indent=1, sort_keys=True) + "\n")


def plugins_of(loaded: Loaded) -> list[dict]:
    """The plug-ins the stored records name, as their env lists them (one entry each)."""
    found = {}
    for r in [*loaded.records.values(), *loaded.measurements.values()]:
        for entry in r.env.get("plugins") or ():
            if isinstance(entry, dict):
                found.setdefault((entry.get("kind"), entry.get("name")), entry)
    return [found[k] for k in sorted(found, key=str)]


def with_plugins(env: dict, loaded: Loaded) -> dict:
    """env with `plugins` listing every plug-in the stored records name (as each record's env
    has it: seqbench.registry.provenance), whatever env held before."""
    used = plugins_of(loaded)
    return {k: v for k, v in env.items() if k != "plugins"} | ({"plugins": used} if used else {})


def used_names(loaded: Loaded) -> set[tuple[str, str]]:
    """(kind, name) of every family and task the stored records name."""
    out = set()
    for r in loaded.records.values():
        out |= {("model", r.family), ("task", r.task)}
    for m in loaded.measurements.values():
        out |= {("model", m.point["model"]), ("task", m.point.get("task", "parity"))}
    return out


def stored_env(root: Path) -> dict:
    """The environment env.json of root holds, as the run that made the folder wrote it ({} if
    there is none or it is unreadable: a folder of `seqbench run` records)."""
    try:
        env = json.loads((Path(root) / "env.json").read_text())
    except (OSError, ValueError):
        return {}
    return env if isinstance(env, dict) else {}


def check_names(loaded: Loaded, root: Path, command: str) -> None:
    """ConfigError (exit 2) unless every family and task the records name resolves here
    (seqbench.registry.check_resolvable, torch-free; install hints from the records and
    env.json) and no two of them are shown under one name (their rows would merge)."""
    hints = plugins_of(loaded) + (stored_env(root).get("plugins") or [])
    registry.check_resolvable(used_names(loaded), hints, command)
    shown: dict[tuple[str, str], set[str]] = {}
    for r in loaded.records.values():
        shown.setdefault(("model", r.model_name), set()).add(
            f"variant {r.variant}" if r.variant else r.family)
        shown.setdefault(("task", r.task_name), set()).add(r.task)
    for (kind, name), sources in sorted(shown.items()):
        if len(sources) > 1:
            raise ConfigError(f"{command}: {kind} name {name!r} is shown for "
                              f"{' and '.join(sorted(sources))}; their rows would merge: give "
                              "one of them another label")


def row(record: CellRecord) -> dict:
    """One tidy row: config fields flattened, scalar results, no history or gradient flow.
    `task` and `model` are the shown names (labels; a variant's name), `family` the configured
    family name; the display columns give their order, colour, marker and length symbol."""
    cfg = record.config
    flat = {
        "key": record.key, **display.columns(record.model_style(), record.task_style()),
        "variant": record.variant, "family": record.family, "length": record.length,
        "seed": record.seed,
        "params_budget": cfg.get("params"), "device": cfg.get("device"), "hpset": record.hpset,
        **{f"train.{k}": v for k, v in sorted((cfg.get("train") or {}).items())},
        **{f"hp.{k}": v for k, v in sorted((cfg.get("hparams") or {}).items())},
    }
    g = cfg.get("generalise")
    if g is not None:
        flat |= {"generalise.train": g["train"], "generalise.samples": g["samples"],
                 "generalise.lengths": " ".join(map(str, g["lengths"])),
                 # the validation counterpart of ood_score (hyper-parameter sets are chosen on it)
                 "ood_val_score": (sum(record.ood_val_scores) / len(record.ood_val_scores)
                                   if record.ood_val_scores else None)}
    skip = {"key", "config", "key_payload", "history", "grad_flow", "env", "model_info",
            "schema", "hpset", "variant", "ood_scores", "ood_val_scores", "ood_chance",
            "model_display", "task_display"}
    # copies of the fields kept only: record.to_dict() would deep-copy the history and gradient
    # flow too: 0.2 s of cell_frame's 0.25 on results/quick (now 0.04)
    results = {f.name: copy.deepcopy(getattr(record, f.name)) for f in fields(record)
               if f.name not in skip}
    info = {f"info.{k}": v for k, v in sorted(record.model_info.items())}
    return flat | results | info


def _order(r) -> tuple:
    return r.task, r.family, r.length, r.seed, r.key


def cell_frame(records) -> pd.DataFrame:
    """Tidy table of cell records, one row per cell, in a fixed order (task, family, length,
    seed, key), so the same records always give the same table."""
    return pd.DataFrame([row(r) for r in sorted(records, key=_order)])


def generalisation_frame(records) -> pd.DataFrame:
    """Tidy scores of length-generalisation cells, one row per (cell, test length)."""
    rows = []
    for r in sorted(records, key=_order):
        g = r.config.get("generalise")
        if g is None:
            continue
        base = {"key": r.key, "task": r.task_name, "model": r.model_name, "hpset": r.hpset,
                "seed": r.seed, "train_length": r.length, "status": r.status}
        chance = r.ood_chance or [None] * len(g["lengths"])
        rows += [base | {"length": n, "score": s, "chance": c}
                 for n, s, c in zip(g["lengths"], r.ood_scores, chance, strict=False)]
    return pd.DataFrame(rows)


def measurement_frame(measurements) -> pd.DataFrame:
    """Tidy table of measurements, one row per point, in a fixed order."""
    return pd.DataFrame([m.row() for m in sorted(
        measurements, key=lambda m: (m.point["model"], m.point["length"], m.key))])
