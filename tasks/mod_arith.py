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

Departures: Delétang et al. train on lengths 1..40 and test on 41..500; here a cell trains and tests
at one length unless it asks for their protocol (config.generalise).
"""
from __future__ import annotations

import torch

from seqbench.tasks.base import Batch, IOSpec, Task

MODULUS = 5
PLUS, MINUS, TIMES = 5, 6, 7  # operator tokens (operator ids 0, 1, 2 plus MODULUS)
# discrete logarithm base 2 (a generator of Z_5^*): 2^0 = 1, 2^1 = 2, 2^3 = 3, 2^2 = 4
LOG2 = (0, 0, 1, 3, 2)  # index 0 unused
POW2 = (1, 2, 4, 3)


def evaluate(numbers: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Values mod 5 of expressions numbers[:, 0] ops[:, 0] numbers[:, 1] .. with the usual
    precedence. numbers: (B, n + 1) in 0..4, ops: (B, n) in 0 (+), 1 (-), 2 (*). Vectorised: the
    product of each run of "*" is 0 if it holds a zero, else 2 to the sum of the discrete logs."""
    b, count = numbers.shape
    signed = numbers.clone()
    signed[:, 1:] = torch.where(ops == 1, (-numbers[:, 1:]) % MODULUS, numbers[:, 1:])
    starts = torch.cat([ops.new_ones(b, 1, dtype=torch.bool), ops != 2], dim=1)
    term = starts.long().cumsum(1) - 1  # which term each number belongs to
    log2 = torch.tensor(LOG2, device=numbers.device)[signed]
    logs = torch.zeros_like(signed).scatter_add_(1, term, log2)
    zeros = torch.zeros_like(signed).scatter_add_(1, term, (signed == 0).long())
    values = torch.tensor(POW2, device=numbers.device)[logs % 4]
    values = torch.where(zeros > 0, 0, values)
    used = torch.arange(count, device=numbers.device) <= term[:, -1:]  # the terms that exist
    return (values * used).sum(1) % MODULUS


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
        inputs = numbers.new_empty(batch_size, 2 * n + 1)
        inputs[:, 0::2] = numbers
        inputs[:, 1::2] = PLUS + ops
        return Batch(inputs, (evaluate(numbers, ops) + 1) % MODULUS)

    def chance(self, length):
        a = b = 1.0
        for _ in range(length):
            a, b = a - 2 / 3 * b, 2 / 3 * a - 2 / 5 * b
            if abs(a) + abs(b) < 1e-20:  # the rest is below double precision next to 1/5
                break
        return 1 / MODULUS + (1 - 1 / MODULUS) * (a - b)
