"""Model variants: bidirectional and peephole recurrent nets, rotary (RoPE) and ALiBi positions.

The generic shape, causality and streaming tests cover the causal variants through the variant
lists of test_models.py and test_streaming.py; this file checks each variant's definition.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import make_cell
from torch import nn

from seqbench import testing
from seqbench.models import (
    BUDGET_TOLERANCE,
    BudgetWarning,
    count_parameters,
    parse_hparams,
)
from seqbench.models.base import SequenceModel
from seqbench.models.recurrent import PeepholeLSTM
from seqbench.models.transformer import alibi_bias, alibi_slopes, rope_angles, rotate
from seqbench.strict import ConfigError
from seqbench.tasks import TASKS, IOSpec
from seqbench.testing import FEATURES, TOKENS

RECURRENT = ["rnn", "lstm", "gru"]


def build(model: str, io: IOSpec, max_len: int, budget: int = 2000, **hp) -> SequenceModel:
    return testing.build(model, io, max_len, budget, hp)


def features(batch: int, length: int, size: int) -> torch.Tensor:
    return torch.randn(batch, length, size)


# ---------------------------------------------------------------- bidirectional recurrent nets


@pytest.mark.parametrize("model", RECURRENT)
def test_bidirectional_last_step_is_both_final_states(model):
    """For one layer the last output is (forward h_n, backward h_n): both read the whole string."""
    net = build(model, FEATURES, 12, bidirectional=True)
    rnn, width = net.core.rnn, net.info["width"]
    assert rnn.bidirectional and net.head.in_features == 2 * width
    x = features(3, 12, width)
    with torch.no_grad():
        out = net.core(x)
        h_n = rnn(x)[1]
    h_n = h_n[0] if model == "lstm" else h_n  # (h_n, c_n) for the LSTM
    assert out.shape == (3, 12, 2 * width)
    torch.testing.assert_close(out[:, -1], torch.cat([h_n[0], h_n[1]], dim=-1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", RECURRENT)
def test_bidirectional_step_t_is_each_direction_after_t_plus_1_tokens(model):
    """Output t = (forward pass over x_0..x_t, backward pass over x_{L-1}..x_{L-1-t}), each
    computed by a unidirectional copy of that direction's weights."""
    net = build(model, FEATURES, 10, bidirectional=True)
    rnn, width, length = net.core.rnn, net.info["width"], 10
    kwargs = {"nonlinearity": "tanh"} if model == "rnn" else {}
    forward, backward = (type(rnn)(width, width, batch_first=True, **kwargs) for _ in range(2))
    with torch.no_grad():
        for name, p in forward.named_parameters():
            p.copy_(getattr(rnn, name))
            getattr(backward, name).copy_(getattr(rnn, f"{name}_reverse"))
        x = features(2, length, width)
        out = net.core(x)
        fwd, bwd = forward(x)[0], backward(x.flip(1))[0]  # bwd[:, t]: after x_{L-1} .. x_{L-1-t}
    torch.testing.assert_close(out[..., :width], fwd, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[..., width:], bwd, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("model", RECURRENT)
def test_bidirectional_is_not_causal(model, layers):
    """By design: the first output already depends on the last input, and the last output on the
    first input."""
    length = 8
    net = build(model, FEATURES, length, budget=20_000, bidirectional=True, layers=layers)
    assert net.info["bidirectional"] is True and net.info["causal"] is False
    x = torch.rand(4, length, FEATURES.input_size)
    last, first = x.clone(), x.clone()
    last[:, -1] += 1.0
    first[:, 0] += 1.0
    with torch.no_grad():
        base = net(x)
        assert (net(last)[:, 0] - base[:, 0]).abs().max() > 1e-6
        assert (net(first)[:, -1] - base[:, -1]).abs().max() > 1e-6


@pytest.mark.parametrize("model", RECURRENT)
def test_bidirectional_has_no_streaming_step(model):
    net = build(model, TOKENS, 10, bidirectional=True)
    message = r"bidirectional model has no streaming step.*backward direction starts at the last"
    with pytest.raises(NotImplementedError, match=message):
        net.init_state(1)
    with pytest.raises(NotImplementedError, match=message):
        net.core.step(torch.zeros(1, net.info["width"]), None)


BUDGET_VARIANTS = [(m, {"bidirectional": True, "layers": k}) for m in RECURRENT for k in (1, 2)] + [
    ("lstm", {"peephole": True, "layers": k}) for k in (1, 2)
]


@pytest.mark.parametrize("budget", [2000, 20_000])
@pytest.mark.parametrize(("model", "hp"), BUDGET_VARIANTS,
                         ids=[m + "".join(f"-{k}={v}" for k, v in h.items())
                              for m, h in BUDGET_VARIANTS])
def test_variant_parameter_budget(model, hp, budget):
    """The width search lands the variants on the budget: the closest whole width, within 10%."""
    testing.check_budget(model, TOKENS, budget, 12, hp)
    net = build(model, TOKENS, 12, budget, **hp)
    directions = 2 if hp.get("bidirectional") else 1
    assert net.head.in_features == directions * net.info["width"]


def test_bidirectional_only_on_tasks_that_allow_it():
    """CellConfig refuses bidirectional models on causal tasks; the peephole LSTM refuses it."""
    causal = [name for name, cls in TASKS.items() if not cls.bidirectional_ok]
    for task in causal:
        with pytest.raises(ConfigError, match=r"hparams\.bidirectional: task .* is causal"):
            make_cell(task, "gru", 4, hparams={"bidirectional": True})
    with pytest.raises(ConfigError, match=r"hparams\.peephole: .*no bidirectional form"):
        parse_hparams("lstm", {"peephole": True, "bidirectional": True})


@pytest.mark.parametrize("model", RECURRENT)
def test_new_fields_at_default_keep_cell_keys(model):
    defaults = {"bidirectional": False} | ({"peephole": False} if model == "lstm" else {})
    assert make_cell("parity", model, 4, hparams=defaults).key() == make_cell(
        "parity", model, 4).key()
    assert make_cell("parity", model, 4, hparams={"layers": 2}).key() != make_cell(
        "parity", model, 4).key()


# ---------------------------------------------------------------- peephole LSTM


def copy_from_torch(cell: PeepholeLSTM, lstm: nn.LSTM) -> None:
    """cell's weights set to lstm's and its peephole weights to zero."""
    with torch.no_grad():
        for k, layer in enumerate(cell.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, name).copy_(getattr(lstm, f"{name}_l{k}"))
            for name in ("w_ci", "w_cf", "w_co"):
                getattr(layer, name).zero_()


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_peephole_with_zero_peepholes_is_torch_lstm(layers):
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, num_layers=layers, batch_first=True)
    cell = PeepholeLSTM(5, 6, layers, dropout=0.0)
    copy_from_torch(cell, lstm)
    x = torch.randn(3, 9, 5)
    with torch.no_grad():
        expected, (h_n, c_n) = lstm(x)
        torch.testing.assert_close(cell(x), expected, rtol=0, atol=1e-6)
        state = cell.init_state(3, x.device, x.dtype)
        for t in range(9):
            _, state = cell.step(x[:, t], state)
    torch.testing.assert_close(state[0], h_n, rtol=0, atol=1e-6)
    torch.testing.assert_close(state[1], c_n, rtol=0, atol=1e-6)


def test_peephole_cell_follows_graves_equations():
    """One layer against eq. 7-11 of Graves 2013 written out gate by gate: c_{t-1} feeds the input
    and forget gates, c_t the output gate."""
    torch.manual_seed(1)
    h_size, cell = 4, PeepholeLSTM(3, 4, 1, dropout=0.0)
    layer = cell.layers[0]
    x = torch.randn(2, 5, 3)
    w_x, w_h = layer.weight_ih.chunk(4), layer.weight_hh.chunk(4)
    b = (layer.bias_ih + layer.bias_hh).chunk(4)
    h, c, outputs = torch.zeros(2, h_size), torch.zeros(2, h_size), []
    with torch.no_grad():
        for t in range(5):
            def pre(g, h=h, t=t):
                return x[:, t] @ w_x[g].T + h @ w_h[g].T + b[g]
            i = torch.sigmoid(pre(0) + layer.w_ci * c)
            f = torch.sigmoid(pre(1) + layer.w_cf * c)
            c = f * c + i * torch.tanh(pre(2))
            o = torch.sigmoid(pre(3) + layer.w_co * c)
            h = o * torch.tanh(c)
            outputs.append(h)
        torch.testing.assert_close(cell(x), torch.stack(outputs, 1), rtol=0, atol=1e-6)
    assert all(getattr(layer, n).abs().min() > 0 for n in ("w_ci", "w_cf", "w_co"))


@pytest.mark.parametrize("layers", [1, 2])
def test_peephole_lstm_forget_bias_and_info(layers):
    net = build("lstm", TOKENS, 10, forget_bias=2.0, layers=layers, peephole=True)
    assert isinstance(net.core, PeepholeLSTM) and len(net.core.layers) == layers
    assert net.info["peephole"] is True and "bidirectional" not in net.info
    w = net.info["width"]
    for layer in net.core.layers:
        assert torch.all(layer.bias_ih[w : 2 * w] == 2.0)
        assert torch.all(layer.bias_hh[w : 2 * w] == 0.0)
    # plain LSTM records hold only the width and the state growth every family declares
    assert set(build("lstm", TOKENS, 10).info) == {
        "width", "state_bytes_per_sample", "state_bytes_per_position"}


def test_peephole_dropout_between_layers_only_in_training():
    net = build("lstm", FEATURES, 6, layers=2, dropout=0.5, peephole=True)
    x = torch.rand(2, 6, FEATURES.input_size)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        net.train()
        torch.manual_seed(0)
        a = net(x)
        torch.manual_seed(1)
        assert not torch.equal(a, net(x))
    net.eval()


# ---------------------------------------------------------------- rotary positions (RoPE)


@pytest.mark.parametrize("head_dim", [8, 7])
def test_rope_scores_depend_only_on_relative_position(head_dim):
    torch.manual_seed(0)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    cos, sin = rope_angles(0, 64, head_dim, "cpu")
    rq = rotate(q.expand(64, head_dim), cos, sin)  # q at every position 0..63
    rk = rotate(k.expand(64, head_dim), cos, sin)
    scores = rq @ rk.T  # scores[m, n] = q_m . k_n
    for offset in (-9, -1, 0, 3, 20):
        diagonal = torch.diagonal(scores, offset=-offset)  # all (m, n) with m - n = offset
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), rtol=0, atol=1e-4)
    assert (scores[5, 0] - scores[5, 4]).abs() > 1e-3  # and they do depend on m - n
    # position 0 is the identity, a rotation keeps norms
    torch.testing.assert_close(rq[0], q)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(64))


def test_rope_model_with_odd_head_width_streams_and_is_causal():
    net = build("transformer", TOKENS, 10, positions="rope", heads=3)
    head_dim = net.info["width"] // 3
    assert head_dim % 2 == 1  # the last dim of each head is left unrotated
    x = torch.randint(0, TOKENS.input_size, (2, 10))
    changed = x.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % TOKENS.input_size
    with torch.no_grad():
        full, state, stepped = net(x), net.init_state(2), []
        for t in range(10):
            y, state = net.step(x[:, t], state)
            stepped.append(y)
        torch.testing.assert_close(torch.stack(stepped, 1), full, rtol=0, atol=1e-5)
        torch.testing.assert_close(net(changed)[:, :6], full[:, :6], rtol=0, atol=1e-6)


def test_rope_angles_follow_the_paper():
    cos, sin = rope_angles(3, 2, 6, "cpu")  # positions 3, 4; theta_i = 10000^(-2i/6)
    theta = torch.tensor([10000.0 ** (-2 * i / 6) for i in range(3)])
    angles = torch.tensor([[3.0], [4.0]]) * theta
    torch.testing.assert_close(cos, torch.cos(angles))
    torch.testing.assert_close(sin, torch.sin(angles))
    x = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 5.0])  # odd: the last dim stays
    c, s = rope_angles(1, 1, 7, "cpu")
    y = rotate(x[None], c, s)[0]
    t = [10000.0 ** (-2 * i / 7) for i in range(3)]
    expected = [math.cos(t[0]), math.sin(t[0]), -math.sin(t[1]), math.cos(t[1]),
                2 * math.cos(t[2]), 2 * math.sin(t[2]), 5.0]
    torch.testing.assert_close(y, torch.tensor(expected))


# ---------------------------------------------------------------- ALiBi


def test_alibi_slopes_of_the_paper():
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]  # 1/2, 1/4, ..., 1/256
    assert alibi_slopes(4) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]
    for n in (1, 2, 4, 8, 16):
        assert alibi_slopes(n) == [2.0 ** (-8 * i / n) for i in range(1, n + 1)]
    # not a power of two: the 4-head slopes, then every other one of the 8-head slopes
    assert alibi_slopes(6) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    assert alibi_slopes(3) == [2.0 ** -4, 2.0 ** -8, 2.0 ** -2]


def test_alibi_bias_matrix():
    inf = float("-inf")
    bias = alibi_bias(torch.tensor([0.5, 0.25]), 0, 4, 4, torch.float32)
    expected = torch.tensor([
        [[0.0, inf, inf, inf], [-0.5, 0.0, inf, inf], [-1.0, -0.5, 0.0, inf], [-1.5, -1.0, -0.5, 0.0]],
        [[0.0, inf, inf, inf], [-0.25, 0.0, inf, inf], [-0.5, -0.25, 0.0, inf],
         [-0.75, -0.5, -0.25, 0.0]],
    ])[None]
    assert torch.equal(bias, expected)
    # the streaming row of the query at position 3 is the last row
    assert torch.equal(alibi_bias(torch.tensor([0.5, 0.25]), 3, 1, 4, torch.float32),
                       expected[:, :, 3:])


def test_alibi_attention_is_softmax_of_biased_scores():
    net = build("transformer", TOKENS, 8, positions="alibi", heads=2)
    block, core, x = net.core.blocks[0], net.core, torch.randn(1, 8, net.info["width"])
    with torch.no_grad():
        bias = core.relative(0, 8, x)["bias"]
        q, k, v = block.split_heads(x)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        expected = block.merge_heads(torch.softmax(scores, dim=-1) @ v)
        torch.testing.assert_close(block.attention(x, bias=bias), expected, rtol=0, atol=1e-5)
    assert core.slopes.tolist() == alibi_slopes(2) and "slopes" not in core.state_dict()


def test_alibi_under_bf16_autocast():
    net = build("transformer", TOKENS, 8, positions="alibi")
    x = torch.randint(0, TOKENS.input_size, (2, 8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (2, 8, TOKENS.output_size) and torch.isfinite(out).all()


# ---------------------------------------------------------------- positions, all kinds


@pytest.mark.parametrize("positions", ["rope", "alibi"])
def test_relative_positions_add_nothing_to_the_input(positions):
    """No absolute positions: a string of one repeated token gives the same output everywhere
    (attention averages identical values), unlike sinusoidal positions."""
    net = build("transformer", TOKENS, 12, positions=positions)
    assert net.info["positions"] == positions and net.core.learned is None
    with torch.no_grad():
        out = net(torch.full((1, 12), 3))
        torch.testing.assert_close(out, out[:, :1].expand_as(out), rtol=0, atol=1e-5)
        sinusoidal = build("transformer", TOKENS, 12)(torch.full((1, 12), 3))
    assert (sinusoidal[0, 0] - sinusoidal[0, 5]).abs().max() > 1e-4


@pytest.mark.parametrize("positions", ["rope", "alibi", "sinusoidal"])
def test_positions_extrapolate_beyond_max_len(positions):
    net = build("transformer", TOKENS, 16, positions=positions)
    x = torch.randint(0, TOKENS.input_size, (2, 64))
    with torch.no_grad():
        full = net(x)
        state, stepped = net.init_state(2), []
        for t in range(64):
            y, state = net.step(x[:, t], state)
            stepped.append(y)
    assert full.shape == (2, 64, TOKENS.output_size) and torch.isfinite(full).all()
    torch.testing.assert_close(torch.stack(stepped, 1), full, rtol=0, atol=1e-5)


def test_learned_positions_refuse_beyond_max_len():
    net = build("transformer", TOKENS, 16, positions="learned")
    with torch.no_grad(), pytest.raises(ValueError, match=r"learned positions cover 16 steps"):
        net(torch.randint(0, TOKENS.input_size, (1, 64)))


@pytest.mark.parametrize("positions", ["rope", "alibi", "sinusoidal", "learned"])
def test_transformer_budget_for_every_position_kind(positions):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        net = build("transformer", TOKENS, 20, budget=20_000, positions=positions)
    assert abs(count_parameters(net) - 20_000) <= BUDGET_TOLERANCE * 20_000
    assert net.info["positions"] == positions
