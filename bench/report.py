"""Comparison tables from stored records only (never re-runs training).

Per task: models as rows, lengths as columns, mean headline score over seeds with its spread
(std over seeds; min-max when only two), the best mean per column marked. Cells where some seed
failed carry the failure counts; cells where every seed failed show the status.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tasks import get_task

FAILED = ("diverged", "oom", "error")


@dataclass
class TaskTable:
    task: str
    caption: str
    lengths: list[int]
    models: list[str]
    text: dict[tuple[str, int], str]  # (model, length) -> cell text
    best: set[tuple[str, int]]


def _cell_text(group: pd.DataFrame) -> tuple[str, float | None]:
    ok = group[~group["status"].isin(FAILED)]
    failures = group.loc[group["status"].isin(FAILED), "status"].value_counts()
    note = ", ".join(f"{n} {status}" for status, n in failures.items())
    if ok.empty:
        return note, None
    mean = ok["score"].mean()
    text = f"{mean:.3f}" + (f" ± {ok['score'].std():.3f}" if len(ok) > 1 else "")
    return text + (f" ({note})" if note else ""), mean


def task_tables(df: pd.DataFrame) -> list[TaskTable]:
    tables = []
    for task_name, tdf in df.groupby("task", sort=True):
        task = get_task(task_name)
        lengths = sorted(tdf["length"].unique().tolist())
        order = [m for m in ("rnn", "lstm", "gru", "tcn", "transformer") if m in set(tdf["model"])]
        models = order + sorted(set(tdf["model"]) - set(order))
        text, means = {}, {}
        for (model, length), group in tdf.groupby(["model", "length"]):
            text[(model, length)], mean = _cell_text(group)
            if mean is not None:
                means[(model, length)] = mean
        best = set()
        for length in lengths:
            column = {m: means[(m, length)] for m in models if (m, length) in means}
            if column:
                top = max(column.values())
                best |= {(m, length) for m, v in column.items() if v == top}
        seeds = tdf["seed"].nunique()
        caption = (
            f"{task_name}: {task.score_name}, mean ± std over {seeds} seed(s); "
            f"chance {task.chance(lengths[0]):.4g}, solved at >= {task.solve_threshold:g}"
        )
        tables.append(TaskTable(task_name, caption, lengths, models, text, best))
    return tables


def markdown(tables: list[TaskTable], title: str) -> str:
    lines = [f"# {title}", ""]
    for t in tables:
        lines += [f"## {t.task}", "", t.caption + ". Best mean per length in bold.", ""]
        lines.append("| model | " + " | ".join(f"L={n}" for n in t.lengths) + " |")
        lines.append("|---|" + "---:|" * len(t.lengths))
        for m in t.models:
            cells = []
            for n in t.lengths:
                cell = t.text.get((m, n), "")
                cells.append(f"**{cell}**" if (m, n) in t.best else cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def rich_tables(tables: list[TaskTable]) -> list[Group]:
    """One renderable per task: its caption line, then the table."""
    out = []
    for t in tables:
        table = Table()
        table.add_column("model")
        for n in t.lengths:
            table.add_column(f"L={n}", justify="right")
        for m in t.models:
            table.add_row(
                m,
                *(
                    f"[bold green]{t.text.get((m, n), '')}[/]" if (m, n) in t.best
                    else t.text.get((m, n), "")
                    for n in t.lengths
                ),
            )
        out.append(Group(Text(t.caption, style="bold"), table))
    return out
