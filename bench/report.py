"""Comparison tables from stored records only (never re-runs training or measurement).

Accuracy, per task: models as rows, lengths as columns, mean headline score over seeds with its
standard deviation, the best mean per column marked. Cells where some seed failed carry the failure
counts; cells where every seed failed show the status.

Speed and memory, per (device, dtype, batch): training and inference tokens/s and memory with each
model's ratio to the Transformer in brackets (the LRA convention), best marked; the log-log slope of
time and memory against length with its R^2; and the achieved fraction of the matmul peak.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from bench.measure import scaling
from tasks import get_task

FAILED = ("diverged", "oom", "error")
MODEL_ORDER = ("rnn", "lstm", "gru", "tcn", "transformer")
REFERENCE = "transformer"  # ratios are to this model, as in LRA


@dataclass
class PivotTable:
    title: str
    caption: str
    columns: list[str]
    rows: list[str]
    text: dict[tuple[str, str], str]  # (row, column) -> cell text
    best: set[tuple[str, str]]


def _models(names) -> list[str]:
    present = set(names)
    return [m for m in MODEL_ORDER if m in present] + sorted(present - set(MODEL_ORDER))


def _best(values: dict[tuple[str, str], float], columns: list[str], higher: bool) -> set:
    best = set()
    for col in columns:
        column = {k: v for k, v in values.items() if k[1] == col}
        if column:
            top = max(column.values()) if higher else min(column.values())
            best |= {k for k, v in column.items() if v == top}
    return best


def _score_text(group: pd.DataFrame) -> tuple[str, float | None]:
    ok = group[~group["status"].isin(FAILED)]
    failures = group.loc[group["status"].isin(FAILED), "status"].value_counts()
    note = ", ".join(f"{n} {status}" for status, n in failures.items())
    if ok.empty:
        return note, None
    mean = ok["score"].mean()
    text = f"{mean:.3f}" + (f" ± {ok['score'].std():.3f}" if len(ok) > 1 else "")
    return text + (f" ({note})" if note else ""), mean


def task_tables(df: pd.DataFrame) -> list[PivotTable]:
    tables = []
    for task_name, tdf in df.groupby("task", sort=True):
        task = get_task(task_name)
        lengths = sorted(tdf["length"].unique().tolist())
        columns = [f"L={n}" for n in lengths]
        text, means = {}, {}
        for (model, length), group in tdf.groupby(["model", "length"]):
            cell = (model, f"L={length}")
            text[cell], mean = _score_text(group)
            if mean is not None:
                means[cell] = mean
        caption = (
            f"{task_name}: {task.score_name}, mean ± std over {tdf['seed'].nunique()} seed(s); "
            f"chance {task.chance(lengths[0]):.4g}, solved at >= {task.solve_threshold:g}"
        )
        tables.append(PivotTable(task_name, caption, columns, _models(tdf["model"]), text,
                                 _best(means, columns, higher=True)))
    return tables


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


# (column, title, unit, higher is better)
METRICS = (
    ("train_tokens_per_s", "training tokens/s", "", True),
    ("infer_tokens_per_s", "inference tokens/s", "", True),
    ("saved_bytes", "activation memory of a training step (bytes saved for backward)", "B", False),
    ("rss_growth_bytes", "CPU peak RSS growth of a training step (fresh process)", "B", False),
    ("train_peak_allocated", "CUDA peak allocated in a training step, above the model", "B", False),
    ("infer_peak_allocated", "CUDA peak allocated in an inference step", "B", False),
)


def _metric_table(df: pd.DataFrame, metric: str, title: str, unit: str, higher: bool,
                  setting: str) -> PivotTable | None:
    if metric not in df or df[metric].isna().all():
        return None
    lengths = sorted(df["length"].unique().tolist())
    columns = [f"L={n}" for n in lengths]
    text, values = {}, {}
    for _, r in df.iterrows():
        cell = (r["model"], f"L={r['length']}")
        if r["status"] != "ok":
            text[cell] = r["status"]
            continue
        value = r[metric]
        if pd.isna(value):
            continue
        ref = df[(df["model"] == REFERENCE) & (df["length"] == r["length"]) & (df["status"] == "ok")]
        ratio = f" ({value / ref[metric].iloc[0]:.2f}x)" if len(ref) and ref[metric].iloc[0] else ""
        text[cell], values[cell] = _si(value, unit) + ratio, value
    caption = f"{title}; {setting}; in brackets: ratio to the {REFERENCE}"
    return PivotTable(title, caption, columns, _models(df["model"]), text,
                      _best(values, columns, higher))


def _fit_text(fit: dict | None) -> str:
    if fit is None:
        return ""
    quality = f"R² {fit['r2']:.2f}" if fit["points"] > 2 else f"{fit['points']} points"
    return f"{fit['slope']:.2f} ({quality})"


def _scaling_table(df: pd.DataFrame, setting: str) -> PivotTable:
    """Log-log slopes against length, plus efficiency and data cost at the longest length."""
    columns = ["train time", "inference time", "activation memory", "FLOP/s / matmul peak",
               "batch generation / step"]
    text = {}
    for model, mdf in df[df["status"] == "ok"].groupby("model"):
        rows = mdf.to_dict("records")
        for col, metric in zip(columns[:3], ("train_ms", "infer_ms", "saved_bytes")):
            text[(model, col)] = _fit_text(scaling(rows, metric))
        longest = mdf.sort_values("length").iloc[-1]
        at = f" at L={longest['length']}"
        if not pd.isna(longest.get("efficiency")):
            text[(model, columns[3])] = f"{longest['efficiency']:.1%}{at}"
        if not pd.isna(longest.get("data_gen_fraction")):
            text[(model, columns[4])] = f"{longest['data_gen_fraction']:.2%}{at}"
    caption = (f"scaling with length: log-log slope (1 = linear, 2 = quadratic) and fit quality; "
               f"{setting}")
    return PivotTable("scaling", caption, columns, _models(df["model"]), text, set())


def _streaming_table(df: pd.DataFrame, setting: str) -> PivotTable | None:
    """Per-token latency and carried state at each stream position (from each model's longest
    measured point)."""
    positions = sorted(int(c.split("@")[1]) for c in df if c.startswith("stream_ms@"))
    if not positions:
        return None
    columns = [f"t={p}" for p in positions]
    text, values = {}, {}
    for model, mdf in df[df["status"] == "ok"].groupby("model"):
        row = mdf.sort_values("length").iloc[-1]
        for p, col in zip(positions, columns):
            ms = row.get(f"stream_ms@{p}")
            if ms is not None and not pd.isna(ms):
                state = row[f"stream_state_bytes@{p}"]
                text[(model, col)] = f"{ms:.3g} ms, state {_si(state, 'B')}"
                values[(model, col)] = ms
    caption = f"streaming: latency of one token at position t and the state carried; {setting}"
    return PivotTable("streaming", caption, columns, _models(df["model"]), text,
                      _best(values, columns, higher=False))


def measurement_tables(df: pd.DataFrame) -> list[PivotTable]:
    tables = []
    for (device, dtype, batch), sdf in df.groupby(["device", "dtype", "batch_size"]):
        setting = f"{device}, {dtype}, batch {batch}"
        for metric, title, unit, higher in METRICS:
            table = _metric_table(sdf, metric, title, unit, higher, setting)
            if table is not None:
                tables.append(table)
        tables.append(_scaling_table(sdf, setting))
        streaming = _streaming_table(sdf, setting)
        if streaming is not None:
            tables.append(streaming)
    return tables


def markdown(tables: list[PivotTable], title: str) -> str:
    lines = [f"# {title}", ""]
    for t in tables:
        lines += [f"## {t.title}", "", t.caption + ". Best per column in bold.", ""]
        lines.append("| model | " + " | ".join(t.columns) + " |")
        lines.append("|---|" + "---:|" * len(t.columns))
        for row in t.rows:
            cells = []
            for col in t.columns:
                cell = t.text.get((row, col), "")
                cells.append(f"**{cell}**" if (row, col) in t.best else cell)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def rich_tables(tables: list[PivotTable]) -> list[Group]:
    """One renderable per table: its caption line, then the table."""
    out = []
    for t in tables:
        table = Table()
        table.add_column("model")
        for col in t.columns:
            table.add_column(col, justify="right")
        for row in t.rows:
            table.add_row(row, *(
                f"[bold green]{t.text.get((row, col), '')}[/]" if (row, col) in t.best
                else t.text.get((row, col), "")
                for col in t.columns
            ))
        out.append(Group(Text(t.caption, style="bold"), table))
    return out
