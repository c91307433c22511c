"""The Linear Recurrent Unit family: the parallel scan equals the recurrence, the eigenvalue
parametrisation and its initialisation, the gamma normalisation, streaming, gradient reach, and
that it learns. (The generic family tests in test_models.py and test_streaming.py also run on it.)"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_cell, sample

from seqbench import testing
from seqbench.cell.gradflow import step_gradient_norms
from seqbench.cell.train import run_cell
from seqbench.models import parse_hparams, state_bytes
from seqbench.models.base import SequenceModel
from seqbench.models.lru import LRU, LRUHP, scan
from seqbench.strict import ConfigError
from seqbench.tasks import IOSpec, get_task
from seqbench.testing import FEATURES, TOKENS, random_inputs

LENGTHS = [1, 2, 7, 100, 257]  # 1, a non-power of two on either side of 256, ...


def build(io: IOSpec = TOKENS, budget: int = 2000, max_len: int = 20, **hp) -> SequenceModel:
    return testing.build("lru", io, max_len, budget, hp)


def reference_lru(lru: LRU, u: torch.Tensor) -> torch.Tensor:
    """The paper's Appendix A forward, written out as a loop over time: (B, L, H) -> (B, L, H)."""
    lam = torch.exp(torch.complex(-torch.exp(lru.nu_log), torch.exp(lru.theta_log)))
    b_norm = torch.complex(lru.B_re, lru.B_im) * torch.exp(lru.gamma_log)[:, None]
    c = torch.complex(lru.C_re, lru.C_im)
    x = torch.zeros(u.shape[0], lru.nu_log.shape[0], dtype=lam.dtype)
    ys = []
    for t in range(u.shape[1]):
        x = lam * x + u[:, t].to(lam.dtype) @ b_norm.T
        ys.append((x @ c.T).real + lru.D * u[:, t])
    return torch.stack(ys, 1)


# --- the parallel scan ---------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, *LENGTHS])
def test_scan_equals_the_recurrence(length):
    torch.manual_seed(length)
    n = 16
    modulus = torch.cat([torch.rand(n - 2), torch.tensor([0.0, 0.999])])  # incl. 0 and near 1
    lam = torch.polar(modulus, 2 * math.pi * torch.rand(n)).to(torch.complex128)
    b = torch.randn(3, length, n, dtype=torch.complex128)
    x, expected = torch.zeros(3, n, dtype=torch.complex128), []
    for t in range(length):
        x = lam * x + b[:, t]
        expected.append(x)
    got = scan(lam, b)
    assert got.shape == b.shape
    if length:
        torch.testing.assert_close(got, torch.stack(expected, 1), rtol=0, atol=1e-12)
    # complex64, as the model runs it: to float32 precision (|x| reaches ~20 here at |lam| = 0.999)
    torch.testing.assert_close(scan(lam.to(torch.complex64), b.to(torch.complex64)),
                               got.to(torch.complex64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(("r_min", "r_max"), [(0.0, 0.99), (0.9, 0.999)])
def test_lru_layer_equals_the_papers_sequential_forward(length, r_min, r_max):
    torch.manual_seed(1)
    lru = LRU(width=12, state=20, r_min=r_min, r_max=r_max, max_phase=2 * math.pi)
    u = torch.randn(4, length, 12)
    with torch.no_grad():
        torch.testing.assert_close(lru(u), reference_lru(lru, u), rtol=0, atol=1e-5)


@pytest.mark.parametrize("length", LENGTHS)
def test_deep_model_forward_equals_stepping(length):
    net = build(FEATURES, max_len=length, layers=3, state_mult=2.0, r_min=0.9, r_max=0.999,
                dropout=0.1)
    x = random_inputs(FEATURES, 3, length)
    with torch.no_grad():
        full = net(x)
        state, outputs = net.init_state(3), []
        for t in range(length):
            y, state = net.step(x[:, t], state)
            outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs, 1), full, rtol=0, atol=1e-5)


def test_causal_at_length_100():
    net, length, t = build(TOKENS, max_len=100), 100, 49
    x = random_inputs(TOKENS, 4, length)
    y = x.clone()
    y[:, t + 1:] = (y[:, t + 1:] + 1) % TOKENS.input_size
    with torch.no_grad():
        before, after = net(x), net(y)
    assert torch.equal(before[:, : t + 1], after[:, : t + 1])
    assert (before[:, t + 1:] - after[:, t + 1:]).abs().amax() > 1e-4


# --- parametrisation and initialisation ----------------------------------------------------------

@pytest.mark.parametrize(("r_min", "r_max", "max_phase"),
                         [(0.0, 0.99, 2 * math.pi), (0.9, 0.999, math.pi / 10), (0.5, 0.5, 1.0)])
def test_eigenvalues_start_on_the_ring(r_min, r_max, max_phase):
    torch.manual_seed(0)
    lru = LRU(width=8, state=2000, r_min=r_min, r_max=r_max, max_phase=max_phase)
    with torch.no_grad():
        lam = lru.eigenvalues()
    modulus = lam.abs().double()
    assert modulus.min() >= r_min - 1e-6 and modulus.max() <= r_max + 1e-6
    # |Lambda|^2 uniform on [r_min^2, r_max^2]: its mean is the interval's midpoint
    assert (modulus**2).mean().item() == pytest.approx((r_min**2 + r_max**2) / 2, abs=0.02)
    phase = torch.exp(lru.theta_log.detach()).double()
    assert phase.min() >= 0 and phase.max() <= max_phase * (1 + 1e-6)
    assert phase.mean().item() == pytest.approx(max_phase / 2, rel=0.05)


def test_eigenvalues_stay_inside_the_unit_disc():
    """The exponential parametrisation: |Lambda| = exp(-exp(nu_log)) < 1 for any nu_log, also
    after optimisation pushes hard towards 1."""
    torch.manual_seed(0)
    lru = LRU(width=4, state=1000, r_min=0.0, r_max=0.99, max_phase=math.pi)
    with torch.no_grad():
        lru.nu_log.uniform_(-15.0, 5.0)
        assert (lru.eigenvalues().abs() < 1).all()
    lru = LRU(width=4, state=64, r_min=0.9, r_max=0.999, max_phase=math.pi)
    opt = torch.optim.SGD(lru.parameters(), lr=10.0)
    for _ in range(20):  # maximise |Lambda| with a huge learning rate
        opt.zero_grad()
        (-lru.eigenvalues().abs().sum()).backward()
        opt.step()
        with torch.no_grad():
            assert (lru.eigenvalues().abs() < 1).all()


def test_gamma_normalises_the_state():
    """gamma = sqrt(1 - |Lambda|^2) at init, so white-noise drive gives a unit-scale state for any
    |Lambda| (without it, |Lambda| = 0.99 would give ~50x the variance)."""
    torch.manual_seed(0)
    for r in (0.5, 0.99):
        lru = LRU(width=4, state=32, r_min=r, r_max=r, max_phase=2 * math.pi)
        with torch.no_grad():
            lam, gamma = lru.eigenvalues(), torch.exp(lru.gamma_log)
            torch.testing.assert_close(gamma, torch.sqrt(1 - lam.abs() ** 2), rtol=1e-5, atol=0)
            noise = torch.randn(8, 2000, 32, dtype=torch.complex64)  # E|noise|^2 = 1
            x = scan(lam, gamma * noise)
        assert (x[:, 1000:].abs() ** 2).mean().item() == pytest.approx(1.0, abs=0.1), r
    assert lru.gamma_log.requires_grad  # trained, as in the paper


# --- the model -----------------------------------------------------------------------------------

def test_info_and_state_size():
    net = build(TOKENS, budget=20_000, layers=3, state_mult=1.5, r_min=0.5)
    width = net.info["width"]
    n = round(1.5 * width)
    assert net.info == {"width": width, "state_size": n, "layers": 3,
                        "r_min": 0.5, "r_max": 0.99, "max_phase": 2 * math.pi,
                        "state_bytes_per_sample": 3 * n * 8, "state_bytes_per_position": 0}
    assert len(net.core.blocks) == 3
    assert all(b.lru.B_re.shape == (round(1.5 * width), width) for b in net.core.blocks)


@pytest.mark.parametrize("max_len", [10, 1000])
def test_state_bytes_are_constant_in_the_position(max_len):
    batch, net = 2, build(TOKENS, max_len=max_len, layers=3)
    n = net.info["state_size"]
    expected = 3 * batch * n * 8  # per layer a complex64 (B, N)
    state, x = net.init_state(batch), random_inputs(TOKENS, batch, 12)
    sizes = {state_bytes(state)}
    with torch.no_grad():
        for t in range(12):
            _, state = net.step(x[:, t], state)
            sizes.add(state_bytes(state))
    assert sizes == {expected}
    assert all(h.dtype == torch.complex64 and h.shape == (batch, n) for h in state)


def test_float64_model_streams_in_complex128():
    net = build(FEATURES).double()
    x = random_inputs(FEATURES, 2, 30).double()
    state = net.init_state(2)
    assert all(h.dtype == torch.complex128 for h in state)
    with torch.no_grad():
        full, outputs = net(x), []
        for t in range(30):
            y, state = net.step(x[:, t], state)
            outputs.append(y)
    assert full.dtype == torch.float64
    torch.testing.assert_close(torch.stack(outputs, 1), full, rtol=0, atol=1e-12)


def test_bf16_autocast_keeps_the_recurrence_in_float32():
    net = build(FEATURES, budget=20_000).train()
    x = random_inputs(FEATURES, 4, 33)
    with torch.no_grad():
        ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        lru = net.core.blocks[0].lru
        assert lru.drive(torch.randn(2, lru.D.shape[0])).dtype == torch.complex64
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_gradient_reaches_the_first_input():
    """Untrained, the loss at the last of 100 steps still sees the first input: measured ~1e-3 of
    the gradient at the scored step itself (which the D skip and the residual dominate), decaying
    only ~10x from distance 10 to 99; a tanh RNN or GRU there is at ~1e-17."""
    parity = get_task("parity")
    batch = sample(parity, 100, 8)
    for hp, floor in [({}, 1e-4), ({"r_min": 0.9, "r_max": 0.999}, 1e-3)]:
        net = build(parity.io, budget=20_000, max_len=100, **hp)
        norms, pos = step_gradient_norms(net, parity, batch)
        assert pos == 99
        assert norms[0] > floor * norms[pos], hp
        assert norms[0] > 1e-2 * norms[pos - 10], hp


EASY = {"steps": 200, "batch_size": 32, "lr": 1e-2, "eval_every": 10, "eval_samples": 128}


def test_learns_parity_of_two_bits():
    """As test_train.py checks every family (solved in 10-20 steps across seeds when written)."""
    record = run_cell(make_cell("parity", "lru", 2, **EASY))
    assert record.status == "solved", record.history
    assert record.steps < EASY["steps"]
    assert record.model_info["state_size"] == record.model_info["width"]


def test_learns_adding_of_length_two():
    """Regression through the real-valued encoder (solved in ~70 of 400 steps when written)."""
    record = run_cell(make_cell("adding", "lru", 2, **EASY | {"steps": 400}))
    assert record.status == "solved", record.history
    assert record.test_loss < record.baseline_loss / 10


# --- hyper-parameters ----------------------------------------------------------------------------

def test_defaults():
    hp = parse_hparams("lru", {})
    assert hp == LRUHP(layers=2, state_mult=1.0, r_min=0.0, r_max=0.99, max_phase=2 * math.pi,
                       dropout=0.0)
    assert parse_hparams("lru", {"r_min": 0, "r_max": 0.999}).r_max == 0.999


@pytest.mark.parametrize(
    ("hp", "message"),
    [
        ({"layers": 0}, r"^hparams\.layers: must be >= 1, got 0$"),
        ({"layers": 1.5}, r"^hparams\.layers: expected int"),
        ({"state_mult": 0}, r"^hparams\.state_mult: must be > 0"),
        ({"r_min": -0.1}, r"^hparams\.r_min: must be in \[0, r_max = 0\.99\], got -0\.1$"),
        ({"r_min": 0.995}, r"^hparams\.r_min: must be in \[0, r_max = 0\.99\]"),
        ({"r_max": 1.0}, r"^hparams\.r_max: must be in \[0, 1\), got 1\.0$"),
        ({"r_max": float("nan")}, r"^hparams\.r_m(in|ax): must be in"),
        ({"max_phase": 0}, r"^hparams\.max_phase: must be in \(0, 2 pi\]"),
        ({"max_phase": 7.0}, r"^hparams\.max_phase: must be in \(0, 2 pi\]"),
        ({"dropout": 1.0}, r"^hparams\.dropout: must be in \[0, 1\)"),
        ({"r_max": "high"}, r"^hparams\.r_max: expected float, got str 'high'$"),
        ({"state": 64}, (r"^hparams\.state: unknown key; allowed: dropout, layers, max_phase, "
                         r"r_max, r_min, state_mult$")),
    ],
)
def test_invalid_hparams_name_the_field(hp, message):
    with pytest.raises(ConfigError, match=message):
        parse_hparams("lru", hp)
