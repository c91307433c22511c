"""Figures from stored records only (never re-runs training or measurement).

`seqbench plot DIR` writes, as PNG and SVG under DIR/plots/:

* accuracy_<task>: held-out score vs sequence length, one line per model (mean over seeds, band
  from the worst to the best seed), chance dashed, solve threshold dotted; cells that diverged, ran
  out of memory or failed have no score and are marked below the axis instead of being dropped.
  For a length-generalisation task: the score at the longest training length N and at each test
  length, with the training boundary N marked.
* heatmap_<task>: model x length (for length generalisation: N and the test lengths), mean
  score, annotated; the colour scale runs from chance to 1, so
  the colour shows where each architecture breaks. Cells where every seed failed are grey and say
  how; partly failed cells carry the failure count.
* speed_memory_<device>_<dtype>_b<batch>: training and inference tokens/s and activation (and, where
  measured, peak) memory vs length, log-log, one line per model, one figure per setting; points
  that ran out of memory or failed are marked at the bottom of throughput panels and at the top of
  memory panels.
* gradflow_<task>: gradient norm at the scored step vs distance back in time (seqbench.cell.gradflow), at
  the task's longest length with a stored gradient flow, mean over seeds; untrained dashed,
  trained solid. Skipped for a task whose records have no gradient flow.

With several hyper-parameter sets, each (task, model, length) shows the set the tables show
(seqbench.results.report.best_sets). Every model has one fixed colour and marker in every figure,
the ones its family declares (stored in its records: seqbench.display; a variant's are derived
from its name), and length axes name the task's own length (copy: delay T). Figures are built on
matplotlib.figure.Figure with the Agg canvas and styled inside matplotlib.rc_context, so neither
pyplot's global figure state nor the global rcParams are touched.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker, transforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from seqbench import display
from seqbench.cell.record import FAILED, CellRecord
from seqbench.results.store import (
    Loaded,
    Store,
    cell_frame,
    generalisation_frame,
    measurement_frame,
)
from seqbench.results.tables import (
    _models,
    best_sets,
    headline,
    is_generalisation,
    length_axis,
    studies,
    study,
    task_facts,
)
from seqbench.strict import ConfigError

FORMATS = ("png", "svg")
PREFIXES = ("accuracy_", "heatmap_", "speed_memory_", "gradflow_")  # what `plot` owns in plots/
STATUS_MARKERS = {"diverged": "x", "oom": "X", "error": "P"}
STATUS_LABELS = {"diverged": "diverged", "oom": "out of memory", "error": "error"}
GREY = "0.35"
# display columns (seqbench.display) a figure's frame carries
STYLE_COLUMNS = ["model_order", "variant", "model_colour", "model_marker", "length_symbol",
                 "length_meaning"]
STYLE = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "svg.hashsalt": "seqbench",  # stable element ids: the same records give the same SVG
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, editable, smaller
    "savefig.dpi": 150,
    "legend.frameon": False,
}


def model_styles(df: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """(colour, marker) of each model of df's rows, as their records store them (defaults
    derived from the name for a frame made without the display columns)."""
    if {"model_colour", "model_marker"} <= set(df.columns):
        first = df.drop_duplicates("model")
        return dict(zip(first["model"], zip(first["model_colour"], first["model_marker"])))
    return {m: (d["colour"], d["marker"]) for m in df["model"].unique()
            for d in [display.model(m)]}


def length_label(df: pd.DataFrame, boundary: int | None = None) -> str:
    """The x-axis label of lengths: the task's meaning and symbol (copy: delay T)."""
    symbol, meaning = length_axis(df)
    if boundary is None:
        return f"{meaning} {symbol}" if symbol != meaning else meaning
    return f"{meaning} {symbol}: training up to N={boundary}, then the test lengths"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))


def _save(fig: Figure, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in FORMATS:
        path = out / f"{name}.{ext}"
        # no timestamps or version strings: the same records give the same files
        meta = {"Software": None} if ext == "png" else {"Date": None, "Creator": None}
        fig.savefig(path, format=ext, metadata=meta)
        fig.set_layout_engine("none")  # laid out by the first save: keep it, do not redo it
        paths.append(path)
    return paths


def _spans_decades(values) -> bool:
    """More than a 10x range between the smallest and largest positive value."""
    pos = [v for v in values if v > 0]
    return bool(pos) and max(pos) > 10 * min(pos)


def _length_axis(ax, lengths: list[int], log: bool, label: str) -> None:
    """x axis over the measured lengths: ticks at each of them, log-scaled if asked."""
    if log:
        ax.set_xscale("log")
    ax.set_xticks(lengths, labels=[str(n) for n in lengths])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if len(lengths) == 1:
        n = lengths[0]
        ax.set_xlim(n / 2, n * 2) if log else ax.set_xlim(n - 1, n + 1)
    ax.set_xlabel(label)


def _model_handles(models: list[str], styles: dict) -> list[Line2D]:
    return [Line2D([], [], color=styles[m][0], marker=styles[m][1], label=m) for m in models]


def _status_handles(statuses) -> list[Line2D]:
    return [Line2D([], [], color=GREY, marker=STATUS_MARKERS[s], linestyle="none", markersize=8,
                   label=f"{STATUS_LABELS[s]} (no value)") for s in FAILED if s in set(statuses)]


def _legend(fig: Figure, handles: list) -> None:
    fig.legend(handles=handles, loc="outside right upper")


def _mark_failures(ax, failed: pd.DataFrame, y: float, models: list[str], styles: dict,
                   axes_y: bool = False) -> None:
    """One marker per (model, length, status) of failed rows at height y (data coordinates, or
    axes coordinates if axes_y), in the model's colour; the models sit side by side around their
    length (a fixed offset in points per model, on any x scale) so that none hides another."""
    base = ax.get_xaxis_transform() if axes_y else ax.transData
    fig = ax.get_figure()
    for (model, length, status), _ in failed.groupby(["model", "length", "status"]):
        i = models.index(model) if model in models else 0
        shift = transforms.ScaledTranslation((i - (len(models) - 1) / 2) * 9 / 72, 0,
                                             fig.dpi_scale_trans)
        ax.scatter([length], [y], marker=STATUS_MARKERS.get(status, "X"), s=60,
                   color=styles[model][0], linewidths=2 if status == "diverged" else 0.8,
                   edgecolors="black" if status != "diverged" else None, zorder=5, clip_on=False,
                   transform=base + shift)


# Accuracy ---------------------------------------------------------------------------------------


def generalisation_curve(tdf: pd.DataFrame, gdf: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, seed, length, score, status) of length-generalisation cells at one training
    length N: their in-distribution score at N and their score at each test length."""
    facts = ["score_name", "solve_threshold", *(c for c in STYLE_COLUMNS if c in tdf)]
    inside = tdf[["key", "model", "seed", "length", "id_score", "status", "chance", *facts]]
    tests = gdf[gdf["key"].isin(tdf["key"])][["key", "model", "seed", "length", "score", "status",
                                               "chance"]]
    tests = tests.merge(tdf[["key", *facts]], on="key")
    return pd.concat([inside.rename(columns={"id_score": "score"}), tests], ignore_index=True)


def accuracy_figure(task_name: str, tdf: pd.DataFrame, boundary: int | None = None) -> Figure:
    """Score vs length per model for one task (rows: Store.frame() rows of that task, or a
    generalisation_curve with the training boundary N)."""
    score_name, threshold, chance = task_facts(tdf)
    lengths = sorted(tdf["length"].unique().tolist())
    models, styles = _models(tdf), model_styles(tdf)
    log = _spans_decades(lengths)
    fig = _figure(7.5, 4.4)
    ax = fig.add_subplot()
    ok = tdf[~tdf["status"].isin(FAILED) & tdf["score"].notna()]
    for model in models:
        mdf = ok[ok["model"] == model]
        if not mdf.empty:
            sns.lineplot(data=mdf, x="length", y="score", estimator="mean", errorbar=("pi", 100),
                         err_style="bars" if len(lengths) == 1 else "band",
                         err_kws={"alpha": 0.15} if len(lengths) > 1 else {"capsize": 4},
                         color=styles[model][0], marker=styles[model][1], markersize=7, ax=ax,
                         legend=False)
    failed = tdf[tdf["status"].isin(FAILED)]
    _mark_failures(ax, failed, -0.06, models, styles)
    chances = [chance[n] for n in lengths if n in chance]
    if len(set(chances)) == 1:
        ax.axhline(chances[0], color=GREY, linestyle="--", linewidth=1.3)
    else:
        ax.plot(sorted(chance), [chance[n] for n in sorted(chance)], color=GREY, linestyle="--",
                linewidth=1.3)
    ax.axhline(threshold, color=GREY, linestyle=":", linewidth=1.6)
    ax.axhline(0, color="0.8", linewidth=0.8)
    if boundary is not None:
        ax.axvline(boundary, color="firebrick", linestyle="-.", linewidth=1.3)
    _length_axis(ax, lengths, log, length_label(tdf, boundary))
    ax.set_ylim(-0.12, 1.05)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(f"held-out {score_name} (fraction)")
    seeds = tdf["seed"].nunique()
    symbol, meaning = length_axis(tdf)
    what = (f"{meaning} {symbol}" if boundary is None
            else f"test {symbol} (trained on lengths up to N={boundary})")
    ax.set_title(f"{task_name}: {score_name} vs {what}\n"
                 f"mean over {seeds} seed(s); " + ("band: worst to best seed" if seeds > 1
                                                   else "one seed"), fontsize="medium")
    chance_label = (f"chance ({chances[0]:.3g})" if len(set(chances)) == 1
                    else f"chance ({min(chances):.3g}–{max(chances):.3g})")
    handles = _model_handles(models, styles) + [
        Line2D([], [], color=GREY, linestyle="--", label=chance_label),
        Line2D([], [], color=GREY, linestyle=":", linewidth=1.6,
               label=f"solved at ≥ {threshold:g}"),
    ] + ([Line2D([], [], color="firebrick", linestyle="-.", label=f"training length N={boundary}")]
         if boundary is not None else []) + _status_handles(failed["status"])
    _legend(fig, handles)
    return fig


def heatmap_figure(task_name: str, tdf: pd.DataFrame, boundary: int | None = None) -> Figure:
    """Mean score per (model, length) for one task, coloured from chance (dark) to 1 (bright)."""
    score_name, _, chances = task_facts(tdf)
    lengths = sorted(tdf["length"].unique().tolist())
    models = _models(tdf)
    means = pd.DataFrame(np.nan, index=models, columns=lengths)
    text = pd.DataFrame("", index=models, columns=lengths)
    for (model, length), group in tdf.groupby(["model", "length"]):
        ok = group[~group["status"].isin(FAILED) & group["score"].notna()]
        failures = group.loc[group["status"].isin(FAILED), "status"].value_counts()
        note = ", ".join(f"{n} {s}" for s, n in failures.items())
        if not ok.empty:
            means.loc[model, length] = ok["score"].mean()
            text.loc[model, length] = f"{ok['score'].mean():.2f}" + (f"\n({note})" if note else "")
        else:
            text.loc[model, length] = note or "no score"
    chance = min(chances.values())
    fig = _figure(max(5.0, 2.6 + 1.0 * len(lengths)), 1.4 + 0.55 * len(models))
    ax = fig.add_subplot()
    ax.set_facecolor("0.88")  # cells with no score (every seed failed, or none stored)
    ax.grid(False)
    sns.heatmap(means, mask=means.isna(), vmin=chance, vmax=1.0, cmap="viridis",
                annot=text.where(means.notna(), "").to_numpy(), fmt="", linewidths=1,
                linecolor="white", annot_kws={"fontsize": "small"}, ax=ax,
                cbar_kws={"label": f"mean {score_name}\n(chance {chance:.3g} to 1)"})
    for i, model in enumerate(models):  # seaborn leaves masked cells unannotated
        for j, length in enumerate(lengths):
            if pd.isna(means.loc[model, length]):
                ax.text(j + 0.5, i + 0.5, text.loc[model, length], ha="center", va="center",
                        fontsize="small", color="0.15")
    ax.set_xlabel(length_label(tdf, boundary))
    ax.set_ylabel("model")
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(f"{task_name}: mean held-out {score_name} by model and {length_axis(tdf)[0]}\n"
                 f"colour from chance to 1; grey: no score (failed or not run)",
                 fontsize="medium")
    return fig


# Speed and memory -------------------------------------------------------------------------------

# (column, panel title, axis unit, higher is better, always shown)
PANELS = (
    ("train_tokens_per_s", "training throughput", "tokens/s", True, True),
    ("infer_tokens_per_s", "inference throughput", "tokens/s", True, True),
    ("saved_bytes", "activation memory of a training step\n(bytes saved for backward)", "B",
     False, True),
    ("rss_growth_bytes", "peak RSS growth of a training step\n(CPU, fresh process)", "B",
     False, False),
    ("train_peak_allocated", "CUDA peak allocated in a training step\n(above the model)", "B",
     False, False),
)


def _log_values_axis(axis, values, unit: str) -> None:
    """A log axis with engineering labels (10k, 2M); 1-2-5 ticks when it spans few decades."""
    eng = ticker.EngFormatter(unit="B", sep=" ") if unit == "B" else ticker.EngFormatter(sep="")
    pos = [v for v in values if v > 0]
    few = bool(pos) and max(pos) < 100 * min(pos)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5) if few else (1,)))
    axis.set_major_formatter(eng)
    axis.set_minor_formatter(ticker.NullFormatter())


def speed_memory_figure(sdf: pd.DataFrame, setting: str) -> Figure:
    """Throughput and memory vs length for one (device, dtype, batch) setting."""
    panels = [p for p in PANELS
              if p[4] or (p[0] in sdf and sdf[p[0]].notna().any())]
    ncols = 2 if len(panels) == 4 else min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(4.3 * ncols + 1.6, 3.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    lengths = sorted(sdf["length"].unique().tolist())
    models, styles = _models(sdf), model_styles(sdf)
    ok = sdf[sdf["status"] == "ok"]
    failed = sdf[sdf["status"] != "ok"]
    for ax, (metric, title, unit, higher, _) in zip(axes, panels):
        values = ok[["model", "length", metric]].dropna() if metric in ok else ok.iloc[:0]
        values = values.astype({metric: float}) if len(values) else values
        for model in models:
            mdf = values[values["model"] == model]
            if not mdf.empty:
                sns.lineplot(data=mdf, x="length", y=metric, estimator="mean", errorbar=None,
                             color=styles[model][0], marker=styles[model][1], markersize=7,
                             ax=ax, legend=False)
        ax.set_yscale("log")
        ax.margins(y=0.14)  # (in log space) a strip above and below the data for failed points
        if values.empty:
            ax.text(0.5, 0.5, "no successful point", transform=ax.transAxes, ha="center",
                    va="center", color=GREY)
            ax.set_yticks([])
        else:
            _log_values_axis(ax.yaxis, values[metric].tolist(), unit)
        # failures: no throughput (bottom), memory exceeded (top)
        _mark_failures(ax, failed, 0.04 if higher else 0.96, models, styles, axes_y=True)
        _length_axis(ax, lengths, True, length_label(sdf))
        ax.set_ylabel("tokens/s" if unit == "tokens/s" else "bytes")
        ax.set_title(title, fontsize="medium")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"speed and memory vs {length_label(sdf)} ({setting}; log-log)\n"
                 "failed points: bottom of throughput panels, top of memory panels")
    _legend(fig, _model_handles(models, styles) + _status_handles(failed["status"]))
    return fig


# Gradient flow ----------------------------------------------------------------------------------


FLOW_COLUMNS = ["model", "length", "seed", "phase", "distance", "norm", *STYLE_COLUMNS]


def flow_frame(records: list[CellRecord]) -> pd.DataFrame:
    """Tidy gradient-flow points: model, length, seed, phase, distance, norm (and the display
    columns of model and task)."""
    rows = []
    for r in records:
        shown = {k: v for k, v in display.columns(r.model_style(), r.task_style()).items()
                 if k in FLOW_COLUMNS}
        for phase, flow in (r.grad_flow or {}).items():
            for d, n in zip(flow.get("distance", []), flow.get("norm", [])):
                rows.append(shown | {"length": r.length, "seed": r.seed, "variant": r.variant,
                                     "phase": phase, "distance": d, "norm": n})
    return pd.DataFrame(rows, columns=FLOW_COLUMNS)


def gradflow_figure(task_name: str, flows: pd.DataFrame) -> Figure:
    """Gradient norm vs distance from the scored step at the longest length with a stored flow."""
    length = int(flows["length"].max())
    at = flows[flows["length"] == length]
    mean = at.groupby(["model", "phase", "distance"], as_index=False)["norm"].mean()
    seeds = at["seed"].nunique()
    models, styles = _models(at), model_styles(at)
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    zeros = False
    for model in models:
        for phase, style in (("untrained", "--"), ("trained", "-")):
            curve = mean[(mean["model"] == model) & (mean["phase"] == phase)]
            if curve.empty:
                continue
            curve = curve.sort_values("distance")
            norm = curve["norm"].where(curve["norm"] > 0)  # log axis: exact zeros marked below
            ax.plot(curve["distance"], norm, linestyle=style, color=styles[model][0],
                    marker=styles[model][1], markersize=3.5, linewidth=1.6,
                    alpha=0.75 if phase == "untrained" else 1.0)
            dead = curve.loc[curve["norm"] <= 0, "distance"]
            if len(dead):
                zeros = True
                ax.scatter(dead, [0.02] * len(dead), marker="|", s=60, color=styles[model][0],
                           transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_yscale("log", nonpositive="mask")
    if zeros:
        ax.margins(y=0.1)  # room under the data for the exact-zero marks
    distances = sorted(at["distance"].unique().tolist())
    if _spans_decades(distances):
        ax.set_xscale("symlog", linthresh=1, linscale=0.4)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        xlabel = "distance d back from the scored step p (steps; log beyond 1)"
    else:
        ax.set_xlim(-0.3, max(distances) + 0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        xlabel = "distance d back from the scored step p (steps)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(r"gradient norm $\|\partial \ell_p / \partial e_{p-d}\|$ (log)")
    ax.set_title(f"{task_name}: gradient flow through time at {length_axis(at)[0]}={length}\n"
                 f"reach of the loss at the scored step into the input d steps back\n"
                 f"(batch mean; mean over {seeds} seed(s))", fontsize="medium")
    handles = _model_handles(models, styles) + [
        Line2D([], [], color=GREY, linestyle="--", label="untrained (at initialisation)"),
        Line2D([], [], color=GREY, linestyle="-", label="trained"),
    ]
    if zeros:
        handles.append(Line2D([], [], color=GREY, marker="|", linestyle="none", markersize=9,
                              label="norm exactly 0"))
    _legend(fig, handles)
    return fig


# The folder -------------------------------------------------------------------------------------


def plot_folder(root: str | Path, loaded: Loaded | None = None) -> list[Path]:
    """Write every figure the stored records of root support under root/plots/; return the paths.

    Raises ConfigError if root holds no usable cell or measurement record. Figures of earlier runs
    that the records no longer support (file names this module owns) are removed.
    """
    store = Store(root)
    loaded = loaded or store.read()
    records = loaded.records
    mdf = measurement_frame(loaded.measurements.values())
    if not records and mdf.empty:
        raise ConfigError(f"plot: {store.root} holds no stored records "
                          f"(no usable cells/*.json or measurements/*.json)")
    out = store.root / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.rc_context(STYLE):
        if records:
            df = best_sets(headline(cell_frame(records.values())))
            gdf = generalisation_frame(records.values())
            titles = study(df)
            for title, tdf in studies(df):
                task_name, keys = tdf["task"].iloc[0], set(tdf["key"])
                name = _slug(task_name)
                boundary = None
                if is_generalisation(tdf).any():
                    others = sorted(set(titles[df["task"] == task_name]) - {task_name})
                    name += "_generalisation" + (f"{others.index(title)}" if len(others) > 1
                                                 else "")
                    boundary = int(tdf["length"].max())
                    tdf = generalisation_curve(tdf[tdf["length"] == boundary], gdf)
                written += _save(accuracy_figure(task_name, tdf, boundary), out,
                                 f"accuracy_{name}")
                written += _save(heatmap_figure(task_name, tdf, boundary), out,
                                 f"heatmap_{name}")
                flows = flow_frame([r for k, r in records.items() if k in keys])
                if not flows.empty:  # records from before gradient flow was stored have none
                    written += _save(gradflow_figure(task_name, flows), out, f"gradflow_{name}")
        if not mdf.empty:
            for (device, dtype, batch), sdf in mdf.groupby(["device", "dtype", "batch_size"]):
                setting = f"{device}, {dtype}, batch {batch}"
                name = f"speed_memory_{_slug(device)}_{_slug(dtype)}_b{batch}"
                written += _save(speed_memory_figure(sdf, setting), out, name)
    keep = set(written)
    for stale in sorted(out.iterdir()):
        if (stale.suffix[1:] in FORMATS and stale.name.startswith(PREFIXES)
                and stale not in keep):
            stale.unlink()
    return written
