"""The accuracy gate across kernel paths: seed-aggregated scores per group of cells. Torch-free.

Why. CPU kernels are chosen per instruction set (and by the thread count, the BLAS build, the
GPU: seqbench.env.KERNEL_PATH), and a seed trains to the same bits only on the same kernel path.
On another path the rounding differs and training can amplify it, so a cell-by-cell comparison
would judge the machine, not the code. Another path at most decorrelates a seed's trajectory from
its baseline, which makes it a fresh draw from the same distribution over seeds; so the cells that
differ only in the seed are compared as a group, against the spread between seeds.

Rule, per group (same config and definition versions but the seed; seeds with a score only; one
sided, only drops regress):

    d      = mean_baseline - mean_current
    s_p    = sqrt(((n_b - 1) s_b^2 + (n_c - 1) s_c^2) / (n_b + n_c - 2))   pooled between-seed std
    se     = s_p sqrt(1/n_b + 1/n_c)                                     std error of d
    regression when d > max(floor, k se)

with floor the task's --tolerance (default 0.02) and k --spread-k (default 6). d / se is the
pooled two-sample t statistic (Student 1908; equal variances are what "another path is another
seed" means): if it is, d / se follows Student's t with n_b + n_c - 2 degrees of freedom. A run
has many groups (160 in the smoke preset), so k sits far in that tail: P(t > 6) is 1.9e-3 with 3
seeds a side (4 degrees of freedom: a quarter of fully decorrelated reruns would alarm somewhere;
measured, 50 of 200 resampled splits of 12 seeds) and 1.6e-4 with 5 (8 degrees of freedom: about
3%; measured, 6 of 200), which is why the smoke preset runs 5 seeds. The floor guards groups whose
seeds happen to agree. A group also regresses when every baseline seed
solved it and no current seed does, when a seed's status turned diverged, error or oom (no
baseline seed of the group had it), or when a baseline cell is missing from the current run or its
stored score is impossible. New groups are only reported.

Departure: "solved by a majority of the baseline's seeds, now by none" (the obvious rule) alarmed
in most fully decorrelated reruns of the 3-seed smoke preset: a cell that some seeds solve and
others do not (bimodal outcomes, e.g. 2/3 -> 0/3) flips that way by chance. Requiring every
baseline seed keeps the rule for cells the baseline reliably solves. The figures are in the
README's "Regression gate" section.
"""
from __future__ import annotations

import copy
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from rich.table import Table

from seqbench.cell.record import FAILED, CellRecord
from seqbench.strict import stable_key

DEFAULT_SPREAD_K = 6.0


def group_key(record: CellRecord) -> str:
    """The key of the record's seed group: its key payload with the seed left out."""
    payload = copy.deepcopy(record.key_payload)
    payload["config"].pop("seed", None)
    return stable_key(payload)


@dataclass
class GroupDiff:
    verdict: str  # regression, missing, within tolerance, improved, same, new
    slot: tuple  # task, model, length, hpset
    base: list[CellRecord]
    cur: list[CellRecord]
    allowed: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def regression(self) -> bool:
        return self.verdict in ("regression", "missing")

    @property
    def delta(self) -> float | None:
        """mean_current - mean_baseline over the seeds with a score."""
        mb, mc = _mean(self.base), _mean(self.cur)
        return None if mb is None or mc is None else mc - mb


def _scores(records: list[CellRecord]) -> list[float]:
    return [r.score for r in records if r.score is not None]


def _mean(records: list[CellRecord]) -> float | None:
    x = _scores(records)
    return statistics.fmean(x) if x else None


def pooled_std(a: list[float], b: list[float]) -> float | None:
    """The pooled between-seed standard deviation of two samples (None below 3 values in all)."""
    dof = len(a) + len(b) - 2
    if dof < 1:
        return None
    ss = sum((x - statistics.fmean(s)) ** 2 for s in (a, b) if s for x in s)
    return math.sqrt(ss / dof)


def allowed_drop(a: list[float], b: list[float], floor: float, k: float) -> float:
    """max(floor, k s_p sqrt(1/n_a + 1/n_b)): the largest mean drop that is not a regression."""
    s = pooled_std(a, b)
    if s is None or not a or not b:
        return floor
    return max(floor, k * s * math.sqrt(1 / len(a) + 1 / len(b)))


def _all_solved(records: list[CellRecord]) -> bool:
    return bool(records) and all(r.solved for r in records)


def compare_group(base: list[CellRecord], cur: list[CellRecord], floor: float, k: float,
                  missing: list[CellRecord], impossible: list[str]) -> GroupDiff:
    r0 = (base or cur)[0]
    diff = GroupDiff("same", (r0.task, r0.model_name, r0.length, r0.hpset), base, cur)
    if not cur and not impossible:
        diff.verdict = "missing"
        diff.reasons.append("not in current run")
        return diff
    sb, sc = _scores(base), _scores(cur)
    if base and sb and sc:
        diff.allowed = allowed_drop(sb, sc, floor, k)
        drop = statistics.fmean(sb) - statistics.fmean(sc)
        if drop > diff.allowed + 1e-12:
            diff.reasons.append(f"mean {statistics.fmean(sb):.3f} -> {statistics.fmean(sc):.3f} "
                                f"(drop {drop:.3f} > {diff.allowed:.3f})")
    elif sb and not sc:
        diff.reasons.append("no score now")
    if _all_solved(base) and not any(r.solved for r in cur):
        diff.reasons.append(f"solved by all {len(base)} baseline seeds, now by none of "
                            f"{len(cur)}")
    failed_before = {r.status for r in base}
    for status in sorted({r.status for r in cur if r.status in FAILED} - failed_before):
        seeds = [r.seed for r in cur if r.status == status]
        diff.reasons.append(f"status {status} (seed {', '.join(map(str, seeds))})")
    if missing:
        diff.reasons.append(f"seed {', '.join(str(r.seed) for r in missing)} not in current run")
    diff.reasons += impossible
    if not base:
        diff.verdict = "new"
    elif diff.reasons:
        diff.verdict = "regression"
    elif (d := diff.delta) is not None and d < -1e-12:
        diff.verdict = "within tolerance"
    elif (d or 0) > 1e-12 or sum(r.solved for r in cur) * len(base) > sum(
            r.solved for r in base) * len(cur):
        diff.verdict = "improved"
    return diff


@dataclass
class SeedsResult:
    diffs: list[GroupDiff]  # every group, "same" included
    cells: int  # baseline cells compared (by key)
    cells_changed: int  # of those, with another status or score: informational across paths
    k: float

    def count(self, verdict: str) -> int:
        return sum(d.verdict == verdict for d in self.diffs)

    @property
    def regressions(self) -> list[GroupDiff]:
        return [d for d in self.diffs if d.regression]

    @property
    def shown(self) -> list[GroupDiff]:
        return [d for d in self.diffs if d.verdict != "same"]


ORDER = ("regression", "missing", "within tolerance", "improved", "new", "same")


def compare_seeds(base, cur, tolerances, k: float = DEFAULT_SPREAD_K) -> SeedsResult:
    """Group by group (a seqbench.gate.accuracy.Run on each side); raises ConfigError for
    incomparable inputs (seqbench.gate.accuracy.check_comparable)."""
    from seqbench.gate.accuracy import check_comparable

    check_comparable(base.records, cur.records, set(cur.records) | set(cur.impossible))
    groups = defaultdict(lambda: ([], [], [], []))  # base, cur, missing, impossible reasons
    for key, r in base.records.items():
        g = groups[group_key(r)]
        g[0].append(r)
        if key in cur.impossible:
            g[3].append(f"seed {r.seed}: impossible score stored: {cur.impossible[key].reason}")
        elif key not in cur.records:
            g[2].append(r)
    for r in cur.records.values():
        groups[group_key(r)][1].append(r)
    diffs = []
    for b, c, missing, impossible in groups.values():
        b.sort(key=lambda r: r.seed)
        c.sort(key=lambda r: r.seed)
        diffs.append(compare_group(b, c, tolerances((b or c)[0].task), k, missing, impossible))
    diffs.sort(key=lambda d: (ORDER.index(d.verdict), d.slot))
    shared = set(base.records) & set(cur.records)
    changed = sum((base.records[key].score, base.records[key].status)
                  != (cur.records[key].score, cur.records[key].status) for key in shared)
    return SeedsResult(diffs, len(set(base.records) & (set(cur.records) | set(cur.impossible))),
                       changed, k)


# --------------------------------------------------------------------------------------------
# output


def _stat(records: list[CellRecord]) -> str:
    x = _scores(records)
    if not x:
        return "-" if not records else "no score"
    sd = f" ± {statistics.stdev(x):.3f}" if len(x) > 1 else ""
    return f"{statistics.fmean(x):.3f}{sd} (n={len(x)})"


def _solved(d: GroupDiff) -> str:
    return (f"{sum(r.solved for r in d.base)}/{len(d.base)} -> "
            f"{sum(r.solved for r in d.cur)}/{len(d.cur)}")


def _row(d: GroupDiff) -> list[str]:
    task, model, length, hpset = d.slot
    return [d.verdict, task, model + (f" [{hpset}]" if hpset else ""), str(length),
            _stat(d.base), _stat(d.cur), "" if d.delta is None else f"{d.delta:+.3f}",
            "" if d.allowed is None else f"{d.allowed:.3f}", _solved(d), "; ".join(d.reasons)]


COLUMNS = ("verdict", "task", "model", "L", "baseline mean ± sd", "current mean ± sd", "Δ mean",
           "allowed drop", "solved", "reason")


def rule_text(tolerances, k: float) -> str:
    return (f"a group of cells that differ only in the seed regresses when its mean score drops "
            f"by more than max(floor, {k:g} x pooled between-seed std x sqrt(1/n_b + 1/n_c)) "
            f"(floor: {tolerances.describe()}), when every baseline seed solved it and no current "
            "seed does, or when a seed's status turns diverged, error or oom")


def seeds_summary(result: SeedsResult) -> str:
    return (f"compared {len(result.diffs) - result.count('new')} seed groups ({result.cells} "
            f"cells): {result.count('regression')} regressed, {result.count('missing')} missing, "
            f"{result.count('within tolerance')} within tolerance, {result.count('improved')} "
            f"improved, {result.count('same')} unchanged, {result.count('new')} new; cell by "
            f"cell, {result.cells_changed} of {result.cells} cells have another score or status "
            "(not a verdict across kernel paths)")


def seeds_markdown_rows(result: SeedsResult) -> list[str]:
    if not result.shown:
        return ["No differences: every group's seeds have the same scores."]
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|---|---|---|---:|---|---|---:|---:|---|---|"]
    for d in result.shown:
        row = _row(d)
        if d.regression:
            row[0] = f"**{row[0]}**"
        lines.append("| " + " | ".join(row) + " |")
    return lines


def seeds_table(result: SeedsResult) -> Table:
    table = Table(title="accuracy gate (seed groups): groups that differ from the baseline")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("L", "Δ mean", "allowed drop") else
                         "left")
    for d in result.shown:
        style = "bold red" if d.regression else ("green" if d.verdict == "improved" else None)
        table.add_row(*_row(d), style=style)
    return table
