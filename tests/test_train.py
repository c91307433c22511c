"""One cell end to end: learning, determinism, failure statuses, and the record it leaves."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_cell, wrong_test_labels

from seqbench.cell.config import CellConfig
from seqbench.cell.record import STATUSES, CellRecord, CorruptRecord
from seqbench.cell.train import run_cell
from seqbench.models import FAMILIES, build_model, count_parameters
from seqbench.strict import ConfigError
from seqbench.tasks import TASKS, get_task
from seqbench.tasks.parity import Parity

# Easy instances every family solves well within these budgets (at most ~1/3 of the steps used
# across several seeds when the suite was written); training stops at the first solved evaluation.
EASY = {"steps": 200, "batch_size": 32, "lr": 1e-2, "eval_every": 10, "eval_samples": 128}


@pytest.mark.parametrize("model", [m for m in sorted(FAMILIES) if FAMILIES[m].accepts(Parity.io)])
def test_learns_parity_of_two_bits(model):  # seq2seq needs an answer phase: test_seq2seq.py
    record = run_cell(make_cell("parity", model, 2, **EASY))
    assert record.status == "solved", record.history
    assert record.solved and record.val_score >= record.solve_threshold == 0.99
    assert record.score >= record.solve_threshold  # the test set agrees
    assert record.steps < EASY["steps"] and record.steps % EASY["eval_every"] == 0
    last = record.history[-1]
    assert last["step"] == record.steps and last["val_score"] == record.val_score


def test_learns_adding_of_length_two():
    record = run_cell(make_cell("adding", "gru", 2, **EASY | {"steps": 400}))
    assert record.status == "solved", record.history
    assert record.test_loss < record.baseline_loss / 10


def test_unsolved_cell_ends_at_budget_with_history():
    record = run_cell(make_cell("copy", "rnn", 3, steps=5, eval_every=2))
    assert record.status == "budget" and not record.solved
    assert record.steps == 5
    assert [h["step"] for h in record.history] == [2, 4, 5]
    assert all(set(h) == {"step", "train_loss", "val_loss", "val_score", "grad_norm",
                          "grad_norm_max", "clipped", "layer_ratio"} for h in record.history)
    assert 0 <= record.score <= 1


@pytest.mark.parametrize(
    ("task", "model"), [("adding", "lstm"), ("copy", "transformer"), ("parity", "tcn")]
)
def test_cpu_runs_are_deterministic(task, model):
    cfg = make_cell(task, model, 3, steps=6, eval_every=3)
    a, b = run_cell(cfg), run_cell(cfg)
    assert a.status == b.status == "budget"
    assert (a.score, a.train_loss, a.test_loss) == (b.score, b.train_loss, b.test_loss)
    assert a.history == b.history
    other = run_cell(make_cell(task, model, 3, steps=6, eval_every=3, seed=1))
    assert other.history != a.history


@pytest.mark.parametrize("model", ["rnn", "transformer"])
def test_huge_learning_rate_diverges(model):
    record = run_cell(make_cell("adding", model, 4, steps=50, lr=1e30))
    assert record.status == "diverged" and not record.solved
    assert 1 <= record.steps < 50
    assert "non-finite" in record.error and f"at step {record.steps}" in record.error


def test_nan_loss_diverges_at_that_step(monkeypatch):
    original, calls = Parity.loss, []

    def loss(self, outputs, batch):
        calls.append(1)
        value = original(self, outputs, batch)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(Parity, "loss", loss)
    record = run_cell(make_cell("parity", "gru", 2, steps=10, eval_every=100))
    assert record.status == "diverged"
    assert record.steps == 3
    assert record.error == "non-finite loss or gradient norm at step 3"


def test_exception_in_training_becomes_error(monkeypatch):
    def loss(self, outputs, batch):
        raise ValueError("boom in the loss")

    monkeypatch.setattr(Parity, "loss", loss)
    record = run_cell(make_cell("parity", "rnn", 2))
    assert record.status == "error" and not record.solved
    assert record.error.startswith("Traceback (most recent call last):")
    assert record.error.endswith("ValueError: boom in the loss")
    assert record.wall_time_s > 0
    json.dumps(record.to_dict())  # still storable


@pytest.mark.parametrize(
    "exc",
    [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                  "can't allocate memory: you tried to allocate 8000000000 bytes")],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_becomes_oom(monkeypatch, exc):
    def loss(self, outputs, batch):
        raise exc

    monkeypatch.setattr(Parity, "loss", loss)
    record = run_cell(make_cell("parity", "lstm", 2))
    assert record.status == "oom"
    assert "allocate" in record.error


def test_record_fields():
    cfg = make_cell("copy", "lstm", 5, steps=3, eval_every=2)
    record = run_cell(cfg)
    task = get_task("copy")
    torch.manual_seed(0)
    model = build_model("lstm", task.io, cfg.params, cfg.hparams, 25)
    assert record.key == cfg.key() and record.config == cfg.to_dict()
    assert record.seq_len == 25
    assert record.params_actual == count_parameters(model)
    assert record.model_info == {"width": model.info["width"],
                                 "state_bytes_per_sample": 2 * model.info["width"] * 4,  # h, c
                                 "state_bytes_per_position": 0}
    assert record.chance == 1 / 8 and record.baseline_loss == task.baseline_loss(5)
    assert record.solve_threshold == task.solve_threshold
    assert record.score_name == "accuracy" and record.status in STATUSES
    assert record.env["torch"] == torch.__version__
    assert record.env["threads"] == torch.get_num_threads()
    assert record.env["device"] == "cpu"
    assert record.train_tokens_per_s > 0
    assert 0 < record.train_time_s <= record.wall_time_s
    assert record.error is None


def test_record_round_trips_through_json():
    record = run_cell(make_cell("adding", "tcn", 4, hparams={"kernel_size": 3}))
    back = CellRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back == record
    assert back.config["hparams"] == {"kernel_size": 3, "levels": 0, "dropout": 0.0}
    assert back.key == CellConfig.from_dict(back.config).key()


def test_edited_record_is_corrupt():
    data = run_cell(make_cell("parity", "rnn", 2)).to_dict()
    edited = json.loads(json.dumps(data))
    edited["config"]["length"] = 3
    with pytest.raises(CorruptRecord, match="does not match its config"):
        CellRecord.from_dict(edited)
    bad_changes = [{"schema": 99}, {"status": "great"}, {"unexpected": 1},
                   {"config": {"task": "parity"}}]
    for change in bad_changes:
        with pytest.raises(CorruptRecord):
            CellRecord.from_dict(data | change)
    missing = dict(data)
    del missing["key"]
    with pytest.raises(CorruptRecord):
        CellRecord.from_dict(missing)


def test_key_identifies_the_experiment():
    base = make_cell("parity", "lstm", 4)
    assert make_cell("parity", "lstm", 4).key() == base.key()
    # a mapping, a parsed dataclass and int-for-float spellings give the same key
    same = CellConfig.from_dict(base.to_dict() | {"hparams": {"forget_bias": 1}})
    assert same.key() == base.key() and len(base.key()) == 16
    changed = [
        make_cell("parity", "lstm", 5),
        make_cell("parity", "gru", 4),
        make_cell("adding", "lstm", 4),
        make_cell("parity", "lstm", 4, seed=1),
        make_cell("parity", "lstm", 4, params=3000),
        make_cell("parity", "lstm", 4, lr=1e-2),
        make_cell("parity", "lstm", 4, hparams={"layers": 2}),
    ]
    assert len({c.key() for c in changed} | {base.key()}) == len(changed) + 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "nope"}, rf"^task: unknown value 'nope'; allowed: {', '.join(sorted(TASKS))}; or "
         r"a task of your own as an import path module:attribute \(a seqbench\.tasks\.Task "
         r"subclass\) or an entry point in the group seqbench\.tasks$"),
        ({"model": "rwkv"},
         rf"^model: unknown value 'rwkv'; allowed: {', '.join(sorted(FAMILIES))}; or a model of "
         r"your own as an import path module:attribute"),
        ({"length": 0}, r"^length: "),
        ({"task": "adding", "length": 1},
         r"^length: task 'adding' needs an integer length >= 2, got 1$"),
        ({"length": "4"}, r"^length: expected int, got str"),
        ({"seed": -1}, r"^seed: must be >= 0"),
        ({"params": 10}, r"^params: must be >= 100"),
        ({"device": "tpu"}, r"^device: unknown value 'tpu'; allowed: cpu, cuda$"),
        ({"train": {"steps": 0}}, r"^train\.steps: must be >= 1"),
        ({"train": {"lr": "fast"}}, r"^train\.lr: expected float"),
        ({"train": {"epochs": 3}}, r"^train\.epochs: unknown key; allowed: batch_size, clip, "),
        ({"colour": "red"}, r"^colour: unknown key; allowed: device, generalise, hparams, length, model, "),
    ],
)
def test_cell_config_is_strict(change, message):
    data = {"task": "parity", "model": "rnn", "length": 4} | change
    with pytest.raises(ConfigError, match=message):
        CellConfig.from_dict(data)


def test_the_test_set_drives_nothing(monkeypatch):
    """Early stopping and `solved` use the validation set only: scoring a different test set
    changes the headline score and nothing else."""
    cfg = make_cell("parity", "gru", 2, **EASY)
    reference = run_cell(cfg)
    wrong_test_labels(monkeypatch)  # every test label wrong
    flipped = run_cell(cfg)
    assert (flipped.status, flipped.steps, flipped.history, flipped.val_score) == (
        reference.status, reference.steps, reference.history, reference.val_score)
    assert reference.score == 1.0 and flipped.score == 0.0


def test_three_streams_are_independent():
    from seqbench.cell.step import generator

    task = get_task("parity")
    draws = [task.sample(16, 64, generator(0, s, "cpu"), "cpu").inputs
             for s in ("train", "validation", "test")]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not torch.equal(task.sample(16, 64, generator(1, "train", "cpu"), "cpu").inputs,
                           draws[0])


def test_exploding_but_finite_loss_diverges():
    """An LSTM at lr=1e6 keeps a finite loss far above where it started: divergence all the same,
    by the documented factor."""
    from seqbench.cell.train import DIVERGENCE_FACTOR

    record = run_cell(make_cell("adding", "lstm", 4, steps=60, eval_every=20, lr=1e6))
    assert record.status == "diverged", (record.train_loss, record.error)
    assert f"{DIVERGENCE_FACTOR:g}x the first step's" in record.error or "non-finite" in record.error


def test_timeout_is_recorded():
    record = run_cell(make_cell("parity", "rnn", 2, steps=50, eval_every=10, timeout_s=1e-9))
    assert record.status == "timeout" and record.steps == 1
    assert "train.timeout_s" in record.error and record.score is None


def test_error_cells_keep_the_traceback(monkeypatch):
    def broken(self, inputs):
        raise ValueError("broken forward")

    monkeypatch.setattr("seqbench.models.base.SequenceModel.forward", broken)
    record = run_cell(make_cell("parity", "rnn", 2))
    assert record.status == "error"
    assert record.error.startswith("Traceback") and "ValueError: broken forward" in record.error


def test_compile_is_validated_and_enters_the_key():
    assert make_cell("parity", "rnn", 2, compile="none").key() == make_cell("parity", "rnn", 2).key()
    assert make_cell("parity", "rnn", 2, compile="default").key() != make_cell(
        "parity", "rnn", 2).key()
    with pytest.raises(ConfigError, match="train.compile: unknown value 'fast'; allowed: "
                                          "default, none, reduce-overhead"):
        make_cell("parity", "rnn", 2, compile="fast")


@pytest.mark.slow
def test_compiled_cell_trains_and_records_its_compile_time():
    """torch.compile on the CPU (inductor): the cell trains, the compile time is kept apart."""
    record = run_cell(make_cell("parity", "transformer", 2, compile="default", steps=20,
                                eval_every=10, lr=1e-2))
    assert record.status in ("solved", "budget"), record.error
    assert record.compile_s > record.train_time_s > 0
