"""The shortcut learner (seqbench.cell.shortcut): provable wins, provable ceilings, determinism, and a
test set that never influences the choice of variant."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import sample

from seqbench.cell.shortcut import shortcut_score
from seqbench.tasks import Batch, IOSpec, Task, get_task
from seqbench.tasks.dyck import dyck_shapes, partners


def run(task: Task, length: int, seed: int = 0, n_test: int = 1024, **kw) -> dict:
    test = [sample(task, length, n_test, seed=1000 + seed)]
    return shortcut_score(task, length, torch.Generator().manual_seed(seed), None, test, "cpu",
                          **kw)


def sd(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# --- provable wins ---------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [1, 2])
def test_delay_target_inside_the_window_scores_exactly_one(delay):
    """y_t = x_{t-delay} lies in the last delay + 1 tokens: the lookup table is exact once every
    window was seen in training (8^3 windows, 16K training points)."""
    result = run(get_task("delay"), delay, train_samples=8192)
    assert result["score"] == 1.0 and result["window_score"] == 1.0
    assert (result["family"], result["learner"], result["k"]) == ("window", "lookup", delay + 1)


class LastValue(Task):
    """Regression whose target is the last input value: least squares on the window is exact."""

    name = "last_value"
    summary = "test task"
    io = IOSpec("features", input_size=1, output_size=1)
    readout = "final"
    target = "regression"
    tolerance = 0.04
    solve_threshold = 0.95

    def sample(self, length, batch_size, generator, device):
        x = torch.rand(batch_size, length, 1, generator=generator, device=device)
        return Batch(x, x[:, -1, 0])

    def chance(self, length):
        return 0.08


def test_least_squares_path_is_exact_on_a_linear_target():
    result = run(LastValue(), 6)
    assert result["score"] == 1.0
    assert (result["family"], result["learner"], result["k"]) == ("window", "least_squares", 1)


class OldDyck(Task):
    """Dyck-2 version 1 (before the fix): half balanced strings, uniform over Dyck-2 words; half
    the same with the closers of a kind-0 and a kind-1 pair exchanged, preferring pairs that are
    not "()" / "[]", else the two brackets of a top-level pair."""

    name = "old_dyck"
    summary = "test task"
    io = IOSpec("tokens", input_size=4, output_size=2)
    readout = "final"
    solve_threshold = 0.99

    def sample(self, length, batch_size, generator, device):
        b, pos = batch_size, torch.arange(length)
        opens = dyck_shapes(b, length // 2, generator, device)
        partner = partners(opens)
        kind = torch.randint(0, 2, opens.shape, generator=generator)
        kind = torch.where(opens, kind, kind.gather(1, partner))
        tokens = 2 * kind + (~opens).long()
        labels = (torch.arange(b) % 2 == 0).long()
        priority = torch.rand(opens.shape, generator=generator) + 2 * (partner != pos + 1)
        closers = []
        for k in (0, 1):
            candidate = opens & (kind == k)
            first = torch.where(candidate, priority, -1.0).argmax(1, keepdim=True)
            closers.append((candidate.any(1, keepdim=True), partner.gather(1, first)))
        (has0, i), (has1, j) = closers
        top = opens & (torch.where(opens, 1, -1).cumsum(1) == 1)
        top_open = torch.where(top, priority, -1.0).argmax(1, keepdim=True)
        i = torch.where(has0 & has1, i, top_open)
        j = torch.where(has0 & has1, j, partner.gather(1, top_open))
        bad = tokens.scatter(1, i, tokens.gather(1, j)).scatter(1, j, tokens.gather(1, i))
        return Batch(torch.where(labels[:, None] == 1, tokens, bad), labels)

    def chance(self, length):
        return 0.5


def test_old_dyck_negatives_carry_local_tells():
    """The reviewer's finding: at length 8 most old negatives hold a "(]" / "[)" bigram or start
    with a closer, and the pooled n-gram counts see it."""
    result = run(OldDyck(), 8)
    assert result["score"] > 0.75 and result["family"] == "pooled"


@pytest.mark.parametrize("length", [10, 16, 64])
def test_new_dyck_is_at_chance(length):
    """Every window of up to max(3, L // 4) tokens and every symbol count is distributed alike in
    both classes (tasks/dyck.py), so neither family beats chance beyond Monte-Carlo error."""
    n = 2048
    result = run(get_task("dyck"), length, n_test=n)
    for key in ("score", "window_score", "pooled_score"):
        assert abs(result[key] - 0.5) < 0.05, (key, result)
    assert abs(result["score"] - 0.5) < 5 * sd(0.5, n)


# --- provable ceilings -----------------------------------------------------------------------


def expected_max_count(balls: int, bins: int) -> Fraction:
    """E[max_c N_c] for N ~ Multinomial(balls, uniform over bins), by counting sequences."""

    def at_most(m: int) -> Fraction:  # P(max <= m): coefficient of x^balls in (sum_j<=m x^j/j!)^bins
        poly = [Fraction(1)]
        for _ in range(bins):
            poly = [sum(poly[i - j] / math.factorial(j) for j in range(min(m, i) + 1)
                        if i - j < len(poly)) for i in range(balls + 1)]
        return poly[balls] * math.factorial(balls) / Fraction(bins) ** balls

    return sum(1 - at_most(m - 1) for m in range(1, balls + 1))


@pytest.mark.parametrize("delay", [5, 20])
def test_copy_window_is_at_chance_and_counts_reach_their_bayes_bound(delay):
    """For T > 3 every recall step's window holds only blanks and delimiters, so the lookup is a
    constant guess per step: chance, 1/8. Given the symbol counts the k-th symbol is uniform over
    the ten drawn ones, so no learner on counts beats E[max count] / 10; naive Bayes finds that
    rule (predict the most frequent symbol)."""
    n = 1024
    result = run(get_task("copy"), delay, n_test=n)
    points = 10 * n
    assert abs(result["window_score"] - 1 / 8) < 5 * sd(1 / 8, points)
    assert expected_max_count(3, 2) == Fraction(9, 4)  # (3, 0) or (0, 3) w.p. 1/4, else (2, 1)
    bound = float(expected_max_count(10, 8)) / 10
    assert result["pooled_score"] < bound + 5 * sd(bound, n)
    assert result["pooled_score"] > bound - 0.03 and result["family"] == "pooled"


@pytest.mark.parametrize("length", [8, 16])
def test_parity_is_out_of_reach(length):
    """The last three bits are independent of the parity of L >= 4 bits; counts enter linearly."""
    result = run(get_task("parity"), length, n_test=2048)
    for key in ("score", "window_score", "pooled_score"):
        assert abs(result[key] - 0.5) < 0.05, (key, result)


# --- determinism and the choice --------------------------------------------------------------


def test_deterministic_given_the_generator():
    task = get_task("temporal_order")
    assert run(task, 30, seed=3) == run(task, 30, seed=3)
    assert run(task, 30, seed=3) != run(task, 30, seed=4)


@pytest.mark.parametrize(("name", "length"), [("copy", 5), ("selective_copy", 4), ("dyck", 10)])
def test_validation_not_test_chooses(name, length):
    """Permuting the test targets changes the test score, never the variant or its validation
    score."""
    task = get_task(name)
    test = [sample(task, length, 512, seed=77)]
    shuffled = [Batch(b.inputs, b.targets[torch.randperm(len(b.targets),
                                                         generator=torch.Generator().manual_seed(0))],
                      b.mask) for b in test]
    a, b = (shortcut_score(task, length, torch.Generator().manual_seed(5), None, t, "cpu")
            for t in (test, shuffled))
    for key in ("family", "learner", "k", "val_score", "train_samples"):
        assert a[key] == b[key]
    assert a != b  # the scores did see the permuted targets


def test_given_validation_batches_are_used():
    """An explicit validation set replaces the draw from the training stream."""
    task = get_task("copy")
    test = [sample(task, 5, 256, seed=1)]
    val = [sample(task, 5, 256, seed=2)]
    a = shortcut_score(task, 5, torch.Generator().manual_seed(0), val, test, "cpu")
    b = shortcut_score(task, 5, torch.Generator().manual_seed(0), None, test, "cpu")
    assert a["val_score"] != b["val_score"]
