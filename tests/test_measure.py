"""Speed, memory and FLOPs measurement on CPU: timing discipline, activation and RSS memory,
measure() per family, strict points, scaling fits, the overhead check, streaming rows, the store,
the tables and `seqbench measure`.

Nothing here asserts a measured speed: only properties that hold on a busy machine (positive
times, figures consistent with each other, exact byte and FLOP counts, lower bounds of sleeps).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import shutil
import statistics
import time
import types

import pandas as pd
import pytest
import torch
from conftest import TINY_PARAMS, expect_rejected
from torch import nn
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

import seqbench.measure.overhead as ov
import seqbench.measure.point as bm
from seqbench.cell.config import display_of
from seqbench.cell.step import TrainStep
from seqbench.cli import main
from seqbench.measure import memory, streaming, timing
from seqbench.measure.memory import rss_growth, rss_growth_in_process, saved_bytes
from seqbench.measure.overhead import overhead
from seqbench.measure.point import (
    Harness,
    MeasurePoint,
    measure,
    rnn_flops,
    train_flops,
)
from seqbench.measure.record import MeasureRecord
from seqbench.models import FAMILIES
from seqbench.results.report import markdown
from seqbench.results.store import Store, measurement_frame
from seqbench.results.tables import measurement_tables, scaling
from seqbench.strict import ConfigError
from seqbench.tasks import get_task

BATCH = 4


@pytest.fixture(autouse=True)
def short_blocks(monkeypatch):
    """Timed blocks of >= 2 ms instead of 50 ms (same protocol, far fewer calls)."""
    quick = functools.partial(timing.time_blocks, min_block_s=0.002)
    monkeypatch.setattr(bm, "time_blocks", quick)
    monkeypatch.setattr(streaming, "time_blocks", quick)
    monkeypatch.setattr(ov, "time_blocks", quick)


def point(model: str = "rnn", length: int = 16, **kw) -> MeasurePoint:
    return MeasurePoint(**{"model": model, "length": length, "batch_size": BATCH,
                           "params": TINY_PARAMS} | kw)


# --- timing -------------------------------------------------------------------------------------

def test_time_blocks_calls_warmup_calibration_and_whole_blocks():
    calls = []
    t = timing.time_blocks(lambda: calls.append(1), "cpu", warmup=2, blocks=6, min_block_s=1e-4)
    assert len(t.samples) == 6 and all(s >= 0 for s in t.samples)
    assert t.calls_per_block >= 1
    assert len(calls) == 2 + 1 + 6 * t.calls_per_block


def test_time_blocks_defaults_give_at_least_five_samples():
    calls = []
    t = timing.time_blocks(lambda: calls.append(1), "cpu", min_block_s=1e-4)
    assert len(t.samples) >= 5
    assert len(calls) == 3 + 1 + len(t.samples) * t.calls_per_block


@pytest.mark.parametrize("blocks", [0, 4])
def test_time_blocks_needs_five_blocks(blocks):
    calls = []
    with pytest.raises(ValueError, match=f"blocks: at least 5 .* got {blocks}"):
        timing.time_blocks(lambda: calls.append(1), "cpu", blocks=blocks)
    assert calls == []  # refused before anything ran


@pytest.mark.parametrize(("samples", "median", "iqr"), [
    ((1.0, 2.0, 3.0, 4.0, 5.0), 3.0, 2.0),
    ((5.0, 1.0, 4.0, 2.0, 3.0), 3.0, 2.0),  # order does not matter
    ((1.0, 2.0, 3.0, 4.0, 100.0), 3.0, 2.0),  # an outlier moves neither
    ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), 3.5, 2.5),  # inclusive quartiles 2.25 and 4.75
])
def test_timing_median_and_iqr(samples, median, iqr):
    t = timing.Timing(samples, 1)
    assert t.median == pytest.approx(median) and t.iqr == pytest.approx(iqr)


def test_sleep_is_never_timed_shorter_than_it_slept():
    t = timing.time_blocks(lambda: time.sleep(0.002), "cpu", warmup=1, blocks=5, min_block_s=0.001)
    assert min(t.samples) >= 0.002 * (1 - 1e-6)
    assert t.median >= 0.002 * (1 - 1e-6)


# --- memory -------------------------------------------------------------------------------------

def test_saved_bytes_counts_saved_activations_not_parameters():
    w = nn.Parameter(torch.randn(8, 5))
    x = torch.randn(4, 8, requires_grad=True)

    def step():
        torch.tanh(x @ w).sum().backward()

    # mm saves x (for dW) and W (for dx); tanh saves its (4, 5) result; sum saves no tensor
    x_bytes, y_bytes, w_bytes = 4 * 8 * 4, 4 * 5 * 4, 8 * 5 * 4
    assert saved_bytes(step, [w]) == x_bytes + y_bytes
    assert saved_bytes(step, []) == x_bytes + y_bytes + w_bytes


def test_saved_bytes_counts_a_storage_once():
    x = torch.randn(16, requires_grad=True)
    assert saved_bytes(lambda: (x * x).sum().backward(), []) == 16 * 4  # x saved twice


def test_saved_bytes_of_an_rnn_grows_linearly_with_length():
    sizes = {}
    for length in (32, 64):
        h = Harness(point("rnn", length))
        sizes[length] = saved_bytes(h.forward_backward, list(h.model.parameters()))
    assert sizes[32] > 0
    assert 1.8 <= sizes[64] / sizes[32] <= 2.2


def test_rss_growth_in_process_is_a_byte_count_or_none():
    def step():
        torch.ones(1 << 20).sum()

    growth = rss_growth_in_process(step, warmup=1)
    assert growth is None or (isinstance(growth, int) and growth >= 0)


def test_rss_growth_in_process_is_none_without_proc(monkeypatch):
    def unreadable(field):
        raise OSError("no /proc here")

    monkeypatch.setattr(memory, "_status_kb", unreadable)
    calls = []
    assert rss_growth_in_process(lambda: calls.append(1), warmup=2) is None
    assert len(calls) >= 2


def test_rss_growth_reports_a_failed_child(monkeypatch):
    monkeypatch.setattr(memory, "sys", types.SimpleNamespace(executable=shutil.which("false")))
    with pytest.raises(RuntimeError, match="rss subprocess failed"):
        rss_growth(point("rnn", 8).to_dict())


# --- measure() ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_measure_every_family_on_cpu(model):
    # 16 steps of parity, or of reverse at n = 8 for a family that needs an answer phase (seq2seq)
    parity = FAMILIES[model].accepts(get_task("parity").io)
    p = point(model, 16) if parity else point(model, 8, task="reverse")
    r = measure(p, peak=1e12, rss=False, blocks=5)
    assert (r.status, r.error) == ("ok", None)
    assert r.key == p.key() and r.point == p.to_dict()
    assert r.seq_len == 16 and r.params_actual > 0
    tokens = BATCH * 16
    assert r.train_ms > 0 and r.infer_ms > 0 and r.train_ms_iqr >= 0 and r.infer_ms_iqr >= 0
    assert r.train_tokens_per_s == pytest.approx(tokens / (r.train_ms / 1e3), rel=1e-9)
    assert r.infer_tokens_per_s == pytest.approx(tokens / (r.infer_ms / 1e3), rel=1e-9)
    assert r.saved_bytes > 0
    assert r.train_flops > 0
    assert r.achieved_flops_per_s == pytest.approx(r.train_flops / (r.train_ms / 1e3), rel=1e-9)
    assert r.matmul_peak_flops_per_s == 1e12
    assert r.efficiency == pytest.approx(r.achieved_flops_per_s / 1e12, rel=1e-9)
    assert r.data_gen_ms > 0
    assert r.data_gen_fraction == pytest.approx(r.data_gen_ms / r.train_ms, rel=1e-9)
    # rss off; CUDA-only figures absent on CPU; no streaming asked for
    assert r.rss_growth_bytes is None and r.train_peak_allocated is None
    assert r.infer_peak_reserved is None and r.streaming == []
    assert r.flags["threads"] == torch.get_num_threads()
    assert r.flags["autocast_bf16"] is False
    assert r.flags["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert "cudnn_enabled" not in r.flags
    assert r.env["device"] == "cpu" and r.env["torch"] == torch.__version__
    json.dumps(r.to_dict())  # storable as is


def test_measure_counts_tokens_of_the_task_sequence():
    """Throughput counts the steps fed to the model (copy: length + the recall window)."""
    r = measure(point("gru", 4, task="copy"), rss=False, blocks=5)
    assert r.status == "ok", r.error
    seq_len = get_task("copy").seq_len(4)
    assert r.seq_len == seq_len > 4
    assert r.train_tokens_per_s == pytest.approx(BATCH * seq_len / (r.train_ms / 1e3), rel=1e-9)
    assert r.efficiency is None  # no peak given


def test_measure_with_rss_uses_a_fresh_process():
    r = measure(point("rnn", 8), rss=True, blocks=5)
    assert r.status == "ok", r.error
    assert r.rss_growth_bytes is None or r.rss_growth_bytes >= 0
    if r.rss_growth_bytes is not None:
        assert isinstance(r.rss_growth_bytes, int)


@pytest.mark.parametrize("model", ["gru", "transformer"])
def test_measure_bf16_autocast(model):
    fp32 = measure(point(model, 32), rss=False, blocks=5)
    bf16 = measure(point(model, 32, dtype="bf16"), rss=False, blocks=5)
    assert bf16.status == "ok", bf16.error
    assert bf16.flags["autocast_bf16"] is True and bf16.point["dtype"] == "bf16"
    assert bf16.key != fp32.key
    assert bf16.train_ms > 0 and bf16.infer_ms > 0 and bf16.train_flops > 0
    # autocast really ran: the matmul activations saved for backward are bf16, half the bytes
    assert 0 < bf16.saved_bytes < fp32.saved_bytes
    assert bf16.train_flops == fp32.train_flops  # the same work, counted the same


def test_measure_bf16_lstm_is_measured_or_recorded_as_failed():
    """oneDNN's LSTM runs bf16 only on CPUs with bf16 instructions (torch 2.13 still routes
    autocast to it elsewhere and fails): either way measure() returns a record, never raises."""
    r = measure(point("lstm", 16, dtype="bf16"), rss=False, blocks=5)
    assert r.flags["autocast_bf16"] is True
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert r.status == "ok", r.error
        assert r.train_ms > 0 and r.saved_bytes > 0
    else:
        assert r.status in ("ok", "error")
        if r.status == "error":
            assert r.error.startswith("RuntimeError: ") and r.train_ms is None


@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 TiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"),
], ids=["cuda-oom", "cpu-oom"])
def test_measure_records_an_oom(monkeypatch, exc):
    def train_step(self):
        raise exc

    monkeypatch.setattr(TrainStep, "__call__", train_step)
    r = measure(point("lstm", 8), rss=False, blocks=5)
    assert r.status == "oom"
    assert r.error == f"{type(exc).__name__}: {exc}"
    assert r.train_ms is None and r.train_tokens_per_s is None and r.train_flops is None
    assert r.key == point("lstm", 8).key() and r.flags and r.env  # still identifiable


def test_measure_records_other_failures_as_errors(monkeypatch):
    def infer_step(self):
        raise ValueError("shape mismatch somewhere")

    monkeypatch.setattr(Harness, "infer_step", infer_step)
    r = measure(point("tcn", 8), rss=False, blocks=5)
    assert r.status == "error"
    assert r.error == "ValueError: shape mismatch somewhere"
    assert r.train_ms > 0 and r.infer_ms is None  # what ran before the failure is kept


# --- FLOPs --------------------------------------------------------------------------------------

def test_rnn_flops_analytic_formula():
    b, t = 3, 7
    # per step, layer, direction and sample: 2 * gates * H * (H_in + H); H_in = 3, then H (* dirs)
    lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    assert rnn_flops(lstm, b, t) == (2 * 4 * 5 * (3 + 5) + 2 * 4 * 5 * (5 + 5)) * b * t
    gru = nn.GRU(3, 5, num_layers=2)
    assert rnn_flops(gru, b, t) == (2 * 3 * 5 * 8 + 2 * 3 * 5 * 10) * b * t
    elman = nn.RNN(3, 5, num_layers=2)
    assert rnn_flops(elman, b, t) == (2 * 1 * 5 * 8 + 2 * 1 * 5 * 10) * b * t
    relu = nn.RNN(3, 5, nonlinearity="relu")
    assert rnn_flops(relu, b, t) == 2 * 5 * 8 * b * t
    bi = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    assert rnn_flops(bi, b, t) == (2 * 4 * 5 * 8 * 2 + 2 * 4 * 5 * (10 + 5) * 2) * b * t
    both = nn.Sequential(nn.Linear(3, 3), lstm, gru)  # every RNN module inside is counted
    assert rnn_flops(both, b, t) == rnn_flops(lstm, b, t) + rnn_flops(gru, b, t)
    assert rnn_flops(nn.Linear(3, 5), b, t) == 0


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_train_flops_of_a_recurrent_model_counts_each_matmul_once(model):
    """3x the analytic RNN forward, plus the linear head (forward, input and weight gradients);
    on CPU the RNN and GRU run as mm ops the counter also sees, which must not count twice."""
    h = Harness(point(model, 16))
    head = h.model.head
    head_flops = 3 * 2 * BATCH * 16 * head.in_features * head.out_features
    assert train_flops(h) == 3 * rnn_flops(h.model, BATCH, 16) + head_flops


def test_train_flops_of_a_transformer_count_attention():
    flops = {n: train_flops(Harness(point("transformer", n))) for n in (8, 16, 32)}
    assert 0 < flops[8] < flops[16] < flops[32]
    # linear terms (projections, MLP, head) cancel in f(2n) - 2 f(n); what is left is attention,
    # quadratic in the length: torch's own formulas for each layer's attention forward + backward
    p = point("transformer", 8)
    width, heads, layers = Harness(p).model.info["width"], p.hparams.heads, p.hparams.layers

    def attention(n):
        q = (BATCH, heads, n, width // heads)
        return layers * (sdpa_flop_count(q, q, q) + sdpa_backward_flop_count(q, q, q, q))

    assert flops[16] - 2 * flops[8] == attention(16) - 2 * attention(8) > 0
    assert flops[32] - 2 * flops[16] == attention(32) - 2 * attention(16)


# --- MeasurePoint -------------------------------------------------------------------------------

POINT = {"model": "rnn", "length": 8, "batch_size": 4, "params": 2000}

POINT_ERRORS = {
    "unknown key": ({"colour": "red"}, ["colour: unknown key", "allowed: batch_size, batching, device"]),
    "fp16": ({"dtype": "fp16"}, ["dtype: unknown value 'fp16'; allowed: bf16, fp32"]),
    "device": ({"device": "tpu"}, ["device: unknown value 'tpu'; allowed: cpu, cuda"]),
    "length 0": ({"length": 0}, ["length: task 'parity' needs an integer length >= 1, got 0"]),
    "length type": ({"length": "8"}, ["length: expected int, got str '8'"]),
    "batch 0": ({"batch_size": 0}, ["batch_size: must be >= 1, got 0"]),
    "params": ({"params": 50}, ["params: must be >= 100, got 50"]),
    "model": ({"model": "rwkv"}, ["model: unknown value 'rwkv'"]),
    "task": ({"task": "sorting"}, ["task: unknown value 'sorting'"]),
    "hparams": ({"hparams": {"depth": 2}}, ["hparams.depth: unknown key"]),
}


@pytest.mark.parametrize("case", sorted(POINT_ERRORS))
def test_measure_point_is_strict(case):
    change, fragments = POINT_ERRORS[case]
    with pytest.raises(ConfigError) as info:
        MeasurePoint.from_dict(POINT | change)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_measure_point_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="batch_size: must be >= 1, got -2"):
        MeasurePoint(model="rnn", length=8, batch_size=-2)
    with pytest.raises(ConfigError, match="length: task 'parity' needs an integer length >= 1"):
        MeasurePoint(model="rnn", length=0)


def test_measure_point_key_is_stable_and_covers_every_field():
    base = MeasurePoint.from_dict(POINT)
    assert base.key() == MeasurePoint.from_dict(dict(POINT)).key()
    assert len(base.key()) == 16 and int(base.key(), 16) >= 0
    again = MeasurePoint.from_dict(json.loads(json.dumps(base.to_dict())))
    assert again == base and again.key() == base.key()
    # hparams left out, empty, or spelled as the defaults are the same point
    assert MeasurePoint.from_dict(POINT | {"hparams": {}}).key() == base.key()
    assert MeasurePoint.from_dict(POINT | {"hparams": {"layers": 1}}).key() == base.key()
    changes = [{"model": "gru"}, {"length": 9}, {"batch_size": 5}, {"device": "cuda"},
               {"dtype": "bf16"}, {"params": 3000}, {"task": "copy"}, {"seed": 1},
               {"hparams": {"layers": 2}}]
    keys = {MeasurePoint.from_dict(POINT | c).key() for c in changes}
    assert len(keys) == len(changes) and base.key() not in keys


# --- scaling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("power", [1, 2])
def test_scaling_recovers_a_power_law(power):
    rows = [{"length": n, "t": 0.3 * n**power} for n in (8, 16, 64, 256)]
    fit = scaling(rows, "t")
    assert fit["slope"] == pytest.approx(power) and fit["r2"] == pytest.approx(1.0)
    assert fit["points"] == 4


def test_scaling_fit_quality_drops_off_a_power_law():
    rows = [{"length": n, "t": t} for n, t in ((8, 1.0), (16, 5.0), (32, 2.0), (64, 9.0))]
    fit = scaling(rows, "t")
    assert 0 <= fit["r2"] < 0.9 and fit["points"] == 4


def test_scaling_needs_two_lengths():
    assert scaling([], "t") is None
    assert scaling([{"length": 8, "t": 1.0}], "t") is None
    assert scaling([{"length": 8, "t": 1.0}, {"length": 8, "t": 2.0}], "t") is None
    # points without the figure (failed or unmeasured) are left out
    assert scaling([{"length": 8, "t": 1.0}, {"length": 16, "t": None}, {"length": 32}], "t") is None
    fit = scaling([{"length": 8, "t": 1.0}, {"length": 16, "t": None}, {"length": 32, "t": 4.0}], "t")
    assert fit["slope"] == pytest.approx(1.0) and fit["points"] == 2


# --- overhead -----------------------------------------------------------------------------------

def test_overhead_times_the_sweep_step_a_bare_loop_and_its_copy(monkeypatch):
    calls = []
    original = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self: calls.append(1) or original(self))
    row = overhead(point("rnn", 8), rounds=2)
    assert (row["model"], row["length"], row["batch_size"]) == ("rnn", 8, BATCH)
    assert row["sweep_ms"] > 0 and row["bare_ms"] > 0 and row["bare_copy_ms"] > 0
    assert row["rounds"] == 2 and calls  # the sweep side is the sweep's own TrainStep
    judged = ov.verdict(row["ratio"], (row["aa_low"], row["aa_high"]))
    if "first" in row:  # the first measurement failed and the point was measured again
        assert row["first"]["verdict"] == "fail"
        assert row["verdict"] == ("fail" if judged == "fail" else "unconfirmed")
    else:
        assert row["verdict"] == judged


@pytest.mark.parametrize("task", ["copy", "adding"])
def test_overhead_needs_a_final_class_task(task):
    with pytest.raises(ConfigError, match="task: the overhead check needs a final-class task"):
        overhead(point("rnn", 4, task=task))


def test_bare_loop_copies_train_identically():
    """The A/A control's two loops are the same computation: on the CPU, bit for bit."""
    h = Harness(point("gru", 8))
    loops = [ov.BareLoop(h.point, h.task, h.batch, h.seq_len) for _ in range(2)]
    for loop in loops:
        for _ in range(3):
            loop()
    a, b = (list(loop.model.parameters()) for loop in loops)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], next(Harness(point("gru", 8)).model.parameters()))  # trained


def test_interleaved_rotates_the_order_every_round():
    order = []
    steps = {name: functools.partial(order.append, name) for name in "abc"}
    timings = ov.interleaved(steps, "cpu", rounds=3)
    assert {name: len(t) for name, t in timings.items()} == {"a": 3, "b": 3, "c": 3}
    assert [name for name, _ in itertools.groupby(order)] == list("abcbcacab")


def timings(**rounds) -> dict:
    """Timings whose per-round medians are the given numbers (seconds)."""
    return {name: [timing.Timing((v, v, v, v, v), 1) for v in values]
            for name, values in rounds.items()}


def test_compare_takes_per_round_ratios_so_drift_cancels():
    """The machine slows down 3x over the rounds; every round's sweep/bare is 1.02."""
    row = ov.compare(timings(sweep=[1.02, 2.04, 3.06], bare=[1, 2, 3], bare_copy=[1, 2, 3]))
    assert row["ratio"] == pytest.approx(1.02) and row["aa"] == pytest.approx(1.0)
    assert (row["aa_low"], row["aa_high"]) == pytest.approx((1.0, 1.0))
    assert row["bare_ms"] == pytest.approx(2000) and row["rounds"] == 3
    assert row["verdict"] == "pass"


@pytest.mark.parametrize(("n", "k"), [(1, 1), (2, 1), (4, 1), (5, 1), (8, 2), (16, 5), (30, 11)])
def test_median_interval_takes_the_order_statistics_with_90_percent_coverage(n, k):
    """(x(k), x(n+1-k)) with k the largest whose coverage 1 - 2 P(B <= k-1) is >= 0.9."""
    values = [float(v) for v in range(n, 0, -1)]  # given unsorted
    assert ov.median_interval(values) == (float(k), float(n + 1 - k))
    coverage = [1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n for j in (k, k + 1)]
    assert coverage[0] >= 0.9 or k == 1
    assert coverage[1] < 0.9 or k + 1 > n // 2


@pytest.mark.parametrize(("ratio", "aa", "expected"), [
    (1.04, (0.99, 1.02), "pass"), (1.05, (0.975, 1.025), "pass"), (1.06, (1.0, 1.0), "fail"),
    (0.9, (0.98, 1.0), "pass"), (1.5, (1.0, 1.04), "noisy"), (1.0, (0.96, 1.0), "noisy"),
    (1.06, (0.9, 1.1), "noisy"),
])
def test_verdict_judges_the_bar_only_within_the_aa_bar(ratio, aa, expected):
    assert ov.verdict(ratio, aa) == expected


@pytest.mark.parametrize(("verdicts", "status"), [
    (["pass", "pass"], 0), (["pass", "fail"], 1), (["noisy", "fail"], 1), (["pass", "noisy"], 3),
    (["pass", "unconfirmed"], 3), (["unconfirmed", "fail"], 1),
])
def test_exit_status(verdicts, status):
    assert ov.exit_status([{"verdict": v} for v in verdicts]) == status


# --- streaming ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_measure_streaming_rows(model):
    r = measure(point(model, 8), rss=False, blocks=5, stream_positions=(8, 4))
    assert r.status == "ok", r.error
    assert [s["position"] for s in r.streaming] == [4, 8]
    for s in r.streaming:
        assert s["latency_ms_median"] > 0 and s["latency_ms_iqr"] >= 0
        assert s["tokens_per_s"] == pytest.approx(1e3 / s["latency_ms_median"], rel=1e-9)
    at4, at8 = r.streaming
    if model == "lstm":  # constant state
        assert at4["state_bytes"] == at8["state_bytes"] > 0
    else:  # KV cache grows with the position
        assert at8["state_bytes"] == 2 * at4["state_bytes"] > 0
    row = r.row()
    for s in r.streaming:
        assert row[f"stream_ms@{s['position']}"] == s["latency_ms_median"]
        assert row[f"stream_state_bytes@{s['position']}"] == s["state_bytes"]
    assert not {"streaming", "point", "env", "flags", "schema"} & set(row)
    assert row["model"] == model and row["flag.threads"] == torch.get_num_threads()
    assert row["hp.layers"] == r.point["hparams"]["layers"]


# --- store and tables ---------------------------------------------------------------------------

def fake_measurement(model: str, length: int, status: str = "ok", **figures) -> MeasureRecord:
    """A stored-looking record with chosen figures (no measuring)."""
    p = point(model, length)
    if status == "ok":
        figures = {"data_gen_fraction": 0.01, "efficiency": 0.1} | figures
    return MeasureRecord(p.key(), p.to_dict(), p.payload(), status=status, seq_len=length,
                         flags={"threads": 1}, env={"device": "cpu"},
                         **display_of(p.model, p.task), **figures)


def test_store_saves_and_loads_measurements(tmp_path):
    store = Store(tmp_path)
    records = [fake_measurement("rnn", 8, train_ms=1.0), fake_measurement("gru", 16, train_ms=2.0)]
    paths = [store.save_measurement(r) for r in records]
    for r, path in zip(records, paths):
        assert path.parent == store.measurements
        assert path.name == f"{r.point['model']}_L{r.point['length']}_{r.key}.json"
    loaded = store.read().measurements
    assert sorted(loaded) == sorted(r.key for r in records)
    assert loaded[records[0].key] == records[0]
    # a new measurement of the same point replaces the old one
    store.save_measurement(fake_measurement("rnn", 8, train_ms=3.0))
    assert len(list(store.measurements.glob("*.json"))) == 2
    frame = measurement_frame(store.read().measurements.values())
    assert len(frame) == 2
    assert frame.set_index("model").loc["rnn", "train_ms"] == 3.0
    assert list(store.measurements.glob(".*.tmp")) == []  # no temporary files left


def test_store_skips_unusable_measurements(tmp_path):
    store = Store(tmp_path)
    good = fake_measurement("rnn", 8, train_ms=1.0)
    store.save_measurement(good)
    (store.measurements / "gru_L8_0123456789abcdef.json").write_text('{"key": "01234')
    renamed = fake_measurement("lstm", 8, train_ms=1.0)
    (store.measurements / "lstm_L8_ffffffffffffffff.json").write_text(json.dumps(renamed.to_dict()))
    (store.measurements / "tcn_L8_aaaaaaaaaaaaaaaa.json").write_text("[1, 2]")
    loaded = store.read()
    assert list(loaded.measurements) == [good.key]
    reasons = sorted(p.reason for p in loaded.problems)
    assert len(reasons) == 3
    assert any("not valid JSON" in r for r in reasons)
    assert any("expected a JSON object, got list" in r for r in reasons)
    assert any("file name does not match" in r for r in reasons)


def speed_frame() -> pd.DataFrame:
    """rnn linear (faster at 8, slower at 32), the transformer quadratic, lstm out of memory at
    16 and not measured at 32."""
    records = []
    for n in (8, 16, 32):
        records += [
            fake_measurement("rnn", n, train_tokens_per_s=16_000 / n, infer_tokens_per_s=4000.0,
                             train_ms=0.1 * n, infer_ms=0.05 * n, saved_bytes=128 * n),
            fake_measurement("transformer", n, train_tokens_per_s=1000.0,
                             infer_tokens_per_s=2000.0, train_ms=0.01 * n * n,
                             infer_ms=0.02 * n * n, saved_bytes=10 * n * n),
        ]
    records += [
        fake_measurement("lstm", 8, train_tokens_per_s=1500.0, infer_tokens_per_s=1000.0,
                         train_ms=1.0, infer_ms=1.0, saved_bytes=5000),
        fake_measurement("lstm", 16, status="oom", error="OutOfMemoryError: CUDA out of memory"),
    ]
    return pd.DataFrame([r.row() for r in records])


def test_measurement_tables_ratio_to_the_transformer_best_and_oom():
    tables = {t.title: t for t in measurement_tables(speed_frame())}
    train = tables["training tokens/s"]
    assert train.columns == ["L=8", "L=16", "L=32"]
    assert train.rows == ["rnn", "lstm", "transformer"]
    for col in train.columns:
        assert train.text[("transformer", col)] == "1K (1.00x)"
    assert [train.text[("rnn", col)] for col in train.columns] == [
        "2K (2.00x)", "1K (1.00x)", "500 (0.50x)"]
    assert train.text[("lstm", "L=8")] == "1.5K (1.50x)"
    assert train.text[("lstm", "L=16")] == "oom"
    assert train.text.get(("lstm", "L=32"), "") == ""
    assert train.best == {("rnn", "L=8"), ("rnn", "L=16"), ("transformer", "L=16"),
                          ("transformer", "L=32")}
    assert "ratio to the transformer" in train.caption and "cpu, fp32, batch 4" in train.caption
    infer = tables["inference tokens/s"]
    assert infer.text[("rnn", "L=8")] == "4K (2.00x)"
    assert infer.best == {("rnn", col) for col in infer.columns}
    memory_table = next(t for title, t in tables.items() if title.startswith("activation memory"))
    assert [memory_table.text[("rnn", col)] for col in memory_table.columns] == [
        "1.02KB (1.60x)", "2.05KB (0.80x)", "4.1KB (0.40x)"]
    assert memory_table.best == {("transformer", "L=8"), ("rnn", "L=16"), ("rnn", "L=32")}
    assert not any("RSS" in title or "CUDA" in title for title in tables)  # figures not measured
    text = markdown(list(tables.values()), "m")
    assert "| rnn | **2K (2.00x)** | **1K (1.00x)** | 500 (0.50x) |" in text
    assert "| lstm | 1.5K (1.50x) | oom |  |" in text


def test_scaling_table_lists_every_model():
    tables = {t.title: t for t in measurement_tables(speed_frame())}
    table = tables["scaling"]
    assert table.rows == ["rnn", "lstm", "transformer"]
    assert table.text[("rnn", "train time")].startswith("1.00 ")
    assert table.text[("rnn", "activation memory")].startswith("1.00 ")
    assert table.text[("transformer", "train time")].startswith("2.00 ")
    assert table.text[("transformer", "inference time")].startswith("2.00 ")
    assert table.text[("transformer", "activation memory")].startswith("2.00 ")
    assert "R² 1.00" in table.text[("transformer", "train time")]
    assert table.text.get(("lstm", "train time"), "") == ""  # one measured length: no fit


# --- the CLI ------------------------------------------------------------------------------------

TINY_MEASURE = ["measure", "--batch", "4", "--params", "2k", "--no-rss", "--blocks", "5"]


def test_cli_measure_writes_records_tables_and_calibration(tmp_path, capsys):
    argv = [*TINY_MEASURE, "--models", "rnn,tcn", "--lengths", "8,16", "--out", str(tmp_path),
            "--name", "m"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    root = tmp_path / "m"
    files = sorted((root / "measurements").glob("*.json"))
    assert len(files) == 4
    records = [json.loads(f.read_text()) for f in files]
    assert {(r["point"]["model"], r["point"]["length"]) for r in records} == {
        ("rnn", 8), ("rnn", 16), ("tcn", 8), ("tcn", 16)}
    calibration = json.loads((root / "calibration.json").read_text())
    assert calibration["matmul_peak_flops_per_s"] > 0
    assert (calibration["device"], calibration["dtype"]) == ("cpu", "fp32")
    assert calibration["threads"] == torch.get_num_threads()
    for f, r in zip(files, records):
        assert f.name == f"{r['point']['model']}_L{r['point']['length']}_{r['key']}.json"
        assert r["status"] == "ok", r["error"]
        assert r["point"]["batch_size"] == 4 and r["point"]["params"] == 2000
        assert r["rss_growth_bytes"] is None  # --no-rss
        assert r["matmul_peak_flops_per_s"] == calibration["matmul_peak_flops_per_s"]
        assert r["efficiency"] == pytest.approx(
            r["achieved_flops_per_s"] / calibration["matmul_peak_flops_per_s"])
    frame = pd.read_csv(root / "measurements.csv")
    assert len(frame) == 4 and set(frame["key"]) == {r["key"] for r in records}
    summary = (root / "summary.md").read_text()
    for heading in ("## training tokens/s", "## inference tokens/s", "## scaling"):
        assert heading in summary
    assert "| rnn |" in summary and "| tcn |" in summary
    assert "[4/4] measure" in out


CLI_ERRORS = {
    "unknown model": (["--models", "rnn,rwkv"], ["model: unknown value 'rwkv'"]),
    "length not a number": (["--lengths", "8,x"], ["--lengths: expected a comma-separated list"]),
    "length 0": (["--lengths", "0"], ["length: task 'parity' needs an integer length >= 1, got 0"]),
    "no lengths": (["--lengths", ","], ["--lengths: must not be empty"]),
    "fp16": (["--dtype", "fp16"], ["dtype: unknown value 'fp16'; allowed: bf16, fp32"]),
    "3 blocks": (["--blocks", "3"], ["--blocks: must be >= 5, got 3"]),
    "batch 0": (["--batch", "0"], ["batch_size: must be >= 1, got 0"]),
    "bad params": (["--params", "lots"], ["params: expected an integer such as 20000"]),
    "bad stream": (["--stream", "4,x"], ["--stream: expected a comma-separated list"]),
    "unknown task": (["--task", "sorting"], ["task: unknown value 'sorting'"]),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_measure_rejects_bad_input(tmp_path, capsys, case):
    args, fragments = CLI_ERRORS[case]
    out = tmp_path / "out"
    argv = [*TINY_MEASURE, "--models", "rnn", "--lengths", "8", *args, "--out", str(out)]
    expect_rejected(capsys, argv, *fragments)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_measure_cuda_without_gpu_is_a_config_error(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*TINY_MEASURE, "--models", "rnn", "--lengths", "8", "--device", "cuda",
            "--out", str(out)]
    expect_rejected(capsys, argv, "device: cuda is not available")
    assert not out.exists()


OVERHEAD_ARGV = [*TINY_MEASURE, "--models", "rnn", "--lengths", "8", "--check-overhead"]


@pytest.mark.parametrize(("sweep", "copy", "status", "says"), [
    ([1.01, 1.02], [1.0, 1.01], 0, "PASS"),
    ([1.5, 1.5], [1.0, 1.0], 1, "FAIL: rnn L=8 1.500"),
    ([1.5, 1.5], [1.2, 1.1], ov.NOISY_EXIT, "too noisy to judge"),
    ([1.0, 1.0], [1.0, 0.95], ov.NOISY_EXIT, "too noisy to judge"),  # median 0.975, low 0.95
])
def test_cli_check_overhead_decides_on_the_figures(tmp_path, capsys, monkeypatch, sweep, copy,
                                                   status, says):
    """The command's verdict from given timings (bare: 1 s a round): exit 0, 1 or 3."""
    monkeypatch.setattr(ov, "interleaved", lambda steps, device, rounds, blocks: timings(
        sweep=sweep, bare=[1.0, 1.0], bare_copy=copy))
    assert main([*OVERHEAD_ARGV, "--rounds", "2", "--out", str(tmp_path), "--name", "o"]) == status
    out = " ".join(capsys.readouterr().out.split())
    assert says in out and "A/A intervals within" in out
    (row,) = json.loads((tmp_path / "o" / "overhead.json").read_text())
    assert row["aa"] == pytest.approx(statistics.median(copy))


@pytest.mark.parametrize(("again", "status", "verdict"), [
    ([1.5, 1.5], 1, "fail"), ([1.0, 1.0], ov.NOISY_EXIT, "unconfirmed")])
def test_check_overhead_confirms_a_failure_by_measuring_again(tmp_path, capsys, monkeypatch,
                                                               again, status, verdict):
    """A point over the bar is measured a second time; it fails only if that fails too, else it
    is `unconfirmed` (exit 3), with the first measurement kept."""
    runs = iter([[1.5, 1.5], again])
    monkeypatch.setattr(ov, "interleaved", lambda steps, device, rounds, blocks: timings(
        sweep=next(runs), bare=[1.0, 1.0], bare_copy=[1.0, 1.0]))
    assert main([*OVERHEAD_ARGV, "--rounds", "2", "--out", str(tmp_path), "--name", "o"]) == status
    (row,) = json.loads((tmp_path / "o" / "overhead.json").read_text())
    assert row["verdict"] == verdict and row["ratio"] == pytest.approx(statistics.median(again))
    assert row["first"]["ratio"] == pytest.approx(1.5) and row["first"]["verdict"] == "fail"
    out = " ".join(capsys.readouterr().out.split())
    assert ("did not confirm: rnn L=8" in out) == (verdict == "unconfirmed")


def test_cli_check_overhead_writes_the_comparison(tmp_path, capsys):
    argv = [*OVERHEAD_ARGV, "--rounds", "1", "--out", str(tmp_path), "--name", "o"]
    code = main(argv)
    root = tmp_path / "o"
    (row,) = json.loads((root / "overhead.json").read_text())
    assert (row["model"], row["length"], row["batch_size"]) == ("rnn", 8, 4)
    assert row["sweep_ms"] > 0 and row["bare_ms"] > 0 and row["bare_copy_ms"] > 0
    assert math.isfinite(row["ratio"]) and math.isfinite(row["aa"]) and row["rounds"] == 1
    assert code == ov.exit_status([row])  # the figures depend on noise; the decision does not
    assert "worst ratio" in capsys.readouterr().out
    assert not (root / "measurements").exists() and not (root / "calibration.json").exists()


def test_cli_rounds_need_the_overhead_check(tmp_path, capsys):
    expect_rejected(capsys, [*TINY_MEASURE, "--models", "rnn", "--lengths", "8", "--rounds", "3",
                             "--out", str(tmp_path / "o")], "--rounds: only with --check-overhead")
    assert not (tmp_path / "o").exists()


@pytest.mark.timing
def test_check_overhead_catches_an_injected_slowdown(tmp_path, capsys, monkeypatch):
    """TEST-ONLY slowdown: the sweep step does 3 steps per call. Its ratio is far over the bar:
    exit 1 where the A/A control is within 3%, else 3 (too noisy to judge), never 0."""
    class Slowed(Harness):
        def __init__(self, p):
            super().__init__(p)
            one = self.train_step
            self.train_step = lambda: [one() for _ in range(3)]

    monkeypatch.setattr(ov, "Harness", Slowed)
    code = main([*OVERHEAD_ARGV, "--out", str(tmp_path), "--name", "o"])
    (row,) = json.loads((tmp_path / "o" / "overhead.json").read_text())
    assert row["ratio"] > 2
    quiet = 1 - ov.AA_BAR <= row["aa_low"] and row["aa_high"] <= 1 + ov.AA_BAR
    assert code == (1 if quiet else ov.NOISY_EXIT)


@pytest.mark.timing
def test_check_overhead_says_too_noisy_when_the_aa_control_drifts(tmp_path, capsys, monkeypatch):
    """TEST-ONLY: the A/A copy does 2 steps per call, as a noisy machine might make it look; the
    bar is not judged (exit 3) whatever the sweep's ratio."""
    loops = []

    class Drifting(ov.BareLoop):
        def __call__(self):
            super().__call__()
            if self is loops[1]:
                super().__call__()

    monkeypatch.setattr(ov, "BareLoop", lambda *args: loops.append(Drifting(*args)) or loops[-1])
    code = main([*OVERHEAD_ARGV, "--out", str(tmp_path), "--name", "o"])
    (row,) = json.loads((tmp_path / "o" / "overhead.json").read_text())
    assert row["aa_high"] > 1 + ov.AA_BAR and row["verdict"] == "noisy"
    assert code == ov.NOISY_EXIT
    assert "too noisy to judge" in " ".join(capsys.readouterr().out.split())
