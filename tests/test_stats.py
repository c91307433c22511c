"""seqbench.results.stats: intervals, solve counts, paired/Welch comparisons, Holm, table winners.

Every figure is checked against scipy.stats directly and, for one case each, against the textbook
formula computed here by hand.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from seqbench.results.stats import (
    PAIRWISE_COLUMNS,
    compare,
    holm,
    interval,
    pairwise,
    solve_length,
    solve_verdict,
    solved,
    winners,
)
from seqbench.strict import ConfigError

RNG = np.random.default_rng(0)


def test_module_imports_without_torch():
    code = "import sys, seqbench.results.stats; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- interval -------------------------------------------------------------------------------

def test_interval_by_hand():
    # Student's t quantile for 2 degrees of freedom in closed form: t = (2u - 1) / sqrt(2u(1 - u)).
    u = 0.975
    t = (2 * u - 1) / math.sqrt(2 * u * (1 - u))
    assert t == pytest.approx(4.302652729749464, abs=1e-12)
    got = interval([0.9, 0.95, 1.0])
    half = t * 0.05 / math.sqrt(3)  # sample std of (0.9, 0.95, 1.0) is 0.05
    assert (got.mean, got.n, got.method) == (pytest.approx(0.95), 3, "t")
    assert got.low == pytest.approx(0.95 - half, abs=1e-12)
    assert got.high == pytest.approx(0.95 + half, abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_interval_matches_scipy_one_sample_t(n, level):
    x = RNG.uniform(0, 1, n)
    got = interval(x.tolist(), level)
    ci = stats.ttest_1samp(x, 0).confidence_interval(level)
    assert (got.low, got.high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))


def test_interval_degenerate_and_failed_seeds():
    assert interval([]) == interval([None]) == interval([float("nan")])
    assert (interval([]).mean, interval([]).low, interval([]).n) == (None, None, 0)
    one = interval([0.7])
    assert (one.mean, one.low, one.high, one.n, one.method) == (0.7, None, None, 1, "none")
    same = interval([0.8, 0.8, 0.8])
    assert (same.low, same.high, same.method) == (pytest.approx(0.8), pytest.approx(0.8), "constant")
    # A failed seed is left out: the interval is that of the two scores.
    assert interval([0.9, None, 1.0]) == interval([0.9, 1.0])
    assert interval([0.9, None, 1.0]).n == 2


def test_interval_clip_only_truncates():
    raw, clipped = interval([0.96, 1.0, 1.0]), interval([0.96, 1.0, 1.0], clip=(0.0, 1.0))
    assert raw.high > 1 and clipped.high == 1.0
    assert (clipped.mean, clipped.low) == (raw.mean, raw.low)
    with pytest.raises(ConfigError, match="clip"):
        interval([0.5, 0.6], clip=(1.0, 0.0))
    with pytest.raises(ConfigError, match="level"):
        interval([0.5, 0.6], level=95)
    with pytest.raises(ConfigError, match="values"):
        interval([0.5, float("inf")])


# --- solved / solve_length ------------------------------------------------------------------

def test_solved_counts_failed_seed_in_n():
    assert solved([1.0, 0.96, None, 0.5], 0.95) == (2, 4)
    assert solved([0.95, 0.9499], 0.95) == (1, 2)  # reaching the threshold counts


def test_solve_verdict_follows_the_interval_against_the_threshold():
    t = 0.95
    assert solve_verdict([1.0, 1.0, 1.0], t) == "solved"  # constant: a zero-width interval
    x = [0.97, 0.98, 0.99]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    assert low >= t and solve_verdict(x, t) == "solved"
    x = [0.96, 0.99, 0.93]  # mean 0.96, but the interval reaches below 0.95
    assert stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))[0] < t
    assert solve_verdict(x, t) == "undecided"
    assert solve_verdict([0.5, 0.6, 0.55], t) == "not solved"
    assert solve_verdict([1.0], t) == "undecided"  # one seed decides nothing
    assert solve_verdict([None, None], t) == "not solved"  # every seed failed
    assert solve_verdict([1.0, None, 1.0], t) == "solved"  # the failed seed has no score


def test_solve_length_reports_k_n_undecided_and_unsolved_below():
    t = 0.95
    runs = {10: [1.0, 1.0, 1.0], 50: [1.0, 0.97, 0.3], 100: [0.2, 0.2, 0.21]}
    got = solve_length(runs, t)
    assert (got.length, got.k, got.n, got.undecided, got.unsolved_below) == (10, 3, 3, (50,), ())
    got = solve_length({10: [1.0, None, 1.0]}, t)
    assert (got.length, got.k, got.n) == (10, 2, 3)  # the failed seed counts in n
    none = solve_length({10: [0.1, 0.2], 20: [None, None]}, t)
    assert none.length is None and none.undecided == ()
    with pytest.raises(ConfigError, match="level"):
        solve_length(runs, t, level=1.0)


def test_solve_length_longest_even_when_shorter_unsolved():
    got = solve_length({100: [1.0, 1.0, 1.0], 10: [0.2, 0.2, 0.2], 50: [0.99, 0.1, 0.99]}, 0.95)
    assert (got.length, got.k, got.n, got.unsolved_below, got.undecided) == (100, 3, 3, (10,),
                                                                              (50,))


# --- compare --------------------------------------------------------------------------------

def test_paired_matches_scipy_and_hand():
    a, b = np.array([0.80, 0.85, 0.90]), np.array([0.70, 0.80, 0.80])
    got = compare(a.tolist(), b.tolist(), paired_by=([0, 1, 2], [0, 1, 2]))
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert got.test == "paired t" and (got.n_a, got.n_b) == (3, 3)
    assert got.diff == pytest.approx(d.mean())
    assert got.p == pytest.approx(2 * stats.t.sf(abs(t), 2), abs=1e-12)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert (got.p, got.low, got.high) == (pytest.approx(ref.pvalue, abs=1e-12),
                                          pytest.approx(ci.low), pytest.approx(ci.high))
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (got.low, got.high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))


def test_paired_matches_by_seed_id_not_position():
    a, b = [0.8, 0.85, 0.9, 0.6], [0.7, 0.8, 0.8, 0.65]
    aligned = compare(a, b, paired_by=([1, 2, 3, 4], [1, 2, 3, 4]))
    shuffled = compare(a, [b[2], b[0], b[3], b[1]], paired_by=([1, 2, 3, 4], [3, 1, 4, 2]))
    assert aligned == shuffled
    assert aligned.p != compare(a, b).p  # without seeds: Welch, a different test


def test_welch_matches_scipy_and_hand():
    a, b = np.array([0.8, 0.85, 0.9]), np.array([0.5, 0.6, 0.65, 0.7])
    got = compare(a.tolist(), b.tolist())
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 4
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)  # Welch-Satterthwaite
    assert got.test == "Welch t" and (got.n_a, got.n_b) == (3, 4)
    assert got.p == pytest.approx(2 * stats.t.sf(abs(t), df), abs=1e-12)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert (got.low, got.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert got.low == pytest.approx(a.mean() - b.mean() - half)


def test_unequal_seed_sets_fall_back_to_welch():
    # A failed seed on one side: the seeds no longer pair, and the difference stays that of the
    # table's means.
    a, b = [0.8, 0.85, 0.9], [0.7, None, 0.8]
    got = compare(a, b, paired_by=([0, 1, 2], [0, 1, 2]))
    assert got.test == "Welch t" and (got.n_a, got.n_b) == (3, 2)
    assert got.p == pytest.approx(stats.ttest_ind(a, [0.7, 0.8], equal_var=False).pvalue)
    assert got.diff == pytest.approx(0.85 - 0.75)


def test_random_pairs_match_scipy_and_interval_agrees_with_p():
    for _ in range(50):
        n = int(RNG.integers(2, 8))
        a, b = RNG.uniform(0, 1, n), RNG.uniform(0, 1, n)
        paired = compare(a.tolist(), b.tolist(), paired_by=(range(n), range(n)))
        welch = compare(a.tolist(), b.tolist())
        assert paired.p == pytest.approx(stats.ttest_rel(a, b).pvalue, abs=1e-12)
        assert welch.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, abs=1e-12)
        for c in (paired, welch):  # the 95% interval excludes 0 exactly when p < 0.05
            assert (c.low > 0 or c.high < 0) == (c.p < 0.05)


def test_compare_degenerate_cases():
    seeds = ([0, 1, 2], [0, 1, 2])
    shift = compare([0.9, 0.8, 0.7], [0.8, 0.7, 0.6], paired_by=seeds)  # every difference 0.1
    assert (shift.p, shift.low, shift.high) == (0.0, shift.diff, shift.diff)
    assert shift.diff == pytest.approx(0.1)
    same = compare([0.9, 0.8, 0.7], [0.9, 0.8, 0.7], paired_by=seeds)
    assert (same.diff, same.p, same.low, same.high) == (0.0, 1.0, 0.0, 0.0)
    one = compare([0.9], [0.1], paired_by=([0], [0]))
    assert (one.diff, one.p, one.low, one.test) == (pytest.approx(0.8), None, None, "paired t")
    assert compare([0.9], [0.1, 0.2]).p is None
    assert compare([], [0.1, 0.2]).diff is None
    flat = compare([1.0, 1.0], [0.5, 0.5, 0.5])  # Welch, both sides constant
    assert (flat.p, flat.low, flat.high, flat.diff) == (0.0, 0.5, 0.5, 0.5)
    assert compare([1.0, 1.0], [1.0, 1.0, 1.0]).p == 1.0
    with pytest.raises(ConfigError, match="paired_by"):
        compare([0.1, 0.2], [0.3, 0.4], paired_by=([0, 0], [0, 1]))
    with pytest.raises(ConfigError, match="paired_by"):
        compare([0.1, 0.2], [0.3, 0.4], paired_by=([0], [0, 1]))


# --- holm -----------------------------------------------------------------------------------

def test_holm_textbook():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == [] and holm([None]) == [None]
    with pytest.raises(ConfigError, match=r"pvalues\[1\]"):
        holm([0.1, 1.5])


def _holm_rejects(pvalues: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure as stated in the paper: compare p_(j) with alpha / (m - j + 1)
    in ascending order and stop at the first that is not below it."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = set()
    for j, i in enumerate(order):
        if pvalues[i] >= alpha / (len(pvalues) - j):
            break
        rejected.add(i)
    return rejected


def test_holm_adjusted_reproduces_step_down_procedure():
    for _ in range(200):
        p = (RNG.uniform(0, 0.1, int(RNG.integers(1, 9)))).tolist()
        adjusted = holm(p)
        assert all(q >= r for q, r in zip(adjusted, p)) and max(adjusted) <= 1
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, q in enumerate(adjusted) if q < alpha} == _holm_rejects(p, alpha)


# --- winners --------------------------------------------------------------------------------

def _seeds(*scores):
    return dict(enumerate(scores))


def test_winner_clear_near_tie_and_chance():
    clear = {"L=10": {"gru": _seeds(0.99, 0.98, 1.0), "rnn": _seeds(0.6, 0.7, 0.65)}}
    assert winners(clear, chance=0.5, margin=0.05) == {("gru", "L=10")}
    near = {"L=10": {"gru": _seeds(0.99, 0.90, 0.97), "rnn": _seeds(0.97, 0.96, 0.95)}}
    assert compare([0.99, 0.90, 0.97], [0.97, 0.96, 0.95], paired_by=([0, 1, 2],) * 2).p > 0.05
    assert winners(near, chance=0.5, margin=0.05) == set()
    # Parity at L=12: every model at chance. The best is consistently ahead (p = 0 by zero
    # variance) yet within chance + margin, so no winner.
    parity = {"L=12": {"lstm": _seeds(0.52, 0.521, 0.522), "rnn": _seeds(0.50, 0.501, 0.502),
                       "tcn": _seeds(0.49, 0.491, 0.492)}}
    assert compare([0.52, 0.521, 0.522], [0.50, 0.501, 0.502], paired_by=([0, 1, 2],) * 2).p == 0
    assert winners(parity, chance=0.5, margin=0.05) == set()
    assert winners(parity, chance={"L=12": 0.4}, margin=0.05) == {("lstm", "L=12")}
    with pytest.raises(ConfigError, match="chance"):
        winners(parity, chance={"L=10": 0.5}, margin=0.05)


def test_no_winner_on_tie_single_model_or_single_seed():
    tie = {"c": {"a": _seeds(1.0, 1.0, 1.0), "b": _seeds(1.0, 1.0, 1.0)}}
    assert winners(tie, chance=0.5, margin=0.05) == set()
    alone = {"c": {"a": _seeds(1.0, 1.0, 1.0), "b": _seeds(None, None, None)}}
    assert winners(alone, chance=0.5, margin=0.05) == set()
    one_seed = {"c": {"a": _seeds(1.0), "b": _seeds(0.5)}}
    assert winners(one_seed, chance=0.5, margin=0.05) == set()


def test_winner_must_beat_every_model_not_only_runner_up():
    # lstm is far ahead of the runner-up gru, but the noisy tcn (lower mean) is not separable.
    column = {"lstm": _seeds(0.90, 0.91, 0.92), "gru": _seeds(0.80, 0.81, 0.82),
              "tcn": _seeds(0.50, 0.90, 0.95)}
    assert winners({"c": column}, chance=0.5, margin=0.05) == set()
    del column["tcn"]
    assert winners({"c": column}, chance=0.5, margin=0.05) == {("lstm", "c")}


def test_holm_removes_marginal_winner_across_columns():
    a, b = _seeds(0.80, 0.85, 0.90), _seeds(0.70, 0.80, 0.80)  # paired p = 0.0377
    p = compare(list(a.values()), list(b.values()), paired_by=(list(a), list(b))).p
    assert 0.025 < p < 0.05
    assert winners({"L=10": {"x": a, "y": b}}, chance=0.5, margin=0.05) == {("x", "L=10")}
    table = {f"L={n}": {"x": a, "y": b} for n in (10, 20, 40)}
    assert winners(table, chance=0.5, margin=0.05) == set()
    # A decisive column keeps its bold under the same correction.
    table["L=80"] = {"x": _seeds(0.99, 0.98, 1.0), "y": _seeds(0.5, 0.55, 0.6)}
    assert winners(table, chance=0.5, margin=0.05) == {("x", "L=80")}


# --- pairwise -------------------------------------------------------------------------------

def _frame():
    rows = []
    for length, base in ((10, 0.9), (50, 0.7)):
        for model, shift in (("rnn", 0.0), ("gru", 0.1), ("tcn", 0.05)):
            for seed in range(3):
                score = min(1.0, base + shift + float(RNG.normal(0, 0.03)))
                rows.append({"task": "adding", "model": model, "length": length, "seed": seed,
                             "score": score})
    return pd.DataFrame(rows)


def test_pairwise_table():
    frame = _frame()
    frame.loc[(frame["model"] == "tcn") & (frame["length"] == 50) & (frame["seed"] == 1),
              "score"] = np.nan  # one failed seed
    table = pairwise(frame)
    assert list(table.columns) == PAIRWISE_COLUMNS
    assert list(zip(table["length"], table["a"], table["b"])) == [
        (n, a, b) for n in (10, 50) for a, b in (("rnn", "gru"), ("rnn", "tcn"), ("gru", "tcn"))]
    for row in table.itertuples():
        def scores(model, row=row):
            return frame[(frame["model"] == model) & (frame["length"] == row.length)]
        a, b = scores(row.a), scores(row.b)
        expect = compare(a["score"].tolist(), b["score"].tolist(),
                         paired_by=(a["seed"].tolist(), b["seed"].tolist()))
        assert (row.diff, row.p, row.test) == (expect.diff, expect.p, expect.test)
    assert table["test"].tolist().count("Welch t") == 2  # the pairs with the failed tcn seed
    assert table["p_holm"].tolist() == pytest.approx(holm(table["p"].tolist()))
    one_seed = pairwise(frame[frame["seed"] == 0])
    assert one_seed["p"].isna().all() and one_seed["low"].dtype == float
    assert one_seed["diff"].notna().all()


def test_pairwise_rejects_bad_frames():
    frame = _frame()
    with pytest.raises(ConfigError, match="score"):
        pairwise(frame.drop(columns="score"))
    with pytest.raises(ConfigError, match="one task"):
        pairwise(frame.assign(task=["adding", "parity"] * (len(frame) // 2)))
    with pytest.raises(ConfigError, match="more than one score"):
        pairwise(pd.concat([frame, frame.iloc[:1]]))
