"""The contract every model family meets, as checks a plug-in author runs on their own family.

The suite's own tests (tests/test_models.py, tests/test_streaming.py) run these same checks on
every built-in family; a plug-in's tests call check_family(MY_FAMILY, ...) before registering it
(a Family object works here unregistered). Each check raises AssertionError saying what failed.

* output shapes: (B, L, output_size) float32 and finite for the input and output of every task
  the family applies to (Family.accepts: an encoder-decoder only where the task declares an answer
  phase; every check below then runs on the token tasks' layout, ios_for);
* causality: changing inputs after step t leaves outputs up to t unchanged (to 1e-6) and changes
  a later one; and the last output depends on the first input;
* parameter budget: the width search lands on the closest count, within BUDGET_TOLERANCE
  (a BudgetWarning exactly when it misses);
* streaming: init_state/step reproduce forward to 1e-5, step never modifies the state it is
  given, and the state holds the bytes the family promises at every position (state_size);
* strict hyper-parameters: unknown keys and wrongly typed values raise ConfigError naming them.

And the contract of a task (check_task, run on every built-in by tests/test_tasks.py): batches of
the declared shapes, dtypes and ranges; the same generator seed gives the same batch; outputs
that predict every target score 1 with a near-zero loss; a constant guess scores task.chance
(Monte-Carlo, within 5 standard errors); lengths below min_length are refused naming the field.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from seqbench.models import (
    BUDGET_TOLERANCE,
    BudgetWarning,
    Family,
    build_model,
    count_parameters,
    get_family,
    parse_hparams,
)
from seqbench.models.base import SequenceModel, state_bytes
from seqbench.strict import ConfigError
from seqbench.tasks import TASKS, Batch, IOSpec, Task

TOKENS = TASKS["copy"].io  # 10 tokens in, 10 classes out
FEATURES = TASKS["adding"].io  # 2 real features in, 1 value out
IOS = {"tokens": TOKENS, "features": FEATURES}
# expected state bytes of a model after t streamed steps of a batch: state_size(model, batch, t)
StateSize = Callable[[SequenceModel, int, int], int]


def ios_for(family: Family | str) -> list[IOSpec]:
    """Of TOKENS and FEATURES, those the family applies to (Family.accepts; FEATURES, adding's io,
    declares no answer phase, so an encoder-decoder runs on TOKENS, copy's, alone)."""
    return [io for io in IOS.values() if get_family(family).accepts(io)]


def build(family: Family | str, io: IOSpec, max_len: int, budget: int = 2000,
          hp: Mapping[str, Any] | None = None, seed: int = 0) -> SequenceModel:
    """The eval-mode model of a family at a budget (BudgetWarning silenced: check_budget
    checks budgets)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        return build_model(family, io, budget, parse_hparams(family, dict(hp or {})),
                           max_len).eval()


def random_inputs(io: IOSpec, batch: int, length: int) -> torch.Tensor:
    if io.input_kind == "tokens":
        return torch.randint(0, io.input_size, (batch, length))
    return torch.rand(batch, length, io.input_size)


def perturb_after(io: IOSpec, x: torch.Tensor, t: int) -> torch.Tensor:
    """x with every input at positions > t changed (tokens shifted, features re-drawn)."""
    y = x.clone()
    if io.input_kind == "tokens":
        y[:, t + 1:] = (y[:, t + 1:] + 1) % io.input_size
    else:
        y[:, t + 1:] = torch.rand_like(y[:, t + 1:]) + 1.0
    return y


def stream(model: SequenceModel, x: torch.Tensor, state=None):
    """Outputs (B, L, output_size) of stepping x one position at a time, and the final state."""
    state = model.init_state(x.shape[0]) if state is None else state
    outputs = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, 1), state


def _leaves(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return _leaves(list(state.values()))
    if isinstance(state, (tuple, list)):
        return [leaf for s in state for leaf in _leaves(s)]
    return []


# Checks on a built model ------------------------------------------------------------------------


def check_output_shape(model: SequenceModel, io: IOSpec, length: int = 12) -> None:
    out = model(random_inputs(io, 3, length))
    assert out.shape == (3, length, io.output_size), f"output shape {tuple(out.shape)}"
    assert out.dtype == torch.float32 and torch.isfinite(out).all(), "outputs not finite float32"


def check_causal(model: SequenceModel, io: IOSpec, length: int = 16, t: int = 6) -> None:
    """Outputs up to t ignore inputs after t (to 1e-6); some later output does not."""
    x = random_inputs(io, 4, length)
    with torch.no_grad():
        before, after = model(x), model(perturb_after(io, x, t))
    torch.testing.assert_close(after[:, :t + 1], before[:, :t + 1], rtol=0, atol=1e-6,
                               msg=lambda m: f"an output at or before step {t} saw a later "
                                             f"input: {m}")
    assert (after[:, t + 1:] - before[:, t + 1:]).abs().max() > 1e-5, \
        "no output after the change saw it"


def check_sees_first_input(model: SequenceModel, io: IOSpec, length: int = 10) -> None:
    """The last output depends on the first input."""
    x = random_inputs(io, 8, length)
    y = perturb_after(io, x.flip(1), length - 2).flip(1)  # only step 0 changed
    with torch.no_grad():
        assert (model(y)[:, -1] - model(x)[:, -1]).abs().max() > 1e-6, \
            f"the last output does not depend on the first input ({length} steps)"


def check_streaming(model: SequenceModel, io: IOSpec, length: int) -> None:
    """Stepping one position at a time gives forward's outputs (float32, to 1e-5)."""
    x = random_inputs(io, 3, length)
    with torch.no_grad():
        stepped, _ = stream(model, x)
        full = model(x)
    assert stepped.dtype == full.dtype == torch.float32
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)


def check_step_functional(model: SequenceModel, io: IOSpec) -> None:
    """Stepping never modifies the state it is given, nor a state it returned earlier."""
    x = random_inputs(io, 2, 6)
    with torch.no_grad():
        _, state = stream(model, x[:, :5])
        before = copy.deepcopy(state)
        y1, s1 = model.step(x[:, 5], state)
        kept = copy.deepcopy(s1)
        model.step(perturb_after(io, x, 4)[:, 5], state)
        y2, s2 = model.step(x[:, 5], state)
    assert torch.equal(y1, y2), "the same step from the same state gave another output"
    for a, b, c, d, e in zip(_leaves(state), _leaves(before), _leaves(s1), _leaves(kept),
                             _leaves(s2), strict=True):
        assert torch.equal(a, b), "step modified the state it was given"
        assert torch.equal(c, d) and torch.equal(c, e), "step modified a state it returned"


def declared_state_size(model: SequenceModel, batch: int, t: int) -> int:
    """The state bytes a family declares (Core.info) after t steps of a batch (growing over the
    first state_growth_steps steps only, where the family declares them)."""
    info = model.info
    missing = {"state_bytes_per_sample", "state_bytes_per_position"} - set(info)
    assert not missing, (f"the family must declare {', '.join(sorted(missing))} in its Core.info "
                         "(how its streaming state grows; see seqbench.models)")
    grown = min(t, info.get("state_growth_steps", t))
    return batch * (info["state_bytes_per_sample"] + grown * info["state_bytes_per_position"])


def check_state_size(model: SequenceModel, io: IOSpec,
                     state_size: StateSize = declared_state_size, steps: int = 10,
                     batch: int = 2) -> None:
    """The streaming state holds exactly state_size(model, batch, t) bytes after t steps, for
    t = 0..steps (seqbench.models.state_bytes); by default what the family declares in its info
    (state_bytes_per_sample, state_bytes_per_position: seqbench.models)."""
    x, state = random_inputs(io, batch, steps), model.init_state(batch)
    sizes = {0: state_bytes(state)}
    with torch.no_grad():
        for t in range(steps):
            _, state = model.step(x[:, t], state)
            sizes[t + 1] = state_bytes(state)
    expected = {t: state_size(model, batch, t) for t in sizes}
    assert sizes == expected, f"state bytes by position {sizes}, expected {expected}"


# Checks on a family -----------------------------------------------------------------------------


def check_budget(family: Family | str, io: IOSpec, budget: int, max_len: int,
                 hp: Mapping[str, Any] | None = None,
                 tolerance: float = BUDGET_TOLERANCE) -> None:
    """The fitted model's count is the closest the width allows (for a width search), within
    `tolerance` of the budget, and a BudgetWarning is raised exactly when it misses by more
    than BUDGET_TOLERANCE."""
    family = get_family(family)
    params = parse_hparams(family, dict(hp or {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = build_model(family, io, budget, params, max_len)
    n = count_parameters(net)
    if family.fit is None:
        width = net.info["width"]
        for w in (width - 1, width + 1):
            if w >= 1:
                m = count_parameters(SequenceModel(io, family.build(io, w, params, max_len)))
                assert abs(n - budget) <= abs(m - budget), \
                    f"width {w} gives {m} parameters, closer to {budget} than width {width}'s {n}"
    missed = [w for w in caught if issubclass(w.category, BudgetWarning)]
    assert bool(missed) == (abs(n - budget) > BUDGET_TOLERANCE * budget), \
        f"{n} parameters for {budget}: a BudgetWarning is due exactly beyond the tolerance"
    assert abs(n - budget) <= tolerance * budget, f"{n} parameters for budget {budget}"


_WRONG = {int: "two", float: "fast", str: 3, bool: 1}  # a value of the wrong type per annotation


def check_strict_hparams(family: Family | str) -> None:
    """Unknown keys name the allowed ones; a wrongly typed scalar names its field."""
    family = get_family(family)
    fields = dataclasses.fields(family.hparams)
    allowed = ", ".join(sorted(f.name for f in fields)) or "(none)"
    try:
        parse_hparams(family, {"no_such_key": 1})
    except ConfigError as exc:
        assert str(exc) == f"hparams.no_such_key: unknown key; allowed: {allowed}", str(exc)
    else:
        raise AssertionError("an unknown hyper-parameter was accepted")
    hints = typing.get_type_hints(family.hparams)
    for f in fields:
        if hints[f.name] in _WRONG:
            try:
                parse_hparams(family, {f.name: _WRONG[hints[f.name]]})
            except ConfigError as exc:
                assert str(exc).startswith(f"hparams.{f.name}: expected"), str(exc)
            else:
                raise AssertionError(f"hparams.{f.name} accepted a value of the wrong type")


def check_family(family: Family | str, *, hparams: Iterable[Mapping[str, Any]] = ({},),
                 state_size: StateSize | None = declared_state_size,
                 budgets: Iterable[int] = (2000, 20_000),
                 max_lens: Iterable[int] = (12, 276), budget_tolerance: float = BUDGET_TOLERANCE,
                 causal: bool = True, streams: bool = True) -> None:
    """Every check above on family, for each hyper-parameter mapping in hparams (state_size:
    the family's state bytes after t steps, by default what it declares in its info, None to skip
    that check; causal / streams False for a
    family that reads ahead or has no step, such as a bidirectional RNN). Only the tasks and ios the
    family applies to are checked (Family.accepts, ios_for)."""
    family = get_family(family)
    check_strict_hparams(family)
    ios = ios_for(family)
    for hp in hparams:
        for io in {t.io for t in TASKS.values() if family.accepts(t.io)}:
            check_output_shape(build(family, io, 12, hp=hp), io)
        for io in ios:
            for budget in budgets:
                for max_len in max_lens:
                    check_budget(family, io, budget, max_len, hp, budget_tolerance)
            model = build(family, io, 20, hp=hp)
            if causal:
                check_causal(model, io)
            if streams:
                check_streaming(model, io, 20)
                check_step_functional(model, io)
                if state_size is not None:
                    check_state_size(model, io, state_size)
        first = FEATURES if FEATURES in ios else TOKENS
        check_sees_first_input(build(family, first, 10, budget=20_000, hp=hp), first)


# Checks on a task -------------------------------------------------------------------------------


def sample(task: Task, length: int, batch_size: int, seed: int = 0, device: str = "cpu") -> Batch:
    g = torch.Generator(device=device).manual_seed(seed)
    return task.sample(length, batch_size, g, device)


def perfect_outputs(task: Task, batch: Batch) -> torch.Tensor:
    """Model outputs (B, L, output_size) that predict every target exactly."""
    b, length = batch.inputs.shape[:2]
    out = torch.zeros(b, length, task.io.output_size, device=batch.inputs.device)
    if task.target == "regression":
        out[:, -1, 0] = batch.targets
    elif task.readout == "final":
        out[:, -1] = 1e4 * torch.nn.functional.one_hot(batch.targets, task.io.output_size)
    else:
        out[:] = 1e4 * torch.nn.functional.one_hot(batch.targets, task.io.output_size)
    return out


def constant_outputs(task: Task, batch: Batch, guess: float = 1) -> torch.Tensor:
    """Input-independent predictions: class `guess` everywhere, or the value `guess`."""
    b, length = batch.inputs.shape[:2]
    out = torch.zeros(b, length, task.io.output_size)
    if task.target == "regression":
        out[..., 0] = guess
    else:
        out[..., int(guess)] = 1.0
    return out


def lengths_for(task: Task) -> list[int]:
    """Short and longer lengths the task accepts (dyck takes even lengths only)."""
    candidates = [task.min_length, task.min_length + 1, task.min_length + 2, 9, 10, 32]
    return [n for n in dict.fromkeys(candidates) if task.accepts(n)]


def check_batches(task: Task, lengths: Iterable[int] | None = None) -> None:
    """Batches have the shapes, dtypes, ranges and device that io, readout and target declare."""
    for length in lengths or lengths_for(task):
        b, seq = 5, task.seq_len(length)
        batch = sample(task, length, b)
        if task.io.input_kind == "tokens":
            assert batch.inputs.shape == (b, seq) and batch.inputs.dtype == torch.int64
            assert 0 <= batch.inputs.min() and batch.inputs.max() < task.io.input_size
        else:
            assert batch.inputs.shape == (b, seq, task.io.input_size)
            assert batch.inputs.dtype == torch.float32
        if task.readout == "per_step":
            assert batch.targets.shape == (b, seq)
            assert batch.mask.shape == (b, seq) and batch.mask.dtype == torch.bool
        else:
            assert batch.targets.shape == (b,) and batch.mask is None
        if task.target == "regression":
            assert batch.targets.dtype == torch.float32
        else:
            assert batch.targets.dtype == torch.int64
            assert 0 <= batch.targets.min() and batch.targets.max() < task.io.output_size
        tensors = [batch.inputs, batch.targets] + ([batch.mask] if batch.mask is not None else [])
        assert all(t.device.type == "cpu" for t in tensors)


def check_seeding(task: Task, length: int) -> None:
    """The same generator seed gives the same batch, another seed another."""
    a, b, c = (sample(task, length, 16, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    if a.mask is not None:
        assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.inputs, c.inputs), "another seed gave the same inputs"


def check_perfect_scores_one(task: Task, lengths: Iterable[int] | None = None) -> None:
    for length in lengths or lengths_for(task):
        batch = sample(task, length, 64)
        out = perfect_outputs(task, batch)
        score = task.score(out, batch)
        assert score.shape == (64,) and torch.all(score == 1.0)
        assert task.loss(out, batch).item() < 1e-4


def check_chance(task: Task, length: int, guess: float = 1, n: int = 40_000) -> None:
    """Monte-Carlo: the constant guess `guess` (the best input-independent one) scores
    task.chance(length) within 5 standard errors."""
    batch = sample(task, length, n, seed=11)
    scores = task.score(constant_outputs(task, batch, guess), batch)
    assert scores.shape == (n,) and scores.min() >= 0 and scores.max() <= 1
    p = task.chance(length)
    se = math.sqrt(p * (1 - p) / n)
    assert abs(scores.mean().item() - p) <= 5 * se, f"{scores.mean().item()} vs chance {p}"


def check_lengths_refused(task: Task) -> None:
    """Lengths below min_length (and non-integers) raise ConfigError naming the field."""
    task.check_length(task.min_length)
    for bad in (task.min_length - 1, 0, -1, float(task.min_length + 1)):
        try:
            task.check_length(bad, field="lengths.x[0]")
        except ConfigError as exc:
            assert str(exc).startswith("lengths.x[0]: "), str(exc)
        else:
            raise AssertionError(f"length {bad!r} was accepted")


def check_task(task: Task, *, guess: float = 1) -> None:
    """Every task check above (guess: the best constant guess, whose score is the chance)."""
    check_batches(task)
    check_seeding(task, max(lengths_for(task)))
    check_perfect_scores_one(task)
    check_chance(task, lengths_for(task)[min(2, len(lengths_for(task)) - 1)], guess)
    check_lengths_refused(task)
    task.display()
