"""Recall tasks (assoc_recall, induction) and formal-language tasks (even_pairs, cycle_nav,
mod_arith, dyck): layouts and targets against loop-based references, exact chance levels against
dynamic programming, enumeration and Monte-Carlo, length validation, determinism."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from conftest import perfect_outputs, sample
from reference_samplers import REFERENCES
from scipy.stats import chi2_contingency, chisquare

from seqbench.strict import ConfigError
from seqbench.tasks import TASKS, get_task, sampling
from seqbench.tasks.assoc_recall import DRAWS_MAX, N_KEYS, N_VALUES, AssocRecall
from seqbench.tasks.base import Batch
from seqbench.tasks.cycle_nav import CycleNav
from seqbench.tasks.dyck import (
    Dyck,
    all_shapes,
    class_pattern,
    dyck_shapes,
    guard,
    partners,
    shapes_from_keys,
    table,
)
from seqbench.tasks.even_pairs import EvenPairs
from seqbench.tasks.induction import TRIGGER, Induction
from seqbench.tasks.mod_arith import ModArith, evaluate

NEW = ("assoc_recall", "induction", "even_pairs", "cycle_nav", "mod_arith", "dyck")


def constant_score(task, batch, cls: int) -> torch.Tensor:
    """Per-sample scores of the guesser that always predicts class `cls`."""
    b, length = batch.inputs.shape[:2]
    out = torch.zeros(b, length, task.io.output_size)
    out[..., cls] = 1.0
    return task.score(out, batch)


def within(mean: float, p: float, n: int, k: float = 5.0) -> bool:
    return abs(mean - p) <= k * math.sqrt(p * (1 - p) / n)


# --- registry, flags, determinism ------------------------------------------------------------


def test_registered_with_flags():
    for name in NEW:
        assert name in TASKS and TASKS[name].name == name
    for name in ("even_pairs", "cycle_nav", "mod_arith", "dyck"):
        assert get_task(name).bidirectional_ok and get_task(name).readout == "final"
    for name in ("assoc_recall", "induction"):
        assert not get_task(name).bidirectional_ok


@pytest.mark.parametrize("name", NEW)
def test_deterministic_per_seed_and_generator_stream(name):
    task = get_task(name)
    g1, g2 = (torch.Generator().manual_seed(7) for _ in range(2))
    a1, a2 = task.sample(10, 32, g1, "cpu"), task.sample(10, 32, g1, "cpu")
    b1, b2 = task.sample(10, 32, g2, "cpu"), task.sample(10, 32, g2, "cpu")
    for x, y in ((a1, b1), (a2, b2)):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
    assert not torch.equal(a1.inputs, a2.inputs)  # the generator advances


# --- assoc_recall (MQAR) ---------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [1, 2, 7, N_KEYS])
def test_assoc_recall_layout_and_targets(pairs):
    task = AssocRecall()
    b = 64 if pairs < N_KEYS else 8
    batch = sample(task, pairs, b, seed=pairs)
    x, y, mask = batch.inputs, batch.targets, batch.mask
    assert task.seq_len(pairs) == 3 * pairs and x.shape == y.shape == mask.shape == (b, 3 * pairs)
    assert torch.all(mask[:, 2 * pairs :]) and not torch.any(mask[:, : 2 * pairs])
    assert torch.all(y[:, : 2 * pairs] == 0)
    for row, target in zip(x.tolist(), y.tolist(), strict=True):
        keys, values, queries = row[0 : 2 * pairs : 2], row[1 : 2 * pairs : 2], row[2 * pairs :]
        assert all(0 <= k < N_KEYS for k in keys)
        assert all(N_KEYS <= v < N_KEYS + N_VALUES for v in values)
        assert len(set(keys)) == pairs  # distinct keys
        assert sorted(queries) == sorted(keys)  # every key queried exactly once
        table = dict(zip(keys, values, strict=True))
        assert target[2 * pairs :] == [table[q] - N_KEYS for q in queries]


def test_assoc_recall_draws_cover_vocabularies_and_orders():
    batch = sample(AssocRecall(), 4, 4000, seed=1)
    x = batch.inputs
    assert set(x[:, 0:8:2].unique().tolist()) == set(range(N_KEYS))
    assert set(x[:, 1:8:2].unique().tolist()) == set(range(N_KEYS, N_KEYS + N_VALUES))
    assert (x[:, 1] == x[:, 3]).any()  # values are drawn with replacement
    # query order: the first query is each of the 4 keys about equally often
    first = (x[:, 8:9] == x[:, 0:8:2]).float().mean(0)
    assert torch.all((first - 0.25).abs() < 0.04)


@pytest.mark.parametrize(("d", "n"), [(1, 5), (3, 5), (5, 5), (2, 4)])
@pytest.mark.parametrize("draws", ["exact bound", "fewest"])
def test_distinct_draws_uniform_over_ordered_tuples(d, n, draws, monkeypatch):
    """Every ordered d-tuple of distinct values from range(n) equally likely (chi-square, p >
    0.001), also when rows are short of distinct values most of the time and redrawn again and
    again (draws_needed forced down to d)."""
    if draws == "fewest":
        monkeypatch.setattr(sampling, "draws_needed", lambda d, n: d)
    rows = 3000 * math.perm(n, d)
    out = sampling.distinct_draws(rows, d, n, torch.Generator().manual_seed(d + n), "cpu")
    assert out.shape == (rows, d) and all(len(set(r)) == d for r in out[:2000].tolist())
    code = (out * n ** torch.arange(d)).sum(1)
    counts = torch.bincount(code, minlength=n**d)
    tuples = [sum(t * n**i for i, t in enumerate(p)) for p in itertools.permutations(range(n), d)]
    assert counts.sum() == counts[tuples].sum()  # nothing else drawn
    assert chisquare(counts[tuples].tolist()).pvalue > 1e-3


def test_draws_needed_meets_the_bound_exactly():
    """draws_needed(d, n) is the fewest draws holding d distinct values with probability >= 1 -
    FAIL_BOUND, checked against the exact occupancy probabilities (Stirling numbers)."""
    def held(m, d, n):  # P(at least d distinct among m draws from n)
        return sum(Fraction(math.perm(n, k) * stirling2(m, k), n**m) for k in range(d, n + 1))
    bound = 1 - Fraction(sampling.FAIL_BOUND)
    for d, n in ((1, 128), (2, 128), (4, 128), (8, 128), (16, 128), (3, 5), (5, 9)):
        m = sampling.draws_needed(d, n)
        assert held(m, d, n) >= bound > held(m - 1, d, n)


def stirling2(m: int, k: int) -> int:
    return sum((-1) ** i * math.comb(k, i) * (k - i) ** m for i in range(k + 1)) // math.factorial(k)


@pytest.mark.parametrize("pairs", [3, 40])
def test_assoc_recall_keys_and_query_order_uniform(pairs):
    """Version 2 against version 1 (tests/reference_samplers.py) in distribution, on both key
    paths (distinct draws up to DRAWS_MAX, a ranking above): the first key is uniform over the 128
    keys, the first two keys are distinct, and the query order is uniform (chi-square p > 0.001;
    contingency tables of old against new, p > 0.001)."""
    assert (pairs <= DRAWS_MAX) != (pairs > DRAWS_MAX)
    n = 64_000
    new = sample(AssocRecall(), pairs, n, seed=pairs).inputs
    old = REFERENCES["assoc_recall"].sample(pairs, n, torch.Generator().manual_seed(7), "cpu").inputs
    for x in (new, old):
        first = torch.bincount(x[:, 0], minlength=N_KEYS)
        assert chisquare(first.tolist()).pvalue > 1e-3 and (x[:, 0] != x[:, 2]).all()
        where = (x[:, 2 * pairs : 2 * pairs + 1] == x[:, 0 : 2 * pairs : 2]).float().argmax(1)
        assert chisquare(torch.bincount(where, minlength=pairs).tolist()).pvalue > 1e-3
    table = [torch.bincount(x[:, 0], minlength=N_KEYS).tolist() for x in (new, old)]
    assert chi2_contingency(table).pvalue > 1e-3


def test_assoc_recall_chance_and_max_pairs():
    task = AssocRecall()
    batch = sample(task, 5, 40_000, seed=2)
    for cls in (0, 1, 37):
        assert within(constant_score(task, batch, cls).mean().item(), 1 / 64, 40_000)
    assert task.chance(5) == 1 / 64
    task.check_length(N_KEYS)
    with pytest.raises(ConfigError, match=rf"^length: .*at most {N_KEYS} key-value pairs"):
        task.check_length(N_KEYS + 1)
    with pytest.raises(ConfigError, match=r"^lengths\.x\[0\]: "):
        task.check_length(N_KEYS + 1, field="lengths.x[0]")


def test_assoc_recall_unscored_positions_do_not_count():
    task = AssocRecall()
    batch = sample(task, 3, 16)
    out = perfect_outputs(task, batch)
    out[:, :6] = torch.randn(16, 6, N_VALUES) * 100  # garbage on the pairs
    assert torch.all(task.score(out, batch) == 1.0) and task.loss(out, batch).item() < 1e-4
    rows = torch.arange(16)
    out[:, 6, :] = 0.0
    out[rows, 6, (batch.targets[:, 6] + 1) % N_VALUES] = 1.0  # miss the first query, every row
    assert torch.allclose(task.score(out, batch), torch.full((16,), 2 / 3))


# --- induction -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [3, 4, 5, 16, 101])
def test_induction_layout_and_target(length):
    task = Induction()
    batch = sample(task, length, 500, seed=length)
    x, y = batch.inputs, batch.targets
    assert x.shape == (500, length) and y.shape == (500,)
    for row, target in zip(x.tolist(), y.tolist(), strict=True):
        where = [i for i, t in enumerate(row) if t == TRIGGER]
        assert len(where) == 2 and where[1] == length - 1  # A exactly twice, once at the end
        p = where[0]
        assert p <= length // 2 - 1  # first half
        assert target == row[p + 1] != TRIGGER
        assert length - 1 - (p + 1) >= length - 1 - length // 2
    firsts = (x[:, :-1] == TRIGGER).long().argmax(1)
    assert set(firsts.tolist()) == set(range(length // 2))


def test_induction_answer_uniform_and_chance():
    task = Induction()
    batch = sample(task, 5, 40_000, seed=3)
    assert set(batch.targets.unique().tolist()) == set(range(TRIGGER))
    p = 1 / 15
    assert task.chance(5) == p
    for cls in (0, 1, 14):
        assert within(constant_score(task, batch, cls).mean().item(), p, 40_000)
    assert constant_score(task, batch, TRIGGER).sum() == 0


# --- even pairs ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [2, 3, 8, 41])
def test_even_pairs_counts_substrings(length):
    task = EvenPairs()
    batch = sample(task, length, 400, seed=length)
    for row, target in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        s = "".join("ab"[t] for t in row)
        count = sum(s[i : i + 2] in ("ab", "ba") for i in range(length - 1))
        assert target == count % 2  # class 0: even, as in the reference
        assert target == int(s[0] != s[-1])
    assert task.chance(length) == 0.5


def test_even_pairs_min_length_and_chance():
    task = EvenPairs()
    assert task.min_length == 2 and task.chance(1) == 1.0
    with pytest.raises(ConfigError, match=r"^length: task 'even_pairs' needs an integer length >= 2"):
        task.check_length(1)
    batch = sample(task, 2, 40_000, seed=4)
    assert within(constant_score(task, batch, 1).mean().item(), 0.5, 40_000)


# --- cycle navigation ------------------------------------------------------------------------


def cycle_distribution(length: int) -> list[Fraction]:
    """Exact distribution of the final state, by dynamic programming over the state."""
    dist = [Fraction(1)] + [Fraction(0)] * 4
    for _ in range(length):
        dist = [sum(dist[(s - m) % 5] for m in (-1, 0, 1)) / 3 for s in range(5)]
    return dist


def lucas(n: int) -> int:
    a, b = 2, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@pytest.mark.parametrize("length", [1, 2, 5, 30])
def test_cycle_nav_target_by_simulation(length):
    task = CycleNav()
    batch = sample(task, length, 300, seed=length)
    for row, target in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        state = 0
        for action in row:
            state = (state + {0: -1, 1: 0, 2: 1}[action]) % 5
        assert target == (state + 1) % 5


def test_cycle_nav_chance_exact():
    task = CycleNav()
    for length in range(1, 41):
        dist = cycle_distribution(length)
        best = max(dist)
        assert dist[0] == best  # returning to the start, class 1, is the best constant guess
        assert best == Fraction(1, 5) + Fraction(2 * lucas(length), 5 * 3**length)
        assert task.chance(length) == pytest.approx(float(best), rel=1e-12, abs=0)
    assert task.chance(1) == pytest.approx(1 / 3) and task.chance(2) == pytest.approx(1 / 3)
    assert task.chance(200) == pytest.approx(0.2, abs=1e-15)


def test_cycle_nav_class_frequencies_monte_carlo():
    task, n, length = CycleNav(), 40_000, 3
    batch = sample(task, length, n, seed=5)
    dist = cycle_distribution(length)
    for cls in range(5):
        p = float(dist[(cls - 1) % 5])
        assert within(constant_score(task, batch, cls).mean().item(), p, n)


# --- modular arithmetic ----------------------------------------------------------------------


def python_value(numbers: list[int], ops: list[str]) -> int:
    """Independent evaluator: Python's own precedence on the written-out expression, mod 5."""
    expression = str(numbers[0]) + "".join(f"{o}{x}" for o, x in zip(ops, numbers[1:], strict=True))
    return eval(expression) % 5  # the expression holds only digits and + - *


def sp_distribution(n: int) -> list[Fraction]:
    """Exact distribution of the value, by dynamic programming over (closed terms' sum mod 5,
    open term mod 5), reading operators left to right."""
    states = {(0, x): Fraction(1, 5) for x in range(5)}
    for _ in range(n):
        new: dict[tuple[int, int], Fraction] = {}
        for (s, t), pr in states.items():
            for x in range(5):
                for key in (((s + t) % 5, x), ((s + t) % 5, -x % 5), (s, t * x % 5)):
                    new[key] = new.get(key, 0) + pr / 15
        states = new
    dist = [Fraction(0)] * 5
    for (s, t), pr in states.items():
        dist[(s + t) % 5] += pr
    return dist


def test_mod_arith_reference_examples():
    cases = [([1, 2, 3], "+*", 2), ([1, 1, 1], "--", 4), ([0, 1, 4, 3, 2], "*+*-", 0)]
    for numbers, ops, value in cases:
        got = evaluate(torch.tensor([numbers]), torch.tensor([["+-*".index(o) for o in ops]]))
        assert got.item() == value == python_value(numbers, list(ops))


@pytest.mark.parametrize("n", [1, 2, 3, 12])
def test_mod_arith_layout_and_target_against_python(n):
    task = ModArith()
    batch = sample(task, n, 400, seed=n)
    x = batch.inputs
    assert task.seq_len(n) == 2 * n + 1 and x.shape == (400, 2 * n + 1)
    assert x[:, 0::2].max() <= 4 and x[:, 1::2].min() >= 5 and x[:, 1::2].max() <= 7
    for row, target in zip(x.tolist(), batch.targets.tolist(), strict=True):
        ops = ["+-*"[t - 5] for t in row[1::2]]
        assert target == (python_value(row[0::2], ops) + 1) % 5


def test_mod_arith_chance_exact():
    task = ModArith()
    for n in (1, 2, 3):  # brute force over every expression
        counts = [0] * 5
        for numbers in itertools.product(range(5), repeat=n + 1):
            for ops in itertools.product("+-*", repeat=n):
                counts[python_value(list(numbers), list(ops))] += 1
        total = 5 ** (n + 1) * 3**n
        assert [Fraction(c, total) for c in counts] == sp_distribution(n)
    assert sp_distribution(1)[0] == Fraction(19, 75)
    for n in range(13):
        dist = sp_distribution(n)
        assert dist[0] == max(dist) and len(set(dist[1:])) == 1  # value 0 (class 1) is best
        assert task.chance(n) == pytest.approx(float(dist[0]), rel=1e-12, abs=0)
    assert task.chance(2000) == pytest.approx(0.2, abs=1e-15)


def test_mod_arith_class_frequencies_monte_carlo():
    task, n, length = ModArith(), 40_000, 3
    batch = sample(task, length, n, seed=6)
    dist = sp_distribution(length)
    for cls in range(5):
        p = float(dist[(cls - 1) % 5])
        assert within(constant_score(task, batch, cls).mean().item(), p, n)


# --- dyck ------------------------------------------------------------------------------------


def balanced(tokens: list[int]) -> bool:
    stack = []
    for t in tokens:
        if t in (0, 2):
            stack.append(t)
        elif not stack or stack.pop() != t - 1:
            return False
    return not stack


def pairs(shape: list[bool]) -> list[tuple[int, int]]:
    """The matched (opener, closer) positions of a Dyck shape, by a stack."""
    stack, out = [], []
    for i, is_open in enumerate(shape):
        if is_open:
            stack.append(i)
        else:
            out.append((stack.pop(), i))
    return out


def is_dyck_shape(shape: list[bool]) -> bool:
    depth = 0
    for is_open in shape:
        depth += 1 if is_open else -1
        if depth < 0:
            return False
    return depth == 0


def eligible_shape(shape: list[bool], length: int) -> bool:
    """Some pair lies inside another and spans b2 - b1 >= guard(length)."""
    ps = pairs(shape)
    return any(j - i >= guard(length) and any(a < i and j < b for a, b in ps) for i, j in ps)


def exact(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (word, class) the table sampler can draw, with an integer weight proportional to its
    probability: words (R, L) int8, positive (R,) bool, weight (R,) int64."""
    code, cum, _ = table(length, "cpu")
    weight = torch.diff(cum, prepend=cum.new_zeros(1))
    src, base, mult = code.flatten(0, 1).long().unbind(1)  # rows 2c (positive), 2c + 1
    n, couples = length // 2, len(weight)
    openers = (base[0::2] % 2 == 0).nonzero()[:, 1].view(couples, n)
    patterns = torch.tensor(list(itertools.product((0, 1), repeat=n)), dtype=torch.int8)
    p = len(patterns)
    bits = torch.zeros(couples, p, length, dtype=torch.int8).scatter_(
        2, openers[:, None].expand(-1, p, -1), patterns.expand(couples, -1, -1))
    bits = bits.repeat_interleave(2, 0)
    words = base.to(torch.int8)[:, None] + bits.gather(
        2, src[:, None].expand(-1, p, -1)) * mult.to(torch.int8)[:, None]
    positive = torch.tensor([True, False]).repeat(couples)[:, None].expand(-1, p)
    return words.flatten(0, 1), positive.flatten(), weight.repeat_interleave(2 * p)


@pytest.mark.parametrize("length", [10, 12])
def test_dyck_exact_distribution_labels_counts_and_shapes(length):
    """Over every word the sampler can draw: the label is balancedness, every word has the symbol
    counts and the bracket shape of a balanced word, and each negative has its positive's shape."""
    words, positive, weight = exact(length)
    for row, label in zip(words.tolist(), positive.tolist(), strict=True):
        assert balanced(row) == label
        assert row.count(0) == row.count(1) and row.count(2) == row.count(3)
        assert is_dyck_shape([t % 2 == 0 for t in row])
    assert torch.equal(words[0::2] % 2, words[1::2] % 2)  # same shape, row by row
    assert weight[positive].sum() == weight[~positive].sum()


@pytest.mark.parametrize("length", [10, 12, 16])
def test_dyck_every_window_of_guard_tokens_is_alike_in_both_classes(length):
    """Exactly: each window of G = guard(L) consecutive tokens, at each position, has the same
    distribution among positives as among negatives (so has every shorter window, every n-gram
    count for n <= G in expectation, and the start- and end-padded n-grams)."""
    words, positive, weight = exact(length)
    g = guard(length)
    assert g == max(3, length // 4)
    for start in range(length - g + 1):
        code = sum(words[:, start + m].long() * 4**m for m in range(g))
        hist = [torch.bincount(code[cls], weight[cls].double(), minlength=4**g)
                for cls in (positive, ~positive)]
        assert torch.equal(hist[0], hist[1])


@pytest.mark.parametrize("length", [10, 12])
def test_dyck_positive_shapes_uniform_over_eligible_shapes(length):
    """Exactly: every Dyck shape with an eligible pair (found here by a stack) has the same total
    probability among positives, and no other shape occurs."""
    words, positive, weight = exact(length)
    mass: dict[tuple, int] = {}
    for row, w in zip(words[positive].tolist(), weight[positive].tolist(), strict=True):
        shape = tuple(t % 2 == 0 for t in row)
        mass[shape] = mass.get(shape, 0) + w
    catalan = [list(s) for s in itertools.product((True, False), repeat=length) if is_dyck_shape(s)]
    assert len(catalan) == math.comb(length, length // 2) // (length // 2 + 1)
    assert set(mass) == {tuple(s) for s in catalan if eligible_shape(s, length)}
    assert len(set(mass.values())) == 1


def test_dyck_sampler_matches_the_exact_distribution():
    """Both sampling paths (the table below TABLE_MAX, shapes built on the fly above it, here
    forced at length 10) draw (word, class) with the exact probabilities: chi-square, p > 0.001."""
    length, n = 10, 100_000
    words, positive, weight = exact(length)
    probs: dict[tuple, float] = {}
    total = weight.sum().item()
    for row, label, w in zip(words.tolist(), positive.tolist(), weight.tolist(), strict=True):
        probs[(*row, label)] = probs.get((*row, label), 0) + w / total
    keys = sorted(probs)
    g = torch.Generator().manual_seed(12)
    positive, _ = class_pattern(n, g, "cpu")
    drawn = {
        "table": sample(Dyck(), length, n, seed=12),
        "on the fly": Batch(Dyck._on_the_fly(length, positive, g, "cpu"), positive.long()),
    }
    for batch in drawn.values():
        rows = torch.cat([batch.inputs, batch.targets[:, None]], 1).tolist()
        seen: dict[tuple, int] = {}
        for row in rows:
            seen[tuple(row)] = seen.get(tuple(row), 0) + 1
        assert set(seen) <= set(probs)
        observed = [seen.get(k, 0) for k in keys]
        assert chisquare(observed, [n * probs[k] for k in keys]).pvalue > 1e-3


@pytest.mark.parametrize(("length", "b"), [(10, 64), (20, 200), (26, 200), (64, 101), (128, 33)])
def test_dyck_labels_by_stack_and_mismatches_far_apart(length, b):
    """Every row: the label is balancedness, counts and shape are those of a balanced string; a
    negative has exactly two mismatched pairs (by the shape's pairing), B and the pair just
    enclosing it, with b2 - b1 >= guard(L); a positive has none."""
    task = Dyck()
    batch = sample(task, length, b, seed=length)
    x, y = batch.inputs, batch.targets
    assert x.shape == (b, length) and y.shape == (b,)
    assert y.tolist() == [int(i % 2 == 0) for i in range(b)] or b % 2 == 1
    assert y.sum().item() in (b // 2, b // 2 + 1)
    for row, label in zip(x.tolist(), y.tolist(), strict=True):
        assert label == int(balanced(row))
        assert row.count(0) == row.count(1) and row.count(2) == row.count(3)
        shape = [t % 2 == 0 for t in row]
        assert is_dyck_shape(shape)
        bad = [(i, j) for i, j in pairs(shape) if row[j] != row[i] + 1]
        if label:
            assert not bad
        else:
            (a1, a2), (b1, b2) = sorted(bad)
            assert a1 < b1 < b2 < a2 and b2 - b1 >= guard(length)
            assert not any(a1 < i < b1 and b2 < j < a2 for i, j in pairs(shape))  # A: the parent
    out = perfect_outputs(task, batch)
    assert torch.all(task.score(out, batch) == 1.0) and task.loss(out, batch).item() < 1e-4


def padded_ngrams(tokens: tuple[int, ...]) -> set[tuple]:
    x = (4, 4, *tokens, 4, 4)
    return {x[i : i + n] for n in (1, 2, 3) for i in range(len(x) - n + 1)}


@pytest.mark.parametrize(("length", "tell_free"), [(2, 0), (4, 0), (6, 8)])
def test_dyck_below_six_every_negative_has_a_local_tell(length, tell_free):
    """By enumeration: an unbalanced string with the symbol counts of a balanced one has an n-gram
    (n <= 3, padded at both ends) that no balanced string of its length has, below length 6; at 6
    some do not, among them the negatives of the only eligible shape, ((()))."""
    strings = list(itertools.product(range(4), repeat=length))
    seen = set().union(*(padded_ngrams(s) for s in strings if balanced(list(s))))
    counted = [s for s in strings if s.count(0) == s.count(1) and s.count(2) == s.count(3)]
    hidden = [s for s in counted if not balanced(list(s)) and padded_ngrams(s) <= seen]
    assert len(hidden) >= tell_free and bool(hidden) == bool(tell_free)
    if length == 6:
        assert {(0, 2, 0, 1, 1, 3), (2, 0, 2, 3, 3, 1)} <= set(hidden)


def test_dyck_refuses_short_and_odd_lengths():
    task = Dyck()
    assert task.min_length == 10
    task.check_length(10)
    task.check_length(64)
    for bad in (11, 33):
        with pytest.raises(ConfigError, match=r"^length: task 'dyck' needs an even length"):
            task.check_length(bad)
        with pytest.raises(ConfigError, match=r"^lengths\.x\[0\]: task 'dyck' needs an even"):
            task.check_length(bad, field="lengths.x[0]")
        with pytest.raises(ConfigError, match="even length"):
            sample(task, bad, 4)
    for short in (0, 2, 4, 6, 8):
        with pytest.raises(ConfigError, match=r"^length: task 'dyck' needs an integer length >= 10, "
                                              r"got \d+ \(below 6 every unbalanced string .* local tell"):
            task.check_length(short)


def test_dyck_chance_monte_carlo():
    task, n = Dyck(), 40_000
    batch = sample(task, 10, n, seed=10)
    assert batch.targets.sum().item() == n // 2
    assert task.chance(10) == 0.5
    assert constant_score(task, batch, 1).mean().item() == 0.5
    odd = [sample(task, 10, 7, seed=s).targets.sum().item() for s in range(40)]
    assert set(odd) == {3, 4}


def test_dyck_a_tie_at_the_median_is_refused_by_the_final_height():
    """float32 keys may tie; the rows where a tie hits the median (fewer than n keys below it) are
    not Dyck words and end away from height 0, which is how the sampler drops them."""
    g = torch.Generator().manual_seed(3)
    keys = torch.rand(2000, 9, generator=g, dtype=torch.float64)
    opens, height = shapes_from_keys(keys)
    assert (height[:, -1] == 0).all() and all(is_dyck_shape(r) for r in opens[:50].tolist())
    tied = keys.clone()
    ranked = tied.argsort(1)
    tied.scatter_(1, ranked[:, 3:4], tied.gather(1, ranked[:, 4:5]))  # 4th smallest = median
    assert (shapes_from_keys(tied)[1][:, -1] != 0).all()
    tied = keys.clone()
    tied.scatter_(1, ranked[:, 5:6], tied.gather(1, ranked[:, 4:5]))  # a tie above it: harmless
    assert torch.equal(shapes_from_keys(tied)[0], opens)


def test_dyck_shapes_uniform_and_partners_match_a_stack():
    g = torch.Generator().manual_seed(0)
    opens = dyck_shapes(14_000, 4, g, "cpu")
    assert all(is_dyck_shape(row) for row in opens.tolist())
    words, counts = opens.unique(dim=0, return_counts=True)
    assert len(words) == 14  # Catalan(4), each about 1000 times
    assert (counts - 1000).abs().max() < 5 * math.sqrt(1000)
    shapes = dyck_shapes(50, 9, g, "cpu")
    for row, partner in zip(shapes.tolist(), partners(shapes).tolist(), strict=True):
        expected = [0] * len(row)
        for i, j in pairs(row):
            expected[i], expected[j] = j, i
        assert partner == expected


@pytest.mark.parametrize("n", [1, 4, 7])
def test_dyck_all_shapes_enumerates_each_dyck_word_once(n):
    shapes = all_shapes(n, "cpu")
    assert len(shapes) == math.comb(2 * n, n) // (n + 1)
    assert len(shapes.unique(dim=0)) == len(shapes)
    assert all(is_dyck_shape(row) for row in shapes.tolist())
