"""`seqbench report` and `seqbench plot`: tables, report.html and figures from the stored records of
a folder (never re-runs anything). Torch-free. `report` makes the figures first where DIR/plots
lacks them or is older than a record (seqbench.results.report.needs_plots), so that one command
gives the whole page; `plot` makes them always, as PNG, and as SVG too with --svg. A stored file
that cannot be trusted is named with its reason on stderr and left out; the rest is reported. Records naming a plug-in that is not
installed here stop the command (exit 2, naming what to install) rather than vanish from it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from seqbench.results.store import Loaded, Store, check_names
from seqbench.strict import ConfigError, require

console = Console()


def add_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=0,
                   help="figures drawn at once, each in its own process (default 0: one per "
                        "core; 1: in this process); the files are the same either way")


def configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a sweep or measurement folder")
    add_jobs(p)
    p.set_defaults(fn=cmd_report)


def configure_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a sweep or measurement folder; figures go to DIR/plots/")
    p.add_argument("--svg", action="store_true",
                   help="write each figure as SVG too (default: PNG only)")
    add_jobs(p)
    p.set_defaults(fn=cmd_plot)


def jobs(args) -> int:
    """--jobs, checked: 0 (one per core) or a number of processes."""
    require(args.jobs >= 0, "--jobs", f"must be >= 1 (0 = one per core), got {args.jobs}")
    return args.jobs


def read(command: str, folder: str) -> tuple[Store, Loaded]:
    """The store at folder, parsed once; each untrustworthy file named on stderr. ConfigError
    where it holds no trustworthy record at all, or records whose family or task cannot be
    resolved here (seqbench.results.store.check_names)."""
    store = Store(folder)
    loaded = store.read()
    for problem in loaded.problems:
        print(f"seqbench: {command}: skipped {problem}", file=sys.stderr)
    if not (loaded.records or loaded.measurements):
        raise ConfigError(f"{command}: {folder} holds no stored records (no usable "
                          f"cells/*.json or measurements/*.json)")
    check_names(loaded, store.root, command)
    return store, loaded


def print_tables(loaded: Loaded, root: Path) -> None:
    from seqbench.results.report import rich_tables, tables_of

    for table in rich_tables(tables_of(loaded)):
        console.print(table)
    console.print(f"tables: {root / 'summary.md'}, {root / 'report.html'}")


def cmd_report(args) -> int:
    from seqbench.results.report import needs_plots, write_summary

    processes = jobs(args)
    store, loaded = read("report", args.dir)
    if needs_plots(store):
        from seqbench.results.plots import plot_folder  # matplotlib loads only here

        made = plot_folder(store.root, loaded, jobs=processes)
        console.print(f"figures: {len(made)} made in {store.root / 'plots'}")
    write_summary(store, loaded)
    print_tables(loaded, store.root)
    return 0


def cmd_plot(args) -> int:
    from seqbench.results.plots import plot_folder  # matplotlib loads only here

    processes = jobs(args)
    store, loaded = read("plot", args.dir)
    for path in plot_folder(store.root, loaded, svg=args.svg, jobs=processes):
        print(path)
    return 0
