"""What the records of one accuracy-table cell say (seqbench.results.stats over its seeds), for the
tables and the findings of a report. Torch-free.

A cell is one (model, length) of a task with the seeds of one hyper-parameter set. It shows the
mean test score with the half-width of its 95% Student t interval over the seeds that have a score,
k/n seeds solved (test score >= the task's solve threshold; a failed seed counts in n), the failure
counts, and flags that qualify what the score means:
- memorisable (MEMORISED): the mean fraction of test sequences also drawn in training is above 1/2,
  so the score may measure recall of seen sequences rather than the task;
- shortcut (SHORTCUT_SLACK): the shortcut learner (seqbench.cell.shortcut: n-gram / local-window
  features, no sequential memory) scores at least threshold - 0.05 at this length (records carry
  its score, not a verdict), so the length does not test long-range dependency;
- still improving: k of n seeds' validation loss was still improving at the training budget
  (seqbench.cell.convergence), so a longer budget might change the score.

With several hyper-parameter sets, a cell shows the set with the best mean VALIDATION score (the
sets are not seeds: averaging them would mix tuned and untuned runs, and choosing on the test
score would select on the number shown).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from seqbench.cell.record import FAILED
from seqbench.results import stats

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # significance level of the bold winner and the significant pairs
MARGIN = 0.02  # a winner's mean must exceed chance + MARGIN (a model at chance wins nothing)
MEMORISED = 0.5  # memorisable: mean seen_fraction above this
SHORTCUT_SLACK = 0.05  # shortcut: the shortcut learner scores >= threshold - SHORTCUT_SLACK
IMPROVING = "still improving"  # the convergence verdict flagged

# flag -> (marker in a cell, legend)
FLAGS = {
    "memorisable": ("†", f"† memorisable: over {MEMORISED:g} of the test sequences (mean over "
                         "seeds) were also seen in training"),
    "shortcut": ("‡", f"‡ shortcut: the shortcut learner (n-gram/local window, no sequential "
                      f"memory) scores >= solve threshold - {SHORTCUT_SLACK:g} at this length"),
    "still improving": ("↑", "↑k/n: k of n seeds' validation loss was still improving at the "
                             "training budget"),
}


@dataclass
class Cell:
    """One table cell's seeds (seed -> score; None for a failed seed) and what they say."""
    seeds: dict
    interval: stats.Interval
    k: int
    n: int
    failures: dict[str, int]
    improving: int = 0  # seeds still improving at the budget
    flags: list[str] = field(default_factory=list)  # names in FLAGS
    hpset: str | None = None  # the chosen set, shown when the task has several

    def text(self) -> str:
        """Compact cell text: "0.912 ±0.034 3/3 (1 diverged) ‡ ↑1/3"."""
        note = ", ".join(f"{k} {status}" for status, k in self.failures.items())
        if self.interval.mean is None:
            return note
        out = f"{self.interval.mean:.3f}"
        if self.interval.high is not None:
            out += f" ±{self.interval.high - self.interval.mean:.3f}"
        out += f" {self.k}/{self.n}" + (f" ({note})" if note else "")
        for flag in self.flags:
            out += " " + FLAGS[flag][0] + (f"{self.improving}/{self.n}" if flag == IMPROVING
                                           else "")
        return out + (f" [{self.hpset or 'base'}]" if self.hpset is not None else "")


def _score(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def cell(group: pd.DataFrame, threshold: float, shortcut: float | None = None) -> Cell:
    """The Cell of one set's seeds (rows with the headline `score`, `status`, `seed` and, where
    recorded, `seen_fraction` and `convergence`); shortcut: the shortcut learner's score here."""
    failed = group["status"].isin(FAILED)
    seeds = {seed: None if bad else _score(score)
             for seed, score, bad in zip(group["seed"], group["score"], failed)}
    k, n = stats.solved(list(seeds.values()), threshold)
    c = Cell(seeds, stats.interval(list(seeds.values()), LEVEL), k, n,
             dict(Counter(group.loc[failed, "status"])))
    seen = group["seen_fraction"].dropna() if "seen_fraction" in group else pd.Series([])
    if len(seen) and seen.mean() > MEMORISED:
        c.flags.append("memorisable")
    if shortcut is not None and shortcut >= threshold - SHORTCUT_SLACK:
        c.flags.append("shortcut")
    if "convergence" in group:
        c.improving = int((group["convergence"] == IMPROVING).sum())
    if c.improving:
        c.flags.append(IMPROVING)
    return c


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return values.mean() if len(values) else -math.inf


def choose_set(group: pd.DataFrame) -> str | None:
    """The hyper-parameter set a (model, length) shows: of the sets with a seed that did not fail,
    the best mean validation score over those seeds (`val_score`: for a length-generalisation
    cell, over the test lengths); ties, and sets without a validation score, to the first set by
    name. None where every seed of every set failed (the cell then shows all their failures)."""
    ok = group[~group["status"].isin(FAILED) & group["score"].notna()]
    names = sorted(ok["hpset"].unique())
    if not names:
        return None
    val = ok["val_score"] if "val_score" in ok else pd.Series(float("nan"), index=ok.index)
    means = {name: _mean(val[ok["hpset"] == name]) for name in names}
    return max(names, key=lambda name: (means[name], -names.index(name)))


def legend(cells) -> str:
    """The legend of the flags some of cells carry ("" where none does)."""
    used = {flag for c in cells for flag in c.flags}
    return "; ".join(text for flag, (_, text) in FLAGS.items() if flag in used)


def seeds_text(cells) -> str:
    """"n=3 seeds", or "n=2-3 seeds" where cells hold different numbers of seeds."""
    return seed_count_text(c.n for c in cells)


def seed_count_text(counts) -> str:
    """seeds_text from the seed counts themselves ("n=1 seed", "n=3 seeds", "n=2-3 seeds")."""
    ns = sorted(set(counts))
    if not ns:
        return "no seeds"
    span = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"n={span} seed" + ("" if ns == [1] else "s")


INTERVAL_TEXT = (f"mean ±half-width of its {LEVEL:.0%} t-interval over seeds (none at 1 seed), "
                 "then k/n seeds whose test score reaches the solve threshold (a failed seed "
                 "counts in n)")


def bold_rule(verdicts: dict[str, stats.Verdict]) -> str:
    """What bold means in a table, and why each column without bold has none."""
    rule = (f"bold: significantly better than every other model in the column (paired t over "
            f"seeds, Holm-corrected across the table's columns, alpha {ALPHA:g}) and above "
            f"chance + {MARGIN:g}")
    why = []
    for column, v in verdicts.items():
        if v.outcome == "not significant":
            why.append(f"{column} not significant (best {v.best}, Holm p {v.p_holm:.2g})")
        elif v.outcome != "winner":
            why.append(f"{column} {v.outcome}")
    return rule + ("; no bold at " + ", ".join(why) if why else "")
