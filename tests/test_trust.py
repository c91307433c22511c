"""Can a cell's comparison be trusted: independent streams, the shortcut learner in every record,
the seen-in-training counter (exact on enumerable cases), exclusion of held-out sequences from
training, the convergence verdict, and the tasks' input-space declarations behind them."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from conftest import make_cell, sample, wrong_test_labels

import seqbench.cell.train as train
from seqbench.cell.config import CellConfig
from seqbench.cell.convergence import MIN_EVALUATIONS, converged, convergence
from seqbench.cell.record import CellRecord, CorruptRecord, InvalidValue
from seqbench.cell.seen import EXCLUDE_BELOW, IGNORE, RowCodes, Seen
from seqbench.cell.step import STREAMS, generator
from seqbench.tasks import Batch, get_task
from seqbench.tasks.dyck import all_shapes, eligible, eligible_shapes, guard, partners, table
from seqbench.tasks.parity import Parity

TRUST = {"steps": 20, "batch_size": 16, "lr": 1e-2, "eval_every": 10, "eval_samples": 32}


def rows(x: torch.Tensor) -> list[tuple]:
    return [tuple(r) for r in x.flatten(1).tolist()]


def spy_training_rows(monkeypatch, cls=Parity) -> list[tuple]:
    """Every input row that entered a training loss (grad enabled; evaluation runs without it and
    the gradient flow has a loss of its own): rows left out (targets IGNORE) are not listed."""
    seen = []
    original = cls.loss

    def loss(self, outputs, batch):
        if torch.is_grad_enabled():
            kept = batch.targets.view(len(batch.targets), -1)[:, -1] != IGNORE
            seen.extend(rows(batch.inputs[kept]))
        return original(self, outputs, batch)

    monkeypatch.setattr(cls, "loss", loss)
    return seen


def held(cfg: CellConfig, stream: str) -> list[tuple]:
    return rows(torch.cat([b.inputs for b in train.held_out(get_task(cfg.task), cfg, stream)]))


def fraction(held_rows: list[tuple], trained: list[tuple]) -> float:
    pool = set(trained)
    return sum(r in pool for r in held_rows) / len(held_rows)


# --- streams ---------------------------------------------------------------------------------


def test_the_four_streams_are_distinct_generators_for_every_seed():
    task = get_task("cycle_nav")
    draws = {(seed, s): tuple(task.sample(12, 4, generator(seed, s, "cpu"), "cpu").inputs
                              .flatten().tolist()) for seed in range(5) for s in STREAMS}
    assert STREAMS == ("train", "validation", "test", "shortcut")
    assert len(set(draws.values())) == len(draws)  # no two (seed, stream) share a sequence


def test_the_shortcut_draws_nothing_from_the_training_stream(monkeypatch):
    """The model trains exactly as it would without the shortcut learner."""
    cfg = make_cell("parity", "gru", 6, **TRUST)
    reference = run(cfg)
    monkeypatch.setattr(train, "shortcut_score", lambda *a, **k: {})
    alone = train.run_cell(cfg)
    assert alone.history == reference.history and alone.score == reference.score


def run(cfg: CellConfig) -> CellRecord:
    record = train.run_cell(cfg)
    assert record.status in ("budget", "solved"), record.error
    return CellRecord.from_dict(json.loads(json.dumps(record.to_dict())))  # stored and read back


@pytest.mark.parametrize("generalise", [False, True])
def test_no_test_label_drives_any_choice(monkeypatch, generalise):
    """Every test label wrong: the headline scores (the model's and the shortcut's) change;
    training, the shortcut's choices, the seen fractions and the verdict do not."""
    cfg = make_cell("parity", "gru", 4, **TRUST)
    if generalise:
        cfg = CellConfig.from_dict(cfg.to_dict() | {"generalise": {"lengths": [6, 8],
                                                                   "samples": 32}})
    reference = run(cfg)
    wrong_test_labels(monkeypatch)
    flipped = run(cfg)
    same = ("status", "steps", "history", "val_score", "seen_fraction", "val_seen_fraction",
            "seen_method", "heldout_coverage", "test_excluded", "converged", "convergence",
            "ood_val_scores")
    assert [getattr(flipped, f) for f in same] == [getattr(reference, f) for f in same]
    choice = ("family", "learner", "k", "ngrams", "alpha", "val_score", "train_samples",
              "ood_val_score", "ood_choice")
    assert ({k: flipped.shortcut.get(k) for k in choice}
            == {k: reference.shortcut.get(k) for k in choice})
    assert flipped.score == pytest.approx(1 - reference.score)  # two classes: every hit a miss
    assert flipped.shortcut["score"] == pytest.approx(1 - reference.shortcut["score"])
    if generalise:
        assert flipped.shortcut["ood_scores"] == pytest.approx(
            [1 - s for s in reference.shortcut["ood_scores"]])


# --- the shortcut learner in the record ---------------------------------------------------------


def test_shortcut_is_stored_for_classification_regression_and_generalisation():
    delay = run(make_cell("delay", "rnn", 1, **TRUST))
    # y_t = x_{t-1}: the two-token window holds the answer, so the lookup table is exact
    assert delay.shortcut["score"] == 1.0
    assert (delay.shortcut["family"], delay.shortcut["k"]) == ("window", 2)
    adding = run(make_cell("adding", "rnn", 4, **TRUST))
    assert adding.shortcut["learner"] == "least_squares" and adding.shortcut["seconds"] > 0
    g = run(CellConfig.from_dict(make_cell("even_pairs", "rnn", 4, **TRUST).to_dict() | {
        "generalise": {"lengths": [6, 8, 10], "samples": 64}}))
    assert len(g.shortcut["ood_scores"]) == 3
    assert g.shortcut["ood_score"] == pytest.approx(sum(g.shortcut["ood_scores"]) / 3)


# --- seen in training --------------------------------------------------------------------------


def test_seen_fraction_is_the_exact_fraction_of_held_out_rows_trained_on(monkeypatch):
    """Parity at L=8 (256 inputs; 64 held-out rows cover over 1%, so nothing is excluded): the
    recorded fractions equal the ones counted in Python from the rows that entered a loss."""
    trained = spy_training_rows(monkeypatch)
    cfg = make_cell("parity", "rnn", 8, **TRUST)
    record = run(cfg)
    assert record.seen_method == "exact" and not record.test_excluded
    assert len(trained) == TRUST["steps"] * TRUST["batch_size"]
    test, validation = held(cfg, "test"), held(cfg, "validation")
    assert record.seen_fraction == fraction(test, trained)
    assert record.val_seen_fraction == fraction(validation, trained)
    assert 0 < record.seen_fraction < 1  # 320 draws of 256 inputs: some seen, not all
    assert record.heldout_coverage == len(set(test) | set(validation)) / 2**8


def test_every_sequence_is_seen_when_the_space_is_exhausted():
    record = run(make_cell("parity", "rnn", 4, **TRUST | {"steps": 30}))  # 480 draws of 16
    assert record.seen_fraction == record.val_seen_fraction == 1.0
    assert record.heldout_coverage == 1.0 and not record.test_excluded


def test_length_generalisation_counts_the_training_rows_at_n_only(monkeypatch):
    trained = spy_training_rows(monkeypatch)
    cfg = CellConfig.from_dict(make_cell("parity", "rnn", 5, **TRUST).to_dict() | {
        "generalise": {"lengths": [7], "samples": 16}})
    record = run(cfg)
    at_n = [r for r in trained if len(r) == 5]
    assert 0 < len(at_n) < len(trained)
    assert record.seen_fraction == fraction(held(cfg, "test"), at_n)


def test_hash64_codes_count_planted_rows_exactly():
    """copy at T=30 has 10^50 possible rows: hash codes; rows planted from the test set are found
    (without exclusion), and equal rows always share a code."""
    task = get_task("copy")
    validation, test = [sample(task, 30, 40, seed=1)], [sample(task, 30, 50, seed=2)]
    seen = Seen(task, 30, validation, test, capacity=64, device="cpu")
    assert seen.method == "hash64" and seen.exclude  # 90 / 8^10 of the inputs
    seen.exclude = False  # count only
    fresh = sample(task, 30, 48, seed=3)
    planted = torch.cat([fresh.inputs[:41], test[0].inputs[:7]])  # 7 of the 50 test rows
    seen(Batch(planted, fresh.targets, fresh.mask), 30)
    seen(sample(task, 29, 8, seed=4), 29)  # another length: not recorded
    assert seen.count == 48
    assert seen.fractions() == (7 / 50, 0.0)
    coder = RowCodes(10, 50, "cpu")
    x = sample(task, 30, 4096, seed=5).inputs
    assert coder(x).unique().numel() == len(set(rows(x)))
    assert torch.equal(coder(x[:5]), coder(x.clone()[:5]))


def test_real_valued_inputs_are_not_counted():
    record = run(make_cell("adding", "rnn", 4, **TRUST))
    assert (record.seen_fraction, record.seen_method, record.heldout_coverage,
            record.test_excluded) == (0.0, "real-valued", None, False)


# --- exclusion -------------------------------------------------------------------------------


def test_exclusion_keeps_every_held_out_sequence_out_of_training(monkeypatch):
    """Parity at L=14: 2 x 64 held-out rows cover 0.78% of the 2^14 inputs, so training leaves
    them out. About 50 of the 6400 training rows equal a held-out one; none of them enters a
    loss, and the counter agrees."""
    trained = spy_training_rows(monkeypatch)
    cfg = make_cell("parity", "rnn", 14, **TRUST | {"steps": 200, "batch_size": 32,
                                                     "eval_every": 100, "eval_samples": 64})
    record = run(cfg)
    test, validation = held(cfg, "test"), held(cfg, "validation")
    coverage = len(set(test) | set(validation)) / 2**14
    assert record.heldout_coverage == coverage < EXCLUDE_BELOW and record.test_excluded
    assert fraction(test, trained) == fraction(validation, trained) == 0.0
    assert record.seen_fraction == record.val_seen_fraction == 0.0
    left_out = 200 * 32 - len(trained)
    assert 10 <= left_out <= 100  # the rule had work to do (expected 6400 x 0.0078 = 50)


def test_exclusion_follows_the_threshold():
    """Just above 1% of the inputs: kept in training; just below: left out."""
    task = get_task("parity")
    # 2^12 inputs: 1% is 40.96 distinct held-out rows
    for n, excluded in ((48, False), (36, True)):
        v, t = sample(task, 12, n // 2, seed=0), sample(task, 12, n - n // 2, seed=1)
        seen = Seen(task, 12, [v], [t], capacity=1, device="cpu")
        distinct = len(set(rows(v.inputs)) | set(rows(t.inputs)))
        assert seen.coverage == distinct / 4096
        assert seen.exclude == excluded == (distinct / 4096 < EXCLUDE_BELOW)


def test_a_batch_of_held_out_rows_only_is_kept_whole():
    task = get_task("parity")
    test = sample(task, 16, 8, seed=0)
    seen = Seen(task, 16, [test], [test], capacity=4, device="cpu")  # grows to 12 rows
    assert seen.exclude
    kept = seen(test, 16)
    assert torch.equal(kept.targets, test.targets)  # a loss needs a row
    mixed = seen(Batch(torch.cat([test.inputs[:2], sample(task, 16, 2, 9).inputs]),
                       torch.zeros(4, dtype=torch.long)), 16)
    assert mixed.targets[:2].tolist() == [IGNORE] * 2 and mixed.targets[2:].tolist() == [0, 0]
    assert seen.fractions() == (1.0, 1.0)


# --- convergence -----------------------------------------------------------------------------


def history(losses):
    return [{"step": 100 * (i + 1), "train_loss": x, "val_loss": x, "val_score": 0.5}
            for i, x in enumerate(losses)]


@pytest.mark.parametrize(("status", "losses", "verdict"), [
    ("budget", [0.69, 0.60, 0.55, 0.55, 0.552, 0.551], "plateau"),  # flat last third
    ("budget", [0.69] * 9, "plateau"),  # never moved: stuck, more steps would not help
    ("budget", [0.69, 0.6, 0.5, 0.4, 0.3, 0.2], "still improving"),  # still falling
    ("budget", [1.0, 1.0, 0.99], "plateau"),  # exactly 1% better: within the tolerance
    ("budget", [1.0, 1.0, 0.9899], "still improving"),  # just over 1%
    ("budget", [0.5, 0.9, 0.9, 0.9, 0.9, 0.9], "plateau"),  # worse late: nothing gained
    ("timeout", [0.69, 0.5, 0.3], "still improving"),
    ("solved", [0.69, 0.6], "solved"),
    ("budget", [0.69, 0.6], "too few evaluations"),
    ("diverged", [0.69, 0.6, 0.5], None),
    ("error", [], None),
])
def test_convergence_verdicts_on_constructed_histories(status, losses, verdict):
    assert convergence(status, history(losses)) == verdict
    assert converged(verdict) == (verdict in ("solved", "plateau"))


def test_the_last_third_is_rounded_up():
    # m = 4: the last two are late; the early best is 1.0 and the late best 0.5
    assert convergence("budget", history([1.0, 1.0, 0.5, 1.0])) == "still improving"
    assert convergence("budget", history([1.0, 0.5, 1.0, 1.0])) == "plateau"
    assert MIN_EVALUATIONS == 3


def test_cells_record_their_verdict():
    solved = run(make_cell("parity", "gru", 2, **TRUST | {"steps": 200}))
    assert (solved.status, solved.convergence, solved.converged) == ("solved", "solved", True)
    short = run(make_cell("copy", "rnn", 3, **TRUST | {"steps": 10}))
    assert (short.convergence, short.converged) == ("too few evaluations", False)


# --- the record --------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"seen_fraction": 1.5}, InvalidValue, "seen_fraction"),
    ({"val_seen_fraction": -0.1}, InvalidValue, "val_seen_fraction"),
    ({"heldout_coverage": float("nan")}, InvalidValue, "heldout_coverage"),
    ({"seen_method": "guess"}, CorruptRecord, "seen_method"),
    ({"convergence": "maybe"}, CorruptRecord, "convergence"),
    ({"converged": False}, CorruptRecord, "contradicts"),
    ({"test_excluded": 1}, CorruptRecord, "test_excluded"),
    ({"shortcut": {"score": 0.5}}, CorruptRecord, "shortcut: missing"),
    ({"shortcut": "high"}, CorruptRecord, "shortcut"),
])
def test_record_fields_are_validated(change, error, message):
    data = run(make_cell("parity", "gru", 2, **TRUST | {"steps": 200})).to_dict()
    assert data["convergence"] == "solved"
    with pytest.raises(error, match=message):
        CellRecord.from_dict(data | change)


@pytest.mark.parametrize(("entry", "value", "error"), [
    ("score", 1.2, InvalidValue), ("window_score", True, CorruptRecord),
    ("k", 1.0, CorruptRecord), ("extra", 1, CorruptRecord), ("seconds", -1.0, CorruptRecord),
])
def test_shortcut_entries_are_validated(entry, value, error):
    data = run(make_cell("parity", "rnn", 3, **TRUST)).to_dict()
    with pytest.raises(error, match="shortcut"):
        CellRecord.from_dict(data | {"shortcut": data["shortcut"] | {entry: value}})


# --- input spaces -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "length"), [
    ("parity", 4), ("even_pairs", 5), ("cycle_nav", 4), ("reverse", 5), ("delay", 1),
    ("mod_arith", 1), ("mod_arith", 2), ("temporal_order", 4), ("temporal_order", 8),
    ("induction", 4), ("assoc_recall", 1),
])
def test_input_space_is_the_number_of_distinct_inputs(name, length):
    """Draw enough rows that a support of N equally likely inputs is covered with probability
    above 1 - N e^-12, then count them."""
    task = get_task(name)
    n = task.input_space(length)
    draws = sample(task, length, int(n * (math.log(n) + 12)) + 1, seed=7)
    counts = Counter(rows(draws.inputs))
    assert len(counts) == n
    # equally likely: the largest count is within 6 sd of the mean (binomial)
    mean = len(draws.inputs) / n
    assert max(counts.values()) < mean + 6 * math.sqrt(mean)


def test_selective_copy_and_copy_input_spaces():
    sc, copy = get_task("selective_copy"), get_task("copy")
    assert sc.input_space(2) == math.comb(18, 16) * 14**16
    draws = sample(sc, 2, 3000, seed=0).inputs[:, :18] > 0  # the data positions
    assert len(set(rows(draws))) == math.comb(18, 16)
    assert copy.input_space(5) == copy.input_space(500) == 8**10
    assert get_task("adding").input_space(10) is None


@pytest.mark.parametrize("n", range(5, 11))
def test_dyck_eligible_shapes_match_enumeration(n):
    shapes = all_shapes(n, "cpu")
    assert eligible_shapes(n, guard(2 * n)) == int(eligible(shapes, partners(shapes)).any(1).sum())


def test_dyck_input_space_bounds_every_string_probability():
    """At L=10, from the table's exact couple weights: the most likely string has probability at
    most 1/input_space (and the bound is attained)."""
    code, cum, total = table(10, "cpu")
    weight = torch.diff(cum, prepend=torch.zeros(1, dtype=cum.dtype)).tolist()
    prob: Counter = Counter()
    for c, w in enumerate(weight):
        for cls in (0, 1):  # a row of a given class: the couple, then the n - 1 free kinds
            src, base, mult = code[c, cls].long()
            free = sorted(set(src.tolist()))
            for bits in range(2**len(free)):
                bit = {s: (bits >> i) & 1 for i, s in enumerate(free)}
                string = tuple((base + torch.tensor([bit[s] for s in src.tolist()]) * mult)
                               .tolist())
                prob[cls, string] += w / total / 2**len(free)
    assert len({len(set(code[c, 0, 0].tolist())) for c in range(len(weight))}) == 1
    assert math.isclose(sum(prob.values()), 2.0)  # one distribution per class
    assert max(prob.values()) <= 1 / get_task("dyck").input_space(10) * (1 + 1e-12)
    assert math.isclose(max(prob.values()), 1 / get_task("dyck").input_space(10))
