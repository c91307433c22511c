"""Modular arithmetic, simple version (Delétang et al. 2022, "Neural Networks and the Chomsky
Hierarchy"; regular task).

Definition (google-deepmind/neural_networks_chomsky_hierarchy, tasks/regular/modular_arithmetic.py,
modulus 5, all three operators): an expression x_0 o_1 x_1 o_2 .. o_n x_n without brackets, with
numbers x_i uniform on 0..4 and operators o_i uniform on {+, -, *}, all independent; its value mod
5, read at the last step, is the target. The expression is evaluated with the usual precedence, as
the reference does (it replaces "- x" by "+ (-x)", multiplies out every run of "*", then sums the
terms): e.g. 1 + 2 * 3 = 2, 1 - 1 - 1 = 4, 0 * 1 + 4 * 3 - 2 = 0 (mod 5), the reference's examples.
Tokens: 0..4 the numbers, 5 "+", 6 "-", 7 "*" (the reference's encoding, without its padding blank
"_", which its sampler never emits). `length` is the number n of operators (n >= 1), so the input
has 2n + 1 tokens; the reference's length counts tokens and is forced to be odd.

Classes: class (value + 1) mod 5. The reference uses the value itself; the shift is a fixed
relabelling of the outputs, which changes nothing for any model, and it makes class 1 (value 0)
the most likely class, the constant guess the suite's chance test uses.

Chance (exact): the value R is a sum of independent terms T_t = +-(a product of m_t numbers), where
the operators fix the run lengths m_t (m_1 + .. = n + 1). Scaling the first number of every term by
a unit u of Z_5 is a bijection of the inputs that scales R by u, so all four non-zero values are
equally likely and the best constant guess is 0 (class 1). For such unit-invariant distributions
the bias b(X) = (5 P(X = 0) - 1) / 4 is the value of every non-trivial Fourier coefficient, so
b(X + Y) = b(X) b(Y) for independent X, Y; a term of m numbers is 0 with probability 1 - (4/5)^m and
otherwise uniform on the units, so its bias is 1 - (4/5)^(m - 1). Hence
    chance = P(R = 0) = 1/5 + (4/5) E[prod_t (1 - (4/5)^(m_t - 1))],
the expectation over the operators ("*" with probability 1/3 extends the current term). Writing
A_k = E[prod of the closed terms' biases] and B_k = E[that product times (4/5)^(m - 1)] for m the
length of the open term after k operators: A_0 = B_0 = 1, A_{k+1} = A_k - (2/3) B_k,
B_{k+1} = (2/3) A_k - (2/5) B_k, and the expectation is A_n - B_n. chance(1) = 19/75 = 0.2533,
chance(2) = 0.232, chance(5) = 0.2045; it tends to 1/5 (as 0.513^n). The tests check the recurrence
against brute-force enumeration and dynamic programming over (sum of closed terms, open term).

Evaluation, vectorised: reading left to right, the state (sum of the closed terms, value of the
open term) mod 5 takes 25 values, each operator-number step maps states to states, and the maps
compose associatively, so a batch is evaluated in ceil(log2 n) rounds of gathers (final_state). The
tests check it against a direct evaluation in Python and against the first version's code, which
gives the same batches from the same generator.

Departures: Delétang et al. train on lengths 1..40 and test on 41..500; here a cell trains and tests
at one length unless it asks for their protocol (config.generalise).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from seqbench.tasks.base import Batch, IOSpec, Task

MODULUS = 5
PLUS = 5  # operator tokens: + - * are 5, 6, 7 (operator ids 0, 1, 2 plus PLUS)
IDENTITY = 3 * MODULUS  # step code of the identity map (pads an expression to 2^k steps)


def _step(state: int, code: int) -> int:
    """The state after reading operator code // 5 and number code % 5 in state 5 S + P, where S is
    the sum of the closed terms and P the value of the open term (the reference's precedence:
    "+ x" and "- x" close the open term and open x or -x, "* x" multiplies the open term by x)."""
    closed, term = divmod(state, MODULUS)
    op, x = divmod(code, MODULUS)
    if op == 2:
        return MODULUS * closed + term * x % MODULUS
    return MODULUS * ((closed + term) % MODULUS) + (x if op == 0 else -x % MODULUS)


class Tables(NamedTuple):
    """Lookup tables on one device."""

    steps: torch.Tensor  # (16, 25): the map of the 25 states of each step code (15: identity)
    tokens: torch.Tensor  # (15, 2): the operator and number tokens of each step code
    value: torch.Tensor  # (25,): the value mod 5 of each final state
    classes: torch.Tensor  # (25,): the class of each final state


@functools.cache
def tables(device: torch.device) -> Tables:
    states = range(MODULUS**2)
    steps = [[_step(s, c) for s in states] for c in range(IDENTITY)] + [list(states)]
    tokens = [[PLUS + c // MODULUS, c % MODULUS] for c in range(IDENTITY)]
    value = [(s // MODULUS + s % MODULUS) % MODULUS for s in states]
    classes = [(v + 1) % MODULUS for v in value]
    return Tables(*(torch.tensor(t, device=device) for t in (steps, tokens, value, classes)))


def step_codes(numbers: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """(B, n) codes 5 op + number of the steps of expressions numbers[:, 0] ops[:, 0]
    numbers[:, 1] ..; numbers: (B, n + 1) in 0..4, ops: (B, n) in 0 (+), 1 (-), 2 (*)."""
    return numbers[:, 1:].add(ops, alpha=MODULUS)


def final_state(numbers: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(B,) states 5 S + P after reading whole expressions (see _step), from their numbers and
    step codes. The step maps compose associatively, so they are composed pairwise in
    ceil(log2 n) rounds of one gather each, and the result is read at the start state
    (0, numbers[:, 0])."""
    n = codes.shape[1]
    if n & (n - 1):  # pad to a power of two with identity steps
        codes = F.pad(codes, (0, (1 << n.bit_length()) - n), value=IDENTITY)
    steps = tables(codes.device).steps
    maps = steps.index_select(0, codes.flatten()).view(*codes.shape, -1)  # (B, 2^k, 25)
    while maps.shape[1] > 1:  # map 2i + 1 after map 2i: state -> odd[even[state]]
        maps = maps[:, 1::2].gather(2, maps[:, 0::2])
    return maps[:, 0].gather(1, numbers[:, :1]).view(-1)


def evaluate(numbers: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Values mod 5 of expressions (shapes as in step_codes) with the usual precedence."""
    return tables(numbers.device).value.index_select(
        0, final_state(numbers, step_codes(numbers, ops)))


class ModArith(Task):
    name = "mod_arith"
    order = 120
    length_symbol = "n"
    length_meaning = "number of operators"
    summary = "modular arithmetic: value mod 5 of an expression over + - * (Deletang et al. 2022)"
    io = IOSpec("tokens", input_size=MODULUS + 3, output_size=MODULUS)
    readout = "final"
    solve_threshold = 0.99
    min_length = 1
    bidirectional_ok = True

    def seq_len(self, length: int) -> int:
        return 2 * length + 1

    def sample(self, length, batch_size, generator, device):
        n = length
        numbers = torch.randint(0, MODULUS, (batch_size, n + 1), generator=generator, device=device)
        ops = torch.randint(0, 3, (batch_size, n), generator=generator, device=device)
        codes = step_codes(numbers, ops)
        table = tables(numbers.device)
        steps = table.tokens.index_select(0, codes.flatten()).view(batch_size, 2 * n)
        inputs = torch.cat([numbers[:, :1], steps], dim=1)
        return Batch(inputs, table.classes.index_select(0, final_state(numbers, codes)))

    def input_space(self, length):
        return MODULUS ** (length + 1) * 3**length  # uniform numbers and operators

    def chance(self, length):
        a = b = 1.0
        for _ in range(length):
            a, b = a - 2 / 3 * b, 2 / 3 * a - 2 / 5 * b
            if abs(a) + abs(b) < 1e-20:  # the rest is below double precision next to 1/5
                break
        return 1 / MODULUS + (1 - 1 / MODULUS) * (a - b)
