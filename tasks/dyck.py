"""Dyck-2 recognition: is a string of two kinds of brackets balanced? (The Dyck languages of
Suzgun et al. 2019, "LSTM networks can perform dynamic counting", and the context-free tier of
Delétang et al. 2022, posed here as recognition.)

Definition: a string of L = `length` tokens over ( ) [ ] (tokens 0, 1, 2, 3; L even, L >= 2); the
target, read at the last step, is 1 if the string is balanced (a Dyck-2 word: every closing bracket
closes the most recent unclosed opening bracket, of the same kind, and none is left open) and 0
otherwise. check_length refuses odd lengths (no odd string is balanced).

Sampling: each batch holds floor(B/2) balanced strings, plus one more with probability 1/2 when B
is odd, at random rows, so the expected fraction of balanced strings is exactly 1/2 and chance (the
best constant guess, either class) is 1/2 exactly.
- Balanced strings are uniform over Dyck-2 words of length L: the bracket shape is a uniform
  Dyck word with n = L/2 pairs (cycle lemma: a uniform arrangement of n up-steps and n + 1
  down-steps, rotated to start just after its first minimum, last step dropped), and every matched
  pair gets a kind uniformly at random.
- Unbalanced strings are balanced strings drawn the same way, then corrupted by swapping two
  tokens so that every symbol keeps its count (no count, per kind or in total, tells the classes
  apart) and the bracket shape (the sequence of opening and closing) stays a valid Dyck word
  whenever possible: two matched pairs of different kinds are chosen, and their closing brackets
  are exchanged ("( .. ]" and "[ .. )"), so that only a stack that remembers the kinds detects it.
  Pairs whose brackets are not adjacent are preferred, so that no "(]" or "[)" bigram, which never
  occurs in a balanced string, gives the corruption away locally; such a bigram remains only where
  one kind has nothing but adjacent pairs (measured: about 60% of the negatives at L = 8, 20% at
  16, 2% at 32, none in thousands at 64 and beyond). When all pairs have one kind (probability
  2^(1 - n): always at L = 2, half the strings at L = 4, below 1% from L = 16), the opening and
  closing brackets of a random top-level pair are exchanged instead, which drives the depth below
  zero. Short strings are therefore easier than long ones, as they are anyway.

Departures: Suzgun et al. train next-character prediction on Dyck words and Delétang et al. have no
Dyck task; the recognition framing with matched-count negatives is ours.
"""
from __future__ import annotations

import torch

from seqbench.strict import require
from seqbench.tasks.base import Batch, IOSpec, Task

OPEN = (0, 2)  # "(" and "["; the closing bracket of kind k is token 2k + 1


def dyck_shapes(b: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """(b, 2n) bool, True at opening brackets: uniform Dyck words with n pairs (cycle lemma)."""
    noise = torch.rand(b, 2 * n + 1, generator=generator, device=device, dtype=torch.float64)
    up = torch.zeros(b, 2 * n + 1, dtype=torch.bool, device=device)
    up.scatter_(1, noise.argsort(1)[:, :n], True)
    walk = torch.where(up, 1, -1).cumsum(1)
    is_min = walk == walk.min(1, keepdim=True).values
    first_min = is_min & (is_min.long().cumsum(1) == 1)
    steps = torch.arange(2 * n + 1, device=device)
    start = (first_min.long() * steps).sum(1, keepdim=True) + 1
    return up.gather(1, (start + steps[: 2 * n]) % (2 * n + 1))


def partners(opens: torch.Tensor) -> torch.Tensor:
    """(b, 2n) index of the matching bracket of every position of Dyck words `opens`. At each
    nesting level openings and closings alternate, so sorting by (level, position) lists every
    pair as two neighbours."""
    b, length = opens.shape
    depth = torch.where(opens, 1, -1).cumsum(1)
    level = torch.where(opens, depth, depth + 1)
    order = (level * length + torch.arange(length, device=opens.device)).argsort(1)
    swapped = order.view(b, length // 2, 2).flip(-1).reshape(b, length)
    return torch.empty_like(order).scatter_(1, order, swapped)


class Dyck(Task):
    name = "dyck"
    order = 130
    length_symbol = "L"
    length_meaning = "sequence length"
    summary = "Dyck-2 recognition: is a string of ( ) [ ] balanced? (hard, count-matched negatives)"
    io = IOSpec("tokens", input_size=4, output_size=2)
    readout = "final"
    solve_threshold = 0.99
    min_length = 2
    bidirectional_ok = True

    def check_length(self, length: int, field: str = "length") -> None:
        super().check_length(length, field)
        require(length % 2 == 0, field,
                f"task {self.name!r} needs an even length (a balanced string has one), got {length}")

    def sample(self, length, batch_size, generator, device):
        self.check_length(length)
        b = batch_size
        opens = dyck_shapes(b, length // 2, generator, device)
        partner = partners(opens)
        kind = torch.randint(0, 2, opens.shape, generator=generator, device=device)
        kind = torch.where(opens, kind, kind.gather(1, partner))
        tokens = 2 * kind + (~opens).long()

        # labels: floor(B/2) balanced rows (+1 with probability 1/2 if B is odd), at random rows
        n_pos = b // 2 + (b % 2) * torch.randint(0, 2, (), generator=generator, device=device)
        rows = torch.rand(b, generator=generator, device=device).argsort()
        labels = torch.zeros(b, dtype=torch.long, device=device)
        labels.scatter_(0, rows, (torch.arange(b, device=device) < n_pos).long())

        # corruption: exchange the closing brackets of two pairs of different kinds (preferring
        # non-adjacent pairs), or else the two brackets of a random top-level pair
        pos = torch.arange(length, device=device)
        priority = torch.rand(opens.shape, generator=generator, device=device)
        priority = priority + 2 * (partner != pos + 1)
        chosen = []
        for k in (0, 1):
            candidates = opens & (kind == k)
            first = torch.where(candidates, priority, -1.0).argmax(1, keepdim=True)
            chosen.append((candidates.any(1, keepdim=True), partner.gather(1, first)))
        (has0, close0), (has1, close1) = chosen
        top = opens & (torch.where(opens, 1, -1).cumsum(1) == 1)
        top_open = torch.where(top, priority, -1.0).argmax(1, keepdim=True)
        mixed = has0 & has1
        i = torch.where(mixed, close0, top_open)
        j = torch.where(mixed, close1, partner.gather(1, top_open))
        corrupted = tokens.clone()
        corrupted.scatter_(1, i, tokens.gather(1, j))
        corrupted.scatter_(1, j, tokens.gather(1, i))
        inputs = torch.where(labels[:, None] == 1, tokens, corrupted)
        return Batch(inputs, labels)

    def chance(self, length):
        return 0.5
