"""Figures of what happened during training, from each record's stored traces (never re-runs
training): the validation score at each evaluation (`history`, seqbench.cell.train) and the
gradient flow through time (`grad_flow`, seqbench.cell.gradflow). Both at a task's longest length,
mean over seeds, one line per model in its fixed colour and marker (seqbench.results.plotstyle)."""
from __future__ import annotations

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from seqbench import display
from seqbench.cell.record import CellRecord
from seqbench.results.cellstats import seed_count_text
from seqbench.results.plotstyle import (
    GREY,
    STYLE_COLUMNS,
    dodge,
    legend,
    model_handles,
    model_styles,
    new_figure,
    references,
    spans_decades,
)
from seqbench.results.tables import _models, length_axis

TRACE_COLUMNS = ["model", "length", "seed", *STYLE_COLUMNS]
FLOW_COLUMNS = [*TRACE_COLUMNS, "phase", "distance", "norm"]
HISTORY_COLUMNS = [*TRACE_COLUMNS, "status", "step", "val_score", "shortcut_val"]


def _shown(r: CellRecord) -> dict:
    """The model, length, seed and display columns of a record's trace rows."""
    return ({k: v for k, v in display.columns(r.model_style(), r.task_style()).items()
             if k in TRACE_COLUMNS} | {"length": r.length, "seed": r.seed, "variant": r.variant})


# Training curves --------------------------------------------------------------------------------


def history_frame(records: list[CellRecord]) -> pd.DataFrame:
    """Tidy evaluations: model, length, seed, status, step, val_score and the shortcut learner's
    validation score of the cell (shortcut_val; None where not recorded)."""
    rows = []
    for r in records:
        shown = _shown(r) | {"status": r.status,
                             "shortcut_val": (r.shortcut or {}).get("val_score")}
        rows += [shown | {"step": h["step"], "val_score": h["val_score"]} for h in r.history
                 if h.get("val_score") is not None]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def seed_mean(curves: pd.DataFrame) -> pd.Series:
    """Mean validation score over seeds at each step any seed of one model was evaluated at. Each
    seed holds its last score between its evaluations; a seed that stopped early because it solved
    the task holds it to the model's last step too; one that diverged or failed counts only up
    to its last evaluation."""
    wide = curves.pivot_table(index="step", columns="seed", values="val_score", aggfunc="mean")
    solved = set(curves.loc[curves["status"] == "solved", "seed"])
    for seed in wide.columns:
        last = wide[seed].last_valid_index()
        wide[seed] = wide[seed].ffill().where((wide.index <= last) | (seed in solved))
    return wide.mean(axis=1)


def training_figure(task_name: str, history: pd.DataFrame, score_name: str, threshold: float,
                    chance: dict[int, float]) -> Figure:
    """Validation score vs training step per model at the longest length with a history."""
    length = int(history["length"].max())
    at = history[history["length"] == length]
    models, styles = _models(at), model_styles(at)
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    for model in models:
        mean = seed_mean(at[at["model"] == model])
        (line,) = ax.plot(mean.index, mean.to_numpy(), color=styles[model][0],
                          marker=styles[model][1], markersize=4, linewidth=1.6)
        line.set_transform(ax.transData + dodge(ax, models, model))  # after: the limits use x
    shortcut = at["shortcut_val"].dropna()
    handles = references(ax, {length: chance[length]} if length in chance else chance, threshold,
                         {length: float(shortcut.mean())} if len(shortcut) else {})
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {score_name}")
    ax.set_title(f"{task_name}: validation {score_name} during training at "
                 f"{length_axis(at)[0]}={length}\n"
                 f"mean over {seed_count_text([at['seed'].nunique()])}",
                 fontsize="medium")
    legend(fig, model_handles(models, styles) + handles)
    return fig


def training_caption(task_name: str, history: pd.DataFrame, score_name: str) -> str:
    length = int(history["length"].max())
    at = history[history["length"] == length]
    return (f"{task_name}: validation {score_name} at each evaluation during training, at the "
            f"longest {length_axis(at)[0]}={length}; one line per model, the mean over "
            f"{seed_count_text([at['seed'].nunique()])}, each holding its last score between its "
            f"evaluations (and to the end if it stopped early because it solved the task; "
            f"a diverged one counts up to its last evaluation). Grey "
            f"dashed: chance; dotted: the solve threshold; dash-dot-dot: the shortcut (n-gram) "
            f"learner's validation score at this length.")


# Gradient flow ----------------------------------------------------------------------------------


def flow_frame(records: list[CellRecord]) -> pd.DataFrame:
    """Tidy gradient-flow points: model, length, seed, phase, distance, norm (and the display
    columns of model and task)."""
    rows = []
    for r in records:
        shown = _shown(r)
        for phase, flow in (r.grad_flow or {}).items():
            for d, n in zip(flow.get("distance", []), flow.get("norm", [])):
                rows.append(shown | {"phase": phase, "distance": d, "norm": n})
    return pd.DataFrame(rows, columns=FLOW_COLUMNS)


def gradflow_figure(task_name: str, flows: pd.DataFrame) -> Figure:
    """Gradient norm vs distance from the scored step at the longest length with a stored flow."""
    length = int(flows["length"].max())
    at = flows[flows["length"] == length]
    mean = at.groupby(["model", "phase", "distance"], as_index=False)["norm"].mean()
    seeds = at["seed"].nunique()
    models, styles = _models(at), model_styles(at)
    fig = new_figure(7.5, 4.6)
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
    if spans_decades(distances):
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
                 f"(batch mean; mean over {seed_count_text([seeds])})", fontsize="medium")
    handles = model_handles(models, styles) + [
        Line2D([], [], color=GREY, linestyle="--", label="untrained (at initialisation)"),
        Line2D([], [], color=GREY, linestyle="-", label="trained"),
    ]
    if zeros:
        handles.append(Line2D([], [], color=GREY, marker="|", linestyle="none", markersize=9,
                              label="norm exactly 0"))
    legend(fig, handles)
    return fig


def gradflow_caption(task_name: str, flows: pd.DataFrame) -> str:
    length = int(flows["length"].max())
    at = flows[flows["length"] == length]
    return (f"{task_name}: how far back the loss at the scored step reaches, at the longest "
            f"{length_axis(at)[0]}={length} with a stored gradient flow: the norm of its gradient "
            f"with respect to the input d steps back (batch mean, mean over "
            f"{seed_count_text([at['seed'].nunique()])}; log scale), dashed at initialisation, "
            f"solid after training. A flat line reaches far back; a steep fall is a vanishing "
            f"gradient; a tick at the bottom marks a norm of exactly 0 (beyond a receptive field).")
