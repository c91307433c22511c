"""The frontier families (S4D, Mamba, gated linear attention, Hyena) and their shared primitives:
each parallel form equals a plain sequential loop written from the paper's equations (float64),
the initialisations are the papers', the forward and its gradients stay finite at L = 4096, and
one block's parameter count matches a hand count. (The generic family tests in test_models.py,
test_streaming.py, test_gradflow.py and test_train.py also run on them.)"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqbench.models import FAMILIES, count_parameters, parse_hparams
from seqbench.models import mamba as mamba_module
from seqbench.models.base import SequenceModel
from seqbench.models.hyena import DECAY_TARGET, FAST_DECAY, SLOW_DECAY, HyenaBlock, HyenaHP
from seqbench.models.linear_attention import GLAHP, GatedLinearAttention, chunked
from seqbench.models.mamba import Mamba, MambaBlock, MambaHP
from seqbench.models.primitives import DIRECT_MAX_LEN, causal_conv, chunked_scan, scan
from seqbench.models.s4d import S4D
from seqbench.strict import ConfigError
from seqbench.tasks import TASKS

FRONTIER = ("s4d", "mamba", "linear_attention", "hyena")
FEATURES = TASKS["adding"].io
LENGTHS = [1, 2, 7, 16, 17, 50, 100]  # around the chunk (16) and the direct/FFT crossover (32)


def loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x_t = a_t * x_{t-1} + b_t, one step at a time."""
    x, out = torch.zeros(b.shape[:1] + b.shape[2:], dtype=b.dtype), []
    for t in range(b.shape[1]):
        x = a[:, t] * x + b[:, t]
        out.append(x)
    return torch.stack(out, 1) if out else b


# --- shared primitives ----------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 2, 3, 7, 64, 100, 257])
def test_time_varying_scan_equals_the_loop(length):
    torch.manual_seed(length)
    a = torch.rand(2, length, 3, 1, dtype=torch.float64)  # broadcast over the last dim, as GLA
    a[:, ::5] = 0.0  # a full reset now and then
    b = torch.randn(2, length, 3, 4, dtype=torch.float64)
    got = scan(a, b)
    assert got.shape == b.shape
    torch.testing.assert_close(got, loop(a.expand_as(b), b), rtol=0, atol=1e-12)
    phase = torch.polar(torch.rand(2, length, 3, 4, dtype=torch.float64),
                        torch.randn(2, length, 3, 4, dtype=torch.float64))  # complex, as an LRU
    torch.testing.assert_close(scan(phase, b.to(phase.dtype)), loop(phase, b.to(phase.dtype)),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 40, 300])
def test_reverse_chunked_scan_equals_the_backward_loop(length):
    """x_t = a_t x_{t+1} + b_t from x_L = 0, the adjoint's direction, time-varying and constant."""
    torch.manual_seed(length)
    b = torch.randn(2, length, 3, dtype=torch.float64)
    for a in (torch.rand(2, length, 3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)):
        varying = a.dim() == b.dim()
        expected = loop(a.flip(1) if varying else a.expand(2, length, 3), b.flip(1)).flip(1)
        torch.testing.assert_close(chunked_scan(a, b, reverse=True), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("length", [2, 5, 17, 33])  # 33: chunks of chunks
def test_scan_gradients_are_the_adjoints(length):
    """scan's hand-written backward against finite differences: real time-varying coefficients
    broadcast over a dimension (GLA), complex constant (LRU) and complex time-varying."""
    torch.manual_seed(length)

    def leaf(*shape, dtype=torch.float64, scale=1.0):
        return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_()

    complex_ = torch.complex128
    cases = [(torch.rand(1, length, 2, 1, dtype=torch.float64).requires_grad_(),
              leaf(1, length, 2, 2)),
             (leaf(2, dtype=complex_, scale=0.5), leaf(1, length, 2, dtype=complex_)),
             (leaf(1, length, 1, dtype=complex_, scale=0.5), leaf(1, length, 1, dtype=complex_))]
    for a, b in cases:
        assert torch.autograd.gradcheck(scan, (a, b))


def test_scan_is_stable_at_length_4096():
    """Coefficients in (0, 1], some of them tiny: float32 stays finite and close to float64."""
    torch.manual_seed(0)
    a = torch.exp(-torch.rand(1, 4096, 8, dtype=torch.float64) * torch.logspace(-4, 1, 8))
    b = torch.randn(1, 4096, 8, dtype=torch.float64)
    exact = scan(a, b)
    torch.testing.assert_close(exact, loop(a, b), rtol=0, atol=1e-9)
    single = scan(a.float(), b.float())
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single.double(), exact, rtol=0, atol=1e-3 * exact.abs().max().item())


@pytest.mark.parametrize("length", [1, 5, DIRECT_MAX_LEN, DIRECT_MAX_LEN + 1, 100])
def test_causal_conv_equals_the_sum(length):
    """Both paths (Toeplitz up to DIRECT_MAX_LEN, FFT above) equal sum_{s <= t} k_{t-s} u_s."""
    torch.manual_seed(length)
    u = torch.randn(2, length, 3, dtype=torch.float64)
    k = torch.randn(length + 4, 3, dtype=torch.float64)  # taps past L are never used
    expected = torch.stack(
        [sum(k[t - s] * u[:, s] for s in range(t + 1)) for t in range(length)], dim=1)
    torch.testing.assert_close(causal_conv(u, k), expected, rtol=0, atol=1e-10)


def test_causal_conv_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    for length in (20, 60):
        u, k = torch.randn(2, length, 3).bfloat16(), torch.randn(length, 3).bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = causal_conv(u, k)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, causal_conv(u.float(), k.float()).bfloat16())


def test_fft_path_touches_later_inputs_only_by_round_off():
    """Above DIRECT_MAX_LEN the FFT mixes every input into every output, but later inputs move an
    earlier output only at float32 round-off, 1e-6 of the output scale at most."""
    torch.manual_seed(0)
    u, k = torch.randn(2, 100, 3), torch.randn(100, 3)
    v = u.clone()
    v[:, 60:] += 10.0
    a, b = causal_conv(u, k), causal_conv(v, k)
    assert (a[:, :60] - b[:, :60]).abs().max() < 1e-6 * a.abs().max()
    assert (a[:, 60:] - b[:, 60:]).abs().max() > 1.0


# --- S4D ---------------------------------------------------------------------------------------

def s4d_layer(width: int = 3, modes: int = 4) -> S4D:
    torch.manual_seed(0)
    return S4D(width, modes, 1e-3, 1e-1).double()


def test_s4d_initialisation_is_s4d_lin():
    layer = s4d_layer(width=64, modes=8)
    a = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag)
    expected = torch.complex(torch.full((8,), -0.5, dtype=torch.float64),
                             math.pi * torch.arange(8, dtype=torch.float64))
    # drawn in float32, as the model is built
    torch.testing.assert_close(a, expected.expand(64, 8), rtol=1e-6, atol=0)
    dt = torch.exp(layer.log_dt)
    assert ((1e-3 <= dt) & (dt <= 1e-1)).all()
    assert dt.min() < 2e-3 and dt.max() > 5e-2  # spread over the log-uniform range


def test_s4d_kernel_is_c_abar_power_bbar():
    """K_l = 2 Re(sum_m C_m A_bar_m^l B_bar_m), A_bar = exp(dt A), B_bar = (A_bar - 1) / A, with
    the powers taken by repeated multiplication."""
    layer, length = s4d_layer(), 40
    with torch.no_grad():
        dt = torch.exp(layer.log_dt)[:, None]
        a = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag)
        a_bar = torch.exp(dt * a)
        b_bar = (a_bar - 1) / a
        c = torch.view_as_complex(layer.C)
        power, expected = torch.ones_like(a_bar), []
        for _ in range(length):
            expected.append(2 * (c * power * b_bar).sum(-1).real)
            power = power * a_bar
        torch.testing.assert_close(layer.kernel(length), torch.stack(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("length", LENGTHS)
def test_s4d_convolution_equals_the_recurrence(length):
    layer = s4d_layer()
    u = torch.randn(2, length, 3, dtype=torch.float64)
    x = torch.zeros(2, 3, 4, dtype=torch.complex128)
    outputs = []
    with torch.no_grad():
        for t in range(length):
            y, x = layer.step(u[:, t], x)
            outputs.append(y)
        torch.testing.assert_close(layer(u), torch.stack(outputs, 1), rtol=0, atol=1e-10)


# --- Mamba -------------------------------------------------------------------------------------

def mamba_layer(width: int = 4, **hp) -> Mamba:
    torch.manual_seed(0)
    return Mamba(width, MambaHP(**hp)).double()


def reference_mamba(layer: Mamba, u: torch.Tensor) -> torch.Tensor:
    """The layer written out from the reference's equations, one step at a time."""
    inner, n = layer.A_log.shape
    k = layer.conv.conv.kernel_size[0]
    x, z = (u @ layer.in_proj.weight.T).chunk(2, dim=-1)
    padded = F.pad(x, (0, 0, k - 1, 0))
    w = layer.conv.conv.weight[:, 0]  # (E, k)
    h, outputs = torch.zeros(u.shape[0], inner, n, dtype=u.dtype), []
    for t in range(u.shape[1]):
        xc = F.silu((padded[:, t : t + k] * w.T).sum(1) + layer.conv.conv.bias)
        dt_low, b, c = (xc @ layer.x_proj.weight.T).split([layer.dt_proj.in_features, n, n], -1)
        dt = F.softplus(dt_low @ layer.dt_proj.weight.T + layer.dt_proj.bias)
        a = -torch.exp(layer.A_log)
        h = torch.exp(dt[..., None] * a) * h + dt[..., None] * b[:, None, :] * xc[..., None]
        y = (h * c[:, None, :]).sum(-1) + layer.D * xc
        outputs.append((y * F.silu(z[:, t])) @ layer.out_proj.weight.T)
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("length", LENGTHS)
def test_mamba_scan_equals_the_sequential_reference(length):
    layer = mamba_layer()
    u = torch.randn(2, length, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(u), reference_mamba(layer, u), rtol=0, atol=1e-10)


@pytest.mark.parametrize("length", [1, 5, 33])
def test_selective_scan_gradients(length):
    """SelectiveScan's hand-written backward (the adjoint scan) against finite differences."""
    torch.manual_seed(length)
    dt = torch.rand(1, length, 2, dtype=torch.float64, requires_grad=True)
    a = (-2 * torch.rand(2, 3, dtype=torch.float64)).requires_grad_()
    u, b, c = (torch.randn(1, length, n, dtype=torch.float64, requires_grad=True)
               for n in (2, 3, 3))
    assert torch.autograd.gradcheck(mamba_module.SelectiveScan.apply, (dt, a, u, b, c))


def test_mamba_channel_groups_change_nothing(monkeypatch):
    """The scan runs on groups of inner channels (BLOCK_ELEMENTS); any grouping gives the same
    outputs and gradients, the channels being independent."""
    layer = mamba_layer(width=8)  # E = 16
    u = torch.randn(2, 20, 8, dtype=torch.float64)
    results = []
    for block in (2 * 20 * 16 * 16, 2 * 20 * 16 * 5, 1):  # one group, groups of 5, one channel
        monkeypatch.setattr(mamba_module, "BLOCK_ELEMENTS", block)
        layer.zero_grad()
        y = layer(u)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in layer.parameters()]))
    for y, grads in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=0, atol=1e-12)
        for g, g0 in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(g, g0, rtol=0, atol=1e-12)


def test_mamba_initialisation_is_the_references():
    width, layers = 32, 3
    layer = mamba_layer(width, layers=layers)
    inner, n = 2 * width, 16
    assert layer.dt_proj.in_features == math.ceil(width / 16) == 2
    torch.testing.assert_close(-torch.exp(layer.A_log),
                               -torch.arange(1, n + 1, dtype=torch.float64).expand(inner, n))
    assert torch.equal(layer.D, torch.ones(inner, dtype=torch.float64))
    dt = F.softplus(layer.dt_proj.bias)
    assert ((1e-3 - 1e-9 <= dt) & (dt <= 1e-1 + 1e-9)).all()
    assert dt.min() < 2e-3 and dt.max() > 5e-2
    assert layer.dt_proj.weight.abs().max() <= 2**-0.5
    # out_proj: torch's default bound 1/sqrt(E), scaled by 1/sqrt(layers)
    assert layer.out_proj.weight.abs().max() <= 1 / math.sqrt(inner) / math.sqrt(layers)
    assert layer.in_proj.bias is None and layer.out_proj.bias is None and layer.x_proj.bias is None


def test_mamba_block_parameter_count_by_hand():
    d, e, n, r, k = 24, 48, 16, 2, 4
    block = MambaBlock(d, MambaHP())
    hand = (d  # RMSNorm weight
            + d * 2 * e  # in_proj, no bias
            + e * k + e  # depthwise conv and its bias
            + e * (r + 2 * n)  # x_proj: dt (low rank), B, C
            + r * e + e  # dt_proj and its bias
            + e * n + e  # A_log, D
            + e * d)  # out_proj, no bias
    assert count_parameters(block) == hand


# --- gated linear attention --------------------------------------------------------------------

def gla_loop(q, k, v, log_alpha):
    """S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t, per head, one step at a time."""
    state = torch.zeros(*q.shape[:1], q.shape[2], q.shape[3], v.shape[3], dtype=q.dtype)
    outputs = []
    for t in range(q.shape[1]):
        state = (torch.exp(log_alpha[:, t])[..., None] * state
                 + k[:, t, ..., None] * v[:, t, :, None])
        outputs.append((q[:, t, ..., None] * state).sum(-2))
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("chunk", [1, 4, 16])
@pytest.mark.parametrize("length", LENGTHS)
def test_gla_chunked_form_equals_the_recurrence(length, chunk):
    torch.manual_seed(length)
    q, k = torch.randn(2, 2, length, 3, 4, dtype=torch.float64)
    v = torch.randn(2, length, 3, 5, dtype=torch.float64)
    log_alpha = -torch.rand(2, length, 3, 4, dtype=torch.float64) * 3
    log_alpha[:, ::3, 0] = -60.0  # near-resets: exp(-60) ~ 1e-26, no overflow in the chunked form
    got = chunked(q, k, v, log_alpha, chunk)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, gla_loop(q, k, v, log_alpha), rtol=0, atol=1e-10)


def test_gla_layer_forward_equals_stepping():
    torch.manual_seed(0)
    layer = GatedLinearAttention(16, GLAHP()).double()
    assert (layer.heads, layer.d_k, layer.d_v) == (4, 2, 4)
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    state, outputs = torch.zeros(2, 4, 2, 4, dtype=torch.float64), []
    with torch.no_grad():
        for t in range(40):
            y, state = layer.step(x[:, t], state)
            outputs.append(y)
        torch.testing.assert_close(layer(x), torch.stack(outputs, 1), rtol=0, atol=1e-10)
        # the gate is sigmoid(.)^(1/16): alpha in (0, 1), near 1 at init
        log_alpha = layer.project(x)[3]
        assert (log_alpha < 0).all() and (log_alpha > -1.0).all()


# --- Hyena -------------------------------------------------------------------------------------

def hyena_block(width: int = 4, max_len: int = 64, **hp) -> HyenaBlock:
    torch.manual_seed(0)
    return HyenaBlock(width, HyenaHP(**hp), max_len).double()


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("length", [1, 7, 50])
def test_hyena_operator_equals_the_direct_sums(order, length):
    """y = x^1 (h * (x^2 v) + beta x^2 v) (order 2; higher orders nest), the long convolutions as
    explicit sums over the taps."""
    block = hyena_block(order=order)
    op = block.mixer
    u = torch.randn(2, length, 4, dtype=torch.float64)
    with torch.no_grad():
        z = op.short(op.in_proj(u))
        *gates, v = z.split(4, dim=-1)
        taps = op.filter(length).split(4, dim=-1)
        for i, gate in enumerate(reversed(gates[1:])):
            v = gate * v
            v = torch.stack([sum(taps[i][t - s] * v[:, s] for s in range(t + 1))
                             for t in range(length)], 1) + op.beta[i] * v
        torch.testing.assert_close(op(u), op.out_proj(gates[0] * v), rtol=0, atol=1e-10)


def test_hyena_filter_is_a_windowed_function_of_the_position():
    block = hyena_block(width=6, max_len=50)
    filt = block.mixer.filter
    with torch.no_grad():
        taps = filt(80)  # past max_len: the same function, extrapolated
        torch.testing.assert_close(filt(20), taps[:20], rtol=0, atol=0)
        z, t = filt.features(torch.arange(50, dtype=torch.float64))
        w = 2 * math.pi * torch.arange(50, dtype=torch.float64) / 50
        torch.testing.assert_close(z, torch.stack([w / (2 * math.pi) * 50 / 49,
                                                   torch.cos(1e-4 * w), -torch.sin(1e-4 * w)], 1))
        delta = filt.delta
        assert delta.shape == (6,)
        assert delta.min() == pytest.approx(-math.log(DECAY_TARGET) / SLOW_DECAY)
        assert delta.max() == pytest.approx(-math.log(DECAY_TARGET) / FAST_DECAY)
        # the window at the last built position, t = 1: between 1e-2^(1/0.3) and 1e-2^(1/1.5)
        window = torch.exp(-t[-1] * delta)
        assert window.max() == pytest.approx(DECAY_TARGET ** (1 / SLOW_DECAY))
    assert count_parameters(filt) == (3 * 16 + 16) + 2 * (16 * 16 + 16) + 16 * 6 + 16


def test_hyena_block_parameter_count_by_hand():
    d, o = 10, 16
    block = hyena_block(width=d)
    hand = (2 * d  # LayerNorm
            + d * 3 * d + 3 * d  # in_proj
            + 3 * d * 3 + 3 * d  # short depthwise conv (3 taps) and bias
            + (3 * o + o) + 2 * (o * o + o) + o * d + o  # filter FFN, shared Sin frequency
            + d  # beta
            + d * d + d  # out_proj
            + 2 * d  # LayerNorm
            + d * 4 * d + 4 * d + 4 * d * d + d)  # MLP
    assert count_parameters(block) == hand


# --- every frontier family ---------------------------------------------------------------------

def tiny(model: str, max_len: int) -> SequenceModel:
    """A small model of the family (width 4; 8 for GLA's four heads), float32."""
    torch.manual_seed(0)
    family = FAMILIES[model]
    width = 8 if model == "linear_attention" else 4
    return SequenceModel(FEATURES, family.build(FEATURES, width, parse_hparams(model, {}), max_len))


@pytest.mark.parametrize("model", FRONTIER)
def test_stable_at_length_4096(model):
    """Forward finite and gradients finite and nonzero at L = 4096 in float32, batch 1."""
    net = tiny(model, 4096)
    x = torch.rand(1, 4096, FEATURES.input_size)
    out = net(x)
    assert torch.isfinite(out).all()
    out[:, -1].square().sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("model", FRONTIER)
def test_bf16_autocast_runs_the_recurrence_in_float32(model):
    net = tiny(model, 64)
    x = torch.rand(2, 64, FEATURES.input_size)
    with torch.no_grad():
        ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize(
    ("model", "hp", "message"),
    [
        ("s4d", {"d_state": 7}, r"hparams\.d_state: must be an even number >= 2"),
        ("s4d", {"dt_min": 0.5}, r"hparams\.dt_min: must be in \(0, dt_max = 0\.1\]"),
        ("mamba", {"expand": 0}, r"hparams\.expand: must be >= 1"),
        ("mamba", {"dt_min": 1e-5}, r"hparams\.dt_min: must be in \[0\.0001, dt_max"),
        ("mamba", {"dt_rank": -1}, r"hparams\.dt_rank: must be >= 1, or 0 for ceil"),
        ("linear_attention", {"heads": 0}, r"hparams\.heads: must be >= 1"),
        ("linear_attention", {"gate_temperature": 0}, r"hparams\.gate_temperature: must be > 0"),
        ("hyena", {"order": 1}, r"hparams\.order: must be >= 2"),
        ("hyena", {"emb_dim": 4}, r"hparams\.emb_dim: must be odd and >= 3"),
        ("hyena", {"layers": 0}, r"hparams\.layers: must be >= 1"),
    ],
)
def test_invalid_hparams_name_the_field(model, hp, message):
    with pytest.raises(ConfigError, match=message):
        parse_hparams(model, hp)
