"""How long a sweep's training takes, projected from another sweep's measured steps (the GPU
validation projects the `full` preset from the `gpu-check` preset's records).

A model's training step costs about a + b x tokens seconds, tokens = batch x sequence length: a
is what does not grow with the batch's tokens (kernel launches, Python, the optimiser: on a GPU
most of a small model's step), b the cost per token. Per model label (a variant's name, else the
family) a and b are fitted to the measured cells (seconds per step = train_time_s / steps, tokens
per step = train_tokens_per_s x train_time_s / steps; solved and budget cells) by least squares
with a, b >= 0: where the free fit makes a coefficient negative, the best fit with it at 0. A
label measured at one size only takes its family's line scaled to its own measured steps (a
variant's shape is its family's), or, without a family fit, the line through the origin.

A cell of the projected sweep takes steps x (a + b x tokens per step), at its full step budget;
tokens per step as `seqbench sweep --dry-run` counts them (seqbench.sweeps.driver.SweepPlan). The
sweep's wall time is the sum over its cells divided by the cells running at once (cells per GPU x
GPUs), with the rates measured at that packing. Left out: evaluation, gradient flow, start-up and
the tail where fewer cells than workers remain; solved cells stop early. An estimate, not a
measurement.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from seqbench.cell.config import CellConfig
from seqbench.cell.record import CellRecord
from seqbench.sweeps.driver import SweepPlan
from seqbench.sweeps.spec import Label


@dataclass(frozen=True)
class StepTime:
    """Seconds per training step: a + b x tokens per step."""

    a: float
    b: float

    def seconds(self, tokens: float) -> float:
        return self.a + self.b * tokens


def fit(points: Sequence[tuple[float, float]]) -> StepTime:
    """Least-squares a, b >= 0 through (tokens per step, seconds per step) points."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if len(set(xs)) < 2:
        return StepTime(0.0, sum(ys) / sum(xs))
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    if b < 0:
        return StepTime(my, 0.0)
    if a < 0:
        return StepTime(0.0, sum(x * y for x, y in points) / sum(x * x for x in xs))
    return StepTime(a, b)


def label_of(record: CellRecord) -> str:
    return record.variant or record.family


def observations(records: Iterable[CellRecord]) -> dict[str, list[tuple[float, float]]]:
    """(tokens per step, seconds per step) of every finished, timed cell, by model label."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.status in ("solved", "budget") and r.steps and r.train_time_s and \
                r.train_tokens_per_s:
            out.setdefault(label_of(r), []).append(
                (r.train_tokens_per_s * r.train_time_s / r.steps, r.train_time_s / r.steps))
    return out


def step_times(records: Iterable[CellRecord]) -> dict[str, StepTime]:
    """The fitted step time of every measured label (module docstring)."""
    records = list(records)
    seen = observations(records)
    family = {label_of(r): r.family for r in records}
    out = {label: fit(points) for label, points in seen.items()
           if len({x for x, _ in points}) >= 2}
    for label, points in seen.items():
        if label in out:
            continue
        base = out.get(family[label])
        if base is None:
            out[label] = fit(points)
            continue
        scale = statistics.fmean(y / base.seconds(x) for x, y in points)
        out[label] = StepTime(base.a * scale, base.b * scale)
    return out


def tokens_per_step(cfg: CellConfig) -> float:
    return SweepPlan.tokens(cfg) / cfg.train.steps


@dataclass(frozen=True)
class Projection:
    """Training seconds of a sweep's cells (summed over cells), and the labels not measured."""

    seconds: float
    cells: int
    missing: tuple[str, ...]

    def wall_s(self, concurrent: int) -> float:
        """Wall seconds with `concurrent` cells running at once."""
        return self.seconds / concurrent


def project(cells: Sequence[tuple[Label, CellConfig]], times: dict[str, StepTime]) -> Projection:
    """The training seconds of cells at their full budgets. A cell whose label has no step time
    takes its family's; one with neither is left out and its label listed in `missing`."""
    total, counted, missing = 0.0, 0, set()
    for label, cfg in cells:
        name = label.variant or cfg.model
        time = times.get(name) or times.get(cfg.model)
        if time is None:
            missing.add(name)
            continue
        total += cfg.train.steps * time.seconds(tokens_per_step(cfg))
        counted += 1
    return Projection(total, counted, tuple(sorted(missing)))


def cells_per_hour(cells: int, wall_s: float) -> float:
    return 3600.0 * cells / wall_s
