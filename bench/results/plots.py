"""Figures from stored records only (never re-runs training or measurement).

`seqbench plot DIR` writes, as PNG (and SVG with --svg) under DIR/plots/, with a caption for each
in DIR/plots/figures.json (what report.html shows under it, grouped by task):

* accuracy_<task>: held-out score vs sequence length, one line per model through the mean over
  seeds, error bars from the worst to the best seed, the models dodged sideways so that coinciding
  points (several models at 1.0) all show; chance dashed, solve threshold dotted, and the shortcut
  learner's score at each length (seqbench.cell.shortcut: the best cheap learner with no
  sequential memory, mean over seeds) dash-dot-dot. Cells that diverged, ran out of memory or
  failed have no score and are marked below the axis instead of being dropped. For a
  length-generalisation task: the score at the longest training length N and at each test length,
  with the training boundary N marked.
* heatmap_<task>: model x length (for length generalisation: N and the test lengths), mean
  score, annotated; the colour scale runs from chance to 1, so the colour shows where each
  architecture breaks. Cells where every seed failed are grey and say how; partly failed cells
  carry the failure count.
* training_<task>: validation score vs training step at the longest length (seqbench.results.
  dynamics), mean over seeds; skipped where the records have no history.
* gradflow_<task>: gradient norm at the scored step vs distance back in time (seqbench.cell.
  gradflow), at the longest length with a stored flow, mean over seeds; untrained dashed, trained
  solid. Skipped for a task whose records have no gradient flow.
* speed_memory_<device>_<dtype>_b<batch>: training and inference tokens/s (error bars: the
  interquartile range of the step time) and activation (and, where measured, peak) memory vs
  length, log-log, one line per model (every family measured), one figure per setting; points
  that ran out of memory or failed are marked at the bottom of throughput panels and at the top of
  memory panels.

With several hyper-parameter sets, each (task, model, length) shows the set the tables show
(seqbench.results.tables.best_sets). Every model has one fixed colour and marker in every figure,
the ones its family declares (stored in its records: seqbench.display; a variant's are derived
from its name), and length axes name the task's own length (copy: delay T). PNGs are drawn at a
modest resolution and stored with a 256-colour palette (a quarter of the size, no visible loss), as
report.html embeds them. Figures are built on matplotlib.figure.Figure with the Agg canvas and
styled inside matplotlib.rc_context, so neither pyplot's global figure state nor the global
rcParams are touched; each is built and saved by a job of seqbench.results.render, one process
per core (--jobs), with the same files whichever process draws it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from seqbench.cell.record import FAILED
from seqbench.env import usable_cores
from seqbench.fileio import atomic_write
from seqbench.results.cellstats import seed_count_text
from seqbench.results.dynamics import (
    flow_frame,
    gradflow_caption,
    gradflow_figure,
    history_frame,
    training_caption,
    training_figure,
)
from seqbench.results.plotstyle import (
    GREY,
    STYLE_COLUMNS,
    legend,
    length_label,
    mark_failures,
    model_handles,
    model_styles,
    new_figure,
    references,
    series,
    set_length_axis,
    slug,
    spans_decades,
    status_handles,
)
from seqbench.results.render import Job, render
from seqbench.results.report import FIGURES_JSON
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

__all__ = ["accuracy_figure", "flow_frame", "generalisation_curve", "gradflow_figure",
           "heatmap_figure", "model_styles", "plot_folder", "speed_memory_figure"]
PREFIXES = ("accuracy_", "heatmap_", "training_", "gradflow_", "speed_memory_")  # `plot` owns these
EXTRAS = ("png", "svg")  # the formats of those files in plots/


# Accuracy ---------------------------------------------------------------------------------------


def with_shortcut(df: pd.DataFrame) -> pd.DataFrame:
    """df with shortcut_score: the test score of the shortcut learner of each row's cell (None
    where its record has none)."""
    stored = df["shortcut"] if "shortcut" in df else pd.Series(None, index=df.index)
    return df.assign(shortcut_score=[s.get("score") if isinstance(s, dict) else None
                                     for s in stored])


def shortcut_scores(tdf: pd.DataFrame) -> dict[int, float]:
    """The shortcut learner's score at each length of tdf's rows, mean over its cells."""
    if "shortcut_score" not in tdf:
        return {}
    scored = tdf.dropna(subset=["shortcut_score"])
    return scored.groupby("length")["shortcut_score"].mean().to_dict()


def generalisation_curve(tdf: pd.DataFrame, gdf: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, seed, length, score, status, shortcut_score) of length-generalisation cells at
    one training length N: their in-distribution score at N and their score at each test length
    (the shortcut learner's likewise, where recorded)."""
    tdf = with_shortcut(tdf)
    facts = ["score_name", "solve_threshold", *(c for c in STYLE_COLUMNS if c in tdf)]
    inside = tdf[["key", "model", "seed", "length", "id_score", "status", "chance",
                  "shortcut_score", *facts]]
    tests = gdf[gdf["key"].isin(tdf["key"])][["key", "model", "seed", "length", "score", "status",
                                               "chance"]]
    tests = tests.merge(tdf[["key", *facts]], on="key")
    ood = {(key, int(n)): score
           for key, lengths, stored in zip(tdf["key"], tdf["generalise.lengths"],
                                           tdf.get("shortcut", [None] * len(tdf)))
           if isinstance(stored, dict)
           for n, score in zip(str(lengths).split(), stored.get("ood_scores", []))}
    tests["shortcut_score"] = [ood.get((k, int(n))) for k, n in zip(tests["key"], tests["length"])]
    return pd.concat([inside.rename(columns={"id_score": "score"}), tests], ignore_index=True)


def accuracy_figure(task_name: str, tdf: pd.DataFrame, boundary: int | None = None) -> Figure:
    """Score vs length per model for one task (rows: Store.frame() rows of that task, or a
    generalisation_curve with the training boundary N)."""
    score_name, threshold, chance = task_facts(tdf)
    lengths = sorted(tdf["length"].unique().tolist())
    models, styles = _models(tdf), model_styles(tdf)
    fig = new_figure(7.5, 4.4)
    ax = fig.add_subplot()
    ok = tdf[~tdf["status"].isin(FAILED) & tdf["score"].notna()]
    stats = ok.groupby(["model", "length"])["score"].agg(["mean", "min", "max"])
    for model in models:
        if model in stats.index:
            s = stats.loc[model]
            series(ax, s.index.to_numpy(), s["mean"], s["min"], s["max"], model, models, styles)
    failed = tdf[tdf["status"].isin(FAILED)]
    mark_failures(ax, failed, -0.06, models, styles)
    lines = references(ax, chance, threshold, shortcut_scores(tdf))
    ax.axhline(0, color="0.8", linewidth=0.8)
    if boundary is not None:
        ax.axvline(boundary, color="firebrick", linestyle="-.", linewidth=1.3)
    set_length_axis(ax, lengths, spans_decades(lengths), length_label(tdf, boundary))
    ax.set_ylim(-0.12, 1.05)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(f"held-out {score_name} (fraction)")
    seeds = tdf["seed"].nunique()
    symbol, meaning = length_axis(tdf)
    what = (f"{meaning} {symbol}" if boundary is None
            else f"test {symbol} (trained on lengths up to N={boundary})")
    spread = "bars: worst to best seed" if seeds > 1 else "one seed"
    ax.set_title(f"{task_name}: {score_name} vs {what}\n"
                 f"mean over {seed_count_text([seeds])}; {spread}", fontsize="medium")
    if boundary is not None:
        lines.append(Line2D([], [], color="firebrick", linestyle="-.",
                            label=f"training length N={boundary}"))
    legend(fig, model_handles(models, styles) + lines + status_handles(failed["status"]))
    return fig


def accuracy_caption(task_name: str, tdf: pd.DataFrame, boundary: int | None = None) -> str:
    score_name, threshold, _ = task_facts(tdf)
    symbol, meaning = length_axis(tdf)
    seeds = tdf["seed"].nunique()
    spread = ("error bars from the worst to the best seed (min–max)" if seeds > 1
              else "one seed, so no error bars")
    lg = ("" if boundary is None else
          f" Left of the red dash-dot line N={boundary}: the score at the training length (in "
          f"distribution); to its right, at the longer test lengths.")
    return (f"{task_name}: held-out (test-set) {score_name} against {meaning} {symbol}, one line "
            f"per model through the mean over {seed_count_text([seeds])}, {spread}; models at "
            f"the same length are set a few points apart sideways so that coinciding ones all "
            f"show. Grey dashed: chance; dotted: solved at ≥ {threshold:g}; dash-dot-dot: the shortcut "
            f"(n-gram) learner's test score at each length (mean over seeds; the best cheap "
            f"learner with no sequential memory: a model near it need not use the long-range "
            f"dependency). Cells that diverged, ran out of memory or failed have no score and are "
            f"marked below the axis." + lg)


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
    fig = new_figure(max(5.0, 2.6 + 1.0 * len(lengths)), 1.4 + 0.55 * len(models))
    ax = fig.add_subplot()
    ax.set_facecolor("0.88")  # cells with no score (every seed failed, or none stored)
    ax.grid(False)
    # seaborn's heatmap, less the full draw of the figure it makes to test whether tick labels
    # overlap (they cannot here): about 60 ms of a heatmap's 170 on results/quick
    ax.spines[:].set_visible(False)
    mesh = ax.pcolormesh(np.ma.masked_invalid(means.to_numpy(float)), cmap="viridis", vmin=chance,
                         vmax=1.0, linewidths=1, edgecolor="white")
    ax.set(xlim=(0, len(lengths)), ylim=(len(models), 0))
    fig.colorbar(mesh, ax=ax, label=f"mean {score_name}\n(chance {chance:.3g} to 1)"
                 ).outline.set_linewidth(0)
    ax.set_xticks(np.arange(len(lengths)) + 0.5, labels=[str(n) for n in lengths])
    ax.set_yticks(np.arange(len(models)) + 0.5, labels=models, va="center")
    mesh.update_scalarmappable()
    for colour, (i, j) in zip(mesh.get_facecolors(), np.ndindex(means.shape)):
        dark = pd.notna(means.iat[i, j]) and luminance(colour) <= 0.408  # white text on dark
        ax.text(j + 0.5, i + 0.5, text.iat[i, j], ha="center", va="center", fontsize="small",
                color="w" if dark else "0.15")
    ax.set_xlabel(length_label(tdf, boundary))
    ax.set_ylabel("model")
    ax.set_title(f"{task_name}: mean held-out {score_name} by model and {length_axis(tdf)[0]}\n"
                 f"colour from chance to 1; grey: no score (failed or not run)",
                 fontsize="medium")
    return fig


def luminance(colour) -> float:
    """Relative luminance of an RGB(A) colour (W3C), as seaborn picks an annotation's colour."""
    rgb = np.asarray(colour[:3])
    return float(np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
                 @ [0.2126, 0.7152, 0.0722])


def heatmap_caption(task_name: str, tdf: pd.DataFrame) -> str:
    score_name, _, chances = task_facts(tdf)
    seeds = seed_count_text([tdf["seed"].nunique()])
    return (f"{task_name}: mean held-out {score_name} over {seeds} per model (rows) and "
            f"{length_axis(tdf)[0]} (columns), coloured from chance "
            f"({min(chances.values()):.3g}) to 1. Grey cells have no score (every seed failed, "
            f"named, or the cell was not run); a count in brackets names seeds that failed.")


# Speed and memory -------------------------------------------------------------------------------

# (column, panel title, axis unit, higher is better, always shown, step time whose IQR it has)
PANELS = (
    ("train_tokens_per_s", "training throughput", "tokens/s", True, True, "train_ms"),
    ("infer_tokens_per_s", "inference throughput", "tokens/s", True, True, "infer_ms"),
    ("saved_bytes", "activation memory of a training step\n(bytes saved for backward)", "B",
     False, True, None),
    ("rss_growth_bytes", "peak RSS growth of a training step\n(CPU, fresh process)", "B",
     False, False, None),
    ("train_peak_allocated", "CUDA peak allocated in a training step\n(above the model)", "B",
     False, False, None),
)


def _log_values_axis(axis, values, unit: str) -> None:
    """A log axis with engineering labels (10k, 2M); 1-2-5 ticks when it spans few decades."""
    eng = ticker.EngFormatter(unit="B", sep=" ") if unit == "B" else ticker.EngFormatter(sep="")
    pos = [v for v in values if v > 0]
    few = bool(pos) and max(pos) < 100 * min(pos)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5) if few else (1,)))
    axis.set_major_formatter(eng)
    axis.set_minor_formatter(ticker.NullFormatter())



def interquartile(values: pd.DataFrame, metric: str, timing: str | None):
    """(low, high) of a throughput from the interquartile range of its step time: the records
    store the median time and the IQR's width, so the interval is taken centred on the median,
    tokens / (median -+ IQR/2); no bar (low = high = the value) where no IQR is stored."""
    y = values[metric]
    if timing is None or f"{timing}_iqr" not in values or values[f"{timing}_iqr"].isna().all():
        return y, y
    ms, half = values[timing], values[f"{timing}_iqr"].fillna(0) / 2
    return y * ms / (ms + half), (y * ms / (ms - half)).where(ms > half)


def speed_memory_figure(sdf: pd.DataFrame, setting: str) -> Figure:
    """Throughput (with IQR bars) and memory vs length for one (device, dtype, batch) setting;
    every model of sdf's rows."""
    panels = [p for p in PANELS if p[4] or (p[0] in sdf and sdf[p[0]].notna().any())]
    ncols = 2 if len(panels) == 4 else min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(4.3 * ncols + 1.6, 3.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    lengths = sorted(sdf["length"].unique().tolist())
    models, styles = _models(sdf), model_styles(sdf)
    ok = sdf[sdf["status"] == "ok"]
    failed = sdf[sdf["status"] != "ok"]
    for ax, (metric, title, unit, higher, _, timing) in zip(axes, panels):
        columns = [c for c in (metric, timing, f"{timing}_iqr") if c in ok]
        values = (ok.dropna(subset=[metric]).astype({c: float for c in columns})
                  .groupby(["model", "length"])[columns].mean()
                  if metric in ok else pd.DataFrame(columns=[metric]))
        for model in models:
            if model in values.index:
                mine = values.loc[model]
                low, high = interquartile(mine, metric, timing)
                series(ax, mine.index.to_numpy(), mine[metric], low, high, model, models, styles)
        ax.set_yscale("log")
        ax.margins(y=0.14)  # (in log space) a strip above and below the data for failed points
        if values.empty:
            ax.text(0.5, 0.5, "no successful point", transform=ax.transAxes, ha="center",
                    va="center", color=GREY)
            ax.set_yticks([])
        else:
            _log_values_axis(ax.yaxis, values[metric].tolist(), unit)
        # failures: no throughput (bottom), memory exceeded (top)
        mark_failures(ax, failed, 0.04 if higher else 0.96, models, styles, axes_y=True)
        set_length_axis(ax, lengths, True, length_label(sdf))
        ax.set_ylabel("tokens/s" if unit == "tokens/s" else "bytes")
        ax.set_title(title, fontsize="medium")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"speed and memory vs {length_label(sdf)} ({setting}; log-log)\n"
                 "throughput bars: step-time IQR; failed points: bottom of throughput panels, "
                 "top of memory panels")
    legend(fig, model_handles(models, styles) + status_handles(failed["status"]))
    return fig


def speed_memory_caption(sdf: pd.DataFrame, setting: str) -> str:
    return (f"Speed and memory ({setting}) against {length_label(sdf)}, log-log, one line per "
            f"model ({len(_models(sdf))} measured). Throughput: tokens per second of a training "
            f"step and of an inference forward pass at the median step time; error bars: the "
            f"interquartile range of the step time over the timed blocks (stored as its width, "
            f"drawn centred on the median). Memory: bytes saved for backward by one training step "
            f"(and peak memory where measured). Points that ran out of memory or failed are "
            f"marked at the bottom of throughput panels and the top of memory panels.")


# The folder -------------------------------------------------------------------------------------


def task_jobs(title: str, tdf: pd.DataFrame, df: pd.DataFrame, gdf: pd.DataFrame,
              records: dict) -> list[Job]:
    """The figures of one table's study: accuracy, heatmap, training curves and gradient flow
    (the last two where the records hold them)."""
    task_name, keys = tdf["task"].iloc[0], set(tdf["key"])
    score_name, threshold, chance = task_facts(tdf)
    name, boundary = slug(task_name), None
    if is_generalisation(tdf).any():
        others = sorted(set(study(df)[df["task"] == task_name]) - {task_name})
        name += "_generalisation" + (f"{others.index(title)}" if len(others) > 1 else "")
        boundary = int(tdf["length"].max())
        tdf = generalisation_curve(tdf[tdf["length"] == boundary], gdf)
    jobs = [Job(f"accuracy_{name}", task_name, accuracy_caption(task_name, tdf, boundary),
                accuracy_figure, (task_name, tdf, boundary)),
            Job(f"heatmap_{name}", task_name, heatmap_caption(task_name, tdf),
                heatmap_figure, (task_name, tdf, boundary))]
    mine = [r for k, r in records.items() if k in keys]
    history = history_frame(mine)
    if not history.empty:  # records always have one; hand-made ones may not
        jobs.append(Job(f"training_{name}", task_name,
                        training_caption(task_name, history, score_name), training_figure,
                        (task_name, history, score_name, threshold, chance)))
    flows = flow_frame(mine)
    if not flows.empty:  # records from before gradient flow was stored have none
        jobs.append(Job(f"gradflow_{name}", task_name, gradflow_caption(task_name, flows),
                        gradflow_figure, (task_name, flows)))
    return jobs


def plot_folder(root: str | Path, loaded: Loaded | None = None, svg: bool = False,
                jobs: int = 0) -> list[Path]:
    """Write every figure the stored records of root support under root/plots/ (PNG, and SVG if
    svg), with their tasks and captions in root/plots/figures.json; return the figures' paths.
    They are drawn by jobs processes at once (0: one per core; 1: in this process), with the same
    files whichever (seqbench.results.render).

    Raises ConfigError if root holds no usable cell or measurement record. Figures of earlier runs
    that this run did not write (file names this module owns) are removed.
    """
    store = Store(root)
    loaded = loaded or store.read()
    records = loaded.records
    mdf = measurement_frame(loaded.measurements.values())
    if not records and mdf.empty:
        raise ConfigError(f"plot: {store.root} holds no stored records "
                          f"(no usable cells/*.json or measurements/*.json)")
    todo: list[Job] = []
    if records:
        df = best_sets(headline(with_shortcut(cell_frame(records.values()))))
        gdf = generalisation_frame(records.values())
        for title, tdf in studies(df):
            todo += task_jobs(title, tdf, df, gdf, records)
    measured = mdf.groupby(["device", "dtype", "batch_size"]) if not mdf.empty else []
    for (device, dtype, batch), sdf in measured:
        setting = f"{device}, {dtype}, batch {batch}"
        todo.append(Job(f"speed_memory_{slug(device)}_{slug(dtype)}_b{batch}", "",
                        speed_memory_caption(sdf, setting), speed_memory_figure, (sdf, setting)))
    out = store.root / "plots"
    out.mkdir(parents=True, exist_ok=True)
    made = render(todo, out, svg, jobs or usable_cores())
    notes = [{"file": paths[0].name, "task": job.task, "caption": job.caption}
             for job, paths in zip(todo, made)]
    atomic_write(out / FIGURES_JSON, json.dumps({"figures": notes}, indent=1) + "\n")
    written = [path for paths in made for path in paths]
    keep = set(written)
    for stale in sorted(out.iterdir()):
        if stale.suffix[1:] in EXTRAS and stale.name.startswith(PREFIXES) and stale not in keep:
            stale.unlink()
    return written
