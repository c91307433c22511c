"""Streaming inference: token-by-token steps match the full forward, steps are functional, state
sizes follow each family's complexity, and measure_streaming reports one row per position."""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from seqbench import testing
from seqbench.measure.streaming import measure_streaming
from seqbench.models import FAMILIES, parse_hparams, state_bytes
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
    ("seq2seq", {"attention": "none"}),
    ("seq2seq", {"attention": "dot"}),
    ("seq2seq", {"cell": "lstm"}),
]  # bidirectional recurrent nets do not stream (test_model_variants.py checks they refuse)
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in hp.items()) for name, hp in VARIANTS]
variants = pytest.mark.parametrize(("name", "hp"), VARIANTS, ids=VARIANT_IDS)
# each variant on the ios its family applies to (seq2seq: tokens only, copy's layout)
VARIANT_IOS = [pytest.param(name, hp, io, id=f"{i}-{io}")
               for (name, hp), i in zip(VARIANTS, VARIANT_IDS, strict=True)
               for io in sorted(IOS) if FAMILIES[name].accepts(IOS[io])]


@functools.cache
def _build(name: str, hp: tuple, io: str) -> SequenceModel:
    return testing.build(name, IOS[io], LENGTH, 2000, dict(hp))


def build(name: str, hp: dict, io: str = "tokens") -> SequenceModel:
    """The eval-mode model of a variant, built once per session (tests must not modify it)."""
    return _build(name, tuple(sorted(hp.items())), io)


@pytest.mark.parametrize(("name", "hp", "io"), VARIANT_IOS)
def test_step_matches_forward(name, hp, io):
    testing.check_streaming(build(name, hp, io), IOS[io], LENGTH)


@variants
def test_step_is_functional(name, hp):
    testing.check_step_functional(build(name, hp), TOKENS)


@variants
def test_state_size(name, hp):
    """Exact state bytes at every position: the growth each family declares in its info."""
    testing.check_state_size(build(name, hp), TOKENS)


@variants
def test_declared_state_growth(name, hp):
    """Each family's declared state growth against a hand count from its architecture: constant
    for the recurrent nets, TCNs and the SSMs, linear in t for the Transformer (a key and a value
    per layer) and Hyena (each long convolution's input per layer). Bytes of float32 values."""
    net = build(name, hp)
    info, width, per_value = net.info, net.info["width"], 4
    layers = getattr(parse_hparams(name, dict(hp)), "layers", None)
    per_sample, per_position = 0, 0
    if name == "transformer":
        per_position = layers * 2 * width * per_value
    elif name == "tcn":  # the last receptive_field - 1 inputs of each channel, over the levels
        per_sample = width * (info["receptive_field"] - 1) * per_value
    elif name in ("rnn", "gru", "lstm"):
        tensors = 2 if name == "lstm" else 1  # (h, c) or h
        per_sample = tensors * layers * width * per_value
    elif name == "lru":  # one complex64 state (N,) per layer
        per_sample = layers * info["state_size"] * 8
    elif name == "s4d":  # d_state / 2 complex64 modes per channel and layer
        per_sample = layers * width * 32 * 8
    elif name == "mamba":  # E = 2 width inner channels: 3 conv inputs and 16 SSM states each
        per_sample = layers * 2 * width * (3 + 16) * per_value
    elif name == "linear_attention":  # 4 heads of S (d_k, d_v), d_k = d/8, d_v = d/4 rounded
        per_sample = layers * 4 * round(width / 8) * round(width / 4) * per_value
    elif name == "hyena":  # 2 short-conv inputs of 3 width channels; one long-conv input
        per_sample, per_position = layers * 3 * width * 2 * per_value, layers * width * per_value
    elif name == "seq2seq":  # h (and c), the previous prediction (int64); with attention each
        hp = parse_hparams(name, dict(hp))  # question step's encoder state, up to the answer start
        per_sample = (2 if hp.cell == "lstm" else 1) * width * per_value + 8
        per_position = 0 if hp.attention == "none" else width * per_value
        assert info["state_growth_steps"] == LENGTH - 10  # copy's layout: the last ten answer
    else:
        pytest.fail(f"no hand count for {name}: add one")
    assert (info["state_bytes_per_sample"], info["state_bytes_per_position"]) == (
        per_sample, per_position)


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
