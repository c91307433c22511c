"""Streaming inference cost: latency of one token at a given position, with carried state.

Generation and online inference feed one token at a time, and what a step costs there depends on
the family: O(1) for a recurrent net, O(receptive field) for a TCN, O(position) for a Transformer's
KV cache. So each measured position is reached by stepping random inputs through the model, and
one more step from the state reached there is timed with seqbench.measure.timing (steps are functional, so
the same state is stepped on every call). Positions are visited in ascending order, each
continuing from the state of the last.
"""
from __future__ import annotations

from functools import partial

import torch

from seqbench.measure.timing import time_blocks
from seqbench.models.base import SequenceModel, state_bytes
from seqbench.tasks.base import IOSpec


def random_stream(io: IOSpec, length: int, batch_size: int, device) -> torch.Tensor:
    """(length, B) random tokens or (length, B, F) random features, one row per step."""
    if io.input_kind == "tokens":
        return torch.randint(0, io.input_size, (length, batch_size), device=device)
    return torch.rand(length, batch_size, io.input_size, device=device)


def measure_streaming(
    model: SequenceModel,
    io: IOSpec,
    positions=(1024, 4096, 16384),
    batch_size: int = 1,
    device="cpu",
    blocks: int = 5,
) -> list[dict]:
    """One row per position: the latency of the step at that position (median and IQR, ms), the
    bytes of the state carried into it, and tokens per second (batch_size / median latency).

    The model runs in eval mode under no_grad on `device`; its training mode is restored after.
    """
    positions = sorted(positions)
    if not positions or positions[0] < 0:
        raise ValueError(f"positions: need at least one, all >= 0, got {positions}")
    inputs = random_stream(io, positions[-1] + 1, batch_size, device)
    was_training = model.training
    model.to(device).eval()
    rows = []
    try:
        with torch.no_grad():
            state, t = model.init_state(batch_size), 0
            for position in positions:
                while t < position:
                    _, state = model.step(inputs[t], state)
                    t += 1
                timing = time_blocks(
                    partial(model.step, inputs[position], state), device, blocks=blocks
                )
                rows.append({
                    "position": position,
                    "latency_ms_median": timing.median * 1e3,
                    "latency_ms_iqr": timing.iqr * 1e3,
                    "state_bytes": state_bytes(state),
                    "tokens_per_s": batch_size / timing.median,
                })
    finally:
        model.train(was_training)
    return rows
