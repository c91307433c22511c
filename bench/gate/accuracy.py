"""The accuracy gate: the cells of a run against a baseline's, matched by key, with a verdict a CI
job can act on (exit 0 clean, 1 regression, 2 unusable input). Torch-free: it reads records only.

Cells are matched by key (the hash of the full config and the task's and model family's definition
versions), so only the same experiment is ever compared. A matched cell regresses when its score
drops by more than a tolerance (absolute, default 0.02, per task with `--tolerance parity=0.05` or a
TOML file), when it was solved and no longer is, when its status changes to diverged, error or oom,
or when its stored score is impossible (not a number in [0, 1]). A baseline cell missing from the
current run is a regression; a new cell is reported, never a failure. Unusable input exits 2 with a
message naming the problem: a folder without cell records, a file that is not a trustworthy record
(named with its path and reason), a record whose plug-in family or task is not installed here
(named, with the distribution to install), no cell in common, or the same (task, model, length,
seed) stored under different task or model definition versions or training protocols (the
definition changed: the two runs are incomparable, and the baseline has to be regenerated).

Mode. A seed trains to the same bits only on the same kernel path (seqbench.env.KERNEL_PATH: device,
torch, threads, CPU capability, ISA caps, CPU vendor and flags, BLAS and oneDNN builds, GPU and its
numerics flags). When every record of both runs has the same path, the comparison is exact, cell by
cell (the rule above; it also counts cells whose score is unchanged but whose loss trajectory is
not, which on the same path means nondeterminism or a numerics change). When the paths differ (or
a run mixes paths, or a record does not say its path), cell-by-cell differences measure the
machine, so cells are compared as seed groups against the spread between seeds
(seqbench.gate.seeds). `--mode exact|seeds` forces either; the report says which mode ran and why.
"""
from __future__ import annotations

import math
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seqbench.cell.record import FAILED, CellRecord
from seqbench.env import KERNEL_PATH, kernel_path
from seqbench.fileio import atomic_write
from seqbench.results.store import Problem, Store, check_names
from seqbench.strict import ConfigError, check_choice, require

console = Console()

DEFAULT_TOLERANCE = 0.02  # absolute score drop allowed per cell
EPS = 1e-12  # float slack when comparing a score drop with its tolerance


@dataclass
class Run:
    """One side of the comparison: its trustworthy records by key and its impossible scores
    (well-formed records whose score is not in [0, 1]) by key."""

    root: Path
    records: dict[str, CellRecord]
    impossible: dict[str, Problem]


def load_run(root: str | Path, role: str) -> Run:
    """The records of root/cells; raises ConfigError (exit 2) naming the first untrustworthy file
    (an impossible score in the current run is a regression instead: see compare_accuracy), or
    naming a plug-in its records use that is not installed here."""
    root = Path(root)
    require(root.is_dir(), f"--{role}", f"{root} is not a folder")
    loaded = Store(root).read()
    impossible = {p.key: p for p in loaded.problems if p.invalid_value and p.key}
    unusable = [p for p in loaded.problems
                if not (role == "current" and p.invalid_value and p.key)]
    if unusable:
        raise ConfigError(f"--{role}: {len(unusable)} stored file(s) cannot be trusted, e.g. "
                          f"{unusable[0]}; the gate judges only whole runs (remove or regenerate "
                          "them)")
    if not loaded.records and not impossible:
        raise ConfigError(f"--{role}: no cell records in {root / 'cells'}; expected a sweep "
                          "folder such as results/smoke")
    check_names(loaded, root, f"gate --{role}")
    return Run(root, loaded.records, impossible)


def slot(record: CellRecord) -> tuple[str, str, int, int]:
    return record.task, record.model_name, record.length, record.seed


def _slot_name(s: tuple) -> str:
    return f"{s[0]}/{s[1]}/L={s[2]}/seed {s[3]}"


def _versions(r: CellRecord) -> tuple[int, int, int | None]:
    return r.task_version, r.model_version, r.key_payload.get("protocol")


def check_comparable(base: dict[str, CellRecord], cur: dict[str, CellRecord],
                     cur_keys: set[str]) -> None:
    """Raise ConfigError for inputs that cannot be gated: a task or model definition or the
    training protocol changed between the runs, or no cell in common."""
    cur_versions = defaultdict(set)
    for r in cur.values():
        cur_versions[slot(r)].add(_versions(r))
    conflicts = defaultdict(list)
    for key, r in base.items():
        versions = cur_versions.get(slot(r), set())
        if key not in cur_keys and versions and _versions(r) not in versions:
            conflicts[(r.task, r.family, _versions(r), min(versions, key=str))].append(slot(r))
    if conflicts:
        (task, family, old, new), slots = next(iter(sorted(conflicts.items(), key=str)))
        names = ("task_version", "model_version", "protocol")
        what = {0: f"task {task!r}", 1: f"model {family!r}", 2: "the training protocol"}
        i = next(i for i in range(3) if old[i] != new[i])
        total = sum(len(v) for v in conflicts.values())
        raise ConfigError(
            f"incomparable definitions: {what[i]} has {names[i]} {old[i]} in the baseline and "
            f"{new[i]} in the current run (e.g. {_slot_name(slots[0])}; {total} cell(s) in all); "
            "scores of different definitions cannot be compared: regenerate the baseline "
            "(seqbench gate --update-baseline --current DIR --why ...)")
    if not set(base) & cur_keys:
        b = next(iter(base.values()))
        raise ConfigError(
            f"no cell in common: the baseline's {len(base)} cell(s) and the current run's "
            f"{len(cur_keys)} share no key (config + definition versions); e.g. baseline "
            f"{_slot_name(slot(b))} key {b.key}. Were they run with different settings or presets?")


# --------------------------------------------------------------------------------------------
# tolerances and comparison


@dataclass(frozen=True)
class Tolerances:
    default: float = DEFAULT_TOLERANCE
    per_task: dict = field(default_factory=dict)

    def __call__(self, task: str) -> float:
        return self.per_task.get(task, self.default)

    def describe(self) -> str:
        extra = ", ".join(f"{t} {v:g}" for t, v in sorted(self.per_task.items()))
        return f"{self.default:g}" + (f" ({extra})" if extra else "")


def _tolerance_value(field_name: str, value) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    require(ok and math.isfinite(value), field_name, f"must be a number >= 0, got {value!r}")
    return float(value)


def parse_tolerances(specs: list[str], file: str | None, tasks) -> Tolerances:
    """Tolerances from an optional TOML file (`default = 0.02`, `parity = 0.05`, ...) and then
    --tolerance options (`0.03` for the default, `TASK=X` per task), later ones winning; a task
    must be one of `tasks` (those of the runs compared)."""
    values: dict[str, float] = {}
    if file:
        try:
            data = tomllib.loads(Path(file).read_text())
        except OSError as exc:
            raise ConfigError(f"--tolerance-file: cannot read {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--tolerance-file: {file} is not valid TOML: {exc}") from None
        for name, value in data.items():
            check_choice(f"--tolerance-file {file} key", name, [*tasks, "default"])
            values[name] = _tolerance_value(f"--tolerance-file {name}", value)
    for spec in specs:
        name, sep, text = spec.rpartition("=")
        name = name.strip() if sep else "default"
        if sep:
            check_choice("--tolerance task", name, tasks)
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(
                f"--tolerance: expected X or TASK=X with a number X, got {spec!r}") from None
        values[name] = _tolerance_value(f"--tolerance {spec}", number)
    default = values.pop("default", DEFAULT_TOLERANCE)
    return Tolerances(default, values)


@dataclass
class CellDiff:
    verdict: str  # regression, missing, new, within tolerance, improved, changed
    slot: tuple
    key: str
    baseline: CellRecord | None
    current: CellRecord | None
    delta: float | None = None
    tolerance: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def regression(self) -> bool:
        return self.verdict in ("regression", "missing")


@dataclass
class AccuracyResult:
    diffs: list[CellDiff]
    compared: int
    identical: int
    tolerances: Tolerances
    other_trajectory: int = 0  # identical score and status, other losses (see same_trajectory)

    @property
    def regressions(self) -> list[CellDiff]:
        return [d for d in self.diffs if d.regression]

    def count(self, verdict: str) -> int:
        return sum(d.verdict == verdict for d in self.diffs)


def _score(r: CellRecord | None) -> str:
    if r is None:
        return "-"
    return f"{r.status} {'-' if r.score is None else f'{r.score:.3f}'}"


def compare_cell(b: CellRecord, c: CellRecord, tol: float) -> CellDiff:
    diff = CellDiff("same", slot(b), b.key, b, c, tolerance=tol)
    if b.score is not None and c.score is not None:
        diff.delta = c.score - b.score
    if b.score is not None and c.score is None:
        diff.reasons.append("no score now")
    elif diff.delta is not None and -diff.delta > tol + EPS:
        diff.reasons.append(f"score {b.score:.3f} -> {c.score:.3f} (drop {-diff.delta:.3f} > "
                            f"{tol:g})")
    if b.solved and not c.solved:
        diff.reasons.append("no longer solved")
    if c.status in FAILED and c.status != b.status:
        diff.reasons.append(f"status {b.status} -> {c.status}")
    if diff.reasons:
        diff.verdict = "regression"
    elif diff.delta is not None and diff.delta < 0:
        diff.verdict = "within tolerance"
    elif (diff.delta or 0) > 0 or (c.solved and not b.solved):
        diff.verdict = "improved"
    elif b.status != c.status or b.score != c.score:
        diff.verdict = "changed"
    return diff


ORDER = ("regression", "missing", "within tolerance", "changed", "improved", "new")
TRAJECTORY = ("steps", "train_loss", "val_loss", "test_loss")
HISTORY_LOSSES = ("step", "train_loss", "val_loss")  # a history item's losses; other fields
# (gradient monitoring, added later) describe the same trajectory and are not compared


def same_trajectory(b: CellRecord, c: CellRecord) -> bool:
    """Whether two records of a cell trained through the same losses (bit for bit): the final
    losses and every evaluation's losses in the history."""
    def losses(r: CellRecord) -> list[tuple]:
        return [tuple(h.get(k) for k in HISTORY_LOSSES) for h in r.history]
    return (all(getattr(b, name) == getattr(c, name) for name in TRAJECTORY)
            and losses(b) == losses(c))


def compare_accuracy(base: Run, cur: Run, tolerances: Tolerances) -> AccuracyResult:
    """Cell by cell, matched by key; raises ConfigError for incomparable inputs. A current record
    whose stored score is impossible regresses its baseline cell."""
    cur_keys = set(cur.records) | set(cur.impossible)
    check_comparable(base.records, cur.records, cur_keys)
    diffs, identical, other_trajectory = [], 0, 0
    for key in sorted(set(base.records) | set(cur.records)):
        b, c = base.records.get(key), cur.records.get(key)
        if c is None and key in cur.impossible:
            diffs.append(CellDiff("regression", slot(b), key, b, None, reasons=[
                f"impossible score stored: {cur.impossible[key].reason}"]))
        elif c is None:
            diffs.append(CellDiff("missing", slot(b), key, b, None, reasons=["not in current run"]))
        elif b is None:
            diffs.append(CellDiff("new", slot(c), key, None, c, reasons=["not in the baseline"]))
        else:
            d = compare_cell(b, c, tolerances(b.task))
            if d.verdict == "same":
                identical += 1
                other_trajectory += not same_trajectory(b, c)
            else:
                diffs.append(d)
    diffs.sort(key=lambda d: (ORDER.index(d.verdict), d.slot, d.key))
    compared = len(set(base.records) & cur_keys)
    return AccuracyResult(diffs, compared, identical, tolerances, other_trajectory)


# --------------------------------------------------------------------------------------------
# mode: exact on the same kernel path, seed groups otherwise

MODES = ("auto", "exact", "seeds")


def _paths(records: dict[str, CellRecord]) -> list[dict]:
    seen = {}
    for r in records.values():
        path = kernel_path(r.env)
        seen.setdefault(repr(sorted(path.items())), path)
    return list(seen.values())


def _value(v) -> str:
    if v is None:
        return "not recorded"
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in sorted(v.items())) or "none"
    if isinstance(v, list):
        return " ".join(map(str, v)) or "none"
    return str(v)


def describe_path(path: dict) -> str:
    """The fields that say most about a CPU path, and the GPU where there is one."""
    parts = [f"{name} {_value(path[name])}" for name in (
        "device", "cpu_capability", "isa_caps", "threads", "torch", "blas", "blas_version",
        "onednn") if path.get(name) is not None or name in ("cpu_capability", "isa_caps")]
    if path.get("gpu"):
        parts.append(f"gpu {path['gpu']} ({path.get('gpu_capability')})")
    return ", ".join(parts)


def path_differences(a: dict, b: dict) -> str:
    return "; ".join(f"{name} {_value(a.get(name))} -> {_value(b.get(name))}"
                     for name in KERNEL_PATH if a.get(name) != b.get(name))


def choose_mode(base: dict[str, CellRecord], cur: dict[str, CellRecord],
                requested: str = "auto") -> tuple[str, str]:
    """("exact" or "seeds", why): exact when every record of both runs has one kernel path."""
    check_choice("--mode", requested, MODES)
    bp, cp = _paths(base), _paths(cur)
    if len(bp) > 1 or len(cp) > 1:
        facts = (f"the {'baseline' if len(bp) > 1 else 'current run'} mixes "
                 f"{max(len(bp), len(cp))} kernel paths")
    elif bp == cp:
        facts = f"same kernel path: {describe_path(bp[0])}"
    else:
        facts = f"kernel paths differ: {path_differences(bp[0], cp[0])}"
    mode = requested if requested != "auto" else ("exact" if facts.startswith("same") else "seeds")
    return mode, (f"--mode {requested}; " if requested != "auto" else "") + facts


def _env_line(records: dict[str, CellRecord]) -> str:
    envs = [r.env for r in records.values()]

    def values(name, width=None):
        return ", ".join(sorted({str(e.get(name))[:width] for e in envs}))

    return f"torch {values('torch')}, threads {values('threads')}, commit {values('git_commit', 12)}"


TITLES = {"exact": "exact, cell by cell", "seeds": "seed groups"}


def header(ok: bool, mode: str, why: str, base_dir, cur_dir, base, cur) -> list[str]:
    return [f"# seqbench accuracy gate: {'PASS' if ok else 'FAIL'}", "",
            f"- mode: **{TITLES[mode]}** ({why})",
            f"- baseline `{base_dir}`: {len(base)} cells ({_env_line(base)})",
            f"- current `{cur_dir}`: {len(cur)} cells ({_env_line(cur)})"]


def exact_summary(result: AccuracyResult) -> str:
    return (f"compared {result.compared} cells by key: {result.identical} identical "
            f"({result.other_trajectory} of them with another loss trajectory), "
            f"{result.count('regression')} regressed, {result.count('missing')} missing, "
            f"{result.count('new')} new; tolerance (absolute score drop) "
            f"{result.tolerances.describe()}")


def exact_markdown_rows(result: AccuracyResult) -> list[str]:
    lines = [f"- {exact_summary(result)}", ""]
    if not result.diffs:
        lines.append("No differences: every cell is identical.")
    else:
        columns = "| verdict | task | model | L | seed | baseline | current | Δ score | tolerance"
        lines += [columns + " | reason |", "|---|---|---|---:|---:|---|---|---:|---:|---|"]
        for d in result.diffs:
            mark = f"**{d.verdict}**" if d.regression else d.verdict
            delta = "" if d.delta is None else f"{d.delta:+.3f}"
            tol = "" if d.tolerance is None else f"{d.tolerance:g}"
            lines.append(f"| {mark} | {d.slot[0]} | {d.slot[1]} | {d.slot[2]} | {d.slot[3]} | "
                         f"{_score(d.baseline)} | {_score(d.current)} | {delta} | {tol} | "
                         f"{'; '.join(d.reasons)} |")
    return lines


def accuracy_table(result: AccuracyResult) -> Table:
    table = Table(title="accuracy gate: cells that differ from the baseline")
    for col in ("verdict", "task", "model", "L", "seed", "baseline", "current", "Δ score", "tol",
                "reason"):
        table.add_column(col, justify="right" if col in ("L", "seed", "Δ score", "tol") else "left")
    for d in result.diffs:
        style = "bold red" if d.regression else ("green" if d.verdict == "improved" else None)
        table.add_row(d.verdict, d.slot[0], d.slot[1], str(d.slot[2]), str(d.slot[3]),
                      _score(d.baseline), _score(d.current),
                      "" if d.delta is None else f"{d.delta:+.3f}",
                      "" if d.tolerance is None else f"{d.tolerance:g}", "; ".join(d.reasons),
                      style=style)
    return table


def gate_accuracy(baseline, current, specs: list[str], tolerance_file: str | None = None,
                  markdown_path=None, mode: str = "auto", spread_k: float | None = None) -> int:
    """`seqbench gate --baseline B --current C`: choose the mode, compare, print, write the
    Markdown report."""
    from seqbench.gate import seeds

    k = seeds.DEFAULT_SPREAD_K if spread_k is None else spread_k
    require(math.isfinite(k) and k >= 0, "--spread-k", f"must be a number >= 0, got {k}")
    base, cur = load_run(baseline, "baseline"), load_run(current, "current")
    tasks = {r.task for run in (base, cur) for r in run.records.values()}
    tolerances = parse_tolerances(specs, tolerance_file, tasks)
    mode, why = choose_mode(base.records, cur.records, mode)
    if mode == "exact":
        result = compare_accuracy(base, cur, tolerances)
        summary, table = exact_summary(result), accuracy_table(result)
        body = exact_markdown_rows(result)
    else:
        result = seeds.compare_seeds(base, cur, tolerances, k)
        summary, table = seeds.seeds_summary(result), seeds.seeds_table(result)
        body = [f"- rule: {seeds.rule_text(tolerances, k)}", f"- {summary}", "",
                *seeds.seeds_markdown_rows(result)]
    head = header(not result.regressions, mode, why, baseline, current, base.records,
                  cur.records)
    path = Path(markdown_path) if markdown_path else Path(current) / "gate.md"
    atomic_write(path, "\n".join([*head, *body]) + "\n")
    if table.row_count:
        console.print(table)
    n_reg = len(result.regressions)
    verdict = "[bold red]FAIL[/]" if n_reg else "[bold green]PASS[/]"
    console.print(f"accuracy gate {verdict}, mode {TITLES[mode]} ({why})", highlight=False)
    console.print(f"{summary}; markdown: {path}", highlight=False)
    return 1 if n_reg else 0


