"""Task definitions: batch layout, seeding, exact chance levels and baselines, loss/score rules."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import perfect_outputs, sample
from reference_samplers import REFERENCES

from seqbench import testing
from seqbench.strict import ConfigError
from seqbench.sweeps.spec import PRESETS, preset
from seqbench.tasks import TASKS, get_task
from seqbench.tasks.adding import Adding
from seqbench.tasks.copy_memory import CopyMemory
from seqbench.tasks.parity import Parity

# --- every task ------------------------------------------------------------------------------


def test_registry_names_match_classes():
    assert set(TASKS) == {
        "copy", "adding", "parity", "selective_copy", "delay", "reverse", "temporal_order",
        "assoc_recall", "induction", "even_pairs", "cycle_nav", "mod_arith", "dyck",
    }
    for name, cls in TASKS.items():
        assert cls.name == name
        assert isinstance(get_task(name), cls)


def test_unknown_task_lists_choices():
    message = rf"^task: unknown value 'nope'; allowed: {', '.join(sorted(TASKS))}; or a task of "
    with pytest.raises(ConfigError, match=message):
        get_task("nope")


def test_batch_shapes_dtypes_and_device(task):
    testing.check_batches(task)


def test_same_seed_same_batch_different_seed_different_batch(task):
    testing.check_seeding(task, 8 if task.accepts(8) else max(9, task.min_length))


def test_perfect_predictor_scores_one(task):
    testing.check_perfect_scores_one(task)


def test_constant_guesser_scores_chance(task):
    """Monte-Carlo: the best input-independent guess (class 1, or 1.0 for adding) lands on
    task.chance within 5 std errors."""
    testing.check_chance(task, task.min_length + 2)


def test_check_length_rejects_short_lengths(task):
    testing.check_lengths_refused(task)
    message = rf"^length: task '{task.name}' needs an integer length >= {task.min_length}, got"
    with pytest.raises(ConfigError, match=message):
        task.check_length(task.min_length - 1)


# --- samplers rewritten for speed, same random stream ------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, ref in REFERENCES.items() if ref.same_stream))
def test_rewritten_sampler_draws_the_old_batches(name):
    """From the same generator, a sampler rewritten without a version bump returns the very batches
    of its old code (tests/reference_samplers.py) and leaves the generator in the same state: the
    same distribution, from the same random stream, so every stored record stays valid. Lengths:
    the shortest ones, odd and even, powers of two and their neighbours, and every length a preset
    trains or tests the task at."""
    task, reference = get_task(name), REFERENCES[name].sample
    lengths = set(range(task.min_length, task.min_length + 6)) | {7, 8, 9, 16, 17, 20, 33}
    for spec in map(preset, PRESETS):
        if name in spec.tasks:
            generalise = spec.generalise_for(name)
            lengths |= set(spec.lengths_for(name)) | set(generalise.lengths if generalise else ())
    for length in sorted(lengths):
        for batch_size, seed in ((1, 0), (5, length), (32, 2 * length + 1)):
            g_new, g_old = (torch.Generator().manual_seed(seed) for _ in range(2))
            new = task.sample(length, batch_size, g_new, "cpu")
            old = reference(length, batch_size, g_old, "cpu")
            for a, b in ((new.inputs, old.inputs), (new.targets, old.targets)):
                assert a.dtype == b.dtype and a.is_contiguous() and torch.equal(a, b)
            assert (new.mask is None) == (old.mask is None)
            assert new.mask is None or torch.equal(new.mask, old.mask)
            assert torch.equal(g_new.get_state(), g_old.get_state())


# --- copy memory -----------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [1, 2, 5, 37])
def test_copy_layout(delay):
    task = CopyMemory()
    batch = sample(task, delay, 32, seed=delay)
    x, y, mask = batch.inputs, batch.targets, batch.mask
    assert task.seq_len(delay) == delay + 20
    assert x.shape == y.shape == mask.shape == (32, delay + 20)
    symbols = x[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    assert torch.all(x[:, 10 : 10 + delay - 1] == 0)
    assert torch.all(x[:, delay + 9 :] == 9) and x[:, delay + 9 :].shape[1] == 11
    assert torch.all(y[:, :-10] == 0)
    assert torch.equal(y[:, -10:], symbols)
    assert torch.all(mask[:, -10:]) and not torch.any(mask[:, :-10])


@pytest.mark.parametrize("delay", [1, 10, 100])
def test_copy_memoryless_baseline_loss(delay):
    """Certain blank on the first T + 10 steps, uniform over 1..8 on the last 10: loss
    10 ln 8 / (T + 20)."""
    task = CopyMemory()
    batch = sample(task, delay, 8)
    seq = delay + 20
    out = torch.full((8, seq, 10), -1e9)
    out[:, : seq - 10, 0] = 0.0
    out[:, seq - 10 :, 1:9] = 0.0
    expected = 10 * math.log(8) / seq
    assert task.loss(out, batch).item() == pytest.approx(expected, abs=1e-5)
    assert task.baseline_loss(delay) == pytest.approx(expected, rel=1e-12)
    assert task.chance(delay) == 1 / 8


# --- adding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [2, 3, 10, 101])
def test_adding_markers_values_and_target(length):
    task = Adding()
    batch = sample(task, length, 4000, seed=length)
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    half = length // 2
    assert torch.all((markers == 0) | (markers == 1))
    assert torch.all(markers[:, :half].sum(1) == 1)
    assert torch.all(markers[:, half:].sum(1) == 1)
    assert values.min() >= 0 and values.max() < 1
    torch.testing.assert_close(batch.targets, (values * markers).sum(1), rtol=0, atol=1e-6)
    # every position of each half gets marked sometimes (no off-by-one in the placement)
    assert torch.all(markers.sum(0) > 0)


def test_adding_constant_one_baseline_monte_carlo():
    """Predicting 1 always: MSE -> Var(X1 + X2) = 1/6; score -> P(|S - 1| < 0.04) = 2e - e^2."""
    task, n, length = Adding(), 200_000, 6
    batch = sample(task, length, n, seed=5)
    out = torch.ones(n, length, 1)
    # (S - 1)^2 has variance E[Y^4] - E[Y^2]^2 = 1/15 - 1/36 = 7/180 for Y triangular on [-1, 1]
    assert task.loss(out, batch).item() == pytest.approx(1 / 6, abs=4 * math.sqrt(7 / 180 / n))
    assert task.baseline_loss(length) == pytest.approx(1 / 6)
    p = task.chance(length)
    assert p == pytest.approx(2 * 0.04 - 0.04**2) and p == pytest.approx(0.0784)
    score = task.score(out, batch).mean().item()
    assert score == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    # the constant 1 is the best constant: shifting it raises the MSE
    assert task.loss(out + 0.1, batch) > task.loss(out, batch)
    assert task.loss(out - 0.1, batch) > task.loss(out, batch)


def test_adding_score_counts_errors_below_tolerance():
    task = Adding()
    batch = sample(task, 4, 3)
    out = perfect_outputs(task, batch)
    out[0, -1, 0] += 0.039
    out[1, -1, 0] -= 0.041
    out[2, 0, 0] += 5.0  # only the last step is read out
    assert task.score(out, batch).tolist() == [1.0, 0.0, 1.0]


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 7, 64])
def test_parity_target_is_sum_mod_two(length):
    task = Parity()
    batch = sample(task, length, 512, seed=length)
    assert set(batch.inputs.unique().tolist()) <= {0, 1}
    assert torch.equal(batch.targets, batch.inputs.sum(1) % 2)
    assert task.chance(length) == 0.5
    assert task.baseline_loss(length) is None


def test_parity_reads_only_the_last_step():
    task = Parity()
    batch = sample(task, 5, 64)
    out = perfect_outputs(task, batch)
    out[:, :-1] = torch.randn(64, 4, 2) * 100  # garbage before the last step is ignored
    assert torch.all(task.score(out, batch) == 1.0)
    flipped = out.clone()
    flipped[:, -1] = flipped[:, -1].flip(-1)
    assert torch.all(task.score(flipped, batch) == 0.0)
