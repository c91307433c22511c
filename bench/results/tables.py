"""Comparison tables from stored records only (never re-runs training or measurement). Torch-free:
everything a table says about a task (chance, solve threshold, score name, the symbol and meaning
of its length, its order) or a model (its shown name and order) comes from its records
(seqbench.display).

Accuracy tables (seqbench.results.accuracy, with seqbench.results.cellstats for one cell) build on
the helpers here: the tables' order, a task's facts, the headline score and the shown
hyper-parameter set. Length-generalisation tasks (cells with config.generalise): a cell's headline
is its mean score over the test lengths (`headline`).

Speed and memory, per (device, dtype, batch): training and inference tokens/s and memory with each
model's ratio to the Transformer in brackets (the LRA convention), best marked; the log-log slope of
time and memory against length with its R^2; and the achieved fraction of the matmul peak.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd

from seqbench.results.cellstats import choose_set

REFERENCE = "transformer"  # ratios are to this model, as in LRA


@dataclass
class PivotTable:
    title: str
    caption: str
    columns: list[str]
    rows: list[str]
    text: dict[tuple[str, str], str]  # (row, column) -> cell text
    best: set[tuple[str, str]]
    task: str = ""  # the task this table belongs to; "" for cross-task tables (solve length)
    notes: str = ""  # how `best` was chosen, for the reader (e.g. the significance rule)


def _models(df: pd.DataFrame) -> list[str]:
    """The models of df's rows in display order: by their family's declared order (stored in
    the records: seqbench.display), a family before its variants, then by name."""
    first = df.drop_duplicates("model")
    if "model_order" not in first:  # a frame made without the display columns
        return sorted(first["model"].tolist())
    variant = (first["variant"].fillna("").astype(str) != "" if "variant" in first
               else pd.Series(False, index=first.index))
    return [m for *_, m in sorted(zip(first["model_order"].astype(int), variant,
                                      first["model"]))]


def _with_extra(models: list[str], extra) -> list[str]:
    """models, then the other names in extra (models known only from unusable files) by name."""
    return models + sorted(set(extra) - set(models))


def length_axis(df: pd.DataFrame) -> tuple[str, str]:
    """(symbol, meaning) of the length of df's rows, as their task declares it (copy: T, delay);
    ("length", "length") where the rows mix tasks that name it differently."""
    if "length_symbol" not in df:
        return "L", "sequence length"
    pairs = set(zip(df["length_symbol"], df["length_meaning"]))
    return next(iter(pairs)) if len(pairs) == 1 else ("length", "length")


def studies(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) of each table (study()), in the tasks' declared order, then by title."""
    groups = list(df.groupby(study(df), sort=True))
    if "task_order" not in df:
        return groups
    return sorted(groups, key=lambda g: (int(g[1]["task_order"].iloc[0]), g[0]))


def task_facts(tdf: pd.DataFrame) -> tuple[str, float, dict[int, float]]:
    """(score name, solve threshold, chance per length) of one task's rows, as their records
    store them."""
    first = tdf.iloc[0]
    chance = tdf.dropna(subset=["chance"]).groupby("length")["chance"].first()
    return str(first["score_name"]), float(first["solve_threshold"]), chance.to_dict()


def chance_text(chance: dict[int, float], lengths) -> str:
    """The chance level over lengths: one value, or its range where it varies with length."""
    values = [chance[n] for n in lengths if n in chance]
    if not values:
        return "chance unknown"
    lo, hi = min(values), max(values)
    return f"chance {lo:.4g}" if math.isclose(lo, hi) else f"chance {lo:.4g}-{hi:.4g} by length"


def _best(values: dict[tuple[str, str], float], columns: list[str], higher: bool) -> set:
    best = set()
    for col in columns:
        column = {k: v for k, v in values.items() if k[1] == col}
        if column:
            top = max(column.values()) if higher else min(column.values())
            best |= {k for k, v in column.items() if v == top}
    return best


def set_label(name: str) -> str:
    """A hyper-parameter set's name as shown in tables ("" is the sweep's base settings)."""
    return name or "base"


def _with_sets(df: pd.DataFrame) -> pd.DataFrame:
    """df with an `hpset` column of strings (records from before sets have none; CSV gives NaN)."""
    sets = df["hpset"].fillna("").astype(str) if "hpset" in df else ""
    return df.assign(hpset=sets)


def is_generalisation(df: pd.DataFrame) -> pd.Series:
    """Rows of length-generalisation cells."""
    if "generalise.lengths" not in df:
        return pd.Series(False, index=df.index)
    return df["generalise.lengths"].notna()


def study(df: pd.DataFrame) -> pd.Series:
    """The table each row belongs to: its task, or for a length-generalisation cell its task and
    protocol (a store may hold fixed-length and generalisation cells of one task side by side)."""
    lg = is_generalisation(df)
    if not lg.any():
        return df["task"]
    symbol = df["length_symbol"] if "length_symbol" in df else "L"
    protocol = (" (length generalisation: " + df["generalise.train"].astype(str) + " to N, tests "
                + symbol + "=" + df["generalise.lengths"].astype(str).str.replace(" ", ",") + ")")
    return df["task"].where(~lg, df["task"] + protocol)


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """Cell rows with `score` the headline: the mean over test lengths for length-generalisation
    cells (their in-distribution score moves to `id_score`), the held-out score otherwise."""
    lg = is_generalisation(df)
    if not lg.any():
        return df
    val = df["ood_val_score"] if "ood_val_score" in df else None
    return df.assign(id_score=df["score"].where(lg), score=df["score"].mask(lg, df["ood_score"]),
                     val_score=df["val_score"].mask(lg, val))


def best_sets(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model, length), the rows of the hyper-parameter set the tables show: the best
    mean validation score over seeds that did not fail (seqbench.results.cellstats.choose_set);
    where every seed failed, every row (their failures stay visible)."""
    df = _with_sets(df)
    keep = []
    for _, group in df.groupby(["task", "model", "length"], sort=False):
        chosen = choose_set(group)
        keep.append(group if chosen is None else group[group["hpset"] == chosen])
    return pd.concat(keep) if keep else df


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
    symbol = length_axis(df)[0]
    columns = [f"{symbol}={n}" for n in lengths]
    text, values = {}, {}
    for _, r in df.iterrows():
        cell = (r["model"], f"{symbol}={r['length']}")
        if r["status"] != "ok":
            text[cell] = r["status"]
            continue
        value = r[metric]
        if pd.isna(value):
            continue
        ref = df[(df["model"] == REFERENCE) & (df["length"] == r["length"])
                 & (df["status"] == "ok")]
        ratio = f" ({value / ref[metric].iloc[0]:.2f}x)" if len(ref) and ref[metric].iloc[0] else ""
        text[cell], values[cell] = _si(value, unit) + ratio, value
    caption = (f"{title}; {setting}; in brackets: ratio to the {REFERENCE}; "
               f"{symbol}: {length_axis(df)[1]}")
    return PivotTable(title, caption, columns, _models(df), text,
                      _best(values, columns, higher))


def scaling(rows: list[dict], metric: str) -> dict | None:
    """Least-squares slope of log(metric) against log(length), with R^2; None under 2 lengths."""
    pts = [(math.log(r["length"]), math.log(r[metric])) for r in rows if r.get(metric)]
    if len({x for x, _ in pts}) < 2:
        return None
    xs, ys = zip(*pts)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    ss_res = sum((y - (my + slope * (x - mx))) ** 2 for x, y in pts)
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"slope": slope, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0, "points": len(pts)}


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
        at = f" at {length_axis(df)[0]}={longest['length']}"
        if not pd.isna(longest.get("efficiency")):
            text[(model, columns[3])] = f"{longest['efficiency']:.1%}{at}"
        if not pd.isna(longest.get("data_gen_fraction")):
            text[(model, columns[4])] = f"{longest['data_gen_fraction']:.2%}{at}"
    caption = (f"scaling with length: log-log slope (1 = linear, 2 = quadratic) and fit quality; "
               f"{setting}")
    return PivotTable("scaling", caption, columns, _models(df), text, set())


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
    caption = ("streaming, one sequence at a time (batch 1): latency of one token at position t "
               f"and the state carried; models measured at {setting}")
    return PivotTable("streaming", caption, columns, _models(df), text,
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
