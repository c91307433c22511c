"""Length generalisation, key-stable added() fields, bidirectional refusal and sweep variants.

Covers seqbench.strict.added/key_payload, seqbench.cell.config.Generalise and CellConfig.generalise, the
length-generalisation protocol of seqbench.cell.train, the record/store/report/plot layers that show it,
and `[variants.NAME]` / `[generalise.TASK]` in sweeps. Training budgets are tiny (a few steps at
a 2000-parameter budget); reports and plots use hand-made records where that is enough.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import fake_record, make_cell, shown, spy_on_run_cell

import seqbench.cell.train
import seqbench.results.plots
import seqbench.sweeps.executors
from seqbench.cell.config import PROTOCOL, CellConfig, Generalise
from seqbench.cell.record import CellRecord
from seqbench.cell.step import TrainStep
from seqbench.cell.train import held_out, run_cell
from seqbench.models import FAMILIES
from seqbench.results.accuracy import task_tables
from seqbench.results.plots import generalisation_curve, plot_folder
from seqbench.results.report import markdown
from seqbench.results.store import Store, cell_frame, generalisation_frame, row
from seqbench.results.tables import best_sets, headline, is_generalisation
from seqbench.strict import ConfigError, added, key_payload
from seqbench.sweeps.driver import SweepPlan, run_sweep
from seqbench.sweeps.spec import load_spec
from seqbench.tasks import TASKS, get_task
from seqbench.tasks.parity import Parity

RECORDS_V1 = Path(__file__).resolve().parent / "data" / "records_v1"  # a store of old records


def lg_cell(task: str = "parity", model: str = "rnn", length: int = 4, lengths=(6, 8), *,
            train: str = "range", samples: int = 32, seed: int = 0, hparams: dict | None = None,
            **train_settings) -> CellConfig:
    """A tiny cell with a length-generalisation protocol."""
    data = make_cell(task, model, length, seed=seed, hparams=hparams, **train_settings).to_dict()
    data["generalise"] = {"lengths": list(lengths), "train": train, "samples": samples}
    return CellConfig.from_dict(data)


# Keys: added() fields ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["transformer", "tcn", "rnn", "lstm", "gru", "lru"])
def test_key_without_generalise_is_the_plain_config_hash(model):
    cfg = make_cell("parity", model, 4, seed=3)
    plain = cfg.to_dict()
    assert plain.pop("generalise") is None
    # the recurrent families' own added() fields hold their defaults too: out of the key
    hp_added = {f.name for f in dataclasses.fields(cfg.hparams) if f.metadata.get("added")}
    plain["hparams"] = {k: v for k, v in plain["hparams"].items() if k not in hp_added}
    train_added = {f.name for f in dataclasses.fields(cfg.train) if f.metadata.get("added")}
    assert "timeout_s" in train_added
    plain["train"] = {k: v for k, v in plain["train"].items() if k not in train_added}
    if model in ("rnn", "lstm", "gru"):
        assert "bidirectional" in hp_added
    assert key_payload(cfg) == plain
    payload = {"config": plain, "task_version": get_task("parity").version,
               "model_version": FAMILIES[model].version, "protocol": PROTOCOL}
    assert cfg.payload() == payload
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert cfg.key() == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_generalise_enters_the_key_and_each_setting_counts():
    plain = make_cell("parity", "rnn", 4)
    keys = {
        plain.key(),
        lg_cell(lengths=(6, 8)).key(),
        lg_cell(lengths=(6, 10)).key(),
        lg_cell(lengths=(6, 8), train="fixed").key(),
        lg_cell(lengths=(6, 8), samples=64).key(),
    }
    assert len(keys) == 5
    # equal protocols give equal keys, however they were written
    same = CellConfig.from_dict(plain.to_dict() | {"generalise": {"lengths": [6, 8], "samples": 32}})
    assert same.key() == lg_cell(lengths=(6, 8)).key()
    assert key_payload(same)["generalise"] == {"lengths": [6, 8], "train": "range", "samples": 32}


def test_added_field_is_left_out_only_while_it_holds_its_default():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        a: int = 1
        b: tuple = added(())

    @dataclasses.dataclass(frozen=True)
    class Outer:
        x: int
        inner: Inner = dataclasses.field(default_factory=Inner)
        extra: str | None = added(None)

    assert key_payload(Outer(1)) == {"x": 1, "inner": {"a": 1}}
    assert key_payload(Outer(1, Inner(2, (3, 4)), "e")) == {
        "x": 1, "inner": {"a": 2, "b": [3, 4]}, "extra": "e"}
    # a non-added field at its default is kept
    assert "a" in key_payload(Outer(1))["inner"]


def test_bidirectional_false_keeps_the_key_true_changes_it():
    base = make_cell("parity", "lstm", 4)
    assert make_cell("parity", "lstm", 4, hparams={"bidirectional": False}).key() == base.key()
    assert make_cell("parity", "lstm", 4, hparams={"bidirectional": True}).key() != base.key()


def test_records_of_the_previous_schema_are_named_and_refused():
    """Records stored by seqbench 0.1 (schema 1: copies of five committed quick-sweep records of
    that time) are never trusted: each is named with the reason, and nothing is loaded."""
    loaded = Store(RECORDS_V1).read()
    assert loaded.records == {} and len(loaded.problems) == 5
    for problem in loaded.problems:
        assert problem.path.parent == RECORDS_V1 / "cells"
        assert "schema 1: written by another seqbench version" in problem.reason


def test_record_round_trips_with_generalise(tmp_path):
    record = run_cell(lg_cell(steps=2, eval_every=2, samples=8))
    store = Store(tmp_path)
    path = store.save(record)
    loaded = store.load()[record.key]
    assert loaded.config["generalise"] == {"lengths": [6, 8], "train": "range", "samples": 8}
    assert loaded.ood_scores == record.ood_scores and loaded.ood_score == record.ood_score
    # editing the stored protocol breaks the key: the record is not trusted
    data = json.loads(path.read_text())
    data["config"]["generalise"]["lengths"] = [6, 10]
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="does not match its config"):
        assert store.load() == {}


# Validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "length", "generalise", "message"),
    [
        ("parity", 4, {"lengths": [4, 8]}, (r"^generalise\.lengths\[0\]: must be longer than the "
                                            r"training length 4, got 4")),
        ("parity", 4, {"lengths": [8, 3]}, r"^generalise\.lengths: must be strictly increasing"),
        ("parity", 4, {"lengths": [6, 6]}, r"^generalise\.lengths: must be strictly increasing"),
        ("parity", 4, {"lengths": []}, r"^generalise\.lengths: must not be empty"),
        ("parity", 4, {"lengths": [6], "colour": 1}, (r"^generalise\.colour: unknown key; allowed: "
                                                     r"lengths, samples, train")),
        ("parity", 4, {"lengths": [6], "train": "both"}, (r"^generalise\.train: unknown value "
                                                         r"'both'; allowed: fixed, range")),
        ("parity", 4, {"lengths": [6], "samples": 0}, r"^generalise\.samples: must be >= 1, got 0"),
        ("parity", 4, {"train": "range"}, r"^generalise\.lengths: required key is missing"),
        ("parity", 4, {"lengths": [6.5]}, r"^generalise\.lengths\[0\]: expected int"),
        ("parity", 4, 8, r"^generalise: expected a table"),
        ("dyck", 10, {"lengths": [12, 15]}, (r"^generalise\.lengths\[1\]: task 'dyck' needs an "
                                            r"even length")),
    ],
)
def test_generalise_is_validated(task, length, generalise, message):
    data = make_cell(task, "rnn", length).to_dict() | {"generalise": generalise}
    with pytest.raises(ConfigError, match=message):
        CellConfig.from_dict(data)


def test_generalise_mapping_is_parsed_when_built_directly():
    cfg = CellConfig(task="parity", model="rnn", length=4, generalise={"lengths": [6]})
    assert cfg.generalise == Generalise(lengths=(6,))
    with pytest.raises(ConfigError, match=r"^generalise\.lengths\[0\]: must be longer"):
        CellConfig(task="parity", model="rnn", length=4, generalise=Generalise(lengths=(3,)))


def test_train_lengths_and_max_length():
    assert lg_cell("parity", length=5, lengths=(9,)).train_lengths() == [1, 2, 3, 4, 5]
    assert lg_cell("dyck", length=14, lengths=(16,)).train_lengths() == [10, 12, 14]
    assert lg_cell("even_pairs", length=4, lengths=(6,)).train_lengths() == [2, 3, 4]
    assert lg_cell("parity", length=5, lengths=(9,), train="fixed").train_lengths() == [5]
    assert make_cell("parity", "rnn", 5).train_lengths() == [5]
    assert lg_cell("parity", length=4, lengths=(6, 12)).max_length() == 12
    assert make_cell("parity", "rnn", 5).max_length() == 5


def test_sweep_plan_tokens_average_over_the_training_lengths():
    steps, batch = 4, 8
    assert SweepPlan.tokens(lg_cell("parity", length=4)) == steps * batch * 2.5  # mean of 1..4
    assert SweepPlan.tokens(lg_cell("dyck", length=14, lengths=(16,))) == steps * batch * 12
    assert SweepPlan.tokens(lg_cell("parity", length=4, train="fixed")) == steps * batch * 4
    copy = get_task("copy")
    assert SweepPlan.tokens(lg_cell("copy", length=3, lengths=(5,))) == round(
        steps * batch * sum(copy.seq_len(n) for n in (1, 2, 3)) / 3)


# Training ------------------------------------------------------------------------------------------


def spy_samples(monkeypatch) -> list[tuple[int, int]]:
    """(length, batch size) of every parity batch drawn."""
    calls = []
    original = Parity.sample

    def sample(self, length, batch_size, generator, device):
        calls.append((length, batch_size))
        return original(self, length, batch_size, generator, device)

    monkeypatch.setattr(Parity, "sample", sample)
    return calls


def spy_steps(monkeypatch) -> list[int]:
    """The length of every training batch a TrainStep takes."""
    lengths = []
    original = TrainStep.batch

    def batch(self, length):
        lengths.append(length)
        return original(self, length)

    monkeypatch.setattr(TrainStep, "batch", batch)
    return lengths


def test_training_lengths_are_drawn_from_the_range(monkeypatch):
    calls, train = spy_samples(monkeypatch), spy_steps(monkeypatch)
    cfg = lg_cell(length=4, lengths=(6, 8), samples=32, steps=12, eval_every=6, batch_size=8,
                  eval_samples=16, seed=1)
    record = run_cell(cfg)
    assert record.status in ("solved", "budget"), record.error
    assert len(train) == 12
    assert set(train) <= {1, 2, 3, 4} and len(set(train)) >= 3
    draws = torch.Generator().manual_seed(2 * cfg.seed)
    assert train == [[1, 2, 3, 4][int(torch.randint(4, (), generator=draws))] for _ in range(12)]
    # held-out sets: validation and test at N, then the validation and the test set at each test
    # length with `samples` sequences each, then the shortcut learner's training sequences at N
    assert [(n, b) for n, b in calls if b in (16, 32, 2048)] == [
        (4, 16), (4, 16), (6, 32), (8, 32), (6, 32), (8, 32), (4, 2048)]
    # training batches come in blocks of 16 steps of one length (seqbench.cell.step.draw)
    assert all(b == 8 * 16 for n, b in calls if b not in (16, 32, 2048))


def test_fixed_protocol_trains_at_n_only(monkeypatch):
    train = spy_steps(monkeypatch)
    record = run_cell(lg_cell(length=3, lengths=(5,), train="fixed", samples=8, steps=5,
                              batch_size=4, eval_every=5, eval_samples=16))
    assert record.status in ("solved", "budget"), record.error
    assert train == [3] * 5


@pytest.mark.parametrize("threshold", [0.0, 1.01])
def test_generalisation_cell_runs_its_whole_budget_and_is_solved_by_the_validation_mean(
        monkeypatch, threshold):
    monkeypatch.setattr(Parity, "solve_threshold", threshold)
    # without the protocol, a threshold of 0 stops training at the first evaluation
    plain = run_cell(make_cell("parity", "rnn", 4, steps=6, eval_every=3))
    assert (plain.steps, plain.status) == ((3, "solved") if threshold == 0 else (6, "budget"))
    record = run_cell(lg_cell(length=4, lengths=(6, 8), samples=32, steps=6, eval_every=3))
    assert record.error is None
    assert record.steps == 6 and [h["step"] for h in record.history] == [3, 6]
    assert len(record.ood_scores) == 2
    assert all(0 <= s <= 1 and (s * 32).is_integer() for s in record.ood_scores)
    assert record.ood_score == pytest.approx(sum(record.ood_scores) / 2)
    assert record.solve_threshold == threshold
    val = sum(record.ood_val_scores) / 2
    assert record.solved == (val >= threshold)
    assert record.status == ("solved" if val >= threshold else "budget")
    assert record.score is not None  # the in-distribution score is kept beside
    assert record.seq_len == 4


def test_generalisation_cell_is_not_solved_by_in_distribution_success(monkeypatch):
    """A perfect in-distribution score with poor scores at the test lengths stays `budget`."""
    real = seqbench.cell.train.evaluate
    # validation at steps 2 and 4, test at N, then validation and test at lengths 6 and 8
    scores = iter([(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.3, 0.5), (0.3, 0.5), (0.3, 0.625),
                   (0.3, 0.625)])

    def evaluate(model, task, batches):
        real(model, task, batches)
        return next(scores)

    monkeypatch.setattr(seqbench.cell.train, "evaluate", evaluate)
    record = run_cell(lg_cell(length=4, lengths=(6, 8), samples=8, steps=4, eval_every=2))
    assert record.score == 1.0 and record.steps == 4
    assert record.ood_scores == record.ood_val_scores == [0.5, 0.625]
    assert record.ood_score == 0.5625
    assert (record.status, record.solved) == ("budget", False)


def batches_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        and (x.mask is None) == (y.mask is None)
        and (x.mask is None or torch.equal(x.mask, y.mask))
        for x, y in zip(a, b))


@pytest.mark.parametrize(("task_name", "train", "n", "samples"), [
    ("parity", 4, 8, 32), ("copy", 4, 6, 300), ("dyck", 10, 12, 20)])
def test_held_out_test_set_is_the_fixed_length_cells_set(task_name, train, n, samples):
    task = get_task(task_name)
    lg = lg_cell(task_name, length=train, lengths=(n,), samples=samples, seed=2)
    fixed = make_cell(task_name, "rnn", n, seed=2, eval_samples=samples)
    ours = held_out(task, lg, "test", n, samples)
    assert batches_equal(ours, held_out(task, fixed))
    assert sum(len(b.inputs) for b in ours) == samples
    assert all(b.inputs.shape[1] == task.seq_len(n) for b in ours)
    # and it is not the cell's own in-distribution set, nor another seed's
    assert not batches_equal(ours[:1], held_out(task, lg)[:1])
    other = make_cell(task_name, "rnn", n, seed=3, eval_samples=samples)
    assert not batches_equal(ours, held_out(task, other))


def test_test_lengths_are_scored_on_the_fixed_length_cells_sequences(monkeypatch):
    seen = []
    real = seqbench.cell.train.evaluate

    def evaluate(model, task, batches):
        seen.append(batches)
        return real(model, task, batches)

    monkeypatch.setattr(seqbench.cell.train, "evaluate", evaluate)
    cfg = lg_cell(length=4, lengths=(6, 8), samples=24, steps=2, eval_every=2, seed=1)
    run_cell(cfg)
    parity = get_task("parity")
    # the last evaluations: validation and test at 6, then at 8
    for (val, test), n in zip((seen[-4:-2], seen[-2:]), (6, 8)):
        fixed = make_cell("parity", "rnn", n, seed=1, eval_samples=24)
        assert batches_equal(val, held_out(parity, fixed, "validation"))
        assert batches_equal(test, held_out(parity, fixed, "test"))


def test_model_is_built_for_the_longest_test_length(monkeypatch):
    built = []
    real = seqbench.cell.train.build_model
    shrink = {"to": None}

    def build_model(model, io, budget, hp, max_len):
        built.append(max_len)
        return real(model, io, budget, hp, shrink["to"] or max_len)

    monkeypatch.setattr(seqbench.cell.train, "build_model", build_model)
    learned = {"positions": "learned"}
    cfg = lg_cell(model="transformer", length=4, lengths=(6, 12), samples=8, hparams=learned,
                  steps=2, eval_every=2)
    record = run_cell(cfg)
    assert built == [12]
    assert record.status in ("solved", "budget"), record.error
    assert len(record.ood_scores) == 2
    # a learned table built for N alone could not read the test lengths (the check can fail)
    shrink["to"] = 4
    short = run_cell(cfg)
    assert short.status == "error" and "learned positions cover 4 steps" in short.error
    shrink["to"] = None
    fixed = run_cell(make_cell("parity", "transformer", 4, hparams=learned, steps=2))
    assert built[-1] == 4 and fixed.status in ("solved", "budget")
    # a TCN's receptive field covers the longest test length, not just N
    tcn = run_cell(lg_cell(model="tcn", length=4, lengths=(16,), samples=8,
                           hparams={"kernel_size": 2}, steps=2, eval_every=2))
    plain = run_cell(make_cell("parity", "tcn", 4, hparams={"kernel_size": 2}, steps=2))
    assert tcn.model_info["receptive_field"] >= 16 > plain.model_info["receptive_field"] >= 4


# Bidirectional models ----------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", sorted(n for n, c in TASKS.items() if not c.bidirectional_ok))
def test_bidirectional_refused_on_causal_tasks(task_name):
    allowed = sorted(n for n, c in TASKS.items() if c.bidirectional_ok)
    length = 4
    with pytest.raises(ConfigError) as info:
        CellConfig(task=task_name, model="lstm", length=length, hparams={"bidirectional": True})
    message = str(info.value)
    assert message.startswith("hparams.bidirectional: ")
    assert f"task {task_name!r} is causal" in message
    assert message.endswith("allowed only on: " + ", ".join(allowed))


def test_bidirectional_refused_on_copy_names_the_allowed_tasks():
    with pytest.raises(ConfigError, match=r"^hparams\.bidirectional: task 'copy' is causal") as info:
        CellConfig(task="copy", model="lstm", length=4, hparams={"bidirectional": True})
    allowed = str(info.value).split("allowed only on: ")[1].split(", ")
    assert "parity" in allowed and "copy" not in allowed and "dyck" in allowed


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_bidirectional_runs_on_parity(model):
    cfg = make_cell("parity", model, 4, hparams={"bidirectional": True}, steps=2)
    record = run_cell(cfg)
    assert record.status in ("solved", "budget"), record.error
    assert record.model_info.get("bidirectional") is True


# Records, store and tables -----------------------------------------------------------------------


LG = "parity (length generalisation: range to N, tests L=6,8)"  # the tables' name for these cells


def lg_record(model: str, seed: int, id_score: float | None, ood: list[float] | None, *,
              hpset: str = "", lr: float = 3e-3, variant: str = "", status: str = "budget",
              length: int = 4, lengths=(6, 8)) -> CellRecord:
    """A stored-looking length-generalisation record with chosen scores (no training)."""
    record = fake_record("parity", model, length, id_score, seed=seed, status=status)
    cfg = lg_cell(model=model, length=length, lengths=lengths, seed=seed, lr=lr)
    record.config, record.key_payload, record.key = cfg.to_dict(), cfg.payload(), cfg.key()
    record.hpset, record.variant = hpset, variant
    record.ood_chance = [0.5] * len(lengths)
    record.ood_scores = list(ood or [])
    record.ood_score = sum(ood) / len(ood) if ood else None
    record.val_score, record.ood_val_scores = id_score, list(ood or [])  # validation as test
    if status == "solved":
        record.solved = True
    return record


def test_row_and_ood_rows():
    record = lg_record("transformer", 1, 1.0, [0.75, 0.5], variant="tf-rope", hpset="fast")
    flat = row(record)
    assert record.model_name == "tf-rope"
    assert (flat["model"], flat["family"], flat["hpset"]) == ("tf-rope", "transformer", "fast")
    assert (flat["generalise.lengths"], flat["generalise.train"], flat["generalise.samples"]) == (
        "6 8", "range", 32)
    assert flat["ood_score"] == 0.625 and flat["score"] == 1.0
    assert flat["variant"] == "tf-rope" and "ood_scores" not in flat
    assert ood_rows(record) == [
        {"key": record.key, "task": "parity", "model": "tf-rope", "hpset": "fast", "seed": 1,
         "train_length": 4, "status": "budget", "length": n, "score": s, "chance": 0.5}
        for n, s in ((6, 0.75), (8, 0.5))]
    plain = fake_record("parity", "rnn", 4, 0.5)
    assert plain.model_name == "rnn" and row(plain)["model"] == row(plain)["family"] == "rnn"
    assert not any(k.startswith("generalise.") for k in row(plain))
    assert ood_rows(plain) == []


def test_ood_rows_keep_the_scores_before_a_failure():
    record = lg_record("rnn", 0, 0.9, [0.7], status="oom")  # ran out of memory at length 8
    assert [(r["length"], r["score"], r["status"]) for r in ood_rows(record)] == [(6, 0.7, "oom")]


def test_store_writes_generalisation_csv(tmp_path):
    store = Store(tmp_path / "lg")
    records = [lg_record(m, s, 0.9, [0.6 + 0.1 * s, 0.5]) for m in ("rnn", "gru") for s in (0, 1)]
    for record in records:
        store.save(record)
    store.save(fake_record("adding", "rnn", 8, 0.5))  # not a generalisation cell: no rows
    store.write_tables(store.read(), {})
    df = cell_frame(store.load().values())
    assert len(df) == 5
    gdf = pd.read_csv(store.root / "generalisation.csv")
    assert len(gdf) == 8
    assert set(gdf["key"]) == {r.key for r in records}
    assert sorted(gdf.columns) == sorted(["key", "task", "model", "hpset", "seed", "train_length",
                                          "status", "length", "score", "chance"])
    assert gdf.groupby("length")["score"].mean().to_dict() == pytest.approx({6: 0.65, 8: 0.5})
    assert generalisation_frame(store.load().values()).shape == (8, 10)


def test_store_without_generalisation_writes_no_generalisation_csv(tmp_path):
    store = Store(tmp_path / "plain")
    store.save(fake_record("parity", "rnn", 4, 0.5))
    store.write_tables(store.read(), {})
    assert (store.root / "results.csv").exists()
    assert not (store.root / "generalisation.csv").exists()
    assert generalisation_frame(store.load().values()).empty


def frame(records: list[CellRecord]) -> pd.DataFrame:
    return cell_frame(records)


def ood_rows(record: CellRecord) -> list[dict]:
    return generalisation_frame([record]).to_dict("records")


def test_headline_is_the_test_mean_for_generalisation_cells_only():
    df = frame([lg_record("rnn", 0, 1.0, [0.5, 0.25]), fake_record("parity", "gru", 4, 0.75)])
    assert dict(zip(df["model"], is_generalisation(df))) == {"rnn": True, "gru": False}
    h = headline(df).set_index("model")
    assert h.loc["rnn", "score"] == 0.375 and h.loc["gru", "score"] == 0.75
    assert h.loc["rnn", "id_score"] == 1.0 and pd.isna(h.loc["gru", "id_score"])
    plain = frame([fake_record("parity", "gru", 4, 0.75)])
    assert not is_generalisation(plain).any()
    assert headline(plain) is plain


def test_best_sets_by_validation_ties_to_first_name_failures_kept():
    records = [  # validation scores equal the test scores here (lg_record)
        # rnn: "slow" wins on the test-length mean although "fast" wins in distribution
        lg_record("rnn", 0, 1.0, [0.5, 0.5], hpset="fast", lr=1e-2),
        lg_record("rnn", 1, 1.0, [0.6, 0.6], hpset="fast", lr=1e-2),
        lg_record("rnn", 0, 0.7, [0.9, 0.8], hpset="slow", lr=1e-3),
        lg_record("rnn", 1, 0.7, [0.7, 0.6], hpset="slow", lr=1e-3),
        # gru: equal means: the first set by name ("fast")
        lg_record("gru", 0, 0.5, [0.5, 0.5], hpset="slow", lr=1e-3),
        lg_record("gru", 0, 0.5, [0.75, 0.25], hpset="fast", lr=1e-2),
        # lstm: a failed seed does not count, and a set of failures only never wins
        lg_record("lstm", 0, None, None, hpset="fast", lr=1e-2, status="diverged"),
        lg_record("lstm", 1, 0.5, [0.4, 0.4], hpset="fast", lr=1e-2),
        lg_record("lstm", 0, 0.5, [0.3, 0.3], hpset="slow", lr=1e-3),
        # tcn: every seed of every set failed: all rows stay
        lg_record("tcn", 0, None, None, hpset="fast", lr=1e-2, status="oom"),
        lg_record("tcn", 0, None, None, hpset="slow", lr=1e-3, status="error"),
    ]
    best = best_sets(headline(frame(records)))
    chosen = best.groupby("model")["hpset"].apply(lambda s: sorted(s)).to_dict()
    assert chosen == {"rnn": ["slow", "slow"], "gru": ["fast"], "lstm": ["fast", "fast"],
                      "tcn": ["fast", "slow"]}
    assert len(best) == 2 + 1 + 2 + 2
    # the tables pick the same sets
    tables = {t.title: t for t in task_tables(frame(records), pd.DataFrame(
        [row for r in records for row in ood_rows(r)]))}
    text = tables[LG].text
    assert text[("rnn", "N=4")].endswith("[slow]") and text[("gru", "N=4")].endswith("[fast]")
    assert text[("lstm", "N=4")] == "0.400 0/2 (1 diverged) [fast]"
    assert sorted(text[("tcn", "N=4")].split(", ")) == ["1 error", "1 oom"]
    # and the by-test-length table shows the chosen set's seeds only
    by_length = tables[f"{LG} by test length"]
    assert by_length.columns == ["N=4 (train)", "L=6", "L=8"]
    assert [by_length.text[("rnn", c)] for c in by_length.columns] == [
        shown([0.7, 0.7], 0), shown([0.9, 0.7], 0), shown([0.8, 0.6], 0)]
    assert [by_length.text[("gru", c)] for c in by_length.columns] == [
        "0.500 0/1", "0.750 0/1", "0.250 0/1"]


def test_best_sets_without_sets_keeps_every_row():
    df = frame([fake_record("parity", "rnn", 2, 0.5), fake_record("parity", "rnn", 2, 0.9, seed=1),
                fake_record("parity", "gru", 2, None, status="error")])
    assert len(best_sets(df)) == 3


def parse_table(summary: str, title: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """Caption, column headers and model -> cell texts (bold removed) of a markdown table."""
    section = summary.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    caption = section.strip().splitlines()[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    header, *body = ([c.strip().replace("**", "") for c in row] for row in rows)
    return caption, header[1:], {row[0]: row[1:] for row in body}


def test_tables_of_a_generalisation_task_from_made_up_records():
    records = [lg_record("rnn", 0, 1.0, [0.5, 0.25]), lg_record("rnn", 1, 0.5, [1.0, 0.75]),
               lg_record("gru", 0, 1.0, [1.0, 1.0]), lg_record("gru", 1, 1.0, [1.0, 0.98]),
               lg_record("rnn", 0, 1.0, [0.5, 0.5], length=2),
               lg_record("gru", 0, 1.0, [1.0, 1.0], length=2)]
    gdf = pd.DataFrame([row for r in records for row in ood_rows(r)])
    summary = markdown(task_tables(frame(records), gdf), "lg")
    caption, header, rows = parse_table(summary, LG)
    assert header == ["N=2", "N=4"]
    assert "length generalisation, mean accuracy over the test lengths 6, 8 after training on " \
           "lengths up to N" in caption
    assert rows["rnn"] == ["0.500 0/1", shown([0.375, 0.875], 0)]
    assert rows["gru"] == ["1.000 1/1", shown([1.0, 0.99], 2)]
    caption, header, rows = parse_table(summary, f"{LG} by test length")
    assert header == ["N=4 (train)", "L=6", "L=8"]
    assert rows["rnn"] == [shown([1.0, 0.5], 1), shown([0.5, 1.0], 1), shown([0.25, 0.75], 0)]
    assert rows["gru"] == [shown([1.0, 1.0], 2), shown([1.0, 1.0], 2), shown([1.0, 0.98], 1)]
    # the solve-length table judges N by the interval of its test-length means over seeds: gru's
    # 1.0 and 0.99 at N=4 (two seeds, t with 1 degree of freedom) cannot decide a 0.99 threshold
    _, _, rows = parse_table(summary, "solve length")
    assert rows == {"rnn": ["— (N=2, 4 undecided)"], "gru": ["— (N=2, 4 undecided)"]}
    solid = [r for r in records if not (r.model_name == "gru" and r.seed == 1)] + [
        lg_record("gru", seed, 1.0, [1.0, 1.0]) for seed in (1, 2)]  # gru at N=4: 1.0 x 3
    gdf = pd.DataFrame([row for r in solid for row in ood_rows(r)])
    _, _, rows = parse_table(markdown(task_tables(frame(solid), gdf), "lg"), "solve length")
    assert rows["gru"] == ["4 (3/3)"]  # a shorter undecided length is not named


# Sweeps ----------------------------------------------------------------------------------------------


TINY = """
params = 2000
[train]
steps = 2
eval_every = 2
eval_samples = 8
batch_size = 4
"""

VARIANT_SWEEP = """
name = "variants"
tasks = ["parity"]
models = ["transformer", "tf-rope"]
lengths = [2]
""" + TINY + """
[variants.tf-rope]
model = "transformer"
hparams = { positions = "rope" }
"""


def test_variants_label_cells_records_and_tables(tmp_path, monkeypatch):
    spec = load_spec(VARIANT_SWEEP, "test")
    cells = spec.labelled_cells()
    assert [(label.variant, cfg.model, cfg.hparams.positions) for label, cfg in cells] == [
        ("", "transformer", "sinusoidal"), ("tf-rope", "transformer", "rope")]
    store, statuses = run_sweep(spec, tmp_path)
    assert sum(statuses.values()) == 2 and set(statuses) <= {"solved", "budget"}
    records = store.load().values()
    assert sorted((r.variant, r.config["hparams"]["positions"]) for r in records) == [
        ("", "sinusoidal"), ("tf-rope", "rope")]
    table = pd.read_csv(store.root / "results.csv")
    assert sorted(zip(table["model"], table["family"])) == [
        ("tf-rope", "transformer"), ("transformer", "transformer")]
    _, header, rows = parse_table((store.root / "summary.md").read_text(), "parity")
    assert header == ["L=2"] and list(rows) == ["transformer", "tf-rope", "shortcut (n-gram)"]

    # rerunning runs nothing; renaming the variant relabels the stored records without running
    calls = spy_on_run_cell(monkeypatch)
    run_sweep(spec, tmp_path)
    assert calls == []
    before = {r.key for r in records}
    run_sweep(load_spec(VARIANT_SWEEP.replace("tf-rope", "rope"), "test"), tmp_path)
    assert calls == []
    relabelled = store.load()
    assert set(relabelled) == before
    assert sorted(r.variant for r in relabelled.values()) == ["", "rope"]
    assert sorted(pd.read_csv(store.root / "results.csv")["model"]) == ["rope", "transformer"]


BIDIRECTIONAL_SWEEP = """
name = "bi"
tasks = ["copy", "parity"]
models = ["lstm", "bilstm"]
lengths = [2]
""" + TINY + """
[variants.bilstm]
model = "lstm"
hparams = { bidirectional = true }
tasks = ["parity"]
"""


def test_variant_restricted_to_tasks_runs_only_there(tmp_path):
    spec = load_spec(BIDIRECTIONAL_SWEEP, "test")
    assert [(c.task, label.variant) for label, c in spec.labelled_cells()] == [
        ("copy", ""), ("parity", ""), ("parity", "bilstm")]
    store, statuses = run_sweep(spec, tmp_path)
    assert sum(statuses.values()) == 3 and "error" not in statuses
    bi = [r for r in store.load().values() if r.variant == "bilstm"]
    assert len(bi) == 1 and bi[0].task == "parity"
    assert bi[0].config["hparams"]["bidirectional"] and bi[0].model_info["bidirectional"] is True
    # without the restriction, the bidirectional variant is refused on copy before anything runs
    with pytest.raises(ConfigError, match=r"^hparams\.bidirectional: task 'copy' is causal"):
        load_spec(BIDIRECTIONAL_SWEEP.replace('tasks = ["parity"]\n', ""), "test")


def test_variant_hparams_replace_the_family_table():
    spec = load_spec(VARIANT_SWEEP.replace("[variants", "[hparams.transformer]\nlayers = 1\n"
                                                       "[variants"), "test")
    (_, plain), (_, rope) = spec.labelled_cells()
    assert (plain.hparams.layers, plain.hparams.positions) == (1, "sinusoidal")
    assert (rope.hparams.layers, rope.hparams.positions) == (2, "rope")


MODELS = 'models = ["transformer", "tf-rope"]'


@pytest.mark.parametrize(
    ("change", "extra", "message"),
    [
        ((MODELS, 'models = ["transformer", "tf-rope", "lstm"]'), '[variants.lstm]\nmodel = "gru"',
         "variants.lstm: a variant must not take the name of a family"),
        (('positions = "rope"', 'positions = "sinusoidal"'), "",
         "variants.tf-rope: tf-rope gives the same cells as transformer"),
        (('hparams = { positions = "rope" }', "hparams = {}"), "",
         "variants.tf-rope: tf-rope gives the same cells as transformer"),
        ((MODELS, 'models = ["tf-rope", "tf-rope2"]'),
         '[variants.tf-rope2]\nmodel = "transformer"\nhparams = { positions = "rope" }',
         "variants.tf-rope2: tf-rope2 gives the same cells as tf-rope"),
        (('model = "transformer"', 'model = "transformer"\ncolour = "red"'), "",
         "variants.tf-rope.colour: unknown key; allowed: hparams, model, tasks"),
        (('model = "transformer"', 'model = "rwkv"'), "",
         "variants.tf-rope.model: unknown value 'rwkv'"),
        (('positions = "rope"', 'positions = "nope"'), "", "positions: unknown value 'nope'"),
        (('model = "transformer"', 'model = "transformer"\ntasks = ["copy"]'), "",
         "variants.tf-rope.tasks[0]: unknown value 'copy'; allowed: parity"),
        ((MODELS, 'models = ["transformer", "tf-rope", "tf rope"]'),
         '[variants."tf rope"]\nmodel = "tcn"', "variants.tf rope: a variant name uses letters"),
        ((MODELS, 'models = ["transformer", "tf-rope", "tf-rope"]'), "",
         "models: must not repeat"),
        (('[variants.tf-rope]\nmodel = "transformer"\nhparams = { positions = "rope" }',
          '[variants]\ntf-rope = 3'), "", "variants.tf-rope: expected a table"),
    ],
    ids=["family name", "same cells", "same cells (empty hparams)", "two same variants",
         "unknown key", "unknown model", "bad hparams", "task not in sweep", "bad name",
         "repeated", "not a table"],
)
def test_variants_are_strict(change, extra, message):
    text = VARIANT_SWEEP.replace(*change) + extra + "\n"
    assert change[0] in VARIANT_SWEEP
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_spec(text, "test")


LG_SWEEP = """
name = "lg"
tasks = ["parity"]
models = ["rnn", "gru"]
lengths = [4]
seeds = [0, 1]
""" + TINY + """
[generalise.parity]
lengths = [6, 8]
samples = 16
"""


def test_generalise_table_of_a_sweep(tmp_path):
    spec = load_spec(LG_SWEEP, "test")
    cells = spec.cells()
    assert len(cells) == 4
    assert all(c.generalise == Generalise((6, 8), "range", 16) for c in cells)
    store, statuses = run_sweep(spec, tmp_path)
    assert sum(statuses.values()) == 4
    records = list(store.load().values())
    assert all(len(r.ood_scores) == 2 and r.steps == 2 for r in records)
    gdf = pd.read_csv(store.root / "generalisation.csv")
    assert len(gdf) == 2 * 2 * 2
    assert sorted(gdf.groupby(["model", "seed"]).size().tolist()) == [2] * 4
    assert set(gdf["length"]) == {6, 8} and set(gdf["train_length"]) == {4}
    summary = (store.root / "summary.md").read_text()
    caption, header, rows = parse_table(summary, LG)
    assert header == ["N=4"] and "length generalisation" in caption
    caption, header, rows = parse_table(summary, f"{LG} by test length")
    assert header == ["N=4 (train)", "L=6", "L=8"] and list(rows) == ["rnn", "gru"]
    for model in ("rnn", "gru"):
        at8 = [r.ood_scores[1] for r in records if r.family == model]
        assert rows[model][2].startswith(f"{sum(at8) / 2:.3f} ±")
    # a sweep without the table keeps the fixed-length cells and their keys
    plain = load_spec(LG_SWEEP.split("[generalise")[0], "test").cells()
    assert all(c.generalise is None for c in plain)
    assert {c.key() for c in plain}.isdisjoint({c.key() for c in cells})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("lengths = [4, 8]", ("generalise.parity.lengths: must all be longer than the task's "
                             "longest training length 4")),
        ("lengths = [8, 6]", "generalise.parity.lengths: must be strictly increasing"),
        ("lengths = [6, 8]\ncolour = 1", "generalise.parity.colour: unknown key"),
        ('lengths = [6, 8]\ntrain = "both"', "generalise.parity.train: unknown value 'both'"),
        ("lengths = [6, 8]\nsamples = 0", "generalise.parity.samples: must be >= 1"),
        ("lengths = [0, 8]", ("generalise.parity.lengths[0]: task 'parity' needs an integer "
                             "length >= 1")),
    ],
)
def test_generalise_table_is_strict(change, message):
    text = LG_SWEEP.replace("lengths = [6, 8]\nsamples = 16", change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_spec(text, "test")


def test_generalise_table_checks_the_task_and_its_lengths():
    dyck = (LG_SWEEP.replace('"parity"', '"dyck"').replace("generalise.parity", "generalise.dyck")
            .replace("lengths = [4]", "lengths = [10]").replace("lengths = [6, 8]",
                                                               "lengths = [12, 14]"))
    assert len(load_spec(dyck, "test").cells()) == 4
    with pytest.raises(ConfigError, match=re.escape("generalise.dyck.lengths[1]: task 'dyck' "
                                                    "needs an even length")):
        load_spec(dyck.replace("lengths = [12, 14]", "lengths = [12, 15]"), "test")
    with pytest.raises(ConfigError, match=re.escape("generalise key: unknown value 'copy'")):
        load_spec(LG_SWEEP.replace("generalise.parity", "generalise.copy"), "test")


# Plots -----------------------------------------------------------------------------------------------


def write_lg_store(root: Path) -> tuple[Store, list[CellRecord]]:
    """Two sets per model: "good" generalises, "bad" does not (though it wins in distribution)."""
    store = Store(root)
    records = []
    for model, shift in (("rnn", 0.0), ("lstm", 0.1)):
        for seed in (0, 1):
            records += [
                lg_record(model, seed, 1.0, [0.2 + shift, 0.1 + shift], hpset="bad", lr=1e-2),
                lg_record(model, seed, 0.8 + 0.1 * seed, [0.9 - shift, 0.7 - shift + 0.1 * seed],
                          hpset="good", lr=1e-3),
            ]
    for record in records:
        store.save(record)
    return store, records


def test_generalisation_curve_of_the_best_set(tmp_path):
    store, records = write_lg_store(tmp_path / "lg")
    df = best_sets(headline(cell_frame(store.load().values())))
    assert set(df["hpset"]) == {"good"}
    curve = generalisation_curve(df[df["length"] == 4], generalisation_frame(store.load().values()))
    good = [r for r in records if r.hpset == "good"]
    expected = sorted(
        [(r.model_name, r.seed, 4, round(r.score, 9)) for r in good]
        + [(r.model_name, r.seed, n, round(s, 9)) for r in good
           for n, s in zip((6, 8), r.ood_scores)])
    got = sorted((m, s, n, round(v, 9)) for m, s, n, v in
                 curve[["model", "seed", "length", "score"]].itertuples(index=False, name=None))
    assert got == expected


def test_generalisation_curve_carries_the_shortcut_score_at_each_length():
    records = [lg_record("rnn", seed, 1.0, [0.5, 0.25]) for seed in (0, 1)]
    for record, base in zip(records, (0.6, 0.8)):
        record.shortcut = {"score": base, "ood_scores": [base - 0.1, base - 0.2]}
    df = headline(cell_frame(records))
    curve = generalisation_curve(df, generalisation_frame(records))
    assert curve.groupby("length")["shortcut_score"].mean().to_dict() == pytest.approx(
        {4: 0.7, 6: 0.6, 8: 0.5})


def test_plot_folder_shows_the_best_set_with_the_training_boundary(tmp_path, monkeypatch):
    store, records = write_lg_store(tmp_path / "lg")
    seen = {}
    real_accuracy, real_heatmap = seqbench.results.plots.accuracy_figure, seqbench.results.plots.heatmap_figure

    def accuracy_figure(task_name, tdf, boundary=None):
        fig = real_accuracy(task_name, tdf, boundary)
        seen["accuracy"] = (task_name, tdf.copy(), boundary, fig)
        return fig

    def heatmap_figure(task_name, tdf, boundary=None):
        seen["heatmap"] = tdf.copy()
        return real_heatmap(task_name, tdf)

    monkeypatch.setattr(seqbench.results.plots, "accuracy_figure", accuracy_figure)
    monkeypatch.setattr(seqbench.results.plots, "heatmap_figure", heatmap_figure)
    written = plot_folder(store.root, svg=True, jobs=1)  # in this process, to see the figures
    assert sorted(p.name for p in written) == sorted(
        f"{kind}_parity_generalisation.{ext}" for kind in ("accuracy", "heatmap") for ext in ("png", "svg"))
    task_name, tdf, boundary, fig = seen["accuracy"]
    assert (task_name, boundary) == ("parity", 4)
    assert sorted(tdf["length"].unique()) == [4, 6, 8]
    # every plotted point is the "good" set's: mean per (model, length)
    good = [r for r in records if r.hpset == "good"]
    means = tdf.groupby(["model", "length"])["score"].mean().to_dict()
    for model in ("rnn", "lstm"):
        mine = [r for r in good if r.family == model]
        assert means[(model, 4)] == pytest.approx(sum(r.score for r in mine) / 2)
        for i, n in enumerate((6, 8)):
            assert means[(model, n)] == pytest.approx(sum(r.ood_scores[i] for r in mine) / 2)
    assert seen["heatmap"].equals(tdf)
    # the drawn lines: one per model through those means, and the boundary at N
    ax = fig.axes[0]
    lines = [c.lines[0] for c in ax.containers]  # each model's line with its error bars
    assert all(list(line.get_xdata()) == [4, 6, 8] for line in lines)
    drawn = sorted(tuple(round(float(y), 6) for y in line.get_ydata()) for line in lines)
    expected = sorted(tuple(round(means[(m, n)], 6) for n in (4, 6, 8)) for m in ("rnn", "lstm"))
    assert drawn == expected
    assert any(list(line.get_xdata()) == [4, 4] and line.get_color() == "firebrick"
               for line in ax.lines)
    svg = (store.root / "plots" / "accuracy_parity_generalisation.svg").read_text()
    assert "training length N=4" in svg


def test_plot_folder_with_a_failed_generalisation_cell(tmp_path):
    store, _ = write_lg_store(tmp_path / "lg")
    store.save(lg_record("gru", 0, None, None, status="oom", hpset="good", lr=1e-3))
    written = {p.name for p in plot_folder(store.root, svg=True)}
    assert {"accuracy_parity_generalisation.png", "heatmap_parity_generalisation.png"} <= written
    heatmap = (store.root / "plots" / "heatmap_parity_generalisation.svg").read_text()
    assert "1 oom" in heatmap


# Defects found in review, fixed -----------------------------------------------------------------


def test_tables_of_a_task_with_plain_and_generalisation_records():
    plain = fake_record("parity", "rnn", 4, 0.75)
    lg = lg_record("rnn", 0, 1.0, [0.5, 0.25])
    tables = task_tables(frame([plain, lg]), pd.DataFrame(ood_rows(lg)))
    assert tables[0].title == "parity"


def test_gradient_flow_keeps_variants_apart():
    plain = fake_record("parity", "transformer", 2, 0.5)
    rope = fake_record("parity", "transformer", 2, 0.5)
    cfg = make_cell("parity", "transformer", 2, hparams={"positions": "rope"})
    rope.config, rope.key_payload, rope.key = cfg.to_dict(), cfg.payload(), cfg.key()
    rope.variant = "tf-rope"
    for record, norm in ((plain, 1.0), (rope, 0.5)):
        record.grad_flow = {"trained": {"distance": [0, 1], "norm": [norm, norm]}}
    flows = seqbench.results.plots.flow_frame([plain, rope])
    assert set(flows["model"]) == {"transformer", "tf-rope"}


def test_variants_with_a_measure_table():
    text = VARIANT_SWEEP + "[measure]\nlengths = [8]\nbatch_size = 4\nrss = false\nblocks = 5\n"
    points = load_spec(text, "test").points()
    assert len(points) == 2
