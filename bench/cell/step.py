"""The one training step, used by sweeps (seqbench.cell.train) and by measurement
(seqbench.measure.point): draw a fresh batch, forward, loss, backward, clip, AdamW update.

It never waits for the device. The running loss, the first step with a non-finite loss or
gradient norm and the initial loss stay on the device; TrainStep.window() reads them once per
evaluation window (one synchronisation there), together with the window's time: CUDA events
around the window on a GPU, perf_counter on the CPU. So a GPU runs steps back to back, and what
`seqbench measure` times is exactly what a sweep trains with.

A non-finite step is still applied (skipping it would need the host to look); training stops at
the end of that window and the record names the first non-finite step, which the device kept.

Batches are drawn PREFETCH_STEPS at a time (one task.sample call for up to 16 steps' worth of
i.i.d. rows, then sliced): a sampler's cost is mostly per-call dispatch (about 2 us per torch op
here, 10-15 ops per batch), which at short lengths would otherwise be 2-10% of a 20K-parameter
LSTM step; drawn in blocks it is amortised below 2% (tests/test_benchmarks.py measures it).

Optimiser: AdamW with fused=True on CPU and CUDA (one kernel over all parameters). Measured here,
1 thread, 20K-parameter models at batch 32, L=64: optimiser step 115 us fused vs 144 us foreach vs
171 us per-tensor (LSTM), 120 / 610 / 890 us (Transformer), 253 / 836 / 1157 us (LRU).

Training techniques (the cell's train.* options; README "Training techniques"):
- precision: forward and loss under torch.autocast (bf16 or fp16); fp16 adds a GradScaler
  (torch.amp): the loss is scaled before backward, the gradients unscaled before clipping, and
  an update whose gradients overflowed is skipped. All of it stays on the device: unscale_ checks
  the gradients with one foreach kernel, the fused AdamW reads the scaler's found-inf flag and
  skips the update itself, update() adjusts the scale in one kernel. A skipped update is expected
  while the scale calibrates, so under fp16 only a non-finite loss counts as divergence.
- gradient monitoring (seqbench.cell.monitor): every update writes its gradient norm before
  clipping (and the norms behind the layer ratio) to a device buffer, reduced in window().
- truncated BPTT (seqbench.cell.tbptt) and variable-length batches (seqbench.cell.varlen; the
  model gets the batch's lengths, packed if asked: on CUDA torch's pack_padded_sequence reads
  the lengths on the host, one synchronisation per step that padded batches do not pay).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from seqbench.cell.monitor import GradMonitor
from seqbench.cell.tbptt import truncated_step
from seqbench.cell.varlen import VarLen
from seqbench.tasks import Batch, Task

# a cell's independent random streams: training batches, validation set, test set, and the
# training sequences of its shortcut learner (seqbench.cell.shortcut)
STREAMS = ("train", "validation", "test", "shortcut")
PREFETCH_STEPS = 16  # training batches drawn per sampler call, at most
PREFETCH_ELEMENTS = 1 << 22  # input elements drawn per sampler call, at most (memory)
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision


def block_steps(batch_size: int, elements_per_sample: int) -> int:
    """How many training batches one sampler call draws (see the module docstring)."""
    return max(1, min(PREFETCH_STEPS, PREFETCH_ELEMENTS // max(1, batch_size * elements_per_sample)))


def sample_elements(task: Task, length: int) -> int:
    """Input elements in one sample of task at length (what PREFETCH_ELEMENTS counts)."""
    io = task.io
    return task.seq_len(length) * (io.input_size if io.input_kind == "features" else 1)


def draw(task: Task, length: int, batch_size: int, steps: int, gen: torch.Generator,
         device) -> list[Batch]:
    """`steps` training batches of one length from one sampler call, in order."""
    big = task.sample(length, batch_size * steps, gen, device)
    parts = [t.split(batch_size) if t is not None else [None] * steps
             for t in (big.inputs, big.targets, big.mask)]
    return [Batch(*fields) for fields in zip(*parts, strict=True)]


def generator(seed: int, stream: str, device: str | torch.device) -> torch.Generator:
    """The random stream `stream` (one of STREAMS) of a cell seed."""
    return torch.Generator(device=device).manual_seed(len(STREAMS) * seed + STREAMS.index(stream))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   device: str | torch.device) -> torch.optim.AdamW:
    """AdamW, fused where the device supports it (see the module docstring)."""
    fused = torch.device(device).type in ("cpu", "cuda") and all(
        p.is_floating_point() for p in model.parameters())
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             fused=fused or None)


class Stopwatch:
    """Accumulated time of the timed regions, read without a per-region synchronisation: CUDA
    events on a GPU (elapsed read when asked), perf_counter on the CPU."""

    def __init__(self, device: str | torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = 0.0
        self._events: list = []
        self._t0: float | None = None

    def start(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append([event, None])
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events[-1][1] = event
        else:
            self.seconds += time.perf_counter() - self._t0

    def read(self) -> float:
        """Total seconds so far (on CUDA: waits for the last region to finish)."""
        if self._events:
            self._events[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000
            self._events.clear()
        return self.seconds


@dataclass(frozen=True)
class Window:
    """What the steps since the last read did: their mean loss, the first non-finite step (or
    None), the loss of the very first step, tokens (real ones: padding left out) and seconds, and
    the gradient figures of seqbench.cell.monitor."""

    steps: int
    mean_loss: float
    first_nonfinite: int | None
    initial_loss: float
    tokens: int
    seconds: float
    grads: dict


class TrainStep:
    """Calling it runs one training step (see the module docstring). lengths: the lengths a batch
    may have (one, or the valid lengths up to N for length generalisation: drawn uniformly per
    step on the host). autocast: a torch.autocast dtype for forward and loss, or None. screen:
    called on every drawn batch with its length, returns the batch to train on (a cell's
    seqbench.cell.seen.Seen: it records the rows and may leave held-out ones out of the loss).
    tbptt, tbptt_update: truncated BPTT chunks and updates (0: off); varlen: variable-length
    batches (None: every sequence at its batch's length)."""

    def __init__(self, model: torch.nn.Module, task: Task, *, lengths: list[int], batch_size: int,
                 lr: float, weight_decay: float = 0.0, clip: float = 0.0, seed: int = 0,
                 device: str | torch.device = "cpu", autocast: torch.dtype | None = None,
                 compile: str = "none", screen: Callable[[Batch, int], Batch] | None = None,
                 tbptt: int = 0, tbptt_update: str = "sequence", varlen: VarLen | None = None):
        self.model, self.task, self.lengths, self.batch_size = model, task, lengths, batch_size
        # the forward the step runs: the model itself, or torch.compile's version of it (the
        # first call compiles; its time is kept apart in compile_s, not in the window's time)
        self.forward = model if compile == "none" else torch.compile(model, mode=compile)
        self.compile_s: float | None = None
        self.device, self.clip = torch.device(device), clip
        self.opt = make_optimizer(model, lr, weight_decay, device)
        self.params = [p for p in model.parameters()]
        self.gen = generator(seed, "train", device)
        self.draws = torch.Generator().manual_seed(2 * seed)  # the lengths: a host-side choice
        self.autocast = (torch.autocast(self.device.type, dtype=autocast) if autocast is not None
                         else contextlib.nullcontext())
        self.scaler = (torch.amp.GradScaler(self.device.type) if autocast == torch.float16
                       else None)
        self.finite_true = torch.ones((), dtype=torch.bool, device=self.device)
        self.monitor = GradMonitor(model, clip, self.device, scaled=self.scaler is not None)
        self.tbptt, self.tbptt_update, self.varlen = tbptt, tbptt_update, varlen
        self.clock = Stopwatch(device)
        # length -> prefetched (batch, real time steps), next last
        self._blocks: dict[int, list[tuple[Batch, int]]] = {}
        self._batch_tokens = 0
        self.screen = screen
        self.step_count = 0
        self._reset()
        self._initial = torch.zeros((), device=self.device)
        self._seconds_read = 0.0

    def _reset(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._bad = torch.zeros((), dtype=torch.long, device=self.device)  # first bad step, 0 none
        self._window_steps = self._tokens = 0

    def length(self) -> int:
        if len(self.lengths) == 1:
            return self.lengths[0]
        return self.lengths[int(torch.randint(len(self.lengths), (), generator=self.draws))]

    def batch(self, length: int) -> Batch:
        """The next training batch of this length (from the prefetched block, drawn when empty)."""
        block = self._blocks.get(length)
        if not block:
            steps = block_steps(self.batch_size, sample_elements(self.task, length))
            if self.varlen is None:
                tokens = self.batch_size * self.task.seq_len(length)
                block = [(b, tokens) for b in draw(self.task, length, self.batch_size, steps,
                                                   self.gen, self.device)]
            else:
                block = self.varlen.draw(self.task, length, self.batch_size, steps, self.gen,
                                         self.draws, self.device)
            block = self._blocks[length] = block[::-1]
        batch, self._batch_tokens = block.pop()
        return batch

    def outputs(self, batch: Batch) -> torch.Tensor:
        """The model's outputs on a training batch: given its lengths (packed if asked) when it
        has them, and the targets for a model that takes them (teacher forcing:
        seqbench.models.seq2seq, SequenceModel.teacher). Evaluation calls the model on the inputs
        alone."""
        kw = {}
        if batch.lengths is not None:
            kw = {"lengths": batch.lengths, "packed": self.varlen is not None and self.varlen.packed}
        if getattr(self.model, "teacher", False):
            kw["teacher"] = batch.targets
        return self.forward(batch.inputs, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate loss (scaled under fp16)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def update(self) -> torch.Tensor:
        """Clip, monitor and apply the gradients backward() accumulated: one optimiser update.
        Returns whether it counts as finite (a device bool; under fp16 an overflow is skipped by
        the scaler, not divergence)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip or math.inf)
        self.monitor.update(norm)
        if self.scaler is None:
            self.opt.step()
            return torch.isfinite(norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        return self.finite_true

    def __call__(self) -> None:
        if self.forward is not self.model and self.compile_s is None:
            self._compile()
        length = self.length()
        self.clock.start()
        batch = self.batch(length)
        if self.screen is not None:
            batch = self.screen(batch, length)
        if 0 < self.tbptt < batch.inputs.shape[1]:
            loss, finite = truncated_step(self, batch)
        else:
            with self.autocast:
                loss = self.task.loss(self.outputs(batch), batch)
            self.opt.zero_grad(set_to_none=True)
            self.backward(loss)
            finite = self.update()
        self.clock.stop()
        self.step_count += 1
        loss = loss.detach()
        finite = torch.isfinite(loss) & finite
        self._bad = torch.where((self._bad == 0) & ~finite, self.step_count, self._bad)
        self._loss_sum += loss
        if self.step_count == 1:
            self._initial = loss
        self._window_steps += 1
        self._tokens += self._batch_tokens

    def _compile(self) -> None:
        """Compile (forward and backward of one batch, no update), timed on its own."""
        batch = self.task.sample(self.lengths[-1], self.batch_size,
                                 torch.Generator(self.device).manual_seed(0), self.device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with self.autocast:
            self.task.loss(self.outputs(batch), batch).backward()
        sync()
        self.compile_s = time.perf_counter() - t0
        self.opt.zero_grad(set_to_none=True)

    def window(self) -> Window:
        """Read and reset the accumulators (one synchronisation)."""
        seconds = self.clock.read()
        bad = int(self._bad)
        out = Window(self._window_steps, float(self._loss_sum) / max(1, self._window_steps),
                     bad or None, float(self._initial), self._tokens,
                     seconds - self._seconds_read, self.monitor.read())
        self._seconds_read = seconds
        self._reset()
        return out
