"""Train and evaluate one cell: config -> task + model -> optimise on fresh batches -> record.

Every step draws a fresh batch from the training generator (infinite data); the held-out set is
drawn once from a separately seeded generator and depends only on (task, length, seed), so every
model is scored on the same sequences. Training stops at the step budget, on reaching the task's
solve threshold at an evaluation, or on a non-finite loss or gradient (status `diverged`).

Gradient flow through time (seqbench.cell.gradflow) is measured on a fixed slice of the held-out set twice:
on the untrained model, and on the trained one unless training diverged.

Length generalisation (config.generalise): each step's batch has a length drawn uniformly from the
task's valid lengths up to N (or N itself), the model is built for the longest test length (a TCN
covers it, a learned position table has rows for it, untrained beyond N), training runs the whole
budget, and the trained model is then scored at every test length; the cell is `solved` when the
mean over them reaches the task's threshold.
"""
from __future__ import annotations

import math
import time
import traceback

import torch

from seqbench.cell.config import CellConfig, display_of, plugins_env
from seqbench.cell.gradflow import gradient_flow
from seqbench.cell.record import CellRecord
from seqbench.env import environment
from seqbench.models import build_model, count_parameters
from seqbench.strict import stable_key
from seqbench.tasks import Batch, Task, get_task

EVAL_CHUNK = 256  # held-out samples per forward pass
FLOW_SAMPLES = 64  # gradient-flow samples, at most; never more than a training batch (memory)


def generator(seed: int, stream: int, device: str) -> torch.Generator:
    """Independent random stream `stream` (0 train, 1 held-out) for a cell seed."""
    return torch.Generator(device=device).manual_seed(2 * seed + stream)


def held_out(task: Task, cfg: CellConfig, length: int | None = None,
             samples: int | None = None) -> list[Batch]:
    """The held-out set at `length` (default: the cell's): a function of (task, length, seed,
    samples) only, so a length-generalisation test at length n scores the same sequences as a
    fixed-length cell at n with as many evaluation samples."""
    g = generator(cfg.seed, 1, cfg.device)
    n = samples or cfg.train.eval_samples
    sizes = [min(EVAL_CHUNK, n - i) for i in range(0, n, EVAL_CHUNK)]
    return [task.sample(length or cfg.length, size, g, cfg.device) for size in sizes]


def flow_batch(batches: list[Batch], batch_size: int) -> Batch:
    """The fixed gradient-flow batch: the first min(FLOW_SAMPLES, batch_size) held-out samples,
    so it depends only on (task, length, seed, batch size) and needs no more memory than a
    training step (a forward and a backward of at most one training batch)."""
    first = batches[0]
    n = min(FLOW_SAMPLES, batch_size)
    mask = None if first.mask is None else first.mask[:n]
    return Batch(first.inputs[:n], first.targets[:n], mask)


@torch.no_grad()
def evaluate(model, task: Task, batches: list[Batch]) -> tuple[float, float]:
    """Mean held-out loss and headline score."""
    model.eval()
    total = sum(len(b.inputs) for b in batches)
    loss = score = 0.0
    for b in batches:
        out = model(b.inputs)
        loss += task.loss(out, b).item() * len(b.inputs)
        score += task.score(out, b).sum().item()
    model.train()
    return loss / total, score / total


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in str(exc) or "can't allocate memory" in str(exc))
    )


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def new_record(cfg: CellConfig) -> CellRecord:
    """A record for cfg with everything known before training filled in (status `budget`)."""
    task = get_task(cfg.task)
    payload = cfg.payload()
    return CellRecord(
        key=stable_key(payload),
        config=cfg.to_dict(),
        key_payload=payload,
        task_version=payload["task_version"],
        model_version=payload["model_version"],
        status="budget",
        seq_len=task.seq_len(cfg.length),
        score_name=task.score_name,
        chance=task.chance(cfg.length),
        baseline_loss=task.baseline_loss(cfg.length),
        solve_threshold=task.solve_threshold,
        env=environment(cfg.device) | plugins_env(cfg.model, cfg.task),
        **display_of(cfg.model, cfg.task),
    )


def failed(record: CellRecord, exc: BaseException) -> CellRecord:
    """Mark record with the status of exc: `oom` for out-of-memory, else `error`."""
    record.status = "oom" if is_oom(exc) else "error"
    record.error = "".join(traceback.format_exception_only(exc)).strip()
    return record


def run_cell(cfg: CellConfig) -> CellRecord:
    """Run one cell; never raises for a failure of the run itself (it becomes the status)."""
    record = new_record(cfg)
    start = time.perf_counter()
    try:
        _train(cfg, get_task(cfg.task), record)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded status
        failed(record, exc)
        if cfg.device == "cuda":
            torch.cuda.empty_cache()
    record.wall_time_s = time.perf_counter() - start
    return record


def _train(cfg: CellConfig, task: Task, record: CellRecord) -> None:
    tc = cfg.train
    torch.manual_seed(cfg.seed)  # initialisation and dropout
    max_len = task.seq_len(cfg.max_length())
    model = build_model(cfg.model, task.io, cfg.params, cfg.hparams, max_len).to(cfg.device)
    record.params_actual = count_parameters(model)
    record.model_info = model.info
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    train_gen = generator(cfg.seed, 0, cfg.device)
    evaluation = held_out(task, cfg)
    flow = flow_batch(evaluation, tc.batch_size)
    record.grad_flow = {"untrained": gradient_flow(model, task, flow)}

    lengths = cfg.train_lengths()
    draws = torch.Generator().manual_seed(2 * cfg.seed)  # CPU: a length is a host-side choice
    window: list[float] = []
    train_time = tokens = 0
    for step in range(1, tc.steps + 1):
        length = lengths[0] if len(lengths) == 1 else lengths[
            int(torch.randint(len(lengths), (), generator=draws))]
        _sync(cfg.device)
        t0 = time.perf_counter()
        batch = task.sample(length, tc.batch_size, train_gen, cfg.device)
        loss = task.loss(model(batch.inputs), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip or float("inf"))
        value = loss.item()
        finite = math.isfinite(value) and torch.isfinite(norm).item()
        if finite:
            opt.step()
        _sync(cfg.device)
        train_time += time.perf_counter() - t0
        tokens += tc.batch_size * task.seq_len(length)
        record.steps = step
        if not finite:
            record.status = "diverged"
            record.error = f"non-finite loss {value} or gradient norm {norm.item()} at step {step}"
            break
        window.append(value)
        if step % tc.eval_every == 0 or step == tc.steps:
            record.eval_loss, record.score = evaluate(model, task, evaluation)
            record.train_loss = sum(window) / len(window)
            window.clear()
            record.history.append(
                {"step": step, "train_loss": record.train_loss,
                 "eval_loss": record.eval_loss, "score": record.score}
            )
            if record.score >= task.solve_threshold and cfg.generalise is None:
                record.status, record.solved = "solved", True
                break
    record.train_time_s = train_time
    if train_time > 0:
        record.train_tokens_per_s = tokens / train_time
    if record.status == "diverged":
        return
    record.grad_flow["trained"] = gradient_flow(model, task, flow)
    if cfg.generalise is not None:
        record.ood_chance = [task.chance(n) for n in cfg.generalise.lengths]
        for n in cfg.generalise.lengths:  # shortest first: an OOM keeps the scores before it
            record.ood_scores.append(evaluate(model, task, held_out(
                task, cfg, n, cfg.generalise.samples))[1])
        record.ood_score = sum(record.ood_scores) / len(record.ood_scores)
        if record.ood_score >= task.solve_threshold:
            record.status, record.solved = "solved", True
