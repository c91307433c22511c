"""Sweep files: a strict TOML grid of tasks x models x lengths x hyper-parameter sets x seeds,
parsed and validated whole before anything runs (seqbench.sweeps.driver runs it).

Hyper-parameter sets (`[hpsets.NAME]`, optional) are named overrides of the training settings
(TrainConfig fields), applied on top of `[train]` and `[task_train.TASK]`; every set is one more
grid dimension. The settings a set gives are part of each cell's config, so they enter its key
like any other setting; the set's name is only a label, stored in each record's `hpset` field
(not hashed), so a sweep without sets keeps exactly the keys it had before sets existed.

Model variants (`[variants.NAME]`, optional) name a family with its own hyper-parameters (for
example a Transformer with RoPE), optionally limited to some tasks (a bidirectional LSTM only where
the task allows it); `models` may list them beside the families. Like a set's, a variant's name is
a label stored in each record (`variant`), and tables and plots show it as the model.

Models per task (`[task_models]`, optional): `TASK = ["lstm", "transformer-rope"]` runs only those
entries of `models` on that task (the grid is then not a full product, as when each claim of a
findings sweep concerns its own families); a task left out runs every entry.

Length generalisation (`[generalise.TASK]`, optional): the task's cells train up to their length
and are scored at the given longer lengths (seqbench.cell.config.Generalise).
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from seqbench import display, registry
from seqbench.cell.config import DEVICES, CellConfig, Generalise, TrainConfig
from seqbench.cell.record import LABEL
from seqbench.fileio import single_component
from seqbench.measure.point import DTYPES, MeasurePoint
from seqbench.models import get_family, parse_hparams
from seqbench.strict import (
    ConfigError,
    check_choice,
    coerce,
    from_mapping,
    require,
    setting,
)
from seqbench.tasks import get_task

PRESETS = ("smoke", "quick", "findings", "full", "gpu-check", "techniques-attention",
           "techniques-tbptt", "techniques-precision")


def _label(field: str, name: str, what: str) -> None:
    """A set's or variant's name: a label every record stores (seqbench.cell.record.LABEL)."""
    require(isinstance(name, str) and LABEL.fullmatch(name) is not None, field,
            f"a {what} name uses letters, digits, '.', '-' and '_' only, at most 64 of them, "
            f"starting with a letter or digit")


@dataclass(frozen=True)
class MeasureSpec:
    """Speed and memory points of a sweep: its models and device at these lengths."""

    lengths: tuple[int, ...] = field(metadata={"help": "lengths to measure each model at"})
    batch_size: int = setting(32, "sequences per batch")
    dtype: str = setting("fp32", "fp32, or bf16 (forward and loss under torch.autocast)",
                         choices=DTYPES)
    task: str = setting("parity", "supplies the input/output shapes and the loss")
    rss: bool = setting(True, "CPU: peak RSS growth of a step in a fresh subprocess")
    stream: tuple[int, ...] | None = setting(None, "streaming positions to time (none by "
                                             "default)")
    blocks: int = setting(7, "timed blocks per measurement (>= 5)")

    def validate(self, where: str) -> None:
        require(self.blocks >= 5, f"{where}.blocks", f"must be >= 5, got {self.blocks}")


class Label(NamedTuple):
    """The names a sweep gives a cell beside its config (labels, not part of its key)."""

    hpset: str = ""
    variant: str = ""


@dataclass(frozen=True)
class Variant:
    """A named model: a family with its own hyper-parameters, on all tasks or only on `tasks`."""

    model: str = field(metadata={"help": "the model family"})
    hparams: Any = field(default_factory=dict, metadata={
        "help": "the family's hyper-parameters; replaces the sweep's [hparams.FAMILY] table"})
    tasks: tuple[str, ...] | None = setting(None, "only on these tasks of the sweep (default: "
                                            "all)")


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file: a grid of tasks x models x lengths x hyper-parameter sets x seeds, parsed and
    validated whole before anything runs (seqbench.sweeps.spec.load_spec)."""

    name: str = field(metadata={"help": "the sweep's name: its results go to OUT/NAME/"})
    tasks: tuple[str, ...] = field(metadata={"help": "tasks of the grid"})
    models: tuple[str, ...] = field(metadata={"help": "model families and variant names"})
    lengths: Any = field(metadata={"help": "a list for every task, or a table task -> list"})
    seeds: tuple[int, ...] = setting((0,), "seeds of every cell")
    params: int = setting(20_000, "parameter budget shared by all models (+-10%)")
    device: str = setting("cpu", "device", choices=DEVICES)
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "training settings of every cell"})
    task_train: Any = field(default_factory=dict, metadata={
        "help": "task -> training settings overriding [train] for that task"})
    hparams: Any = field(default_factory=dict, metadata={
        "help": "model family -> its hyper-parameters"})
    hpsets: Any = field(default_factory=dict, metadata={
        "help": "set name -> training settings overriding [train] and [task_train.TASK]; "
                "every set is one more grid axis"})
    variants: Any = field(default_factory=dict, metadata={
        "help": "variant name -> a family with its own hyper-parameters; list it in models"})
    generalise: Any = field(default_factory=dict, metadata={
        "help": "task -> its length-generalisation protocol"})
    task_models: Any = field(default_factory=dict, metadata={
        "help": "task -> the entries of models it runs (default: every entry)"})
    measure: MeasureSpec | None = setting(None, "speed and memory points of the sweep's models")

    def validate(self, where: str) -> None:
        single_component("name", self.name)  # the store's folder under --out
        for name in ("tasks", "models", "seeds"):
            values = getattr(self, name)
            require(len(set(values)) == len(values), name, f"must not repeat, got {list(values)}")
        families = {self.variant(m)[0] for m in self.models}
        for name in self.variants if isinstance(self.variants, dict) else ():
            self.variant(name)  # a variant that no entry of `models` uses is checked all the same
        for table, allowed in (("lengths", self.tasks), ("task_train", self.tasks),
                               ("hparams", families), ("generalise", self.tasks)):
            value = getattr(self, table)
            if isinstance(value, dict):
                for key in value:
                    check_choice(f"{table} key", key, allowed)
            elif table != "lengths":
                raise ConfigError(f"{table}: expected a table keyed by name")
        if not isinstance(self.task_models, dict):
            raise ConfigError('task_models: expected a table task -> list of models, e.g. '
                              '[task_models] parity = ["lstm"]')
        for task, chosen in self.task_models.items():
            check_choice("task_models key", task, self.tasks)
            require(isinstance(chosen, list) and bool(chosen), f"task_models.{task}",
                    f"expected a non-empty list of entries of models, got {chosen!r}")
            for model in chosen:
                check_choice(f"task_models.{task}", model, self.models)
            require(len(set(chosen)) == len(chosen), f"task_models.{task}",
                    f"must not repeat, got {chosen}")
        idle = [m for m in self.models
                if all(m not in self.task_models.get(t, self.models) for t in self.tasks)]
        require(not idle, "task_models", f"{', '.join(idle)} would run on no task; add them to a "
                "task's list or drop them from models")
        if not isinstance(self.hpsets, dict):
            raise ConfigError("hpsets: expected a table of named sets, e.g. [hpsets.lr1e-3]")
        for name, override in self.hpsets.items():
            _label(f"hpsets.{name}", name, "set")
            if not isinstance(override, dict):
                raise ConfigError(f"hpsets.{name}: expected a table of training settings "
                                  f"(TrainConfig fields), got {override!r}")
            require(bool(override), f"hpsets.{name}", "empty set; give at least one training "
                    "setting (TrainConfig field), e.g. lr = 1e-3")

    def variant(self, name: str) -> tuple[str, dict, tuple[str, ...] | None]:
        """(family, hyper-parameter table, tasks or None for all) of an entry of `models`."""
        if not isinstance(self.variants, dict):
            raise ConfigError("variants: expected a table of named variants, e.g. "
                              "[variants.transformer-rope]")
        if name not in self.variants:
            return name, self.hparams.get(name, {}), None
        _label(f"variants.{name}", name, "variant")
        v = from_mapping(Variant, self.variants[name], f"variants.{name}")
        get_family(v.model, f"variants.{name}.model")
        parse_hparams(v.model, v.hparams, f"variants.{name}.hparams")
        families = sorted(registry.names("model"))
        require(name not in families, f"variants.{name}",
                f"a variant must not take the name of a family ({', '.join(families)})")
        for i, task in enumerate(v.tasks or ()):
            check_choice(f"variants.{name}.tasks[{i}]", task, self.tasks)
        return v.model, v.hparams, v.tasks

    def generalise_for(self, task: str) -> Generalise | None:
        table = self.generalise.get(task)
        if table is None:
            return None
        g = from_mapping(Generalise, table, f"generalise.{task}")
        for i, n in enumerate(g.lengths):
            get_task(task).check_length(n, field=f"generalise.{task}.lengths[{i}]")
        longest = max(self.lengths_for(task))
        require(min(g.lengths) > longest, f"generalise.{task}.lengths",
                f"must all be longer than the task's longest training length {longest}")
        return g

    def lengths_for(self, task: str) -> tuple[int, ...]:
        if isinstance(self.lengths, dict):
            if task not in self.lengths:
                raise ConfigError(f"lengths.{task}: missing; give lengths for every task")
            return coerce(f"lengths.{task}", self.lengths[task], tuple[int, ...])
        return coerce("lengths", self.lengths, tuple[int, ...])

    def train_sets(self, task: str) -> dict[str, TrainConfig]:
        """The training settings of task under each hyper-parameter set ("" without sets):
        [train], then [task_train.TASK], then [hpsets.NAME]. Two sets that give a task the same
        settings are rejected (they would be the same cells)."""
        override = self.task_train.get(task, {})
        if not isinstance(override, dict):
            raise ConfigError(f"task_train.{task}: expected a table")
        base = dataclasses.asdict(self.train) | override
        train = from_mapping(TrainConfig, base, f"task_train.{task}")
        if not self.hpsets:
            return {"": train}
        out: dict[str, TrainConfig] = {}
        for name, sets in self.hpsets.items():
            out[name] = from_mapping(TrainConfig, base | sets, f"hpsets.{name}")
            for other, cfg in out.items():
                require(other == name or cfg != out[name], f"hpsets.{name}",
                        f"gives task {task} the same training settings as hpsets.{other}")
        return out

    def labelled_cells(self) -> list[tuple[Label, CellConfig]]:
        """Every cell of the grid with its labels (hyper-parameter set, variant), validated
        (raises ConfigError before anything runs). Order: task, model, length, set, seed."""
        out, seen = [], {}
        models = [(model, *self.variant(model)) for model in self.models]
        self._check_shown([(f"models[{i}]", m, m if m != f else display.shown(
            get_family(f).display()["label"], f, registry.BUILTIN["model"]))
            for i, (m, f, _, _) in enumerate(models)])
        self._check_shown([(f"tasks[{i}]", t, display.shown(
            get_task(t, f"tasks[{i}]").display()["label"], t, registry.BUILTIN["task"]))
            for i, t in enumerate(self.tasks)])
        for task in self.tasks:
            sets = self.train_sets(task)
            generalise = self.generalise_for(task)
            chosen = self.task_models.get(task, self.models)
            for model, family, hparams, only in models:
                if (only is not None and task not in only) or model not in chosen:
                    continue
                for length in self.lengths_for(task):
                    for name, train in sets.items():
                        for seed in self.seeds:
                            cfg = CellConfig(
                                task=task, model=family, length=length, seed=seed,
                                params=self.params, device=self.device, train=train,
                                hparams=hparams, generalise=generalise,
                            )
                            key = cfg.key()
                            where = f"variants.{model}" if model in self.variants else "models"
                            require(key not in seen, where,
                                    f"{model} gives the same cells as {seen.get(key)}")
                            seen[key] = model
                            out.append((Label(name, model if model != family else ""), cfg))
        return out

    @staticmethod
    def _check_shown(entries: list[tuple[str, str, str]]) -> None:
        """ConfigError where two entries (field, name, shown name) would be shown under one name
        in tables (a plug-in whose label is another entry's), so that their rows would merge."""
        seen: dict[str, str] = {}
        for where, name, shown in entries:
            require(shown not in seen, where, f"{name} is shown as {shown!r} in tables, as is "
                    f"{seen.get(shown)}; give one of them another label (Family.label, "
                    "Task.label)")
            seen[shown] = name

    def cells(self) -> list[CellConfig]:
        """Every cell of the grid, validated (raises ConfigError before anything runs)."""
        return [cfg for _, cfg in self.labelled_cells()]

    def labelled_points(self) -> list[tuple[str, MeasurePoint]]:
        """Every measurement point of the sweep with its variant name ("" for a family), none
        without a [measure] table; validated."""
        m = self.measure
        if m is None:
            return []
        out = []
        for model in self.models:
            family, hparams, _ = self.variant(model)
            for n in m.lengths:
                out.append((model if model != family else "", MeasurePoint(
                    model=family, length=n, batch_size=m.batch_size, device=self.device,
                    dtype=m.dtype, params=self.params, task=m.task, hparams=hparams)))
        return out

    def points(self) -> list[MeasurePoint]:
        return [p for _, p in self.labelled_points()]


def load_spec(text: str, source: str) -> SweepSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    spec = from_mapping(SweepSpec, data)
    spec.cells()
    spec.points()
    return spec


def preset(name: str) -> SweepSpec:
    check_choice("preset", name, PRESETS)
    text = resources.files("seqbench.sweeps").joinpath("presets", f"{name}.toml").read_text()
    return load_spec(text, f"preset {name}")


def spec_from_file(path: str | Path) -> SweepSpec:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    return load_spec(text, str(path))
