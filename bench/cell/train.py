"""Train and evaluate one cell: config -> task + model -> optimise on fresh batches -> record.

Four independent random streams per cell seed (seqbench.cell.step.generator): training batches
(a fresh batch every step: infinite data), the validation set, the test set, and the shortcut
learner's training sequences. Each held-out set depends only on (task, length, seed, samples), so
every model is scored on the same sequences. Every choice is made on the validation set: early
stopping (the cell is `solved` and stops once its validation score reaches the task's threshold
at an evaluation), the hyper-parameter set a report shows, the gradient-flow batch, the shortcut
learner's variant. The test set is scored once, after training, and gives the headline score
(`score`); its labels never drive anything, and its inputs reach training only where training
leaves held-out sequences out (seqbench.cell.seen).

What makes a comparison trustworthy is recorded beside the score: the shortcut learner's score on
the same validation and test sets (seqbench.cell.shortcut; fitted on its own stream at the cell's
length, and for a length-generalisation cell also scored at the test lengths), the fraction of
test and validation sequences that training also drew and whether training excluded them
(seqbench.cell.seen), and whether training converged (seqbench.cell.convergence).

Training stops at the step budget (`budget`), once solved, on a non-finite loss or gradient norm or
a training loss above DIVERGENCE_FACTOR times the first step's (`diverged`, naming the step), or
past train.timeout_s of wall time (`timeout`). Any other failure is `error` (with its traceback) or
`oom`; failures are recorded, never raised.

Gradient flow through time (seqbench.cell.gradflow) is measured on a fixed slice of the validation
set twice: on the untrained model, and on the trained one unless training diverged.

Length generalisation (config.generalise): each step's batch has a length drawn uniformly from the
task's valid lengths up to N (or N itself), the model is built for the longest test length (a TCN
covers it, a learned position table has rows for it, untrained beyond N), training runs the whole
budget, and the trained model is then scored at every test length on the validation and the test
stream; the cell's headline is the mean test score over them, `solved` when the validation mean
reaches the task's threshold.
"""
from __future__ import annotations

import time
import traceback

import torch

from seqbench.cell.config import CellConfig, display_of, plugins_env
from seqbench.cell.convergence import converged, convergence
from seqbench.cell.gradflow import gradient_flow
from seqbench.cell.record import CellRecord
from seqbench.cell.seen import Seen
from seqbench.cell.shortcut import shortcut_score
from seqbench.cell.step import AUTOCAST, TrainStep, generator
from seqbench.cell.varlen import VarLen
from seqbench.env import environment
from seqbench.models import build_model, count_parameters
from seqbench.strict import stable_key
from seqbench.tasks import Batch, Task, get_task

EVAL_CHUNK = 256  # held-out samples per forward pass
FLOW_SAMPLES = 64  # gradient-flow samples, at most; never more than a training batch (memory)
# A training loss above this multiple of the first step's is divergence, not learning: cross-
# entropy starts near ln(classes) and MSE near the target variance, so 100x is far outside any
# trajectory that is still optimising (an LSTM at lr=1e6 reached a loss of 2e12 without a NaN).
DIVERGENCE_FACTOR = 100.0


def held_out(task: Task, cfg: CellConfig, stream: str = "test", length: int | None = None,
             samples: int | None = None) -> list[Batch]:
    """The validation or test set at `length` (default: the cell's): a function of (task, length,
    seed, stream, samples) only, so a length-generalisation test at length n scores the same
    sequences as a fixed-length cell at n with as many evaluation samples."""
    g = generator(cfg.seed, stream, cfg.device)
    n = samples or cfg.train.eval_samples
    sizes = [min(EVAL_CHUNK, n - i) for i in range(0, n, EVAL_CHUNK)]
    return [task.sample(length or cfg.length, size, g, cfg.device) for size in sizes]


def flow_batch(batches: list[Batch], batch_size: int) -> Batch:
    """The fixed gradient-flow batch: the first min(FLOW_SAMPLES, batch_size) validation samples,
    so it depends only on (task, length, seed, batch size) and needs no more memory than a
    training step (a forward and a backward of at most one training batch)."""
    first = batches[0]
    n = min(FLOW_SAMPLES, batch_size)
    mask = None if first.mask is None else first.mask[:n]
    return Batch(first.inputs[:n], first.targets[:n], mask)


@torch.no_grad()
def evaluate(model, task: Task, batches: list[Batch]) -> tuple[float, float]:
    """Mean loss and headline score over held-out batches (a cell evaluates under its training
    precision's autocast, so that a bf16 model is scored as it runs)."""
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
    """Mark record with the status of exc: `oom` for out-of-memory, else `error`, keeping the
    full traceback."""
    record.status = "oom" if is_oom(exc) else "error"
    record.error = "".join(traceback.format_exception(exc)).strip()
    return record


def run_cell(cfg: CellConfig) -> CellRecord:
    """Run one cell; never raises for a failure of the run itself (it becomes the status)."""
    record = new_record(cfg)
    start = time.perf_counter()
    try:
        _train(cfg, get_task(cfg.task), record, start)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded status
        failed(record, exc)
        if cfg.device == "cuda":
            torch.cuda.empty_cache()
    record.wall_time_s = time.perf_counter() - start
    return record


def _divergence(window, step: int) -> str | None:
    """Why training diverged in this window, or None."""
    if window.first_nonfinite is not None:
        return f"non-finite loss or gradient norm at step {window.first_nonfinite}"
    if window.mean_loss > DIVERGENCE_FACTOR * window.initial_loss:
        return (f"training loss {window.mean_loss:.4g} over the steps up to {step} is more than "
                f"{DIVERGENCE_FACTOR:g}x the first step's {window.initial_loss:.4g}")
    return None


def _train(cfg: CellConfig, task: Task, record: CellRecord, start: float) -> None:
    tc = cfg.train
    torch.manual_seed(cfg.seed)  # initialisation and dropout
    max_len = task.seq_len(cfg.max_length())
    model = build_model(cfg.model, task.io, cfg.params, cfg.hparams, max_len).to(cfg.device)
    record.params_actual = count_parameters(model)
    record.model_info = model.info
    validation, test = held_out(task, cfg, "validation"), held_out(task, cfg, "test")
    ood = ood_sets(task, cfg)
    seen = Seen.for_task(task, cfg.length, validation, test, tc.steps * tc.batch_size, cfg.device,
                         varlen=tc.length_spread > 0)
    record.test_excluded = seen is not None and seen.exclude
    record.heldout_coverage = None if seen is None else seen.coverage
    record.shortcut = shortcut(task, cfg, validation, test, ood, seen)
    flow = flow_batch(validation, tc.batch_size)
    record.grad_flow = {"untrained": gradient_flow(model, task, flow)}
    varlen = (VarLen(tc.length_spread, packed=tc.packing == "packed") if tc.length_spread > 0
              else None)
    step = TrainStep(model, task, lengths=cfg.train_lengths(), batch_size=tc.batch_size,
                     lr=tc.lr, weight_decay=tc.weight_decay, clip=tc.clip, seed=cfg.seed,
                     device=cfg.device, autocast=AUTOCAST[tc.precision], compile=tc.compile,
                     screen=seen, tbptt=tc.tbptt, tbptt_update=tc.tbptt_update, varlen=varlen)
    try:
        _loop(cfg, task, record, start, model, step, validation)
    finally:  # what training drew, whatever stopped it
        if seen is None:
            record.seen_fraction = record.val_seen_fraction = 0.0
            record.seen_method = "real-valued"
        else:
            record.seen_fraction, record.val_seen_fraction = seen.fractions()
            record.seen_method = seen.method
    record.convergence = convergence(record.status, record.history)
    record.converged = converged(record.convergence)
    if record.status in ("diverged", "timeout"):
        return
    with step.autocast:
        record.test_loss, record.score = evaluate(model, task, test)
    record.grad_flow["trained"] = gradient_flow(model, task, flow)
    if cfg.generalise is not None:
        with step.autocast:
            _generalisation(task, model, record, ood)


def ood_sets(task: Task, cfg: CellConfig) -> dict[str, list[list[Batch]]] | None:
    """A length-generalisation cell's held-out sets at each test length, per stream."""
    g = cfg.generalise
    if g is None:
        return None
    return {stream: [held_out(task, cfg, stream, n, g.samples) for n in g.lengths]
            for stream in ("validation", "test")}


def shortcut(task: Task, cfg: CellConfig, validation: list[Batch], test: list[Batch],
             ood: dict | None, seen: Seen | None) -> dict:
    """The shortcut learner's result on the cell's held-out sets (seqbench.cell.shortcut), fitted
    on the cell's "shortcut" stream at its length, under the cell's exclusion rule, with its cost
    in seconds. Keys sorted, as a stored record reads back (so a table made from the record in
    memory matches one made from the file)."""
    t0 = time.perf_counter()
    result = shortcut_score(
        task, cfg.length, generator(cfg.seed, "shortcut", cfg.device), validation, test,
        cfg.device, keep=None if seen is None else seen.keep,
        ood=None if ood is None else (ood["validation"], ood["test"]))
    result["seconds"] = time.perf_counter() - t0
    if "ood_choice" in result:
        result["ood_choice"] = dict(sorted(result["ood_choice"].items()))
    return dict(sorted(result.items()))


def first_step(cfg: CellConfig, step: TrainStep) -> None:
    """The first training step; a failure there under mixed precision names the precision (a
    kernel without a half-precision form on this device: CPU's oneDNN LSTM has no fp16 one)."""
    try:
        step()
    except RuntimeError as exc:
        if cfg.train.precision == "fp32" or is_oom(exc):
            raise
        raise RuntimeError(f"train.precision = {cfg.train.precision}: model {cfg.model!r} cannot "
                           f"train at this precision on {cfg.device}: {exc}") from exc


def _loop(cfg: CellConfig, task: Task, record: CellRecord, start: float, model,
          step: TrainStep, validation: list[Batch]) -> None:
    """Train to the budget, a solved evaluation, divergence or the timeout."""
    tc = cfg.train
    tokens = 0
    for n in range(1, tc.steps + 1):
        if n == 1:
            first_step(cfg, step)
        else:
            step()
        late = tc.timeout_s > 0 and time.perf_counter() - start > tc.timeout_s
        if n % tc.eval_every and n != tc.steps and not late:
            continue
        window = step.window()
        tokens += window.tokens
        record.steps, record.train_time_s = n, record.train_time_s + window.seconds
        diverged = _divergence(window, n)
        if diverged:
            record.status, record.error = "diverged", diverged
            record.steps = window.first_nonfinite or n
            break
        record.train_loss = window.mean_loss
        with step.autocast:
            record.val_loss, record.val_score = evaluate(model, task, validation)
        record.history.append({"step": n, "train_loss": record.train_loss,
                               "val_loss": record.val_loss, "val_score": record.val_score}
                              | window.grads)
        if late:
            record.status = "timeout"
            record.error = f"train.timeout_s = {tc.timeout_s:g} s passed at step {n}"
            break
        if record.val_score >= task.solve_threshold and cfg.generalise is None:
            record.status, record.solved = "solved", True
            break
    record.compile_s = step.compile_s
    if record.train_time_s > 0:
        record.train_tokens_per_s = tokens / record.train_time_s


def _generalisation(task: Task, model, record: CellRecord, ood: dict) -> None:
    """Scores at each test length on both held-out streams; the validation mean decides
    `solved`, the test mean is the headline."""
    lengths = record.config["generalise"]["lengths"]
    record.ood_chance = [task.chance(n) for n in lengths]
    for i in range(len(lengths)):  # shortest first: an OOM keeps the scores before it
        for stream, scores in (("validation", record.ood_val_scores), ("test", record.ood_scores)):
            scores.append(evaluate(model, task, ood[stream][i])[1])
    record.ood_score = sum(record.ood_scores) / len(record.ood_scores)
    val = sum(record.ood_val_scores) / len(record.ood_val_scores)
    if val >= task.solve_threshold:
        record.status, record.solved = "solved", True

