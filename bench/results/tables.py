"""Comparison tables from stored records only (never re-runs training or measurement). Torch-free:
everything a table says about a task (chance, solve threshold, score name, the symbol and meaning
of its length, its order) or a model (its shown name and order) comes from its records
(seqbench.display).

Accuracy, per task: models as rows, lengths as columns, mean headline score over seeds with its
standard deviation and the best seed ("0.950 ± 0.030 (max 0.980)"), the best mean per column
marked. Cells where some seed failed carry the failure counts; cells where every seed failed show
the status. Where a task's records come from more than one hyper-parameter set (sweep `hpsets`),
each cell shows the set with the best mean over seeds, named in brackets (a choice made on the
same held-out set the score is measured on, as a tuned baseline would be reported; a tie goes to
the first set by name), and a second table lists every set. Then one "solve length" table: per task and model, the longest length whose
mean score (as shown, so over the best set) reaches the task's solve threshold.

A stored file that could not be trusted (seqbench.results.store.Problem) is not a result, but it is
not nothing either: its cell (task, family and length from its file name) shows "unusable record"
(or "+ k unusable" beside the trusted seeds) in the task's first table, and the solve-length table
names the unusable lengths beyond the solved one, where the solve length is not known.

Length-generalisation tasks (cells with config.generalise): a cell's headline is its mean score over
the test lengths, so the task's table shows that per training length N, and a second table shows
each model's score at N (in distribution) and at every test length, for the longest N.

Speed and memory, per (device, dtype, batch): training and inference tokens/s and memory with each
model's ratio to the Transformer in brackets (the LRA convention), best marked; the log-log slope of
time and memory against length with its R^2; and the achieved fraction of the matmul peak.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from seqbench.cell.record import FAILED

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


def _score_text(group: pd.DataFrame) -> tuple[str, float | None]:
    """Mean ± std (max) over the seeds that did not fail, and the failure counts."""
    ok = group[~group["status"].isin(FAILED)]
    failures = group.loc[group["status"].isin(FAILED), "status"].value_counts()
    note = ", ".join(f"{n} {status}" for status, n in failures.items())
    if ok.empty:
        return note, None
    mean = ok["score"].mean()
    if len(ok) > 1:
        extra = [f"max {ok['score'].max():.3f}"] + ([note] if note else [])
        return f"{mean:.3f} ± {ok['score'].std():.3f} ({'; '.join(extra)})", mean
    return f"{mean:.3f}" + (f" ({note})" if note else ""), mean


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
    return df.assign(id_score=df["score"].where(lg), score=df["score"].mask(lg, df["ood_score"]))


def best_sets(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model, length), the rows of the hyper-parameter set the tables show: the best
    mean score over seeds that did not fail, ties to the first set by name; where no set has a
    score, every row (their failures stay visible)."""
    df = _with_sets(df)
    keep = []
    for _, group in df.groupby(["task", "model", "length"], sort=False):
        best = None
        for name, sgroup in group.groupby("hpset", sort=True):
            ok = sgroup[~sgroup["status"].isin(FAILED) & sgroup["score"].notna()]
            if not ok.empty and (best is None or ok["score"].mean() > best[1]):
                best = (name, ok["score"].mean())
        keep.append(group if best is None else group[group["hpset"] == best[0]])
    return pd.concat(keep) if keep else df


def task_tables(df: pd.DataFrame, gdf: pd.DataFrame | None = None,
                unusable=()) -> list[PivotTable]:
    """Per task its accuracy table (and, with several hyper-parameter sets, a table per set;
    for a length-generalisation task, its per-test-length table from gdf, the rows of
    Store.generalisation_frame()); then the solve-length table over every task. unusable: the
    (task, family, length) of each stored file that could not be trusted."""
    df = headline(_with_sets(df))
    tables = []
    solved: dict[tuple[str, str], int | None] = {}
    tested: dict[str, tuple[str, list[int]]] = {}
    bad = Counter(unusable)
    unsure: dict[tuple[str, str], list[int]] = {}  # (model, study) -> unusable lengths
    for title, tdf in studies(df):
        task_name = tdf["task"].iloc[0]
        score_name, threshold, chance = task_facts(tdf)
        extra = {(m, n): k for (t, m, n), k in bad.items() if t == task_name}
        bad = Counter({c: k for c, k in bad.items() if c[0] != task_name})  # shown once
        lengths = sorted(set(tdf["length"].unique().tolist()) | {n for _, n in extra})
        symbol, meaning = length_axis(tdf)
        tested[title] = (symbol, lengths)
        lg = bool(is_generalisation(tdf).any())
        axis = "N" if lg else symbol
        columns = [f"{axis}={n}" for n in lengths]
        sets = sorted(tdf["hpset"].unique().tolist())
        text, means, set_text, set_means = {}, {}, {}, {}
        for (model, length), group in tdf.groupby(["model", "length"]):
            cell = (model, f"{axis}={length}")
            best = None
            for name, sgroup in group.groupby("hpset", sort=True):
                cell_text, mean = _score_text(sgroup)
                row = (f"{model} [{set_label(name)}]", cell[1])
                set_text[row] = cell_text
                if mean is not None:
                    set_means[row] = mean
                    if best is None or mean > best[1]:
                        suffix = f" [{set_label(name)}]" if len(sets) > 1 else ""
                        best = (cell_text + suffix, mean)
            text[cell], mean = best if best is not None else _score_text(group)
            solved.setdefault((model, title), None)
            if mean is not None:
                means[cell] = mean
                if mean >= threshold:
                    solved[(model, title)] = max(solved[(model, title)] or 0, length)
        for (model, length), k in sorted(extra.items()):
            cell = (model, f"{axis}={length}")
            note = f"{k} unusable record" + ("s" if k > 1 else "")
            text[cell] = f"{text[cell]} + {note}" if cell in text else note
            solved.setdefault((model, title), None)
            unsure.setdefault((model, title), []).append(length)
        models = _with_extra(_models(tdf), (m for m, _ in extra))
        seeds = f"mean ± std (max) over {tdf['seed'].nunique()} seed(s)"
        if len(sets) > 1:
            seeds += (f", best of {len(sets)} hyper-parameter sets per cell by mean (set in "
                      "brackets; chosen on the held-out set)")
        what = score_name
        if lg:
            protocol = tdf["generalise.train"].iloc[0]
            trained = "lengths up to N" if protocol == "range" else "length N"
            what = (f"length generalisation, mean {score_name} over the test lengths "
                    f"{tdf['generalise.lengths'].iloc[0].replace(' ', ', ')} after training on "
                    f"{trained}")
        caption = (f"{task_name}: {what}, {seeds}; {chance_text(chance, lengths)}, solved at >= "
                   f"{threshold:g}; {symbol}: {meaning}" + (f", N: the longest training {symbol}"
                                                            if lg else ""))
        tables.append(PivotTable(title, caption, columns, models, text,
                                 _best(means, columns, higher=True)))
        if lg and gdf is not None and not gdf.empty:
            tables.append(_generalisation_table(title, tdf, gdf))
        if len(sets) > 1:
            rows = [f"{m} [{set_label(name)}]" for m in _models(tdf) for name in sets
                    if any(r[0] == f"{m} [{set_label(name)}]" for r in set_text)]
            caption = (f"{title} by hyper-parameter set: {score_name}, mean ± std (max) "
                       f"over {tdf['seed'].nunique()} seed(s)")
            tables.append(PivotTable(f"{title} by hyper-parameter set", caption, columns, rows,
                                     set_text, _best(set_means, columns, higher=True)))
    if tested:
        models = _with_extra(_models(df), (m for m, _ in unsure))
        tables.append(_solve_table(solved, tested, models, unsure))
    return tables


def _generalisation_table(title: str, tdf: pd.DataFrame, gdf: pd.DataFrame) -> PivotTable:
    """Scores at the longest training length N (in distribution) and at each test length, mean ±
    std (max) over seeds, for the hyper-parameter set the task's table shows."""
    n = int(tdf["length"].max())
    rows = best_sets(tdf[tdf["length"] == n])
    tests = gdf[gdf["key"].isin(rows["key"])]
    lengths = sorted(tests["length"].unique().tolist())
    symbol, meaning = length_axis(tdf)
    columns = [f"N={n} (train)"] + [f"{symbol}={m}" for m in lengths]
    text, means = {}, {}
    for model, group in rows.groupby("model"):
        cell_text, mean = _score_text(group.assign(score=group["id_score"]))
        text[(model, columns[0])] = cell_text
        if mean is not None:
            means[(model, columns[0])] = mean
        for m, lgroup in tests[tests["model"] == model].groupby("length"):
            text[(model, f"{symbol}={m}")], mean = _score_text(lgroup)
            if mean is not None:
                means[(model, f"{symbol}={m}")] = mean
    caption = (f"{title} by test length: {task_facts(tdf)[0]} at the longest "
               f"training length and at each longer test length, mean ± std (max) over "
               f"{rows['seed'].nunique()} seed(s); {symbol}: {meaning}")
    return PivotTable(f"{title} by test length", caption, columns, _models(rows),
                      text, _best(means, columns, higher=True))


def _solve_table(solved: dict[tuple[str, str], int | None],
                 tested: dict[str, tuple[str, list[int]]], models: list[str],
                 unsure: dict[tuple[str, str], list[int]]) -> PivotTable:
    columns = list(tested)  # in the tasks' order
    text = {cell: "—" if n is None else str(n) for cell, n in solved.items()}
    for cell, lengths in unsure.items():
        beyond = [n for n in lengths if n > (solved[cell] or 0)]
        if beyond:
            symbol = tested[cell[1]][0]
            text[cell] += f" ({symbol}={', '.join(map(str, beyond))} unusable)"
    lengths = {cell: n for cell, n in solved.items() if n is not None}
    caption = (
        "solve length: per task, the longest length (in the task's own unit, e.g. copy's delay "
        "T) whose mean score over seeds (as in the task's table: seeds that did not fail, the "
        "best hyper-parameter set) reaches the task's solve threshold (for a "
        "length-generalisation task, the longest training length N whose mean over the test "
        "lengths does); — where no tested length does; (L=n unusable): a longer length whose "
        "stored records could not be read, so it may be longer; lengths tested: "
        + "; ".join(f"{t} {tested[t][0]}={', '.join(map(str, tested[t][1]))}" for t in columns)
    )
    return PivotTable("solve length", caption, columns, models, text,
                      _best(lengths, columns, higher=True))


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
        ref = df[(df["model"] == REFERENCE) & (df["length"] == r["length"]) & (df["status"] == "ok")]
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


def all_tables(df: pd.DataFrame, gdf: pd.DataFrame, mdf: pd.DataFrame,
               unusable=()) -> list[PivotTable]:
    """Every table of a store's frames: cells (with generalisation scores; unusable as in
    task_tables), then measurements."""
    return (task_tables(df, gdf, unusable) if not df.empty else []) + (
        measurement_tables(mdf) if not mdf.empty else [])


