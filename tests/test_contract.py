"""The contract checks of seqbench.testing catch what they promise to: each is run here on a
family or task that breaks it (the built-ins pass them in test_models.py, test_streaming.py and
test_tasks.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from seqbench import testing
from seqbench.models import FAMILIES
from seqbench.models.base import Core
from seqbench.tasks.parity import Parity
from seqbench.testing import FEATURES, TOKENS


def test_causality_check_catches_a_bidirectional_model():
    net = testing.build("gru", FEATURES, 16, hp={"bidirectional": True})
    with pytest.raises(AssertionError, match="saw a later input"):
        testing.check_causal(net, FEATURES)


def test_streaming_checks_catch_a_wrong_or_mutating_step():
    net = testing.build("rnn", TOKENS, 20)
    step = net.core.step
    net.core.step = lambda x, state: (step(x, state)[0] + 1e-3, step(x, state)[1])
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        testing.check_streaming(net, TOKENS, 20)

    def mutating(x, state):
        y, new = step(x, state)
        state.add_(1.0)  # writes into the state it was given
        return y, new

    net.core.step = mutating
    with pytest.raises(AssertionError, match="step modified the state it was given|same step"):
        testing.check_step_functional(net, TOKENS)


def test_state_size_check_catches_a_wrong_promise():
    net = testing.build("transformer", TOKENS, 20)
    with pytest.raises(AssertionError, match="state bytes by position"):
        testing.check_state_size(net, TOKENS, lambda model, batch, t: 1024)  # a KV cache grows


def test_budget_check_catches_a_family_that_ignores_the_budget():
    rnn = FAMILIES["rnn"]
    fixed = dataclasses.replace(rnn, name="fixed",
                                fit=lambda io, budget, hp, max_len: rnn.build(io, 4, hp, max_len))
    with pytest.raises(AssertionError, match="parameters for"):
        testing.check_budget(fixed, TOKENS, 20_000, 12)


def test_first_input_check_catches_a_memoryless_family():
    def build(io, width, hp, max_len):
        return Core(MemorylessCore(width), width, width)

    memoryless = dataclasses.replace(FAMILIES["rnn"], name="memoryless", build=build)
    with pytest.raises(AssertionError, match="does not depend on the first input"):
        testing.check_sees_first_input(testing.build(memoryless, FEATURES, 10), FEATURES)


class MemorylessCore(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x):
        return self.linear(x)


def test_chance_check_catches_a_wrong_chance():
    class WrongChance(Parity):
        def chance(self, length: int) -> float:
            return 0.45

    testing.check_chance(Parity(), 5)
    with pytest.raises(AssertionError, match="vs chance 0.45"):
        testing.check_chance(WrongChance(), 5)
