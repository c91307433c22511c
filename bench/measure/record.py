"""The stored record of one measured point (seqbench.measure.point.measure). Torch-free: like a
cell record it holds its point as a plain mapping and the payload its key hashes, so reports read
it without the model code."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from seqbench import display
from seqbench.cell.record import KEY, LABEL, CorruptRecord, build, styles
from seqbench.strict import stable_key

MEASURE_SCHEMA = 2
MEASURE_STATUSES = ("ok", "oom", "error")


@dataclass
class MeasureRecord:
    key: str
    point: dict  # MeasurePoint.to_dict(): model (the family), length, batch_size, device, ...
    key_payload: dict  # exactly what `key` hashes
    status: str = "ok"  # ok, oom, error
    error: str | None = None
    seq_len: int = 0
    params_actual: int | None = None
    train_ms: float | None = None
    train_ms_iqr: float | None = None
    train_tokens_per_s: float | None = None
    infer_ms: float | None = None
    infer_ms_iqr: float | None = None
    infer_tokens_per_s: float | None = None
    saved_bytes: int | None = None  # activation memory of a training step
    rss_growth_bytes: int | None = None  # CPU: peak RSS growth of a training step
    train_peak_allocated: int | None = None  # CUDA, above parameters + optimiser state
    train_peak_reserved: int | None = None
    infer_peak_allocated: int | None = None
    infer_peak_reserved: int | None = None
    train_flops: float | None = None
    achieved_flops_per_s: float | None = None
    matmul_peak_flops_per_s: float | None = None
    efficiency: float | None = None  # achieved / matmul peak
    data_gen_ms: float | None = None
    data_gen_fraction: float | None = None  # batch generation time / training-step time
    streaming: list = field(default_factory=list)
    flags: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    variant: str = ""  # the sweep's name for the model, if a variant (a label, not in the key)
    # how the family and the point's task are shown (seqbench.display; as in CellRecord)
    model_display: dict = field(default_factory=dict)
    task_display: dict = field(default_factory=dict)
    schema: int = MEASURE_SCHEMA

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> MeasureRecord:
        """Rebuild a stored measurement, refusing wrong types, another schema or a bad key."""
        record = build(cls, data, MEASURE_SCHEMA, "measure again")
        if not KEY.fullmatch(record.key) or stable_key(record.key_payload) != record.key:
            raise CorruptRecord(f"key {record.key!r} does not match its key_payload")
        if record.key_payload.get("measure", {}).get("model") != record.point.get("model"):
            raise CorruptRecord("point does not match the key's payload (edited?)")
        if record.status not in MEASURE_STATUSES:
            raise CorruptRecord(f"status {record.status!r} is not one of "
                                f"{', '.join(MEASURE_STATUSES)}")
        if record.variant and not LABEL.fullmatch(record.variant):
            raise CorruptRecord(f"variant {record.variant!r} is not a plain label")
        if not isinstance(record.point.get("length"), int):
            raise CorruptRecord("point.length: expected an integer")
        try:
            if record.model_display:
                display.check_model(record.model_display)
            if record.task_display:
                display.check_task(record.task_display)
        except display.DisplayError as exc:
            raise CorruptRecord(str(exc)) from None
        return record

    def styles(self) -> tuple[dict, dict]:
        """(model style, task style) as shown (seqbench.cell.record.styles)."""
        return styles(self.point["model"], self.model_display, self.point.get("task", "parity"),
                      self.task_display, self.variant)

    @property
    def model_name(self) -> str:
        return self.styles()[0]["label"]

    def row(self) -> dict:
        flat = {k: v for k, v in self.point.items() if k != "hparams"}
        flat |= display.columns(*self.styles()) | {"variant": self.variant,
                                                   "family": self.point["model"]}
        flat |= {f"hp.{k}": v for k, v in (self.point.get("hparams") or {}).items()}
        skip = {"point", "streaming", "env", "flags", "schema", "variant", "key_payload",
                "model_display", "task_display"}
        stream = {}
        for s in self.streaming:
            stream[f"stream_ms@{s['position']}"] = s["latency_ms_median"]
            stream[f"stream_state_bytes@{s['position']}"] = s["state_bytes"]
        return {"key": self.key} | flat | {
            k: v for k, v in dataclasses.asdict(self).items() if k not in skip
        } | {f"flag.{k}": v for k, v in self.flags.items()} | stream
