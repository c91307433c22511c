"""What every figure of seqbench.results.plots shares: the style, each model's colour and marker,
length axes, legends, the sideways dodge that keeps coinciding models visible, and the reference
lines of a score axis (chance, solve threshold, the shortcut learner). Imported by the plotting
modules only (matplotlib loads with them, never with a report)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib import ticker, transforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from seqbench import display
from seqbench.cell.record import FAILED
from seqbench.results.tables import length_axis

STATUS_MARKERS = {"diverged": "x", "oom": "X", "error": "P"}
STATUS_LABELS = {"diverged": "diverged", "oom": "out of memory", "error": "error"}
GREY = "0.35"
SHORTCUT = {"color": "0.55", "linestyle": (0, (6, 1.5, 1, 1.5, 1, 1.5)), "linewidth": 1.6}
SHORTCUT_LABEL = "shortcut (n-gram)"
DODGE_PT, DODGE_SPAN_PT = 5.0, 40.0  # sideways step between models at one x, widest spread
# display columns (seqbench.display) a figure's frame carries
STYLE_COLUMNS = ["model_order", "variant", "model_colour", "model_marker", "length_symbol",
                 "length_meaning"]
# seaborn's "whitegrid" style in its "notebook" context at font_scale 0.85 (sns.axes_style,
# sns.plotting_context), written out (less image.cmap, its own "rocket", unused here): importing
# seaborn imports scipy.stats, 0.45 s (python -X importtime) that every `seqbench plot` paid.
# tests/test_plots.py checks that it is still seaborn's.
SEABORN = {
    "axes.axisbelow": True, "axes.edgecolor": ".8", "axes.facecolor": "white", "axes.grid": True,
    "axes.labelcolor": ".15", "axes.labelsize": 10.2, "axes.linewidth": 1.25,
    "axes.spines.bottom": True, "axes.spines.left": True, "axes.spines.right": True,
    "axes.spines.top": True, "axes.titlesize": 10.2, "figure.facecolor": "white",
    "font.family": ["sans-serif"],
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans",
                        "sans-serif"],
    "font.size": 10.2, "grid.color": ".8", "grid.linestyle": "-", "grid.linewidth": 1,
    "legend.fontsize": 9.35, "legend.title_fontsize": 10.2, "lines.linewidth": 1.5,
    "lines.markersize": 6, "lines.solid_capstyle": "round", "patch.edgecolor": "w",
    "patch.force_edgecolor": True, "patch.linewidth": 1, "text.color": ".15",
    "xtick.bottom": False, "xtick.color": ".15", "xtick.direction": "out",
    "xtick.labelsize": 9.35, "xtick.major.size": 6, "xtick.major.width": 1.25,
    "xtick.minor.size": 4, "xtick.minor.width": 1, "xtick.top": False, "ytick.color": ".15",
    "ytick.direction": "out", "ytick.labelsize": 9.35, "ytick.left": False, "ytick.major.size": 6,
    "ytick.major.width": 1.25, "ytick.minor.size": 4, "ytick.minor.width": 1,
    "ytick.right": False,
}
STYLE = {
    **SEABORN,
    "svg.hashsalt": "seqbench",  # stable element ids: the same records give the same SVG
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, editable, smaller
    "figure.dpi": 120,  # modest: the PNGs are embedded in report.html (savefig: the same)
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


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))


def spans_decades(values) -> bool:
    """More than a 10x range between the smallest and largest positive value."""
    pos = [v for v in values if v > 0]
    return bool(pos) and max(pos) > 10 * min(pos)


def set_length_axis(ax, lengths: list[int], log: bool, label: str) -> None:
    """x axis over the measured lengths: ticks at each of them, log-scaled if asked."""
    if log:
        ax.set_xscale("log")
    ax.set_xticks(lengths, labels=[str(n) for n in lengths])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if len(lengths) == 1:
        n = lengths[0]
        ax.set_xlim(n / 2, n * 2) if log else ax.set_xlim(n - 1, n + 1)
    else:
        ax.margins(x=0.15)  # room for the dodged models at the first and last length
    ax.set_xlabel(label)


def model_handles(models: list[str], styles: dict) -> list[Line2D]:
    return [Line2D([], [], color=styles[m][0], marker=styles[m][1], label=m) for m in models]


def status_handles(statuses) -> list[Line2D]:
    return [Line2D([], [], color=GREY, marker=STATUS_MARKERS[s], linestyle="none", markersize=8,
                   label=f"{STATUS_LABELS[s]} (no value)") for s in FAILED if s in set(statuses)]


def legend(fig: Figure, handles: list) -> None:
    fig.legend(handles=handles, loc="outside right upper")


def dodge(ax, models: list[str], model: str, step: float = DODGE_PT) -> transforms.Transform:
    """A sideways offset for model's points, in points (so on any x scale): the models sit side by
    side, centred on their x, in display order, within DODGE_SPAN_PT, so that models at the same
    value (several at 1.0) each stay visible. The data keep their true x."""
    n = len(models)
    step = min(step, DODGE_SPAN_PT / max(n - 1, 1))
    i = models.index(model) if model in models else 0
    return transforms.ScaledTranslation((i - (n - 1) / 2) * step / 72, 0,
                                        ax.get_figure().dpi_scale_trans)


def series(ax, x, y, low, high, model: str, models: list[str], styles: dict) -> None:
    """One model's line through (x, y) with error bars from low to high, dodged (dodge)."""
    colour, marker = styles[model]
    y, low, high = (np.asarray(v, dtype=float) for v in (y, low, high))
    bars = ax.errorbar(x, y, yerr=[y - low, high - y], color=colour, marker=marker, markersize=6,
                       linewidth=1.6, elinewidth=1.1, capsize=2.5, label=model)
    shift = ax.transData + dodge(ax, models, model)
    for artist in [bars.lines[0], *bars.lines[1], *bars.lines[2]]:
        artist.set_transform(shift)


def mark_failures(ax, failed: pd.DataFrame, y: float, models: list[str], styles: dict,
                  axes_y: bool = False) -> None:
    """One marker per (model, length, status) of failed rows at height y (data coordinates, or
    axes coordinates if axes_y), in the model's colour, dodged (wider than lines: they are
    bigger)."""
    base = ax.get_xaxis_transform() if axes_y else ax.transData
    for (model, length, status), _ in failed.groupby(["model", "length", "status"]):
        ax.scatter([length], [y], marker=STATUS_MARKERS.get(status, "X"), s=60,
                   color=styles[model][0], linewidths=2 if status == "diverged" else 0.8,
                   edgecolors="black" if status != "diverged" else None, zorder=5, clip_on=False,
                   transform=base + dodge(ax, models, model, step=9))


def references(ax, chance: dict[int, float], threshold: float,
               shortcut: dict[int, float]) -> list[Line2D]:
    """Chance (dashed; a line through the lengths where it varies), the solve threshold (dotted)
    and the shortcut learner's score at each length (SHORTCUT style, where recorded) on a score
    axis; their legend handles."""
    lengths = sorted(chance)
    chances = [chance[n] for n in lengths]
    if len(set(chances)) == 1:
        ax.axhline(chances[0], color=GREY, linestyle="--", linewidth=1.3)
        chance_label = f"chance ({chances[0]:.3g})"
    else:
        ax.plot(lengths, chances, color=GREY, linestyle="--", linewidth=1.3)
        chance_label = f"chance ({min(chances):.3g}–{max(chances):.3g})"
    ax.axhline(threshold, color=GREY, linestyle=":", linewidth=1.6)
    handles = [Line2D([], [], color=GREY, linestyle="--", label=chance_label),
               Line2D([], [], color=GREY, linestyle=":", linewidth=1.6,
                      label=f"solved at ≥ {threshold:g}")]
    if shortcut:
        at = sorted(shortcut)
        if len(at) == 1:
            ax.axhline(shortcut[at[0]], **SHORTCUT, label=SHORTCUT_LABEL)
        else:
            ax.plot(at, [shortcut[n] for n in at], **SHORTCUT, label=SHORTCUT_LABEL)
        handles.append(Line2D([], [], **SHORTCUT, label=SHORTCUT_LABEL))
    return handles
