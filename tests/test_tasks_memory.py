"""Memory tasks (selective copy, delay, reverse, temporal order): exact layouts, targets checked
against loop-based reference implementations, scored positions, chance levels, seeding."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import perfect_outputs, sample

from seqbench.strict import ConfigError
from seqbench.tasks import TASKS, get_task
from seqbench.tasks.delay import Delay
from seqbench.tasks.reverse import Reverse
from seqbench.tasks.selective_copy import SelectiveCopy
from seqbench.tasks.temporal_order import TemporalOrder, windows

MEMORY_TASKS = ["selective_copy", "delay", "reverse", "temporal_order"]


def constant_scores(task, batch, cls: int) -> torch.Tensor:
    """Per-sample scores of the input-independent guesser that always predicts class cls."""
    b, length = batch.inputs.shape[:2]
    out = torch.zeros(b, length, task.io.output_size)
    out[..., cls] = 1.0
    return task.score(out, batch)


def assert_near(value: float, p: float, n: int) -> None:
    """Within 5 binomial standard errors (conservative for per-sample means over positions)."""
    assert value == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))


# --- every memory task -----------------------------------------------------------------------


def test_registered_with_declared_interface():
    expected = {
        # name: (class, min_length, bidirectional_ok, readout, io)
        "selective_copy": (SelectiveCopy, 1, False, "per_step", ("tokens", 16, 16)),
        "delay": (Delay, 1, False, "per_step", ("tokens", 8, 8)),
        "reverse": (Reverse, 1, False, "per_step", ("tokens", 3, 2)),
        "temporal_order": (TemporalOrder, 4, True, "final", ("tokens", 8, 4)),
    }
    for name, (cls, min_length, bidi, readout, io) in expected.items():
        task = get_task(name)
        assert TASKS[name] is cls and isinstance(task, cls) and cls.name == name
        assert task.min_length == min_length and task.bidirectional_ok is bidi
        assert task.readout == readout and task.target == "classes"
        assert (task.io.input_kind, task.io.input_size, task.io.output_size) == io
        if readout == "per_step":
            assert task.loss_on == "scored"
        assert task.baseline_loss(min_length) is None


@pytest.mark.parametrize("name", MEMORY_TASKS)
def test_min_length_refused_below(name):
    task = get_task(name)
    task.check_length(task.min_length)
    for bad in (task.min_length - 1, 0):
        with pytest.raises(ConfigError, match=rf"^length: task '{name}' needs an integer length"):
            task.check_length(bad)


@pytest.mark.parametrize("name", MEMORY_TASKS)
def test_seeded_from_the_given_generator_only(name):
    """Same generator seed, same batch, whatever the global RNG; the global RNG is not drawn."""
    task = get_task(name)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = sample(task, 9, 8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    b = sample(task, 9, 8, seed=5)
    c = sample(task, 9, 8, seed=6)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    if a.mask is not None:
        assert torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("name", ["selective_copy", "delay", "reverse"])
def test_unscored_steps_are_ignored_by_loss_and_score(name):
    """Garbage at unscored steps changes nothing; one wrong scored step costs 1/(scored steps)."""
    task = get_task(name)
    batch = sample(task, 6, 16)
    out = perfect_outputs(task, batch)
    out[~batch.mask] = torch.randn(int((~batch.mask).sum()), task.io.output_size) * 1e4
    assert torch.all(task.score(out, batch) == 1.0)
    assert task.loss(out, batch).item() < 1e-4
    first_scored = int(batch.mask[0].nonzero()[0])
    wrong = (batch.targets[0, first_scored] + 1) % task.io.output_size
    out[0, first_scored] = 1e4 * torch.nn.functional.one_hot(wrong, task.io.output_size)
    n_scored = int(batch.mask[0].sum())
    assert task.score(out, batch)[0].item() == pytest.approx(1 - 1 / n_scored)
    assert task.loss(out, batch).item() > 1.0


# --- selective copy --------------------------------------------------------------------------


def selective_copy_reference(inputs: list[int], length: int) -> list[int]:
    """Targets from the inputs: the non-noise tokens of the first L + 16 steps, in order, due at
    the 16 marker steps; 0 elsewhere."""
    region = inputs[: length + 16]
    data = [tok for tok in region if tok != 0]
    return [0] * len(region) + data


@pytest.mark.parametrize("length", [1, 2, 7, 50])
def test_selective_copy_layout_and_targets(length):
    task = SelectiveCopy()
    b = 64
    batch = sample(task, length, b, seed=length)
    x, y, mask = batch.inputs, batch.targets, batch.mask
    assert task.seq_len(length) == length + 32
    assert x.shape == y.shape == mask.shape == (b, length + 32)
    region, markers = x[:, : length + 16], x[:, length + 16 :]
    assert torch.all(markers == 15)
    assert torch.all((region >= 0) & (region <= 14))
    assert torch.all((region != 0).sum(1) == 16)  # 16 data tokens (1..14), the rest noise (0)
    assert torch.all(mask[:, -16:]) and not torch.any(mask[:, :-16])
    for row in range(b):
        assert y[row].tolist() == selective_copy_reference(x[row].tolist(), length)


def test_selective_copy_positions_are_uniform_subsets():
    """Each of the L + 16 region steps holds a data token with probability 16 / (L + 16), and the
    data tokens are uniform over 1..14."""
    task, length, n = SelectiveCopy(), 5, 4000
    batch = sample(task, length, n, seed=3)
    region = batch.inputs[:, : length + 16]
    p = 16 / (length + 16)
    for frac in (region != 0).float().mean(0).tolist():
        assert_near(frac, p, n)
    counts = torch.bincount(region[region != 0], minlength=15)
    assert counts[0] == 0
    for frac in (counts[1:] / counts.sum()).tolist():
        assert_near(frac, 1 / 14, n * 16)


def test_selective_copy_chance_is_one_over_fourteen():
    task, length, n = SelectiveCopy(), 3, 8000
    assert task.chance(length) == 1 / 14 == task.chance(1000)
    batch = sample(task, length, n, seed=7)
    for cls in range(16):
        mean = constant_scores(task, batch, cls).mean().item()
        if cls in (0, 15):  # noise and marker are never the answer
            assert mean == 0.0
        else:
            assert_near(mean, 1 / 14, n)


# --- delay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [1, 2, 5, 33])
def test_delay_layout_and_targets(delay):
    task = Delay()
    b = 32
    batch = sample(task, delay, b, seed=delay)
    x, y, mask = batch.inputs, batch.targets, batch.mask
    assert task.seq_len(delay) == 2 * delay
    assert x.shape == y.shape == mask.shape == (b, 2 * delay)
    assert x.min() >= 0 and x.max() <= 7
    for row in range(b):
        for t in range(2 * delay):
            assert bool(mask[row, t]) == (t >= delay)
            expected = x[row, t - delay].item() if t >= delay else 0
            assert y[row, t].item() == expected


def test_delay_chance_is_one_over_eight():
    task, delay, n = Delay(), 4, 8000
    assert task.chance(delay) == 1 / 8 == task.chance(512)
    batch = sample(task, delay, n, seed=2)
    assert set(batch.inputs.unique().tolist()) == set(range(8))
    for cls in range(8):
        assert_near(constant_scores(task, batch, cls).mean().item(), 1 / 8, n)


# --- reverse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_reverse_layout_and_targets(n):
    task = Reverse()
    b = 32
    batch = sample(task, n, b, seed=n)
    x, y, mask = batch.inputs, batch.targets, batch.mask
    assert task.seq_len(n) == 2 * n
    assert x.shape == y.shape == mask.shape == (b, 2 * n)
    assert set(x[:, :n].unique().tolist()) <= {0, 1}
    assert torch.all(x[:, n:] == 2)
    for row in range(b):
        string = x[row, :n].tolist()
        assert y[row].tolist() == [0] * n + string[::-1]
        assert mask[row].tolist() == [False] * n + [True] * n


def test_reverse_scores_per_token_accuracy_over_the_outputs():
    task, n = Reverse(), 8
    batch = sample(task, n, 4)
    out = perfect_outputs(task, batch)
    for row, wrong in enumerate([0, 1, 3, 8]):
        out[row, n : n + wrong] = out[row, n : n + wrong].flip(-1)
    assert task.score(out, batch).tolist() == [1.0, 7 / 8, 5 / 8, 0.0]


def test_reverse_chance_is_one_half():
    task, n, count = Reverse(), 3, 8000
    assert task.chance(n) == 0.5 == task.chance(100)
    batch = sample(task, n, count, seed=4)
    for cls in (0, 1):
        assert_near(constant_scores(task, batch, cls).mean().item(), 0.5, count)


# --- temporal order --------------------------------------------------------------------------


def test_temporal_order_windows():
    assert windows(100) == ((10, 20), (50, 60))  # the paper's windows
    assert windows(4) == ((1, 1), (2, 2))
    assert windows(10) == ((1, 2), (5, 6))
    assert windows(33) == ((3, 6), (16, 19))
    for length in range(TemporalOrder.min_length, 500):
        (lo1, hi1), (lo2, hi2) = windows(length)
        assert 1 <= lo1 <= hi1 < lo2 <= hi2 <= length - 2


def temporal_order_reference(inputs: list[int]) -> tuple[int, list[int]]:
    """Class from the inputs: the X (4) / Y (5) symbols in order, XX=0, XY=1, YX=2, YY=3."""
    positions = [t for t, tok in enumerate(inputs) if tok in (4, 5)]
    first, second = (inputs[t] == 5 for t in positions)
    return 2 * first + second, positions


@pytest.mark.parametrize("length", [4, 5, 9, 32, 100])
def test_temporal_order_layout_and_targets(length):
    task = TemporalOrder()
    b = 64
    batch = sample(task, length, b, seed=length)
    x, y = batch.inputs, batch.targets
    assert task.seq_len(length) == length
    assert x.shape == (b, length) and y.shape == (b,) and batch.mask is None
    assert torch.all(x[:, 0] == 6) and torch.all(x[:, -1] == 7)  # starts with E, ends with B
    (lo1, hi1), (lo2, hi2) = windows(length)
    for row in range(b):
        seq = x[row].tolist()
        cls, (t1, t2) = temporal_order_reference(seq)
        assert y[row].item() == cls
        assert lo1 <= t1 <= hi1 and lo2 <= t2 <= hi2
        assert all(0 <= tok <= 3 for t, tok in enumerate(seq[1:-1], 1) if t not in (t1, t2))


def test_temporal_order_draws_cover_the_windows_and_classes():
    task, length, n = TemporalOrder(), 100, 4000
    batch = sample(task, length, n, seed=9)
    relevant = (batch.inputs == 4) | (batch.inputs == 5)
    assert torch.all(relevant.sum(1) == 2)
    hit = relevant.any(0).nonzero().flatten().tolist()
    assert hit == list(range(10, 21)) + list(range(50, 61))
    for frac in (torch.bincount(batch.targets, minlength=4) / n).tolist():
        assert_near(frac, 1 / 4, n)
    distractors = batch.inputs[:, 1:-1][~relevant[:, 1:-1]]
    assert set(distractors.unique().tolist()) == {0, 1, 2, 3}


def test_temporal_order_reads_only_the_last_step():
    task = TemporalOrder()
    batch = sample(task, 12, 64)
    out = perfect_outputs(task, batch)
    out[:, :-1] = torch.randn(64, 11, 4) * 100
    assert torch.all(task.score(out, batch) == 1.0)
    assert task.chance(12) == 0.25
    for cls in range(4):
        expected = (batch.targets == cls).float()
        assert torch.equal(constant_scores(task, batch, cls), expected)
