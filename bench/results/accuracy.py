"""Accuracy tables from stored cell records (seqbench.results.tables has the shared helpers, and
seqbench.results.cellstats what one cell shows). Torch-free.

Per task (per study: a length-generalisation protocol is a table of its own), models as rows and
lengths as columns; each cell the mean test score with its 95% t-interval and k/n seeds solved,
failures and flags (cellstats); bold only a significant winner (stats.verdicts); a "shortcut
(n-gram)" row with the shortcut learner's score per length, and a "chance" row where chance varies
with length. With several hyper-parameter sets, each cell shows the set chosen on validation and a
second table lists every set (no bold: sets are compared on validation, not on these numbers). A
length-generalisation task also gets its per-test-length table at the longest training length N.
Then, per task, the model pairs that differ significantly (stats.pairwise; every pair goes to
pairwise.csv), and one "solve length" table over every task.

A stored file that could not be trusted (seqbench.results.store.Problem) is not a result, but it is
not nothing either: its cell (task, family and length from its file name) shows "unusable record"
(or "+ k unusable" beside the trusted seeds) in the task's first table, and the solve-length table
names the unusable lengths beyond the solved one, where the solve length is not known.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import pandas as pd

from seqbench.results import cellstats, stats
from seqbench.results.cellstats import ALPHA, LEVEL, MARGIN, Cell
from seqbench.results.tables import (
    PivotTable,
    _best,
    _models,
    _with_extra,
    _with_sets,
    best_sets,
    chance_text,
    headline,
    is_generalisation,
    length_axis,
    set_label,
    studies,
    task_facts,
)

SHORTCUT_ROW = "shortcut (n-gram)"
CHANCE_ROW = "chance"
SOLVE_FRACTION = 0.5  # stats.solve_length: solved by more than half of the seeds (2/3, 3/3)


@dataclass
class Study:
    """One accuracy table's data: a task (or one of its generalisation protocols) and its cells."""
    title: str
    task: str
    tdf: pd.DataFrame  # its rows, score = headline
    axis: str  # column prefix: the task's length symbol, or N for length generalisation
    lengths: list[int]
    score_name: str
    threshold: float
    chance: dict[int, float]
    sets: list[str]
    shortcut: dict[int, float]  # length -> mean shortcut learner's score
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)  # the chosen set's
    set_cells: dict[tuple[str, str, int], Cell] = field(default_factory=dict)  # every set's
    verdicts: dict[str, stats.Verdict] = field(default_factory=dict)  # by column
    unusable: dict[tuple[str, int], int] = field(default_factory=dict)

    def column(self, length: int) -> str:
        return f"{self.axis}={length}"

    @property
    def lg(self) -> bool:
        return self.axis == "N"


def _shortcut(tdf: pd.DataFrame, lg: bool) -> dict[int, float]:
    """Mean shortcut learner's score per length (its mean over the test lengths for a
    length-generalisation study: the same headline as the models')."""
    if "shortcut" not in tdf:
        return {}
    name = "ood_score" if lg else "score"
    found = pd.DataFrame([(n, s[name]) for n, s in zip(tdf["length"], tdf["shortcut"])
                          if isinstance(s, dict) and s.get(name) is not None],
                         columns=["length", "score"])
    return found.groupby("length")["score"].mean().to_dict()


def _verdicts(cells: dict[tuple[str, str], Cell], chance: dict[str, float]) -> dict:
    by_column: dict[str, dict] = {}
    for (model, column), c in cells.items():
        by_column.setdefault(column, {})[model] = c.seeds
    floor = {col: chance.get(col, 0.0) for col in by_column}
    return stats.verdicts(by_column, chance=floor, margin=MARGIN, alpha=ALPHA)


def study_results(df: pd.DataFrame, unusable=()) -> list[Study]:
    """Every accuracy study of a cell frame (Store.read() -> cell_frame), in the tasks' order.
    unusable: the (task, family, length) of each stored file that could not be trusted (counted in
    the task's first study)."""
    df = headline(_with_sets(df))
    bad = Counter(unusable)
    out = []
    for title, tdf in studies(df):
        task = tdf["task"].iloc[0]
        score_name, threshold, chance = task_facts(tdf)
        lg = bool(is_generalisation(tdf).any())
        extra = {(m, n): k for (t, m, n), k in bad.items() if t == task}
        bad = Counter({c: k for c, k in bad.items() if c[0] != task})  # shown once
        lengths = sorted(set(tdf["length"].unique().tolist()) | {n for _, n in extra})
        s = Study(title, task, tdf, "N" if lg else length_axis(tdf)[0], lengths, score_name,
                  threshold, chance, sorted(tdf["hpset"].unique().tolist()),
                  _shortcut(tdf, lg), unusable=extra)
        several = len(s.sets) > 1
        for (model, length), group in tdf.groupby(["model", "length"]):
            short = s.shortcut.get(length)
            for name, sgroup in group.groupby("hpset", sort=True):
                s.set_cells[(model, name, length)] = cellstats.cell(sgroup, threshold, short)
            chosen = cellstats.choose_set(group)
            if chosen is None:  # every seed failed: show every set's failures
                s.cells[(model, length)] = cellstats.cell(group, threshold, short)
            else:
                c = s.set_cells[(model, chosen, length)]
                s.cells[(model, length)] = replace(c, hpset=chosen) if several else c
        s.verdicts = _verdicts({(m, s.column(n)): c for (m, n), c in s.cells.items()},
                               {s.column(n): v for n, v in chance.items()})
        out.append(s)
    return out


def _caption(s: Study, cells) -> str:
    symbol, meaning = length_axis(s.tdf)
    what = s.score_name
    if s.lg:
        protocol = s.tdf["generalise.train"].iloc[0]
        trained = "lengths up to N" if protocol == "range" else "length N"
        what = (f"length generalisation, mean {s.score_name} over the test lengths "
                f"{s.tdf['generalise.lengths'].iloc[0].replace(' ', ', ')} after training on "
                f"{trained}")
    parts = [f"{s.task}: {what}, {cellstats.seeds_text(cells)}", cellstats.INTERVAL_TEXT]
    if len(s.sets) > 1:
        parts.append(f"of {len(s.sets)} hyper-parameter sets, each cell shows the test score of "
                     "the set with the best mean validation score (in brackets); sets are not "
                     "averaged as seeds")
    parts.append(f"{chance_text(s.chance, s.lengths)}, solved at >= {s.threshold:g}")
    if s.shortcut:
        parts.append(f"{SHORTCUT_ROW}: the shortcut learner's test score (mean over records)")
    flags = cellstats.legend(cells)
    if flags:
        parts.append(flags)
    parts.append(f"{symbol}: {meaning}" + (f", N: the longest training {symbol}" if s.lg else ""))
    return "; ".join(parts)


def _accuracy_table(s: Study) -> PivotTable:
    columns = [s.column(n) for n in s.lengths]
    text = {(m, s.column(n)): c.text() for (m, n), c in s.cells.items()}
    for (model, length), k in sorted(s.unusable.items()):
        cell = (model, s.column(length))
        note = f"{k} unusable record" + ("s" if k > 1 else "")
        text[cell] = f"{text[cell]} + {note}" if cell in text else note
    rows = _with_extra(_models(s.tdf), (m for m, _ in s.unusable))
    if s.shortcut:
        rows.append(SHORTCUT_ROW)
        text |= {(SHORTCUT_ROW, s.column(n)): f"{v:.3f}" for n, v in s.shortcut.items()}
    if len({round(v, 12) for v in s.chance.values()}) > 1:
        rows.append(CHANCE_ROW)
        text |= {(CHANCE_ROW, s.column(n)): f"{v:.4g}" for n, v in s.chance.items()}
    best = {(v.best, col) for col, v in s.verdicts.items() if v.outcome == "winner"}
    return PivotTable(s.title, _caption(s, s.cells.values()), columns, rows, text, best,
                      task=s.task, notes=cellstats.bold_rule(s.verdicts))


def _sets_table(s: Study) -> PivotTable:
    columns = [s.column(n) for n in s.lengths]
    text = {(f"{m} [{set_label(name)}]", s.column(n)): c.text()
            for (m, name, n), c in s.set_cells.items()}
    rows = [f"{m} [{set_label(name)}]" for m in _models(s.tdf) for name in s.sets
            if (m, name) in {(m2, n2) for m2, n2, _ in s.set_cells}]
    caption = (f"{s.title} by hyper-parameter set: {s.score_name}, "
               f"{cellstats.seeds_text(s.set_cells.values())}; {cellstats.INTERVAL_TEXT}")
    legend = cellstats.legend(s.set_cells.values())
    return PivotTable(f"{s.title} by hyper-parameter set", caption + (f"; {legend}" if legend
                                                                       else ""),
                      columns, rows, text, set(), task=s.task,
                      notes="no bold: the sets are chosen on validation scores, not on these")


def _generalisation_table(s: Study, gdf: pd.DataFrame) -> PivotTable:
    """Scores at the longest training length N (in distribution) and at each test length, for
    the hyper-parameter set the task's table shows."""
    n = max(length for length in s.lengths if (s.tdf["length"] == length).any())
    rows = best_sets(s.tdf[s.tdf["length"] == n])
    tests = gdf[gdf["key"].isin(rows["key"])]
    lengths = sorted(tests["length"].unique().tolist())
    symbol, meaning = length_axis(s.tdf)
    columns = [f"N={n} (train)"] + [f"{symbol}={m}" for m in lengths]
    cells, chance = {}, {columns[0]: s.chance.get(n, 0.0)}
    for model, group in rows.groupby("model"):
        cells[(model, columns[0])] = cellstats.cell(group.assign(score=group["id_score"]),
                                                    s.threshold)
        for m, lgroup in tests[tests["model"] == model].groupby("length"):
            cells[(model, f"{symbol}={m}")] = cellstats.cell(lgroup, s.threshold)
    for m, lgroup in tests.groupby("length"):
        chance[f"{symbol}={m}"] = float(lgroup["chance"].dropna().mean()) \
            if lgroup["chance"].notna().any() else 0.0
    verdicts = _verdicts(cells, chance)
    caption = (f"{s.title} by test length: {s.score_name} at the longest training length and "
               f"at each longer test length, {cellstats.seeds_text(cells.values())}; "
               f"{cellstats.INTERVAL_TEXT}; {symbol}: {meaning}")
    legend = cellstats.legend(cells.values())
    return PivotTable(f"{s.title} by test length", caption + (f"; {legend}" if legend else ""),
                      columns, _models(rows), {k: c.text() for k, c in cells.items()},
                      {(v.best, col) for col, v in verdicts.items() if v.outcome == "winner"},
                      task=s.task, notes=cellstats.bold_rule(verdicts))


def pairwise_frame(s: Study) -> pd.DataFrame:
    """Every model pair at every length of a study (stats.pairwise over the shown sets' seeds),
    with the study's title as `task`."""
    tidy = pd.DataFrame([(m, n, seed, score) for (m, n), c in s.cells.items()
                         for seed, score in c.seeds.items()],
                        columns=["model", "length", "seed", "score"])
    order = {m: i for i, m in enumerate(_models(s.tdf))}
    tidy = tidy.sort_values("model", key=lambda col: col.map(order), kind="stable")
    return stats.pairwise(tidy.astype({"score": float}), LEVEL).assign(task=s.title)


def _pairs_table(s: Study, pairs: pd.DataFrame) -> PivotTable | None:
    """The pairs significantly different at some length (Holm-adjusted p < ALPHA)."""
    hits = pairs[pairs["p_holm"] < ALPHA]
    if hits.empty:
        return None
    columns = [s.column(n) for n in s.lengths]
    text = {(f"{r.a} - {r.b}", s.column(r.length)):
            f"{r.diff:+.3f} [{r.low:+.3f}, {r.high:+.3f}] p {r.p_holm:.2g}"
            for r in hits.itertuples()}
    rows = list(dict.fromkeys(f"{r.a} - {r.b}" for r in pairs.itertuples() if
                              any(k[0] == f"{r.a} - {r.b}" for k in text)))
    caption = (f"{s.title}: model pairs (a - b) that differ significantly: difference of mean "
               f"test scores with its {LEVEL:.0%} interval and Holm-adjusted p over every pair "
               f"and length of the task (paired t over seeds, Welch where the seeds do not pair); "
               f"only cells with p < {ALPHA:g}; every pair is in pairwise.csv")
    return PivotTable(f"{s.title}: significant differences", caption, columns, rows, text,
                      set(), task=s.task)


def _solve_table(found: list[Study], unusable_models) -> PivotTable:
    columns = [s.title for s in found]
    text, lengths = {}, {}
    for s in found:
        symbol = length_axis(s.tdf)[0]
        by_model: dict[str, dict[int, list]] = {}
        for (m, n), c in s.cells.items():
            by_model.setdefault(m, {})[n] = list(c.seeds.values())
        for m, _ in s.unusable:
            by_model.setdefault(m, {})
        for m, by_length in by_model.items():
            got = stats.solve_length(by_length, s.threshold, SOLVE_FRACTION)
            cell = (m, s.title)
            if got is None:
                text[cell] = "—"
            else:
                below = f"; {symbol}={', '.join(map(str, got.unsolved_below))} not" \
                    if got.unsolved_below else ""
                text[cell] = f"{got.length} ({got.k}/{got.n}{below})"
                lengths[cell] = got.length
            beyond = [n for m2, n in s.unusable if m2 == m and n > lengths.get(cell, 0)]
            if beyond:
                text[cell] += f" ({symbol}={', '.join(map(str, beyond))} unusable)"
    caption = (
        "solve length: per task, the longest length (in the task's own unit, e.g. copy's delay "
        f"T) solved by more than {SOLVE_FRACTION:.0%} of its seeds (2/3 or 3/3 at 3 seeds; a "
        "seed solves when its test score reaches the task's solve threshold, a failed seed does "
        "not; the hyper-parameter set of the task's table), with k/n seeds; a shorter length "
        "not solved is named (\"L=8 not\"); for a length-generalisation task, the longest "
        "training length N whose test-length mean is solved; — where no tested length is; "
        "(L=n unusable): a longer length whose stored records could not be read, so it may be "
        "longer; lengths tested: "
        + "; ".join(f"{s.title} {length_axis(s.tdf)[0]}={', '.join(map(str, s.lengths))}"
                    for s in found))
    models = _with_extra(_models(pd.concat([s.tdf for s in found])), unusable_models)
    return PivotTable("solve length", caption, columns, models, text,
                      _best(lengths, columns, higher=True),
                      notes="bold: the longest solve length of each task")


def task_tables(df: pd.DataFrame, gdf: pd.DataFrame | None = None,
                unusable=()) -> list[PivotTable]:
    """Per study its accuracy table (with several hyper-parameter sets, a table per set; for a
    length-generalisation task, its per-test-length table from gdf, the rows of
    Store.generalisation_frame()) and its significant pairs; then the solve-length table over
    every task. unusable: as in study_results."""
    found = study_results(df, unusable)
    tables = []
    for s in found:
        tables.append(_accuracy_table(s))
        if s.lg and gdf is not None and not gdf.empty:
            tables.append(_generalisation_table(s, gdf))
        if len(s.sets) > 1:
            tables.append(_sets_table(s))
        pairs = _pairs_table(s, pairwise_frame(s))
        if pairs is not None:
            tables.append(pairs)
    if found:
        tables.append(_solve_table(found, [m for s in found for m, _ in s.unusable]))
    return tables


__all__ = ["Study", "pairwise_frame", "study_results", "task_tables"]
