"""The training techniques as cell options (seqbench.cell.step, .tbptt, .varlen, .monitor):
truncated BPTT, mixed precision, gradient monitoring, variable lengths with padding and packing;
and that a cell at their defaults trains exactly as before them."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import torch
from conftest import make_cell, sample

from seqbench.cell.config import CellConfig
from seqbench.cell.seen import Seen
from seqbench.cell.step import TrainStep
from seqbench.cell.tbptt import bounds, truncated_step
from seqbench.cell.train import run_cell
from seqbench.cell.varlen import VarLen
from seqbench.measure.point import Harness, MeasurePoint, measure
from seqbench.models import build_model, parse_hparams
from seqbench.strict import ConfigError
from seqbench.tasks import Batch, get_task
from seqbench.tasks.base import IGNORE

TBPTT_MODELS = [("rnn", {}), ("lstm", {}), ("gru", {}), ("lstm", {"peephole": True}),
                ("lru", {}), ("rnn", {"layers": 2})]
ROOT = Path(__file__).resolve().parents[1]


def model_for(name: str, task: str, hp: dict | None = None, max_len: int = 40, budget=2000):
    torch.manual_seed(0)
    return build_model(name, get_task(task).io, budget, parse_hparams(name, hp or {}), max_len)


def step_for(model, task: str, length: int, **kwargs) -> TrainStep:
    return TrainStep(model, get_task(task), lengths=[length], batch_size=kwargs.pop("batch", 4),
                     lr=1e-3, clip=kwargs.pop("clip", 1.0), **kwargs)


# --- defaults: a cell trains exactly as before the techniques existed ---------------------------


# (family, task) pairs covering every readout and loss: final class, regression, loss on every
# step, loss on scored steps
BASELINE = [("rnn", "parity"), ("lstm", "copy"), ("gru", "adding"), ("tcn", "delay"),
            ("transformer", "assoc_recall"), ("lru", "reverse"), ("mamba", "copy")]


def baseline_cells() -> list[dict]:
    """Stored smoke-baseline records of BASELINE's pairs (results/baseline, written before the
    techniques existed) on this machine's kernel path and torch, at seed 0; else none."""
    chosen = {}
    for path in sorted(glob.glob(str(ROOT / "results/baseline/cells/*.json"))):
        record = json.loads(Path(path).read_text())
        env, cfg = record["env"], record["config"]
        if (env.get("cpu_capability") != torch.backends.cpu.get_cpu_capability()
                or env.get("torch") != torch.__version__ or env.get("threads") != 1
                or record["variant"] or cfg["generalise"] or cfg["seed"]):
            continue
        if (cfg["model"], cfg["task"]) in BASELINE:
            chosen.setdefault((cfg["model"], cfg["task"]), record)
    return list(chosen.values())


def test_a_default_cell_is_unchanged():
    """Every option at its default: the key, losses, scores and history of a stored baseline
    record are reproduced bit for bit; the history only gains the gradient figures."""
    records = baseline_cells()
    if not records:
        pytest.skip("no baseline record of this kernel path and torch version")
    for stored in records:
        cfg = CellConfig.from_dict(stored["config"])
        assert cfg.key() == stored["key"]
        record = run_cell(cfg)
        for name in ("status", "steps", "train_loss", "val_loss", "test_loss", "score",
                     "grad_flow", "seen_fraction", "val_seen_fraction"):
            assert getattr(record, name) == stored[name], (cfg.model, name)
        assert [{k: h[k] for k in stored["history"][0]} for h in record.history] == \
            stored["history"], cfg.model
        assert {"grad_norm", "grad_norm_max", "clipped"} <= set(record.history[0])


# --- truncated BPTT -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hp"), TBPTT_MODELS)
def test_chunks_glued_without_detaching_equal_the_full_forward(name, hp):
    model = model_for(name, "adding", hp)
    x = torch.rand(3, 11, 2, requires_grad=True)
    full = model(x)
    (g_full,) = torch.autograd.grad(full.square().sum(), x)
    state, outs = None, []
    for s, e in bounds(11, 4):
        out, state = model.forward_from(x[:, s:e], state)
        outs.append(out)
    glued = torch.cat(outs, 1)
    (g_glued,) = torch.autograd.grad(glued.square().sum(), x)
    torch.testing.assert_close(glued, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_glued, g_full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "hp"), TBPTT_MODELS)
def test_no_gradient_crosses_a_chunk_boundary(name, hp):
    """adding is read at the last step: its loss reaches the inputs of the last chunk only."""
    model = model_for(name, "adding", hp)
    batch = sample(get_task("adding"), 10, 4)
    inputs = batch.inputs.clone().requires_grad_()
    step = step_for(model, "adding", 10, tbptt=4)
    truncated_step(step, Batch(inputs, batch.targets))
    assert torch.all(inputs.grad[:, :8] == 0)  # chunks [0, 4) and [4, 8)
    assert inputs.grad[:, 8:].abs().sum() > 0


def test_a_per_step_chunk_loss_reaches_only_its_own_chunk():
    """copy, loss on every step: the gradient a chunk's loss sends to an earlier chunk's input
    is zero, while without truncation it is not."""
    model = model_for("gru", "copy")
    batch = sample(get_task("copy"), 4, 3)  # 24 steps
    task = get_task("copy")
    for k, crosses in ((8, False), (24, True)):
        embedded = model.encoder(batch.inputs).detach().requires_grad_()
        state, losses = None, []
        for s, e in bounds(24, k):
            y, state = model.core.forward_from(embedded[:, s:e], state)
            part = Batch(batch.inputs[:, s:e], batch.targets[:, s:e], batch.mask[:, s:e])
            losses.append(task.loss_terms(model.head(y), part)[0])
            if k < 24:
                state = state.detach()
        (grad,) = torch.autograd.grad(losses[-1], embedded)
        assert bool(grad[:, :16].abs().sum() > 0) is crosses


@pytest.mark.parametrize("task", ["copy", "delay", "parity"])
def test_sequence_updates_sum_to_the_sequence_loss(task):
    """Sequence updates: the chunks' terms over the whole count give the full sequence's mean
    loss (the forward values do not depend on detaching)."""
    model = model_for("lstm", task)
    length = {"copy": 4, "delay": 6, "parity": 12}[task]
    batch = sample(get_task(task), length, 4)
    with torch.no_grad():
        full = get_task(task).loss(model(batch.inputs), batch)
    step = step_for(model, task, length, tbptt=5)
    loss, finite = truncated_step(step, batch)
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    assert bool(finite) and step.monitor.updates == 1


@pytest.mark.parametrize(("task", "length", "updates"),
                         [("copy", 4, 5), ("delay", 6, 2), ("parity", 12, 1)])
def test_chunk_updates_step_on_every_chunk_that_holds_loss(task, length, updates):
    """copy: 24 steps, loss everywhere -> 5 chunks of 5; delay: 12 steps scored on 6..11 ->
    chunks [5, 10) and [10, 12); parity: read at the last step -> the last chunk."""
    model = model_for("gru", task)
    step = step_for(model, task, length, tbptt=5, tbptt_update="chunk")
    before = [p.detach().clone() for p in model.parameters()]
    truncated_step(step, sample(get_task(task), length, 4))
    assert step.monitor.updates == updates
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_tbptt_at_or_beyond_the_sequence_is_plain_training():
    plain = run_cell(make_cell("copy", "lstm", 3))  # 23 steps
    for k in (23, 100):
        record = run_cell(make_cell("copy", "lstm", 3, tbptt=k))
        assert record.key != plain.key
        assert record.history == plain.history and record.score == plain.score


def test_tbptt_cells_train_and_cut_the_dependency():
    record = run_cell(make_cell("adding", "lru", 8, tbptt=3, steps=6, eval_every=3))
    assert record.status == "budget" and len(record.history) == 2
    chunked = run_cell(make_cell("copy", "rnn", 3, tbptt=6, tbptt_update="chunk"))
    assert chunked.status == "budget"


# --- mixed precision --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["rnn", "lru", "transformer"])
def test_bf16_cells_train(model):
    record = run_cell(make_cell("parity", model, 4, precision="bf16"))
    assert record.status == "budget", record.error
    assert record.key != make_cell("parity", model, 4).key()


def test_evaluation_runs_at_the_training_precision(monkeypatch):
    import seqbench.cell.train as train

    states, real = [], train.evaluate

    def spy(model, task, batches):
        states.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return real(model, task, batches)

    monkeypatch.setattr(train, "evaluate", spy)
    run_cell(make_cell("parity", "gru", 4, precision="bf16"))
    assert states == [torch.bfloat16] * 3  # two validations and the test
    states.clear()
    run_cell(make_cell("parity", "gru", 4))
    assert states == [False] * 3


def test_a_precision_a_model_cannot_run_is_an_error_naming_it():
    """CPU's oneDNN LSTM has no fp16 kernel: the cell is recorded as an error, not raised."""
    record = run_cell(make_cell("parity", "lstm", 4, precision="fp16"))
    assert record.status == "error"
    assert "train.precision = fp16: model 'lstm' cannot train at this precision on cpu" in \
        record.error


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16])
def test_the_lru_recurrence_stays_complex64_under_autocast(monkeypatch, precision):
    import seqbench.models.lru as lru

    dtypes = []
    original = lru.scan

    def spy(a, b):
        dtypes.append((a.dtype, b.dtype))
        return original(a, b)

    monkeypatch.setattr(lru, "scan", spy)
    model = model_for("lru", "copy")
    with torch.autocast("cpu", dtype=precision):
        out = model(sample(get_task("copy"), 3, 2).inputs)
    assert out.dtype == precision  # the projections ran in half precision
    assert dtypes and set(dtypes) == {(torch.complex64, torch.complex64)}


def test_fp16_skips_an_overflowing_update_without_divergence():
    model = model_for("rnn", "parity")
    step = step_for(model, "parity", 6, autocast=torch.float16)
    step()  # the optimiser state exists from here on
    before = [p.detach().clone() for p in model.parameters()]
    step.scaler.update(2.0**120)  # the scaled gradients overflow fp16
    step.monitor.reset()
    step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    window = step.window()
    assert window.first_nonfinite is None and window.grads["skipped"] == 1.0
    assert window.grads["grad_norm"] is None  # no finite update to average
    assert step.scaler.get_scale() == 2.0**119  # backed off


# --- gradient monitoring ------------------------------------------------------------------------


def test_window_gradient_figures_are_exact(monkeypatch):
    """The window's figures equal those computed from the norms each update saw."""
    seen = []
    clip_grad_norm = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm):
        params = list(params)
        first = torch.nn.utils.get_total_norm([p.grad for p in model.core.first_layer()])
        head = torch.nn.utils.get_total_norm([p.grad for p in model.head.parameters()])
        norm = clip_grad_norm(params, max_norm)
        seen.append((float(norm), float(first / head)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    model = model_for("gru", "copy")
    step = step_for(model, "copy", 3, clip=0.78)  # about the norms' median here
    for _ in range(6):
        step()
    grads = step.window().grads
    norms = [n for n, _ in seen]
    assert grads["grad_norm"] == pytest.approx(sum(norms) / 6, rel=1e-6)
    assert grads["grad_norm_max"] == pytest.approx(max(norms), rel=1e-6)
    assert grads["clipped"] == sum(0.78 / (n + 1e-6) < 1 for n in norms) / 6
    assert grads["layer_ratio"] == pytest.approx(sum(r for _, r in seen) / 6, rel=1e-5)
    assert "skipped" not in grads


@pytest.mark.parametrize(("model", "has_ratio"),
                         [("rnn", True), ("lru", True), ("tcn", False), ("transformer", False)])
def test_history_items_carry_the_gradient_figures(model, has_ratio):
    record = run_cell(make_cell("parity", model, 3))
    for item in record.history:
        assert {"grad_norm", "grad_norm_max", "clipped"} <= set(item)
        assert ("layer_ratio" in item) is has_ratio
        assert 0 < item["grad_norm"] <= item["grad_norm_max"] and 0 <= item["clipped"] <= 1


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("options", [
    {}, {"autocast": torch.bfloat16}, {"autocast": torch.float16, "model": "gru"},
    {"tbptt": 4}, {"tbptt": 4, "tbptt_update": "chunk"}, {"varlen": VarLen(0.5)},
])
def test_the_training_step_never_reads_the_device(monkeypatch, options):
    """No host read of a tensor inside a step (on a GPU each would be a synchronisation).
    Packed batches are not: torch's packing reads its lengths and batch sizes on the host."""
    options = dict(options)
    model = model_for(options.pop("model", "rnn"), "parity")
    step = step_for(model, "parity", 8, **options)
    step()  # the first block of batches is drawn on the host (its lengths), outside the check

    def refuse(self, *args):
        raise AssertionError("host read of a device tensor inside a training step")

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for _ in range(3):
        step()
    monkeypatch.undo()
    assert step.window().steps == 4


# --- variable lengths ---------------------------------------------------------------------------


def varlen_batch(task: str, length: int, batch: int = 6, spread: float = 0.6,
                 **kwargs) -> tuple[Batch, int]:
    gen, host = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    return VarLen(spread, **kwargs).draw(get_task(task), length, batch, 1, gen, host, "cpu")[0]


ALONE_CASES = [(m, {}, False) for m in ("rnn", "lstm", "gru", "tcn", "lru", "mamba", "s4d",
                                        "hyena", "linear_attention")]
ALONE_CASES += [("transformer", {"positions": p}, False) for p in ("sinusoidal", "rope", "alibi")]
ALONE_CASES += [(m, {}, True) for m in ("rnn", "lstm", "gru")]
ALONE_CASES += [("lstm", {"peephole": True}, False), ("gru", {"layers": 2}, True),
                ("lstm", {"bidirectional": True}, True)]


@pytest.mark.parametrize(("name", "hp", "packed"), ALONE_CASES)
def test_a_padded_batch_gives_each_sequence_its_own_outputs(name, hp, packed):
    batch, _ = varlen_batch("parity", 12)
    assert len(set(batch.lengths.tolist())) > 1
    model = model_for(name, "parity", hp, max_len=12).eval()
    together = model(batch.inputs, lengths=batch.lengths, packed=packed)
    for row, n in enumerate(batch.lengths.tolist()):
        alone = model(batch.inputs[row : row + 1, :n])[0]
        torch.testing.assert_close(together[row, :n], alone, rtol=1e-5, atol=1e-5)


def test_a_bidirectional_model_refuses_a_padded_batch():
    batch, _ = varlen_batch("parity", 12)
    model = model_for("gru", "parity", {"bidirectional": True}, max_len=12)
    with pytest.raises(ValueError, match="runs a padded batch packed only"):
        model(batch.inputs, lengths=batch.lengths)


@pytest.mark.parametrize("task", ["copy", "adding", "delay", "parity"])
def test_loss_and_score_read_each_sequence_at_its_own_positions(task):
    """A padded batch's loss is the loss of its sequences taken alone (per position for a
    per-step task, per sequence for a final readout) and its scores are theirs."""
    batch, tokens = varlen_batch(task, 8)
    t = get_task(task)
    model = model_for("gru", task, max_len=40).eval()
    out = model(batch.inputs, lengths=batch.lengths)
    sums, counts, scores = 0.0, 0, []
    for row, n in enumerate(batch.lengths.tolist()):
        per_step = batch.targets.dim() == 2
        alone = Batch(batch.inputs[row : row + 1, :n],
                      batch.targets[row : row + 1, :n] if per_step else batch.targets[row : row + 1],
                      None if batch.mask is None else batch.mask[row : row + 1, :n])
        assert not per_step or torch.all(batch.targets[row, n:] == IGNORE)
        y = model(alone.inputs)
        s, c = t.loss_terms(y, alone)
        sums, counts = sums + s, counts + c
        scores.append(t.score(y, alone))
    torch.testing.assert_close(t.loss(out, batch), sums / counts, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t.score(out, batch), torch.cat(scores))
    assert tokens == int(batch.lengths.sum())


def test_each_padded_sequence_is_the_task_at_its_own_length():
    """copy at T: ten symbols, T - 1 blanks, the delimiter at step T + 9, recall in its own last
    ten steps; then padding (inputs 0, targets ignored, mask False) up to 28 + 20 steps."""
    batch, _ = varlen_batch("copy", 28, batch=32, spread=0.5)
    t = get_task("copy")
    assert batch.inputs.shape == (32, 48)
    delays = batch.lengths - 20
    assert delays.min() >= 14 and delays.max() <= 28
    for row, steps in enumerate(batch.lengths.tolist()):
        x, y, m = batch.inputs[row], batch.targets[row], batch.mask[row]
        delay = steps - 20
        assert torch.equal(x[delay + 9 : steps], torch.full((11,), 9))
        assert torch.equal(y[steps - 10 : steps], x[:10])
        assert torch.equal(m[:steps], t.sample(delay, 1, torch.Generator(), "cpu").mask[0])
        assert torch.all(x[steps:] == 0) and torch.all(y[steps:] == IGNORE) and not m[steps:].any()


def test_lengths_are_uniform_over_the_valid_range():
    """dyck takes even lengths: spread 0.5 at N = 20 gives {10, 12, ..., 20}, each with
    probability 1/6; a chi-square test over 3000 draws at significance 0.001."""
    from scipy.stats import chisquare

    varlen = VarLen(0.5)
    assert varlen.choices(get_task("dyck"), 20) == [10, 12, 14, 16, 18, 20]
    gen, host = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    batches = varlen.draw(get_task("dyck"), 20, 100, 30, gen, host, "cpu")
    lengths = torch.cat([b.lengths for b, _ in batches])
    counts = torch.bincount(lengths)[10::2]
    assert counts.sum() == 3000 and chisquare(counts.tolist()).pvalue > 1e-3


def test_bucketed_batches_are_cut_to_their_longest_sequence():
    gen, host = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    batches = VarLen(0.5, bucketed=True).draw(get_task("parity"), 40, 8, 5, gen, host, "cpu")
    widths = [b.inputs.shape[1] for b, _ in batches]
    assert widths == sorted(widths) and widths[-1] <= 40
    for b, tokens in batches:
        assert b.inputs.shape[1] == int(b.lengths.max()) and tokens == int(b.lengths.sum())


def test_seen_counts_only_sequences_at_the_cells_length():
    """A shorter sequence whose padding makes it look like a held-out one is not counted."""
    task = get_task("parity")
    held = sample(task, 6, 64, seed=3).inputs
    ends_in_zeros = held[(held[:, 4:] == 0).all(1)][0]
    full = held[~(held == ends_in_zeros).all(1)][0]
    seen = Seen(task, 6, [Batch(held, held[:, 0])], [Batch(held, held[:, 0])], 8, "cpu",
                varlen=True)
    inputs = torch.stack([full, ends_in_zeros])  # the second: ends_in_zeros[:4], padded
    seen(Batch(inputs, torch.zeros(2, dtype=torch.long), None, torch.tensor([6, 4])), 6)
    expected = (held == full).all(1).float().mean().item()
    assert seen.fractions() == (expected, expected) and expected > 0


@pytest.mark.parametrize("packing", ["padded", "packed"])
def test_variable_length_cells_train(packing):
    record = run_cell(make_cell("copy", "lstm", 6, length_spread=0.5, packing=packing))
    assert record.status == "budget", record.error
    assert 0 < record.train_tokens_per_s


def test_padded_and_packed_cells_train_alike():
    """The same batches run padded or packed give the same losses (to float round-off)."""
    a = run_cell(make_cell("adding", "gru", 10, length_spread=0.5))
    b = run_cell(make_cell("adding", "gru", 10, length_spread=0.5, packing="packed"))
    for x, y in zip(a.history, b.history, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)


def test_measure_reports_each_way_of_batching():
    """Each batching is its own point, counting the same expected real tokens per step; one of
    them measured end to end (the others share the code)."""
    points = {b: MeasurePoint.from_dict({"model": "gru", "length": 8, "params": 2000,
                                         "batch_size": 4, "length_spread": 0.5, "batching": b})
              for b in ("padded", "packed", "bucketed")}
    assert len({p.key() for p in points.values()}) == 3
    for point in points.values():
        h = Harness(point)
        assert h.tokens == 4 * (4 + 5 + 6 + 7 + 8) / 5  # lengths uniform on 4..8
        h.train_step()
    record = measure(points["packed"], rss=False, blocks=5)
    assert record.status == "ok", record.error
    assert record.train_tokens_per_s == pytest.approx(4 * 6 / (record.train_ms / 1e3))
    assert record.train_flops is None
    with pytest.raises(ConfigError, match=r"^batching: model 'tcn' does not run packed"):
        MeasurePoint.from_dict({"model": "tcn", "length": 8, "length_spread": 0.5,
                                "batching": "packed"})


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "hp", "train", "message"), [
    ("tcn", {}, {"tbptt": 4}, r"^train\.tbptt: model 'tcn' with these hyper-parameters does not "
     r"support 'tbptt'; supported by: gru, lru, lstm, rnn"),
    ("lstm", {"bidirectional": True}, {"tbptt": 4}, r"^train\.tbptt: model 'lstm' "),
    ("rnn", {}, {"tbptt": -1}, r"^train\.tbptt: must be >= 0"),
    ("rnn", {}, {"tbptt_update": "chunk"}, r"^train\.tbptt_update: applies only with tbptt > 0"),
    ("rnn", {}, {"tbptt": 4, "tbptt_update": "step"},
     r"^train\.tbptt_update: unknown value 'step'; allowed: chunk, sequence$"),
    ("rnn", {}, {"tbptt": 4, "compile": "default"}, r"^train\.tbptt: .*set compile = none"),
    ("rnn", {}, {"tbptt": 4, "length_spread": 0.5}, r"^train\.tbptt: .*set length_spread = 0"),
    ("rnn", {}, {"precision": "fp8"}, r"^train\.precision: unknown value 'fp8'; allowed: bf16, "
     r"fp16, fp32$"),
    ("rnn", {}, {"length_spread": 1.0}, r"^train\.length_spread: must be in \[0, 1\)"),
    ("rnn", {}, {"packing": "packed"}, r"^train\.packing: applies only with length_spread > 0"),
    ("rnn", {}, {"length_spread": 0.5, "packing": "zip"},
     r"^train\.packing: unknown value 'zip'; allowed: packed, padded$"),
    ("transformer", {}, {"length_spread": 0.5, "packing": "packed"},
     r"^train\.packing: model 'transformer' .* supported by: gru, lstm, rnn"),
    ("lstm", {"peephole": True}, {"length_spread": 0.5, "packing": "packed"},
     r"^train\.packing: model 'lstm' "),
    ("lstm", {"bidirectional": True}, {"length_spread": 0.5}, r"^train\.packing: .*use packed"),
])
def test_technique_settings_are_strict(model, hp, train, message):
    with pytest.raises(ConfigError, match=message):
        make_cell("parity", model, 4, hparams=hp, **train)


def test_technique_settings_enter_the_key_only_when_set():
    base = make_cell("parity", "rnn", 4)
    same = make_cell("parity", "rnn", 4, tbptt=0, tbptt_update="sequence", precision="fp32",
                     length_spread=0.0, packing="padded")
    assert same.key() == base.key()
    others = [make_cell("parity", "rnn", 4, tbptt=2), make_cell("parity", "rnn", 4, tbptt=2,
              tbptt_update="chunk"), make_cell("parity", "rnn", 4, precision="bf16"),
              make_cell("parity", "rnn", 4, length_spread=0.5),
              make_cell("parity", "rnn", 4, length_spread=0.5, packing="packed")]
    assert len({c.key() for c in others} | {base.key()}) == 6
    with pytest.raises(ConfigError, match=r"^generalise|^train\.length_spread: length gen"):
        CellConfig.from_dict({"task": "parity", "model": "rnn", "length": 4,
                              "train": {"length_spread": 0.5}, "generalise": {"lengths": [8]}})


def test_run_and_list_offer_the_techniques(capsys):
    from seqbench.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("tbptt", "tbptt_update", "precision", "length_spread", "packing"):
        assert f"  {name} " in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--tbptt", "--tbptt-update", "--precision", "--length-spread", "--packing"):
        assert flag in out


def test_cli_rejects_an_unknown_technique_value(capsys):
    from conftest import expect_rejected

    expect_rejected(capsys, ["run", "--task", "parity", "--model", "rnn", "--length", "4",
                             "--precision", "fp64"],
                    "train.precision: unknown value 'fp64'; allowed: bf16, fp16, fp32")



@pytest.mark.parametrize(("name", "axis"), [("techniques-tbptt", "tbptt"),
                                            ("techniques-precision", "precision")])
def test_technique_presets_vary_only_their_technique(name, axis):
    """Each hyper-parameter set of a technique preset changes that technique and nothing else, so a
    difference between sets is the technique's effect."""
    import dataclasses

    from seqbench.cell.config import TrainConfig
    from seqbench.sweeps.spec import preset
    by_cell: dict = {}
    for _, cfg in preset(name).labelled_cells():
        default = {axis: getattr(TrainConfig(), axis)}
        rest = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **default))
        by_cell.setdefault(rest, set()).add(getattr(cfg.train, axis))
    assert len({len(v) for v in by_cell.values()}) == 1 and len(next(iter(by_cell.values()))) >= 2


def test_attention_preset_compares_the_three_attentions_and_a_decoder_only_model():
    from seqbench.sweeps.spec import preset
    cells = preset("techniques-attention").labelled_cells()
    attention = {cfg.hparams.attention for _, cfg in cells if cfg.model == "seq2seq"}
    assert attention == {"none", "additive", "dot"} and any(c.model == "lstm" for _, c in cells)
    assert len({c.seed for _, c in cells}) >= 3
