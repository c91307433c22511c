"""Accuracy tables (seqbench.results.accuracy, .cellstats): bold only a significant winner, k/n with
failed seeds in n, flags exactly where the records say so, the shortcut and chance rows, solve
length by seed majority, the findings and pairwise.csv."""
from __future__ import annotations

import json
import tempfile

import pandas as pd
from conftest import fake_record

from seqbench.results.accuracy import SHORTCUT_ROW, study_results, task_tables
from seqbench.results.cellstats import MARGIN
from seqbench.results.report import write_summary
from seqbench.results.store import Store, cell_frame

SHORTCUT = {"family": "window", "learner": "lookup", "k": 1, "ngrams": None, "alpha": None,
            "val_score": 0.5, "window_score": 0.5, "pooled_score": 0.5, "train_samples": 256,
            "seconds": 0.01}


def records(scores: dict[str, list], task: str = "parity", length: int = 4, **fields):
    """One record per (model, seed) with the given test scores (None: a diverged seed)."""
    out = []
    for model, seeds in scores.items():
        for seed, score in enumerate(seeds):
            r = fake_record(task, model, length, score, seed=seed,
                            status="diverged" if score is None else "budget")
            for name, value in fields.items():
                setattr(r, name, value(model, seed) if callable(value) else value)
            out.append(r)
    return out


def table(recs):
    """The task's accuracy table, through a store (every record validated on reading)."""
    return task_tables(stored(recs))[0]


def stored(recs) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        for r in recs:
            store.save(r)
        loaded = store.read()
    assert not loaded.problems
    return cell_frame(loaded.records.values())


def test_every_model_at_chance_bolds_nothing_and_says_why():
    # consistently ordered (a paired test would call lstm better), but all within chance + margin
    t = table(records({"rnn": [0.50, 0.501, 0.502], "lstm": [0.51, 0.511, 0.512],
                       "gru": [0.49, 0.491, 0.492]}))
    assert 0.512 <= 0.5 + MARGIN
    assert t.best == set()
    assert "L=4 at chance" in t.notes and "significantly better" in t.notes


def test_a_clear_winner_over_three_seeds_is_bold():
    t = table(records({"rnn": [0.60, 0.65, 0.70], "lstm": [0.97, 0.98, 0.99],
                       "gru": [0.70, 0.72, 0.75]}))
    assert t.best == {("lstm", "L=4")}
    assert "no bold" not in t.notes
    # a small spread keeps the bold; one seed far off takes it away
    t = table(records({"rnn": [0.60, 0.65, 0.70], "lstm": [0.99, 0.99, 0.96],
                       "gru": [0.70, 0.72, 0.75]}))
    assert t.best == {("lstm", "L=4")}
    t = table(records({"rnn": [0.60, 0.65, 0.70], "lstm": [0.99, 1.0, 0.5],
                       "gru": [0.70, 0.72, 0.75]}))
    assert t.best == set() and "L=4 not significant" in t.notes


def test_k_of_n_counts_failed_seeds_in_n():
    t = table(records({"rnn": [1.0, 0.995, None], "lstm": [1.0, 0.5, 0.2]}))
    assert t.text[("rnn", "L=4")].endswith(" 2/3 (1 diverged)")
    assert t.text[("lstm", "L=4")].endswith(" 1/3")
    assert "n=3 seeds" in t.caption


def test_flags_appear_exactly_where_the_records_say():
    recs = records(
        {"rnn": [0.6, 0.7, 0.8], "lstm": [0.9, 0.95, 0.99]},
        seen_fraction=lambda model, seed: 0.9 if model == "rnn" else 0.1 * seed,
        convergence=lambda model, seed: "still improving" if (model, seed) in {
            ("lstm", 0), ("lstm", 2)} else "plateau",
        converged=lambda model, seed: (model, seed) not in {("lstm", 0), ("lstm", 2)})
    t = table(recs)
    rnn, lstm = t.text[("rnn", "L=4")], t.text[("lstm", "L=4")]
    assert "†" in rnn and "†" not in lstm  # mean seen fraction 0.9 against 0.1
    assert "↑2/3" in lstm and "↑" not in rnn
    assert "‡" not in rnn + lstm and "shortcut" not in t.caption
    assert "memorisable" in t.caption and "still improving" in t.caption
    # no flag at all: no legend either
    plain = table(records({"rnn": [0.6, 0.7, 0.8], "lstm": [0.9, 0.95, 0.99]}))
    assert not any(m in plain.caption for m in ("†", "‡", "↑"))


def test_shortcut_row_and_flag_follow_the_shortcut_score():
    near, far = 0.99 - 0.04, 0.99 - 0.06  # parity solves at 0.99; flagged at >= threshold - 0.05
    for short, flagged in ((near, True), (far, False)):
        t = table(records({"rnn": [0.6, 0.7, 0.8], "lstm": [0.9, 0.95, 0.99]},
                          shortcut=SHORTCUT | {"score": short}))
        assert t.rows[-1] == SHORTCUT_ROW
        assert t.text[(SHORTCUT_ROW, "L=4")] == f"{short:.3f}"
        assert all(("‡" in t.text[(m, "L=4")]) == flagged for m in ("rnn", "lstm"))


def test_chance_row_only_where_chance_varies_by_length():
    both = [r for n in (8, 24) for r in records({"rnn": [0.3, 0.4], "lstm": [0.5, 0.6]},
                                                task="cycle_nav", length=n)]
    t = table(both)
    chance = {r.length: r.chance for r in both}
    assert chance[8] != chance[24]
    assert t.rows[-1] == "chance"
    assert t.text[("chance", "L=8")] == f"{chance[8]:.4g}"
    flat = table([r for n in (2, 4) for r in records({"rnn": [0.3, 0.4]}, length=n)])
    assert "chance" not in flat.rows


def test_solve_length_needs_the_interval_above_the_threshold():
    recs = (records({"rnn": [1.0, 1.0, 1.0], "lstm": [1.0, 0.5, 0.5]}, length=2)
            + records({"rnn": [1.0, 0.5, None], "lstm": [1.0, 1.0, 0.999]}, length=4))
    solve = task_tables(stored(recs))[-1]
    assert solve.title == "solve length"
    # rnn: solved at L=2, undecided at L=4 (1 of 2 scored seeds); lstm: L=2 straddles, L=4 solved
    assert solve.text[("rnn", "parity")] == "2 (3/3; L=4 undecided)"
    assert solve.text[("lstm", "parity")] == "4 (3/3)"
    lone = task_tables(stored(records({"rnn": [1.0]}, length=2)))[-1]
    assert lone.text[("rnn", "parity")] == "— (L=2 undecided)"  # one seed decides nothing
    assert "t-interval" in solve.caption


def test_findings_and_pairwise_csv(tmp_path):
    store = Store(tmp_path / "found")
    recs = records({"rnn": [0.60, 0.65, 0.70], "lstm": [0.97, 0.98, 0.99],
                    "gru": [0.70, 0.72, 0.75]})
    recs += records({"rnn": [0.5, 0.5, 0.5], "lstm": [0.5, 0.5, 0.5]}, length=8)
    for r in recs:
        store.save(r)
    summary = write_summary(store, store.read())
    findings = summary.split("## findings")[1].split("\n## ")[0]
    assert "- L=4: **lstm 0.980" in findings
    assert "- L=8: no significant difference (tied" in findings
    pairs = pd.read_csv(store.root / "pairwise.csv")
    assert len(pairs) == 3 + 1  # every pair at L=4, the one pair at L=8
    top = pairs[(pairs["length"] == 4) & (pairs["a"] == "rnn") & (pairs["b"] == "lstm")]
    assert top["diff"].iloc[0] < 0 and (pairs["p_holm"] >= pairs["p"]).all()
    assert "## parity: significant differences" in summary


def test_studies_carry_the_task_for_grouping():
    recs = records({"rnn": [0.6, 0.7, 0.8], "lstm": [0.9, 0.95, 0.99]})
    tables = task_tables(stored(recs))
    assert {t.task for t in tables if t.title != "solve length"} == {"parity"}
    assert next(t for t in tables if t.title == "solve length").task == ""
    assert [s.title for s in study_results(stored(recs))] == ["parity"]


def test_report_keeps_the_runs_env_json(tmp_path):
    """A report rewrites env.json from what is stored: the run's own env.json (its executor and
    workers, which no record holds) is kept, with plug-ins from the records; without one, a
    record's env."""
    store = Store(tmp_path / "kept")
    for r in records({"rnn": [0.6, 0.7, 0.8]}):
        store.save(r)
    write_summary(store, store.read())
    from_record = json.loads((store.root / "env.json").read_text())
    assert from_record == store.read().records[next(iter(store.read().records))].env
    run_env = {"executor": "local", "workers": 2, "plugins": [{"stale": True}]}
    (store.root / "env.json").write_text(json.dumps(run_env))
    write_summary(store, store.read())
    assert json.loads((store.root / "env.json").read_text()) == {"executor": "local", "workers": 2}
