"""Gradient flow through time: its definition, causality, the vanishing-gradient picture, and the
two curves every trained cell records."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from conftest import make_cell, sample

from seqbench.cell.gradflow import (
    gradient_flow,
    log_spaced,
    position_loss,
    scored_position,
    step_gradient_norms,
)
from seqbench.cell.record import CellRecord
from seqbench.cell.train import run_cell
from seqbench.models import FAMILIES, build_model, parse_hparams
from seqbench.results.store import row
from seqbench.tasks import Batch, get_task
from seqbench.tasks.parity import Parity


def untrained(model: str, task, length: int, seed: int = 0, params: int = 2000):
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # budget misses at this tiny size do not matter here
        warnings.simplefilter("ignore")
        return build_model(model, task.io, params, parse_hparams(model, {}), task.seq_len(length))


def check_curve(flow: dict, largest: int, max_points: int = 64) -> None:
    distance, norm = flow["distance"], flow["norm"]
    assert set(flow) == {"distance", "norm"} and len(distance) == len(norm) <= max_points
    assert distance == sorted(set(distance)) and distance[0] == 0 and distance[-1] == largest
    assert all(type(d) is int for d in distance) and all(type(v) is float for v in norm)
    assert all(math.isfinite(v) and v >= 0 for v in norm)


@pytest.mark.parametrize(("name", "length"), [("parity", 12), ("adding", 12), ("copy", 6)])
def test_curve_runs_from_the_scored_step_back_to_the_first_input(name, length):
    task = get_task(name)
    batch = sample(task, length, 8)
    flow = gradient_flow(untrained("gru", task, length), task, batch)
    seq_len = task.seq_len(length)
    # final readout: the last step; copy: the first of its ten recall steps
    largest = seq_len - 1 if task.readout == "final" else seq_len - 10
    assert scored_position(task, batch) == largest
    check_curve(flow, largest)
    assert flow["distance"] == list(range(largest + 1))  # short: every distance is kept
    assert flow["norm"][0] > 0


def test_position_loss_is_the_task_loss_at_that_step():
    for name, length in [("parity", 5), ("adding", 5)]:
        task = get_task(name)
        batch = sample(task, length, 8)
        out = torch.randn(8, length, task.io.output_size)
        assert position_loss(task, out, batch, length - 1) / 8 == pytest.approx(
            task.loss(out, batch).item(), rel=1e-6)
    copy = get_task("copy")
    batch = sample(copy, 3, 8)
    out = torch.randn(8, copy.seq_len(3), copy.io.output_size)
    pos = scored_position(copy, batch)
    at = slice(pos, pos + 1)
    one = Batch(batch.inputs[:, at], batch.targets[:, at], batch.mask[:, at])
    assert position_loss(copy, out, batch, pos) / 8 == pytest.approx(
        copy.loss(out[:, at], one).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["parity", "copy"])
def test_norms_match_a_plain_forward_through_the_whole_model(name):
    """The split forward (encoder output as a leaf) gives the gradient a hooked ordinary forward
    gives, per sample, with no 1/B factor."""
    task = get_task(name)
    batch = sample(task, 4, 6)
    model = untrained("lstm", task, 4)
    norms, pos = step_gradient_norms(model, task, batch)
    kept = {}
    handle = model.encoder.register_forward_hook(lambda m, i, o: kept.setdefault("e", o))
    out = model.eval()(batch.inputs)
    handle.remove()
    kept["e"].retain_grad()
    target = batch.targets if task.readout == "final" else batch.targets[:, pos]
    torch.nn.functional.cross_entropy(out[:, pos], target, reduction="sum").backward()
    torch.testing.assert_close(norms, kept["e"].grad.norm(dim=-1).mean(0))


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_causal_models_send_no_gradient_to_later_steps(model):
    copy = get_task("copy")
    batch = sample(copy, 4, 4)
    norms, pos = step_gradient_norms(untrained(model, copy, 4), copy, batch)
    assert pos == 14 and norms.shape == (24,)
    assert (norms[pos + 1:] == 0).all()  # exactly: the output at pos never sees later inputs
    assert norms[pos] > 0


def test_vanilla_rnn_gradient_vanishes_where_tcn_and_attention_keep_it():
    """At length 60 the untrained tanh RNN's gradient from the last step to the first input falls
    by well over ten orders of magnitude (about 1e-17 when written); the TCN, whose receptive field
    covers the sequence, and the transformer lose about two (1e-3 .. 1e-2 across seeds)."""
    parity = get_task("parity")
    batch = sample(parity, 60, 16)
    curves = {}
    for model in ("rnn", "tcn", "transformer"):
        net = untrained(model, parity, 60)
        if model == "tcn":
            assert net.info["receptive_field"] >= 60
        curves[model] = gradient_flow(net, parity, batch)["norm"]
    rnn = curves["rnn"]
    assert rnn[-1] < 1e-8 * rnn[0]
    assert rnn[-1] < rnn[len(rnn) // 2] < rnn[0]
    for model in ("tcn", "transformer"):
        norm = curves[model]
        assert min(norm) > 1e-5 * norm[0], model
        assert norm[-1] > 1e4 * rnn[-1] / rnn[0] * norm[0], model


def test_long_sequences_keep_at_most_max_points_log_spaced():
    for largest in (1, 5, 63, 64, 100, 1000, 10**6):
        for max_points in (2, 3, 8, 64):
            points = log_spaced(largest, max_points)
            assert points == sorted(set(points)) and points[0] == 0 and points[-1] == largest
            assert len(points) == min(largest + 1, max_points)  # <= max_points; here it fills up
    points = log_spaced(10**6, 64)
    low, high = sum(1 <= d <= 1000 for d in points), sum(1000 <= d for d in points)
    assert abs(low - high) <= 10  # log-spaced: as many points per decade low as high up
    with pytest.raises(ValueError, match="max_points"):
        log_spaced(10, 1)
    parity = get_task("parity")
    flow = gradient_flow(untrained("rnn", parity, 60), parity, sample(parity, 60, 4), max_points=8)
    check_curve(flow, 59, max_points=8)
    assert len(flow["distance"]) == 8


def test_mode_restored_and_parameter_gradients_untouched():
    parity = get_task("parity")
    batch = sample(parity, 6, 4)
    model = untrained("transformer", parity, 6)
    for training in (True, False):
        model.train(training)
        gradient_flow(model, parity, batch)
        assert model.training is training
    assert all(p.grad is None for p in model.parameters())


def cell_flows(record: CellRecord) -> dict:
    for flow in record.grad_flow.values():
        check_curve(flow, record.seq_len - 1)
    return record.grad_flow


def test_cell_records_untrained_and_trained_flow_and_round_trips():
    cfg = make_cell("parity", "gru", 5, steps=6, eval_every=3)
    record = run_cell(cfg)
    assert record.status == "budget"
    flows = cell_flows(record)
    assert set(flows) == {"untrained", "trained"}
    assert flows["trained"]["norm"] != flows["untrained"]["norm"]
    assert flows["trained"]["distance"] == flows["untrained"]["distance"]
    back = CellRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back == record and back.grad_flow == flows
    assert "grad_flow" not in row(record)
    older = record.to_dict()
    del older["grad_flow"]  # records written before the field existed still load
    assert CellRecord.from_dict(older).grad_flow == {}
    again = run_cell(cfg)
    assert again.grad_flow == flows  # same seed, same curves
    other = run_cell(make_cell("parity", "gru", 5, steps=6, eval_every=3, seed=1))
    assert other.grad_flow["untrained"] != flows["untrained"]


def test_solved_cell_records_trained_flow(monkeypatch):
    monkeypatch.setattr(Parity, "solve_threshold", 0.0)  # solved at the first evaluation
    record = run_cell(make_cell("parity", "rnn", 3, steps=50, eval_every=2))
    assert record.status == "solved" and record.steps == 2
    assert set(cell_flows(record)) == {"untrained", "trained"}


def test_diverged_cell_records_only_untrained_flow():
    record = run_cell(make_cell("adding", "rnn", 4, steps=50, lr=1e30))
    assert record.status == "diverged"
    assert set(cell_flows(record)) == {"untrained"}
