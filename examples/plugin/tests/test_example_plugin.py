"""The plug-in's own tests: seqbench's shared contract (seqbench.testing) on its family and task,
plus the task's exact definition."""
from __future__ import annotations

import pytest
import torch
from seqbench_example_plugin.majority import Majority
from seqbench_example_plugin.mingru import MINGRU

from seqbench import testing
from seqbench.strict import ConfigError


def test_mingru_meets_the_family_contract():
    testing.check_family(
        MINGRU, hparams=({}, {"layers": 2}),
        state_size=lambda net, batch, t: net.info["layers"] * batch * net.info["width"] * 4)


def test_majority_meets_the_task_contract():
    testing.check_task(Majority())


@pytest.mark.parametrize("length", [1, 3, 7, 9])
def test_majority_target_and_exact_chance(length):
    task = Majority()
    batch = testing.sample(task, length, 512)
    assert torch.equal(batch.targets, (batch.inputs.sum(1) > length // 2).long())
    strings = torch.arange(2**length)[:, None] >> torch.arange(length) & 1  # all 2^L strings
    ones = int((strings.sum(1) > length // 2).sum())
    assert 2 * ones == 2**length and task.chance(length) == 0.5


def test_majority_refuses_even_lengths():
    with pytest.raises(ConfigError, match=r"^length: task 'majority' needs an odd length"):
        Majority().check_length(4)
