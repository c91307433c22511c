"""Dyck-2 recognition: is a string of two kinds of brackets balanced? The negatives differ from the
positives only at long range: no window of up to max(3, L // 4) consecutive tokens and no symbol
count tells the two classes apart.

Sources: Dyck languages are the standard probe of stack-like memory in sequence models: Dyck-1
and its shuffles in Suzgun et al. 2019 ("LSTM networks can perform dynamic counting") and
Bhattamishra, Ahuja & Goyal 2020 (EMNLP, "On the ability and limitations of Transformers to
recognize formal languages"); Dyck-n in Suzgun et al. 2019 ("Memory-augmented recurrent neural
networks can learn generalized Dyck languages") and Bhattamishra, Ahuja & Goyal 2020 (COLING, "On
the practical ability of recurrent neural networks to recognize hierarchical languages").
Delétang et al. 2022 ("Neural networks and the Chomsky hierarchy") put the tasks that need a stack
in their deterministic context-free tier but have no Dyck task (their code,
google-deepmind/neural_networks_chomsky_hierarchy, tasks/dcf: reverse string, stack manipulation,
modular arithmetic with brackets, solve equation).

Definition: a string of L = `length` tokens over ( ) [ ] (tokens 0, 1, 2, 3; L even); the target,
read at the last step, is 1 if the string is balanced (a Dyck-2 word: every closing bracket closes
the most recent unclosed opening bracket, of the same kind, and none is left open), else 0.

Sampling, with G = max(3, L // 4) (the guard):
1. Shape: a uniformly random Dyck word with n = L/2 pairs, the sequence of opening and closing
   (cycle lemma: a uniform arrangement of n up-steps and n + 1 down-steps, rotated to start just
   after its first minimum, last step dropped), conditioned on having an eligible pair: a pair
   B = (b1, b2) nested inside another pair and spanning b2 - b1 >= G. Rejection keeps the
   conditioned shape uniform over the shapes that have one (71% of all shapes at L = 16, 84% at
   24, 97% at 64).
2. B is uniform among the eligible pairs of the shape; A = (a1, a2) is the pair just enclosing it.
3. Kinds: every pair but B gets a kind uniformly at random, independently; B gets the other kind
   than A. That string is the positive. The negative is the same string with the closing brackets
   of A and B exchanged: a1 and b2 then have kind k, b1 and a2 the other kind.
Both classes use steps 1-3 with the same distribution; each row is one class (rows alternate,
positive first, a fair coin picking the extra row's class when the batch is odd), so chance is 1/2.

Why nothing local tells the classes apart. The exchange keeps the shape and every symbol count
(pointwise). Given the shape and the couple (A, B), drawn alike in both classes, the kinds of the
four positions are (k, 1-k, 1-k, k) at (a1, b1, b2, a2) in a positive and (k, 1-k, k, 1-k) in a
negative, k uniform, and every other position has an independent uniform kind shared with its
partner. A set of positions that does not hold both ends of one of the couples (a1, a2), (b1, b2),
(a1, b2), (b1, a2) therefore has the same joint distribution in both classes: the kinds it sees at
the four positions are uniform and independent of the rest in either class ((a1, b1) see (k, 1-k)
and (b2, a2) see one kind and the other, in both). Those couples are at least b2 - b1 >= G apart,
so every window of up to G consecutive tokens (the first and last ones included) has the same
distribution in both classes, and so has every n-gram count for n <= G in expectation; no n-gram
of a negative is impossible in a positive. What differs is long-range: whether the kind of b2 (and
a2) matches the kind of its partner, b2 - b1 >= G steps back. (A negative with the very bag of
trigrams of a positive exists for under 2% of Dyck-2 words at L <= 12, by enumeration, and an
exchange of two closers with equal neighbourhoods for 22% at L = 32: conditioning on that stronger
property would distort the positives far more.)

Length: L even and L >= 10. Below 6 every unbalanced string with the symbol counts of a balanced
one has a local tell, an n-gram (n <= 3, padded at both ends) that no balanced string of its length
has (the tests check it by enumeration). At 6 and 8 the construction leaves 8 and 108 distinct
strings, few enough for n-gram counts to tell them apart: the shortcut learner of
seqbench.cell.shortcut (linear in those counts) reaches up to 0.70 at 6 and 0.55 at 8 on the quick
preset's held-out sets (256 samples, 3 seeds; 0.64 and 0.53 on 4096 samples). From 10 on it stays
within 0.02 of chance on 4096 samples, at every length of the presets.

Not covered: the joint distribution of all windows. At short lengths the whole bag of trigrams
nearly determines the string, so a non-linear learner on it tells the classes apart (a Bayes
classifier on the bag: exactly 1.0 at L = 8 and 0.97 at 12; an MLP on the bag, measured: 0.89 at
16, 0.70 at 24, 0.62 at 32, 0.53 at 64). Non-linear learners on global counts are out of scope
here, as for parity, which an MLP solves from the count of ones at any length.

Departures: the sources train next-character prediction on words sampled from a probabilistic
grammar; here the task is membership, the positives are uniform shapes conditioned on an eligible
pair with one marked pair forced to differ in kind from its parent (so they are not uniform Dyck-2
words), and the negatives match them at every window of G tokens.

Speed: lengths up to TABLE_MAX draw (shape, B) from a table of every such couple with its exact
probability (one search per row) and only the kinds at random, about 10 tensor operations; longer
ones build the shapes on the fly, about 45 operations on small integer types: the up-steps by a
median (a partition), the pairs as a list by one stable sort of the levels (both by numpy on the
CPU: seqbench.tasks.sampling), one kind per pair. Version 3 (this one) changed only that path
above TABLE_MAX, from version 2's per-position kinds, float64 keys and torch sorts, to stay under
2% of an LSTM training step (tests/test_benchmarks.py::test_sampler_cost); the keys are float32,
and the rare rows where two keys tie at the median are not Dyck words and are dropped (exact:
the event is symmetric in the positions).
"""
from __future__ import annotations

import functools
import math

import torch

from seqbench.strict import require
from seqbench.tasks.base import Batch, IOSpec, Task
from seqbench.tasks.sampling import argsort_rows, median_rows, steps

MIN_LENGTH = 10
TABLE_MAX = 24  # longest length drawn from a table of (shape, B) couples (54 MB, 1-3 s to build)


def guard(length: int) -> int:
    """G: the span b2 - b1 of the mismatched inner pair is at least G, so every window of G tokens
    has the same distribution in both classes."""
    return max(3, length // 4)


@functools.cache
def eligible_shapes(n: int, g: int) -> int:
    """How many Dyck words with n pairs have an eligible pair (nested, span >= g), exactly: all
    Catalan(n) words minus those whose every nested pair spans less than g. A pair holding k pairs
    spans 2k + 1, so in those every pair at level 2 holds at most K = (g - 2) // 2 pairs (any
    word inside), and a top-level pair holds a sequence of such level-2 pairs: with F[m] the
    sequences of m pairs in all, F[m] = sum_{k <= K} Catalan(k) F[m - 1 - k], and the words are
    sequences of top-level pairs, W[n] = sum_m F[m] W[n - 1 - m]."""
    top = (g - 2) // 2
    forests, words = [1], [1]
    for m in range(1, n + 1):
        forests.append(sum(math.comb(2 * k, k) // (k + 1) * forests[m - 1 - k]
                           for k in range(min(top, m - 1) + 1)))
        words.append(sum(forests[i] * words[m - 1 - i] for i in range(m)))
    return math.comb(2 * n, n) // (n + 1) - words[n]


def dyck_shapes(b: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """(b, 2n) bool, True at opening brackets: uniform Dyck words with n pairs (cycle lemma)."""
    keys = torch.rand(b, 2 * n + 1, generator=generator, device=device, dtype=torch.float64)
    return shapes_from_keys(keys)[0]


def shapes_from_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(opens, height), each (b, 2n): the cycle-lemma Dyck word of each row of distinct keys
    (b, 2n + 1), up-steps at the n smallest keys, rotated to start after the first minimum of the
    walk, last step dropped; and the height of its walk after each step (see walk)."""
    m = keys.shape[1]
    up = keys < median_rows(keys)
    up = torch.cat([up, up], 1)  # twice round: each rotation is a window
    height = walk(up, largest=2 * m)  # twice the 2n up-steps, and the 2m steps: under 2m
    lowest, low = height[:, :m].min(1, keepdim=True)  # min returns the first minimum's index
    at = low + 1 + steps(m - 1, keys.device)
    return up.gather(1, at), height.gather(1, at) - lowest


def walk(up: torch.Tensor, largest: int | None = None) -> torch.Tensor:
    """Height after each step of the walks with up-steps at `up` (b, L): openers minus closers,
    in a small integer type (the cheapest to sort: seqbench.tasks.sampling) that holds `largest`
    (default 2 L), the largest intermediate: twice the count of up-steps, or L."""
    dtype = small_int(largest or 2 * up.shape[1])
    return 2 * up.cumsum(1, dtype=dtype) - counts(up.shape[1], up.device, dtype)


def small_int(largest: int) -> torch.dtype:
    """The smallest signed integer type that holds -largest .. largest."""
    return torch.int8 if largest <= 127 else torch.int16


@functools.lru_cache(maxsize=64)
def counts(length: int, device, dtype: torch.dtype) -> torch.Tensor:
    """arange(1, length + 1) on device, shared: read it, never write it."""
    return torch.arange(1, length + 1, device=device, dtype=dtype)


def all_shapes(n: int, device) -> torch.Tensor:
    """(Catalan(n), 2n) bool: every Dyck word with n pairs, built step by step."""
    shapes = torch.zeros(1, 0, dtype=torch.bool, device=device)
    for step in range(2 * n):
        opened = shapes.sum(1)
        height = 2 * opened - step
        grow = [(opened < n, True), (height > 0, False)]
        shapes = torch.cat([
            torch.cat([shapes[ok], torch.full((int(ok.sum()), 1), up, device=device)], 1)
            for ok, up in grow
        ])
    return shapes


def pair_lists(opens: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """(b, 2n): the pairs of the Dyck words `opens` (b, 2n), with walk heights `height`, listed by
    level, then position, each as its opening then its closing position. At each nesting level
    openings and closings alternate, so a stable sort by level lists every pair as two
    neighbours."""
    level = height + ~opens  # the level of the pair a bracket belongs to (1 .. n)
    return argsort_rows(level.to(small_int(opens.shape[1] // 2)), stable=True)  # level <= n


def partners(opens: torch.Tensor) -> torch.Tensor:
    """(b, 2n) index of the matching bracket of every position of Dyck words `opens`."""
    order = pair_lists(opens, walk(opens))
    first, second = order[:, 0::2], order[:, 1::2]
    return torch.empty_like(order).scatter_(1, first, second).scatter_(1, second, first)


def eligible(opens: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """(b, L) bool: the openers b1 of eligible pairs, nested in another pair (level >= 2) with
    partner(b1) - b1 >= G."""
    length = opens.shape[1]
    span = partner - steps(length, opens.device)
    return opens & (walk(opens) >= 2) & (span >= guard(length))  # an opener's walk: its level


def skeleton(opens, partner, b1, positive) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, flip), each (b, L): position t gets the kind of the pair opened at src[t], flipped
    where flip[t]. b1: (b, 1) openers of the chosen pairs B; positive: (b, 1) bool, the class."""
    pos = steps(opens.shape[1], opens.device)
    enclosing = opens & (pos < b1) & (partner > b1)
    a1 = torch.where(enclosing, pos, -1).amax(1, keepdim=True)  # the innermost one: the parent
    b2, a2 = partner.gather(1, b1), partner.gather(1, a1)
    src = torch.where(opens, pos, partner).scatter_(1, torch.cat([b1, b2], 1), a1.expand(-1, 2))
    second = torch.where(positive, b2, a2)  # B's closer flipped in a positive, A's in a negative
    flip = (pos == b1) | (pos == second)
    return src, flip


def class_pattern(b: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The class of each of b rows, as (b,) bool True for positives and (b,) int64 1 for negatives:
    rows alternate, positive first; for odd b a fair coin picks the class of the extra row, so the
    expected fraction of positives is exactly 1/2. Cached: read the tensors, never write them."""
    phase = 0 if b % 2 == 0 else int(torch.randint(0, 2, (), generator=generator, device=device))
    return alternating(b, phase, str(device))


@functools.lru_cache(maxsize=64)
def alternating(b: int, phase: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    positive = (torch.arange(b, device=device) + phase) % 2 == 0
    return positive, (~positive).long()


@functools.lru_cache(maxsize=8)
def table(length: int, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every (shape, B) couple at `length` with its probability, for both classes.

    Returns (code, cum, total): code (C, 2, 3, L) int8, code[c, 0] and code[c, 1] the positive and
    the negative skeleton of couple c as (src, base, mult), so that the token is base + bit * mult
    for bit = the random kind of src; cum (C,) int64, cumulative integer weights proportional to
    1 / (number of eligible pairs of the couple's shape): shapes uniform, B uniform within one.
    """
    shapes = all_shapes(length // 2, device)
    partner = partners(shapes)
    which, b1 = eligible(shapes, partner).nonzero(as_tuple=True)
    counts = torch.bincount(which, minlength=len(shapes))[which]
    lcm = math.lcm(*counts.unique().tolist())
    cum = (lcm // counts).cumsum(0)
    opens, partner, b1 = shapes[which], partner[which], b1[:, None]
    rows = []
    for positive in (True, False):
        src, flip = skeleton(opens, partner, b1, torch.tensor(positive, device=device))
        base = 2 * flip.long() + (~opens).long()
        rows.append(torch.stack([src, base, 2 - 4 * flip.long()], 1))
    return torch.stack(rows, 1).to(torch.int8), cum, int(cum[-1])


class Dyck(Task):
    name = "dyck"
    order = 130
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "Dyck-2 recognition: is a string of ( ) [ ] balanced? (negatives differ only far apart)"
    version = 3
    io = IOSpec("tokens", input_size=4, output_size=2)
    readout = "final"
    solve_threshold = 0.99
    min_length = MIN_LENGTH
    bidirectional_ok = True

    def check_length(self, length: int, field: str = "length") -> None:
        require(
            isinstance(length, int) and length >= self.min_length, field,
            f"task {self.name!r} needs an integer length >= {self.min_length}, got {length!r} "
            "(below 6 every unbalanced string with the counts of a balanced one has a local "
            "tell, an n-gram no balanced string has; at 6 and 8 so few strings remain, 8 and 108, "
            "that n-gram counts tell them apart)")
        require(length % 2 == 0, field,
                f"task {self.name!r} needs an even length (a balanced string has one), got {length}")

    def sample(self, length, batch_size, generator, device):
        self.check_length(length)
        positive, negative = class_pattern(batch_size, generator, device)
        if length <= TABLE_MAX:
            inputs = self._from_table(length, negative, generator, device)
        else:
            inputs = self._on_the_fly(length, positive, generator, device)
        return Batch(inputs, positive.long())

    @staticmethod
    def _from_table(length, negative, generator, device):
        code, cum, total = table(length, str(device))
        draw = torch.randint(0, total, negative.shape, generator=generator, device=device)
        couple = torch.searchsorted(cum, draw, right=True)
        src, base, mult = code[couple, negative].long().unbind(1)
        bits = torch.randint(0, 2, src.shape, generator=generator, device=device)
        return base + bits.gather(1, src) * mult

    @staticmethod
    def _on_the_fly(length, positive, generator, device):
        b, n, g = len(positive), length // 2, guard(length)
        accept = eligible_shapes(n, g) / (math.comb(2 * n, n) // (n + 1))
        parts, have = [], 0
        while have < b:  # rejection: draw shapes until b of them have an eligible pair
            need = b - have
            rows = math.ceil((need + 2 * math.sqrt(need * (1 - accept))) / accept) + 1
            keys = torch.rand(rows, 2 * n + 1, generator=generator, device=device)
            u = torch.rand(rows, 1, generator=generator, device=device, dtype=torch.float64)
            opens, height = shapes_from_keys(keys)  # not a Dyck word where a tie hit the median
            order = pair_lists(opens, height)
            top = (height == 0).sum(1, keepdim=True)  # level-1 pairs, listed first
            span = order[:, 1::2] - order[:, 0::2]
            ranks = ((steps(n, device) >= top) & (span >= g)).cumsum(1)
            pick = (u * ranks[:, -1:]).long()  # uniform among the eligible pairs
            chosen = torch.searchsorted(ranks, pick, right=True)  # B's index in the pair list
            keep = ((ranks[:, -1] > 0) & (height[:, -1] == 0)).nonzero()[:need, 0]
            parts.append((order[keep], chosen[keep]))
            have += len(keep)
        order, ib = parts[0] if len(parts) == 1 else map(torch.cat, zip(*parts))
        first, second = order[:, 0::2], order[:, 1::2]
        b1 = first.gather(1, ib)
        ia = torch.where((first < b1) & (second > b1), first, -1).argmax(1, keepdim=True)  # A
        kind = torch.randint(0, 2, (b, n), generator=generator, device=device)
        kind.scatter_(1, ib, 1 - kind.gather(1, ia))  # B: the other kind than A
        both = torch.cat([ia, ib], 1)  # a negative exchanges A's and B's closing brackets:
        closers = second.scatter(1, both, second.gather(
            1, torch.where(positive[:, None], both, both.flip(1))))
        kind = 2 * kind
        return first.new_empty(b, length).scatter_(1, first, kind).scatter_(1, closers, kind + 1)

    def input_space(self, length):
        """Shapes are uniform over the E shapes with an eligible pair and, given (shape, B), the
        string is fixed by the kinds of the n - 1 pairs other than B, uniform: a string has
        probability at most (1/E) 2^-(n-1) (summing over the pairs B it may come from), so
        E 2^(n-1) bounds the inputs from below in the sense of Task.input_space."""
        n = length // 2
        return eligible_shapes(n, guard(length)) * 2 ** (n - 1)

    def chance(self, length):
        return 0.5
