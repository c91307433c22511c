"""Statistics for the results tables: intervals over seeds, solve counts, model comparisons.

Torch-free (numpy, scipy, pandas), so reports can be built without the training stack.

Conventions. Scores are higher-is-better. A seed whose cell failed (diverged, oom, error) is
given as None or NaN: it has no score, so means, intervals and tests use the seeds that have one,
while `solved` counts it as a seed that did not solve (n includes it). Values within TOL of each
other are equal (round-off, far below any printed digit).

- `interval`: Student's t confidence interval of the mean over seeds, mean ± t_{(1+level)/2, n-1}
  s / sqrt(n). Why not a bootstrap: with 3 seeds there are only 10 distinct resamples, and each
  extreme one (all three draws the lowest, or the highest, value) has probability 1/27 > 2.5%, so
  the 95% percentile interval is just [min, max] of the seeds, whose coverage of the median is
  1 - 2/2^3 = 75%. The t interval is exact for normal scores and the usual choice at few seeds.
- `compare`: difference of means with a two-sided p-value, paired t-test over seeds that both
  models ran (scipy.stats.ttest_rel), else Welch's unequal-variance t-test (Welch 1947,
  scipy.stats.ttest_ind(equal_var=False); recommended for seed comparisons by Colas, Sigaud and
  Oudeyer 2018, "How Many Random Seeds?", arXiv:1806.08295).
- `holm`: Holm's step-down adjustment (Holm 1979, "A simple sequentially rejective multiple test
  procedure", Scand. J. Statist. 6:65-70), controlling the family-wise error rate.
- `winners`: the best mean in a column is bolded when it is significantly better than every other
  model there: an intersection-union test (Berger 1982, Technometrics 24:295-300), whose p-value is
  the largest of the pairwise p-values and needs no correction within the column; then Holm
  across the table's columns.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from seqbench.strict import ConfigError

TOL = 1e-12

Scores = Sequence[float | None]  # one score per seed; None or NaN: the seed failed
SeedScores = Mapping[Hashable, float | None]  # seed id -> score


def _scores(values: Scores, field: str = "values") -> np.ndarray:
    """values as a float array, None -> NaN (a failed seed); infinities and non-numbers rejected."""
    try:
        x = np.array([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{field}: expected numbers (None for a failed seed), "
                          f"got {list(values)!r}") from error
    if x.ndim != 1 or np.isinf(x).any():
        raise ConfigError(f"{field}: expected finite numbers or None, got {list(values)!r}")
    return x


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"level: expected a confidence level in (0, 1), got {level!r}")


def _constant(x: np.ndarray) -> bool:
    return bool(np.ptp(x) <= TOL)


@dataclass(frozen=True)
class Interval:
    """Mean over the n seeds with a score and its confidence interval.

    method: "t" (Student's t interval), "constant" (every score equal: zero width), "none" (n < 2:
    no interval, low and high are None; mean is None too when n = 0)."""
    mean: float | None
    low: float | None
    high: float | None
    n: int
    method: str


def interval(values: Scores, level: float = 0.95,
             clip: tuple[float, float] | None = None) -> Interval:
    """The t confidence interval of the mean over seeds (failed seeds left out).

    clip=(lo, hi) intersects the interval with the range the scores live in (e.g. (0, 1) for
    accuracies). The true mean lies in that range, so clipping never removes it from the interval
    and the coverage stays at least `level`; a clipped bound says "the range ends here", not
    "the data pin the mean here"."""
    _check_level(level)
    x = _scores(values)
    x = x[~np.isnan(x)]
    n = len(x)
    if n < 2:
        return Interval(float(x[0]) if n else None, None, None, n, "none")
    mean = float(x.mean())
    if _constant(x):
        low, high, method = mean, mean, "constant"
    else:
        from scipy import stats  # here: 0.5 s to import, and `seqbench plot` needs none of it

        low, high = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(x))
        method = "t"
    if clip is not None:
        lo, hi = clip
        if not lo < hi:
            raise ConfigError(f"clip: expected (low, high) with low < high, got {clip!r}")
        low, high = min(max(low, lo), hi), min(max(high, lo), hi)
    return Interval(mean, float(low), float(high), n, method)


def solved(values: Scores, threshold: float) -> tuple[int, int]:
    """(k, n): k seeds with score >= threshold out of n seeds run; a failed seed counts in n and
    not in k."""
    x = _scores(values)
    return int(np.sum(x[~np.isnan(x)] >= threshold)), len(x)


def solve_verdict(values: Scores, threshold: float, level: float = 0.95) -> str:
    """Whether the seeds' mean score reaches `threshold`, decided only where the `level` interval
    of the mean (`interval`, clipped to [0, 1]) lies wholly on one side: "solved" (low >=
    threshold), "not solved" (high < threshold), else "undecided". One seed, or none, decides nothing. Why an
    interval and not a count of seeds: a mean near the threshold flips a k/n majority on another
    kernel path (measured: 6 of 78 quick solve lengths under an AVX2 cap, every one a 2/3 <-> 1/3
    or 3/3 <-> 1/3 flip at a mean within 0.02 of the threshold), while a decided interval holds."""
    x = _scores(values)
    if np.isnan(x).all():  # every seed failed: nothing was solved
        return "not solved"
    ci = interval(x, level, clip=(0.0, 1.0))
    if ci.n < 2:
        return "undecided"
    if ci.low >= threshold - TOL:
        return "solved"
    return "not solved" if ci.high < threshold - TOL else "undecided"


@dataclass(frozen=True)
class SolveLength:
    """The longest length whose verdict is "solved" (None if none) with its k/n seeds solved,
    the lengths left undecided, and the shorter lengths not solved (a non-monotone record,
    shown rather than hidden)."""
    length: int | None
    k: int
    n: int
    undecided: tuple[int, ...]
    unsolved_below: tuple[int, ...]


def solve_length(by_length: Mapping[int, Scores], threshold: float,
                 level: float = 0.95) -> SolveLength:
    """The longest length solved by `solve_verdict`, k/n at it (`solved`), every undecided length
    and the shorter lengths not solved. As in the README ("the longest length reaching the
    threshold"), a length counts on its own: a solved length is reported even when a shorter one
    is not, and those are listed in unsolved_below."""
    _check_level(level)
    verdicts = {n: solve_verdict(v, threshold, level) for n, v in sorted(by_length.items())}
    ok = [n for n, v in verdicts.items() if v == "solved"]
    undecided = tuple(n for n, v in verdicts.items() if v == "undecided")
    if not ok:
        return SolveLength(None, 0, 0, undecided, ())
    k, n = solved(by_length[ok[-1]], threshold)
    return SolveLength(ok[-1], k, n, undecided,
                       tuple(m for m, v in verdicts.items() if m < ok[-1] and v == "not solved"))


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) over the seeds used, its confidence interval and two-sided p-value.

    test: "paired t" or "Welch t". p, low and high are None when the test cannot be run (fewer
    than two pairs, or fewer than two scores on a side); diff is None when a side has no score.
    Zero variance (every paired difference equal, or both sides constant for Welch) has no t
    statistic: the difference is then exact for these seeds, so low = high = diff and p = 0, or
    p = 1 when the difference is 0."""
    diff: float | None
    low: float | None
    high: float | None
    p: float | None
    n_a: int
    n_b: int
    test: str


def compare(a: Scores, b: Scores,
            paired_by: tuple[Sequence[Hashable], Sequence[Hashable]] | None = None,
            level: float = 0.95) -> Comparison:
    """Compare two models' scores in one table cell (failed seeds left out).

    paired_by = (seeds of a, seeds of b): when the seeds with a score are the same on both sides,
    a paired t-test over the seeds (matched by id, in any order); otherwise Welch's t-test, so the
    difference is always that of the means shown in the table."""
    _check_level(level)
    x, y = _scores(a, "a"), _scores(b, "b")
    if paired_by is not None:
        pairs = []
        for side, seeds, v in (("a", paired_by[0], x), ("b", paired_by[1], y)):
            if len(seeds) != len(v) or len(set(seeds)) != len(seeds):
                raise ConfigError(f"paired_by: the seeds of {side} must be distinct, one per "
                                  f"score; got {list(seeds)!r} for {len(v)} scores")
            pairs.append({seed: float(score) for seed, score in zip(seeds, v)
                          if not np.isnan(score)})
        if pairs[0].keys() == pairs[1].keys():
            seeds = list(pairs[0])
            return _paired(np.array([pairs[0][s] for s in seeds]),
                           np.array([pairs[1][s] for s in seeds]), level)
    return _welch(x[~np.isnan(x)], y[~np.isnan(y)], level)


def _exact(diff: float, n_a: int, n_b: int, test: str) -> Comparison:
    return Comparison(diff, diff, diff, 1.0 if abs(diff) <= TOL else 0.0, n_a, n_b, test)


def _paired(x: np.ndarray, y: np.ndarray, level: float) -> Comparison:
    n, d = len(x), x - y
    diff = float(d.mean()) if n else None
    if n < 2:
        return Comparison(diff, None, None, None, n, n, "paired t")
    if _constant(d):
        return _exact(diff, n, n, "paired t")
    from scipy import stats

    result = stats.ttest_rel(x, y)
    ci = result.confidence_interval(level)
    return Comparison(diff, float(ci.low), float(ci.high), float(result.pvalue), n, n, "paired t")


def _welch(x: np.ndarray, y: np.ndarray, level: float) -> Comparison:
    n_a, n_b = len(x), len(y)
    diff = float(x.mean() - y.mean()) if n_a and n_b else None
    if n_a < 2 or n_b < 2:
        return Comparison(diff, None, None, None, n_a, n_b, "Welch t")
    if _constant(x) and _constant(y):
        return _exact(diff, n_a, n_b, "Welch t")
    from scipy import stats

    result = stats.ttest_ind(x, y, equal_var=False)
    ci = result.confidence_interval(level)
    return Comparison(diff, float(ci.low), float(ci.high), float(result.pvalue), n_a, n_b,
                      "Welch t")


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the input order; None entries pass through and are not counted.

    With the m p-values sorted, p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)), so rejecting where adjusted p < alpha is Holm's procedure at level
    alpha. (scipy has no Holm: scipy.stats.false_discovery_control is Benjamini-Hochberg/Yekutieli,
    which controls the false discovery rate, not the family-wise error rate.)"""
    for i, p in enumerate(pvalues):
        if p is not None and not 0 <= p <= 1:
            raise ConfigError(f"pvalues[{i}]: expected a p-value in [0, 1] or None, got {p!r}")
    order = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _compare_seeds(a: SeedScores, b: SeedScores, level: float = 0.95) -> Comparison:
    return compare(list(a.values()), list(b.values()), paired_by=(list(a), list(b)), level=level)


@dataclass(frozen=True)
class Verdict:
    """The winner test of one table column: its best model by mean, the intersection-union p and
    its Holm-adjusted value (None where the test cannot be run), and the outcome, one of OUTCOMES:
    "winner" (bolded), "not significant" (adjusted p >= alpha), "tied" (top means within TOL),
    "at chance" (top mean at or below chance + margin), "untestable" (fewer than two models with a
    score, or a model with fewer than two scores). A barred column (tied, at chance) keeps its p."""
    best: Hashable | None
    p: float | None
    p_holm: float | None
    outcome: str


OUTCOMES = ("winner", "not significant", "tied", "at chance", "untestable")


def verdicts(cells: Mapping[Hashable, Mapping[Hashable, SeedScores]], *,
             chance: float | Mapping[Hashable, float], margin: float,
             alpha: float = 0.05) -> dict[Hashable, Verdict]:
    """The winner test of every column of one table: cells = {column: {model: {seed: score}}}.

    In each column, the model with the best mean is compared with every other model that has a
    score (`compare`, paired where the seeds pair); the column's p-value is the largest of those
    (intersection-union test: "better than each", which is "better than the runner-up" when the
    runner-up is the closest call). Holm runs across every column where that test can be run,
    tied and at-chance columns included, so the family does not depend on which columns look
    promising. A column's best wins when its adjusted p < alpha, unless the top mean is tied
    (within TOL) or at or below chance + margin (chance: one value or one per column), so a table
    where every model is at chance shows no winner."""
    found: dict[Hashable, tuple] = {}
    for column, models in cells.items():
        means = {}
        for model, seeds in models.items():
            x = _scores(list(seeds.values()), f"cells[{column!r}][{model!r}]")
            if not np.isnan(x).all():
                means[model] = float(np.nanmean(x))
        if len(means) < 2:
            found[column] = (max(means, key=means.__getitem__, default=None), None, None)
            continue
        ranked = sorted(means, key=means.__getitem__, reverse=True)
        ps = [_compare_seeds(models[ranked[0]], models[other]).p for other in ranked[1:]]
        if isinstance(chance, Mapping) and column not in chance:
            raise ConfigError(f"chance: no value for column {column!r}")
        floor = (chance[column] if isinstance(chance, Mapping) else chance) + margin
        barred = ("tied" if means[ranked[0]] - means[ranked[1]] <= TOL
                  else "at chance" if means[ranked[0]] <= floor else None)
        found[column] = (ranked[0], None if None in ps else max(ps), barred)
    adjusted = dict(zip(found, holm([p for _, p, _ in found.values()])))
    out = {}
    for column, (best, p, barred) in found.items():
        outcome = ("untestable" if p is None else barred if barred is not None
                   else "winner" if adjusted[column] < alpha else "not significant")
        out[column] = Verdict(best, p, adjusted[column], outcome)
    return out


def winners(cells: Mapping[Hashable, Mapping[Hashable, SeedScores]], *,
            chance: float | Mapping[Hashable, float], margin: float,
            alpha: float = 0.05) -> set[tuple[Hashable, Hashable]]:
    """The (model, column) cells to bold in one table (see `verdicts`): each column's best model
    where it is significantly better than every other model there."""
    return {(v.best, column) for column, v in verdicts(cells, chance=chance, margin=margin,
                                                       alpha=alpha).items()
            if v.outcome == "winner"}


PAIRWISE_COLUMNS = ["length", "a", "b", "diff", "low", "high", "p", "p_holm", "n_a", "n_b",
                    "test"]


def pairwise(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Every model pair at every length of one task, from a tidy frame (model, length, seed,
    score; a NaN score is a failed seed).

    One row per (length, a, b), models in order of first appearance: diff = mean(a) - mean(b),
    its `level` interval, p and the test (`compare`, paired by seed where the seeds pair), and
    p_holm, Holm-adjusted over every row of the task. NaN where a value cannot be computed."""
    missing = sorted({"model", "length", "seed", "score"} - set(frame.columns))
    if missing:
        raise ConfigError(f"frame: missing column(s) {', '.join(missing)}; "
                          "required: model, length, seed, score")
    if "task" in frame.columns and frame["task"].nunique() > 1:
        raise ConfigError(f"frame: expected one task, got {sorted(frame['task'].unique())}")
    if frame.duplicated(["model", "length", "seed"]).any():
        raise ConfigError("frame: more than one score for a (model, length, seed)")
    order = list(pd.unique(frame["model"]))
    rows = []
    for length, group in frame.groupby("length", sort=True):
        scores = {m: dict(zip(g["seed"], g["score"])) for m, g in group.groupby("model")}
        for a, b in combinations([m for m in order if m in scores], 2):
            rows.append({"length": length, "a": a, "b": b,
                         **asdict(_compare_seeds(scores[a], scores[b], level))})
    for row, adjusted in zip(rows, holm([row["p"] for row in rows])):
        row["p_holm"] = adjusted
    table = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)
    numbers = ["diff", "low", "high", "p", "p_holm"]
    return table.astype(dict.fromkeys(numbers, float))
