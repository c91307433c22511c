"""Streaming inference: token-by-token steps match the full forward, steps are functional, state
sizes follow each family's complexity, and measure_streaming reports one row per position."""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from seqbench import testing
from seqbench.measure.streaming import measure_streaming
from seqbench.models import FAMILIES, state_bytes
from seqbench.models.base import SequenceModel
from seqbench.testing import IOS, TOKENS, random_inputs, stream

LENGTH = 20  # every model is built for this max_len
VARIANTS = [(name, {}) for name in sorted(FAMILIES)] + [
    ("transformer", {"positions": "learned"}),
    ("tcn", {"kernel_size": 3, "levels": 3}),  # receptive field 29
    ("rnn", {"layers": 2}),
    ("lstm", {"layers": 2}),
    ("gru", {"layers": 2}),
    ("lstm", {"peephole": True}),
    ("lstm", {"peephole": True, "layers": 2}),
    ("transformer", {"positions": "rope"}),
    ("transformer", {"positions": "alibi"}),
    ("transformer", {"positions": "alibi", "heads": 3}),  # slopes for a non-power-of-two count
]  # bidirectional recurrent nets do not stream (test_model_variants.py checks they refuse)
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in hp.items()) for name, hp in VARIANTS]
variants = pytest.mark.parametrize(("name", "hp"), VARIANTS, ids=VARIANT_IDS)


@functools.cache
def _build(name: str, hp: tuple, io: str) -> SequenceModel:
    return testing.build(name, IOS[io], LENGTH, 2000, dict(hp))


def build(name: str, hp: dict, io: str = "tokens") -> SequenceModel:
    """The eval-mode model of a variant, built once per session (tests must not modify it)."""
    return _build(name, tuple(sorted(hp.items())), io)


def state_size(name: str, hp: dict) -> testing.StateSize:
    """Each family's exact state bytes after t steps of a batch (float32 values): constant for
    recurrent nets and TCNs, linear in t for the Transformer's KV cache."""
    def size(net: SequenceModel, batch: int, t: int) -> int:
        width, per_value = net.info["width"], 4
        if name == "transformer":  # a key and a value per layer and position
            return t * batch * len(net.core.blocks) * 2 * width * per_value
        if name == "tcn":  # each convolution's last (k-1)d inputs
            return batch * width * (net.info["receptive_field"] - 1) * per_value
        if name == "lru":  # one complex64 state (B, N) per layer
            return len(net.core.blocks) * batch * net.info["state_size"] * 8
        tensors = 2 if name == "lstm" else 1  # (h, c) or h
        return tensors * hp.get("layers", 1) * batch * width * per_value
    return size


@pytest.mark.parametrize("io", sorted(IOS))
@variants
def test_step_matches_forward(name, hp, io):
    testing.check_streaming(build(name, hp, io), IOS[io], LENGTH)


@variants
def test_step_is_functional(name, hp):
    testing.check_step_functional(build(name, hp), TOKENS)


@variants
def test_state_size(name, hp):
    testing.check_state_size(build(name, hp), TOKENS, state_size(name, hp))


def test_learned_positions_stop_at_max_len():
    net = build("transformer", {"positions": "learned"})
    x = random_inputs(TOKENS, 1, LENGTH + 1)
    message = rf"learned positions cover {LENGTH} steps .*position {LENGTH} is beyond"
    with torch.no_grad():
        _, state = stream(net, x[:, :LENGTH])
        with pytest.raises(ValueError, match=message):
            net.step(x[:, LENGTH], state)
        with pytest.raises(ValueError, match=message):
            net(x)


def test_step_refuses_training_mode():
    net = copy.deepcopy(build("rnn", {})).train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        net.step(torch.zeros(1, dtype=torch.int64), net.init_state(1))


def test_state_bytes_of_nested_state():
    state = {"kv": (torch.zeros(2, 3), [torch.zeros(4, dtype=torch.float64)]), "position": 7}
    assert state_bytes(state) == 2 * 3 * 4 + 4 * 8


@pytest.mark.parametrize(("name", "io"), [("transformer", "tokens"), ("tcn", "features")])
def test_measure_streaming(name, io):
    net = copy.deepcopy(build(name, {}, io)).train()
    rows = measure_streaming(net, IOS[io], positions=(16, 4), blocks=5)
    assert [r["position"] for r in rows] == [4, 16]
    for r in rows:
        assert r["latency_ms_median"] > 0 and r["latency_ms_iqr"] >= 0
        assert r["tokens_per_s"] == pytest.approx(1e3 / r["latency_ms_median"])
        assert r["state_bytes"] > 0
    growth = rows[1]["state_bytes"] / rows[0]["state_bytes"]
    assert growth == (4 if name == "transformer" else 1)
    assert net.training  # the caller's mode is restored
    with pytest.raises(ValueError, match="positions"):
        measure_streaming(net, IOS[io], positions=())
