"""Speed, memory and FLOPs of one (model, length, batch, device, dtype) point.

Per point: training-step time (forward + backward + AdamW step on a fixed, pre-generated batch)
and inference-forward time, each a median and IQR over synchronised blocks after warm-up
(seqbench.measure.timing); activation memory (bytes saved for backward) and, on CPU, peak RSS growth of a step
in a fresh subprocess; on CUDA, peak allocated and reserved bytes of a training and an inference
step above the resident parameters and optimiser state (seqbench.measure.memory); FLOPs of a training step and
the fraction of this machine's measured dense matmul peak it achieves; the cost of generating the
batch relative to the step. An out-of-memory becomes status `oom`; any other failure `error`.

Variable lengths (length_spread s > 0, seqbench.cell.varlen): the training step draws batches
whose sequences have lengths uniform in [(1 - s) N, N], run `padded` (to N), `packed`
(pack_padded_sequence: rnn, lstm, gru) or `bucketed` (the block's sequences sorted by length, each
batch cut to its longest: small padding, lengths correlated within a batch). Tokens/s counts the
real tokens only (the expected number per batch, the same for all three), so the three are
compared on the work they do for the same data; FLOPs are not counted for these points (they
depend on each batch's lengths). The inference forward runs one such batch the same way.

FLOPs: torch.utils.flop_counter.FlopCounterMode counts matmuls, convolutions and attention (CPU's
fused attention through formulas added here); it does not see the fused RNN kernels, so
torch.nn.RNN/LSTM/GRU modules are counted analytically, and what it does see inside them (the
matmuls of CPU's RNN and GRU) is left out: 2 * gates * H * (H_in + H) per step, layer, direction
and sample forward, and 3x that for a training step (backward ~ 2x forward). Bias and elementwise
FLOPs are not counted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from seqbench.cell.config import (
    DEVICES,
    check_applies,
    display_of,
    offering,
    plugins_env,
    techniques,
)
from seqbench.cell.step import TrainStep
from seqbench.cell.train import is_oom
from seqbench.cell.varlen import VarLen
from seqbench.env import environment
from seqbench.measure.memory import cuda_peak, rss_growth, rss_growth_in_process, saved_bytes
from seqbench.measure.record import MEASURE_SCHEMA, MeasureRecord
from seqbench.measure.timing import sync, time_blocks
from seqbench.models import build_model, count_parameters, get_family, parse_hparams
from seqbench.strict import (
    check_choice,
    from_mapping,
    key_payload,
    require,
    setting,
    stable_key,
)
from seqbench.tasks import get_task

DTYPES = ("fp32", "bf16")
BATCHINGS = ("padded", "packed", "bucketed")


@dataclass(frozen=True)
class MeasurePoint:
    """One point of speed and memory measurement: a model at a length, batch, device and dtype."""

    model: str = field(metadata={"help": "model family"})
    length: int = field(metadata={"help": "the task's length"})
    batch_size: int = setting(32, "sequences per batch")
    device: str = setting("cpu", "device", choices=DEVICES)
    dtype: str = setting("fp32", "fp32, or bf16 (forward and loss under torch.autocast)",
                         choices=DTYPES)
    params: int = setting(20_000, "parameter budget")
    task: str = setting("parity", "supplies the input/output shapes and the loss")
    seed: int = setting(0, "seed of the initialisation and the batch")
    hparams: Any = field(default=None, metadata={"help": "the family's hyper-parameters"})
    length_spread: float = setting(0.0, "variable lengths: each sequence's length uniform in "
                                   "[(1 - s) N, N] (train.length_spread); 0: all at N",
                                   added=True)
    batching: str = setting("padded", "under length_spread: padded, packed (rnn, lstm, gru) or "
                            "bucketed (sorted by length, each batch cut to its longest)",
                            choices=BATCHINGS, added=True)

    def __post_init__(self):
        family = get_family(self.model)
        check_applies(self.model, self.task)
        get_task(self.task).check_length(self.length)
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.params >= 100, "params", f"must be >= 100, got {self.params}")
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, DTYPES)
        if type(self.hparams) is not family.hparams:
            object.__setattr__(self, "hparams", parse_hparams(self.model, self.hparams))
        require(0 <= self.length_spread < 1, "length_spread",
                f"must be in [0, 1), got {self.length_spread}")
        check_choice("batching", self.batching, BATCHINGS)
        require(self.length_spread > 0 or self.batching == "padded", "batching",
                "applies only with length_spread > 0")
        require(self.batching != "packed" or "packed" in techniques(self.hparams), "batching",
                f"model {self.model!r} does not run packed batches; models that do: "
                f"{', '.join(offering('packed'))}")

    def varlen(self) -> VarLen | None:
        """The point's variable-length batches, or None (every sequence at its length)."""
        if self.length_spread == 0:
            return None
        return VarLen(self.length_spread, packed=self.batching == "packed",
                      bucketed=self.batching == "bucketed")

    @classmethod
    def from_dict(cls, data: dict) -> MeasurePoint:
        return from_mapping(cls, data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def payload(self) -> dict:
        """What the key hashes: the point (added() fields at default left out), the record schema
        and the model family's definition version."""
        return {"measure": key_payload(self), "schema": MEASURE_SCHEMA,
                "model_version": get_family(self.model).version}

    def key(self) -> str:
        return stable_key(self.payload())


class Harness:
    """The model, batch and step closures of one point. train_step is the sweep's own training
    step (seqbench.cell.step.TrainStep: a fresh batch, forward, loss, backward, clipping at 1.0,
    fused AdamW), so a measured tokens/s is a sweep's tokens/s; infer_step and forward_backward
    run on one fixed batch."""

    def __init__(self, point: MeasurePoint):
        self.point = point
        self.task = get_task(point.task)
        self.seq_len = self.task.seq_len(point.length)
        torch.manual_seed(point.seed)
        self.model = build_model(
            point.model, self.task.io, point.params, point.hparams, self.seq_len
        ).to(point.device)
        autocast = torch.bfloat16 if point.dtype == "bf16" else None
        self.train_step = TrainStep(self.model, self.task, lengths=[point.length],
                                    batch_size=point.batch_size, lr=1e-4, clip=1.0,
                                    seed=point.seed, device=point.device, autocast=autocast,
                                    varlen=point.varlen())
        self.opt = self.train_step.opt
        self.autocast = self.train_step.autocast
        self.batch = self.sample()
        varlen = point.varlen()
        # time steps of real tokens per step: all of them, or the expected unpadded ones
        self.tokens = (point.batch_size * self.seq_len if varlen is None
                       else varlen.mean_tokens(self.task, point.length, point.batch_size))
        # warm-up calls before timing: bucketed batches come in one width per length, each a new
        # shape for the kernels' caches (oneDNN primitives, cuDNN plans) the first time: two
        # calls per possible length let the timed blocks see the steady state
        self.warmup = 3 if varlen is None or not varlen.bucketed else max(
            3, 2 * len(varlen.choices(self.task, point.length)))

    def sample(self):
        """The next training batch as a sweep draws it (prefetched in blocks, so timing many calls
        gives the amortised cost per step)."""
        return self.train_step.batch(self.point.length)

    def infer_step(self) -> None:
        with torch.inference_mode(), self.autocast:
            self.train_step.outputs(self.batch)

    def forward_backward(self) -> None:
        """Forward and backward without the optimiser (for saved-tensor accounting)."""
        with self.autocast:
            loss = self.task.loss(self.train_step.outputs(self.batch), self.batch)
        loss.backward()


def rnn_flops(model: nn.Module, batch: int, seq_len: int) -> float:
    """Analytic forward FLOPs of the torch.nn RNN modules in model (FlopCounterMode misses them)."""
    gates = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
    total = 0.0
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            directions = 2 if m.bidirectional else 1
            for layer in range(m.num_layers):
                h_in = m.input_size if layer == 0 else m.hidden_size * directions
                total += 2 * gates[m.mode] * m.hidden_size * (h_in + m.hidden_size) * directions
    return total * batch * seq_len


# FlopCounterMode has formulas for the CUDA attention kernels but not for CPU's fused attention,
# whose arguments start the same way (query, key, value; backward: grad_out, query, key, value).
def _attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
}


def train_flops(h: Harness) -> float:
    """Counted FLOPs outside the torch.nn RNN modules plus their analytic count. (On CPU, RNN and
    GRU run as visible mm/addmm ops, which would otherwise be counted twice; fused kernels such as
    cuDNN or oneDNN's LSTM count nothing there.)"""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        h.train_step()
    rnns = {n for n, m in h.model.named_modules() if isinstance(m, nn.RNNBase)}
    inside = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items()
                 if name.partition(".")[2] in rnns)  # module names are "<root class>.<path>"
    return counter.get_total_flops() - inside + 3 * rnn_flops(
        h.model, h.point.batch_size, h.seq_len)


def matmul_peak(device: str, dtype: str) -> float:
    """Dense matmul FLOP/s of this machine: a square matmul timed with the suite's protocol."""
    n = 4096 if torch.device(device).type == "cuda" else 1024
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=kind)
    b = torch.randn(n, n, device=device, dtype=kind)
    return 2 * n**3 / time_blocks(lambda: a @ b, device, blocks=5).median


def flags(point: MeasurePoint) -> dict:
    out = {
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "autocast_bf16": point.dtype == "bf16",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if point.device == "cuda":
        out |= {
            "cudnn_enabled": torch.backends.cudnn.enabled,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return out


def measure(point: MeasurePoint, *, peak: float | None = None, rss: bool = True,
            blocks: int = 7, stream_positions: tuple[int, ...] = ()) -> MeasureRecord:
    """Measure one point; failures (oom, error) are recorded, never raised."""
    record = MeasureRecord(point.key(), point.to_dict(), point.payload(),
                           env=environment(point.device) | plugins_env(point.model, point.task),
                           flags=flags(point), matmul_peak_flops_per_s=peak,
                           **display_of(point.model, point.task))
    try:
        _measure(point, record, rss, blocks, stream_positions)
    except Exception as exc:  # noqa: BLE001 - the point's failure is its result
        record.status = "oom" if is_oom(exc) else "error"
        record.error = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if point.device == "cuda":
            torch.cuda.empty_cache()
    return record


def _measure(point, record, rss, blocks, stream_positions):
    h = Harness(point)
    record.seq_len = h.seq_len
    record.params_actual = count_parameters(h.model)
    tokens = h.tokens
    h.train_step()  # optimiser state exists from here on: it is part of the baseline
    train = time_blocks(h.train_step, point.device, warmup=h.warmup, blocks=blocks)
    record.train_ms, record.train_ms_iqr = train.median * 1e3, train.iqr * 1e3
    record.train_tokens_per_s = tokens / train.median
    h.model.eval()
    infer = time_blocks(h.infer_step, point.device, blocks=blocks)
    record.infer_ms, record.infer_ms_iqr = infer.median * 1e3, infer.iqr * 1e3
    record.infer_tokens_per_s = tokens / infer.median
    h.model.train()
    gen = time_blocks(h.sample, point.device, blocks=blocks)
    record.data_gen_ms = gen.median * 1e3
    record.data_gen_fraction = gen.median / train.median
    h.opt.zero_grad(set_to_none=True)
    record.saved_bytes = saved_bytes(h.forward_backward, list(h.model.parameters()))
    h.opt.zero_grad(set_to_none=True)
    if point.device == "cuda":
        record.train_peak_allocated, record.train_peak_reserved = cuda_peak(h.train_step, "cuda")
        record.infer_peak_allocated, record.infer_peak_reserved = cuda_peak(h.infer_step, "cuda")
    elif rss:
        record.rss_growth_bytes = rss_growth(point.to_dict())
    if point.varlen() is None:  # variable lengths: FLOPs depend on each batch (docstring)
        record.train_flops = train_flops(h)
        record.achieved_flops_per_s = record.train_flops / train.median
        if record.matmul_peak_flops_per_s:
            record.efficiency = record.achieved_flops_per_s / record.matmul_peak_flops_per_s
    if stream_positions and h.model.info.get("causal", True):  # bidirectional: no streaming
        from seqbench.measure.streaming import measure_streaming

        record.streaming = measure_streaming(
            h.model, h.task.io, positions=stream_positions, device=point.device
        )


def _rss_child(text: str) -> None:
    h = Harness(MeasurePoint.from_dict(json.loads(text)))
    growth = rss_growth_in_process(h.train_step)
    sync(h.point.device)
    print(json.dumps({"rss_growth_bytes": growth}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: the RSS child of seqbench.measure.memory")
    parser.add_argument("--rss-child", required=True)
    _rss_child(parser.parse_args().rss_child)
