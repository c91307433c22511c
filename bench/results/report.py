"""Reports from stored records only: summary.md, report.html and the tables printed in a terminal,
all from seqbench.results.tables (never re-runs training or measurement). Torch-free."""
from __future__ import annotations

import base64
import html
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from seqbench.fileio import atomic, atomic_write
from seqbench.results.accuracy import Study, pairwise_frame, study_results, task_tables
from seqbench.results.cellstats import MARGIN
from seqbench.results.stats import PAIRWISE_COLUMNS
from seqbench.results.store import (
    Loaded,
    Store,
    cell_frame,
    generalisation_frame,
    measurement_frame,
    stored_env,
    with_plugins,
)
from seqbench.results.tables import PivotTable, measurement_tables


def markdown(tables: list[PivotTable], title: str, preface: str = "") -> str:
    """The tables as markdown, each with its caption and notes (what bold means there); preface
    (the findings) goes after the title."""
    lines = [f"# {title}", ""] + ([preface, ""] if preface else [])
    for t in tables:
        lines += [f"## {t.title}", "", t.caption + (f". {t.notes}." if t.notes else "."), ""]
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


def _verdict_text(s: Study, length: int) -> str:
    column = s.column(length)
    v = s.verdicts.get(column)
    if v is None or v.best is None:
        return f"{column}: no scores"
    shown = f"{v.best} {s.cells[(v.best, length)].text()}"
    if v.outcome == "winner":
        return f"{column}: **{shown}**, better than every other model (Holm p {v.p_holm:.2g})"
    why = {"not significant": f"not significant, Holm p {v.p_holm:.2g}" if v.p_holm is not None
           else "not significant",
           "tied": "tied", "at chance": f"within chance + {MARGIN:g}",
           "untestable": "untestable: needs two models with two or more seeds"}[v.outcome]
    return f"{column}: no significant difference ({why}; best mean {shown})"


def findings(found: list[Study]) -> str:
    """The headline of each study, from its data: per length the significant winner (stats
    .verdicts) or why there is none, and how many cells carry each flag."""
    lines = ["## findings", "",
             "Per task and length: the model significantly better than every other (as bold in "
             "the tables), or why none is; the counts of flagged cells (see each table's "
             "legend). Cells: mean ±95% t half-width, k/n seeds solved."]
    for s in found:
        lines += ["", f"### {s.title}", ""]
        lines += [f"- {_verdict_text(s, n)}" for n in s.lengths]
        flags = Counter(flag for c in s.cells.values() for flag in c.flags)
        if flags:
            lines.append("- flagged cells: " + ", ".join(f"{k} {flag}" for flag, k in
                                                        flags.items()) + f" of {len(s.cells)}")
    return "\n".join(lines)


def rich_tables(tables: list[PivotTable]) -> list[Group]:
    """One renderable per table: its caption line, then the table."""
    out = []
    for t in tables:
        table = Table()
        table.add_column("model")
        for col in t.columns:
            table.add_column(col, justify="right")
        for row in t.rows:  # Text, not markup: "[set]" labels must print as they are
            table.add_row(Text(row), *(
                Text(t.text.get((row, col), ""),
                     style="bold green" if (row, col) in t.best else "")
                for col in t.columns
            ))
        out.append(Group(Text(t.caption + (f". {t.notes}" if t.notes else ""), style="bold"),
                         table))
    return out


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1d2125; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2.4rem; }
h3 { font-size: 1rem; margin: 1.6rem 0 0.2rem; }
section { border-top: 1px solid #d8dde2; margin-top: 2rem; }
nav.toc ol { columns: 14rem; font-size: 0.9rem; margin: 0.3rem 0; }
p.caption { color: #4a5259; font-size: 0.9rem; margin: 0.3rem 0 0.6rem; }
div.scroll { overflow-x: auto; max-width: 100%; margin-bottom: 0.5rem; }
table { border-collapse: collapse; font-size: 0.88rem; }
th, td { border-bottom: 1px solid #d8dde2; padding: 0.3rem 0.7rem; }
th { background: #f2f4f6; text-align: right; } th:first-child, td:first-child { text-align: left; }
td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: 700; color: #0b6b3a; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6e9; }
figcaption { font-size: 0.85rem; color: #4a5259; max-width: 60rem; }
dl.env { display: grid; grid-template-columns: max-content auto; gap: 0.1rem 1rem;
         font-size: 0.85rem; } dl.env dt { color: #4a5259; }
dl.env dd { margin: 0; overflow-wrap: anywhere; }
code { background: #f2f4f6; padding: 0 0.25rem; }
"""
ENV_KEYS = ("seqbench", "git_commit", "torch", "python", "device", "gpu", "cpu", "executor",
            "workers", "threads")
FIGURES_JSON = "figures.json"  # in plots/: each figure's task and caption (seqbench.results.plots)


def figure_notes(folder: Path) -> dict[str, dict]:
    """The task and caption of each figure in folder, by file name, as `seqbench plot` listed
    them in folder/figures.json; {} where there is none (or it cannot be read)."""
    try:
        listed = json.loads((folder / FIGURES_JSON).read_text())["figures"]
        return {f["file"]: {"task": str(f["task"]), "caption": str(f["caption"])} for f in listed}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def needs_plots(store: Store) -> bool:
    """Whether the figures of store must be made (again): plots/figures.json is missing, names a
    figure that is not there, or is older than a stored record."""
    folder = store.root / "plots"
    notes = figure_notes(folder)
    if not notes or any(not (folder / name).is_file() for name in notes):
        return True
    made = (folder / FIGURES_JSON).stat().st_mtime
    return any(p.stat().st_mtime > made for d in (store.cells, store.measurements)
               if d.is_dir() for p in d.glob("*.json"))


def _anchor(name: str) -> str:
    return "task-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def _html_table(t: PivotTable) -> list[str]:
    """A table's heading, caption (with what bold means there, its notes) and the table, in a box
    that scrolls sideways rather than widen the page."""
    esc = html.escape
    caption = t.caption + (f". {t.notes}." if t.notes else ".")
    out = [f"<h3>{esc(t.title)}</h3>", f'<p class="caption">{esc(caption)}</p>',
           '<div class="scroll"><table><thead><tr><th>model</th>'
           + "".join(f"<th>{esc(c)}</th>" for c in t.columns) + "</tr></thead><tbody>"]
    for row in t.rows:
        cells = "".join(f'<td{" class=best" if (row, col) in t.best else ""}>'
                        f"{esc(t.text.get((row, col), ''))}</td>" for col in t.columns)
        out.append(f"<tr><td>{esc(row)}</td>{cells}</tr>")
    return [*out, "</tbody></table></div>"]


def _html_figure(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_report(tables: list[PivotTable], title: str, figures: list[Path],
                env: dict | None = None) -> str:
    """One self-contained HTML page (inline CSS, PNG figures embedded as base64, no external
    resource): a contents list; one section per task with its tables, then its figures under
    their captions (from plots/figures.json: seqbench.results.plots); then the tables and figures
    of no one task (solve length, measurements); figures `seqbench plot` did not list; the
    environment. Bold in a table means what its caption says."""
    esc = html.escape
    title = title.replace("`", "")  # a plain-text title: no Markdown code marks
    notes = figure_notes(Path(figures[0]).parent) if figures else {}
    tasks = list(dict.fromkeys([t.task for t in tables if t.task]
                               + [n["task"] for n in notes.values() if n["task"]]))
    shown = {k: env[k] for k in ENV_KEYS if env and env.get(k) is not None}
    if env and env.get("plugins"):  # seqbench.registry.provenance entries
        shown["plugins"] = "; ".join(
            f"{p.get('kind')} {p.get('name')} ({p.get('distribution') or 'distribution unknown'}"
            f"{' ' + p['version'] if p.get('version') else ''})" for p in env["plugins"])
    listed = [Path(f) for f in figures if Path(f).name in notes]
    unlisted = [Path(f) for f in figures if Path(f).name not in notes]
    general = "across tasks" if tasks else "measurements"
    sections = [(_anchor(task), task, task) for task in tasks] + [("across", general, "")]
    contents = [(a, h) for a, h, task in sections
                if task or any(not t.task for t in tables)
                or any(notes[p.name]["task"] == "" for p in listed)]
    contents += [("other-figures", "other figures")] * bool(unlisted)
    contents += [("environment", "environment")] * bool(shown)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(title)}</h1>",
           "<p>Tables and figures from the stored records of this folder only.</p>"]
    if not figures:
        out.append("<p>No figures: <code>seqbench report DIR</code> makes them where matplotlib "
                   "is installed (or <code>seqbench plot DIR</code>).</p>")
    out.append('<nav class="toc"><strong>contents</strong><ol>' + "".join(
        f'<li><a href="#{a}">{esc(h)}</a></li>' for a, h in contents) + "</ol></nav>")
    for anchor, heading, task in sections:
        if (anchor, heading) not in contents:
            continue
        out.append(f'<section id="{anchor}"><h2>{esc(heading)}</h2>')
        for t in tables:
            if t.task == task:
                out += _html_table(t)
        out += [_html_figure(p, notes[p.name]["caption"]) for p in listed
                if notes[p.name]["task"] == task]
        out.append("</section>")
    if unlisted:
        out.append('<section id="other-figures"><h2>other figures</h2>')
        out += [_html_figure(p, p.name) for p in unlisted]
        out.append("</section>")
    if shown:
        out.append('<section id="environment"><h2>environment</h2><dl class="env">' + "".join(
            f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in shown.items())
            + "</dl></section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _unusable(loaded: Loaded) -> list[tuple[str, str, int]]:
    return [p.cell[:3] for p in loaded.problems if p.cell is not None]


def tables_of(loaded: Loaded) -> list[PivotTable]:
    """Every table of a store's parsed records: cells (with generalisation scores), then
    measurements."""
    records = loaded.records.values()
    cells = (task_tables(cell_frame(records), generalisation_frame(records), _unusable(loaded))
             if records else [])
    measured = measurement_frame(loaded.measurements.values())
    return cells + (measurement_tables(measured) if not measured.empty else [])


def _write_parquet(frame, path: Path) -> None:
    """frame as parquet where pyarrow is importable; nothing otherwise."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return
    atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def title(store: Store, loaded: Loaded) -> str:
    """The page title of a folder: a sweep's, or a measurement folder's."""
    kind = "sweep" if loaded.records else "measurements"
    return f"seqbench {kind} {store.root.name}"


def write_summary(store: Store, loaded: Loaded, env: dict | None = None) -> str:
    """Regenerate, from the parsed records only: results.csv, measurements.csv, env.json,
    pairwise.csv (every model pair of every task and length: seqbench.results.stats.pairwise),
    summary.md (findings, then the tables), report.html (the same tables, plus the figures found
    in plots/), and results.parquet / measurements.parquet where pyarrow is installed.

    env defaults to the folder's env.json as the run that made it wrote it (its executor,
    workers or matmul peak are kept), else the environment stored in the first record (reports
    never re-measure); its `plugins` lists every plug-in the records name.
    """
    if env is None:
        first = next(iter([*loaded.records.values(), *loaded.measurements.values()]), None)
        env = stored_env(store.root) or (first.env if first is not None else {})
    env = with_plugins(env, loaded)
    store.write_tables(loaded, env)
    tables, name = tables_of(loaded), title(store, loaded)
    found = study_results(cell_frame(loaded.records.values()), _unusable(loaded)) \
        if loaded.records else []
    if found:
        pairs = pd.concat([pairwise_frame(s) for s in found])
        atomic_write(store.root / "pairwise.csv", pairs[["task", *PAIRWISE_COLUMNS]].to_csv(
            index=False))
    text = (markdown(tables, name, findings(found) if found else "") if tables
            else f"# {name}\n\nNo records.\n")
    atomic_write(store.root / "summary.md", text)
    figures = sorted((store.root / "plots").glob("*.png"))
    atomic_write(store.root / "report.html", html_report(tables, name, figures, env))
    if loaded.records:
        _write_parquet(cell_frame(loaded.records.values()), store.root / "results.parquet")
    if loaded.measurements:
        _write_parquet(measurement_frame(loaded.measurements.values()),
                       store.root / "measurements.parquet")
    return text
