"""Streaming inference: token-by-token steps match the full forward, steps are functional, state
sizes follow each family's complexity, and measure_streaming reports one row per position."""
from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch

from seqbench.measure.streaming import measure_streaming
from seqbench.models import FAMILIES, BudgetWarning, build_model, parse_hparams, state_bytes
from seqbench.models.base import SequenceModel
from seqbench.tasks import TASKS, IOSpec

TOKENS = TASKS["copy"].io
FEATURES = TASKS["adding"].io
IOS = {"tokens": TOKENS, "features": FEATURES}
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
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        return build_model(name, IOS[io], 2000, parse_hparams(name, dict(hp)), LENGTH).eval()


def build(name: str, hp: dict, io: str = "tokens") -> SequenceModel:
    """The eval-mode model of a variant, built once per session (tests must not modify it)."""
    return _build(name, tuple(sorted(hp.items())), io)


def random_inputs(io: IOSpec, batch: int, length: int) -> torch.Tensor:
    if io.input_kind == "tokens":
        return torch.randint(0, io.input_size, (batch, length))
    return torch.rand(batch, length, io.input_size)


def stream(net: SequenceModel, x: torch.Tensor, state=None):
    """Outputs (B, L, output_size) of stepping x (B, L, ...) one position at a time, and the
    final state."""
    state = net.init_state(x.shape[0]) if state is None else state
    outputs = []
    for t in range(x.shape[1]):
        y, state = net.step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, 1), state


def leaves(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [leaf for s in state for leaf in leaves(s)]
    return []


@pytest.mark.parametrize("io", sorted(IOS))
@variants
def test_step_matches_forward(name, hp, io):
    net = build(name, hp, io)
    x = random_inputs(IOS[io], 3, LENGTH)
    with torch.no_grad():
        stepped, _ = stream(net, x)
        full = net(x)
    assert stepped.dtype == full.dtype == torch.float32
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)


@variants
def test_step_is_functional(name, hp):
    """Stepping never modifies the state it is given, nor a state it returned earlier."""
    net = build(name, hp)
    x = random_inputs(TOKENS, 2, 6)
    with torch.no_grad():
        _, state = stream(net, x[:, :5])
        before = copy.deepcopy(state)
        y1, s1 = net.step(x[:, 5], state)
        kept = copy.deepcopy(s1)
        net.step((x[:, 5] + 1) % TOKENS.input_size, state)
        y2, s2 = net.step(x[:, 5], state)
    assert torch.equal(y1, y2)
    for a, b, c, d, e in zip(leaves(state), leaves(before), leaves(s1), leaves(kept), leaves(s2),
                             strict=True):
        assert torch.equal(a, b) and torch.equal(c, d) and torch.equal(c, e)


@variants
def test_state_size(name, hp):
    """Exact state bytes at every position t = 0 .. 10: batch * (per_sample + t * per_position),
    the growth each family declares in its info (test_declared_state_growth checks those)."""
    batch, net = 2, build(name, hp)
    x, state = random_inputs(TOKENS, batch, 10), net.init_state(batch)
    sizes = {0: state_bytes(state)}
    with torch.no_grad():
        for t in range(10):
            _, state = net.step(x[:, t], state)
            sizes[t + 1] = state_bytes(state)
    per_sample = net.info["state_bytes_per_sample"]
    per_position = net.info["state_bytes_per_position"]
    assert sizes == {t: batch * (per_sample + t * per_position) for t in sizes}


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
