"""The `seqbench` command.

Each subcommand lives with its stage and is imported only when it runs, so `seqbench --help` and
the commands that only read results (report, plot, the accuracy gate) never import torch. Bad
input exits 2 with one line naming the field and the allowed values; every other outcome is the
subcommand's exit code (gate: 0 clean, 1 regression, 2 unusable input).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from seqbench.strict import ConfigError

# name -> (one-line help, "module:function" that adds the subcommand's options)
COMMANDS = {
    "list": ("tasks and models, one line each", "seqbench.cli:configure_list"),
    "run": ("train and evaluate one cell", "seqbench.cell.cli:configure"),
    "sweep": ("run a grid of cells (resumes what is stored)", "seqbench.sweeps.cli:configure"),
    "measure": ("throughput, memory, FLOPs and streaming per point",
                "seqbench.measure.cli:configure"),
    "report": ("tables and report.html from the stored records of a folder",
               "seqbench.results.cli:configure_report"),
    "plot": ("figures from the stored records of a folder", "seqbench.results.cli:configure_plot"),
    "gate": ("regression gate: accuracy (or --perf speed/memory) against a baseline",
             "seqbench.gate.cli:configure"),
}
DESCRIPTION = ("seqbench: a benchmark of sequence architectures on long-range dependencies. "
               "`seqbench COMMAND --help` shows a command's options.")


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as ConfigError: every bad input gets the same one
    line and exit status 2, whether argparse or a config check finds it."""

    def error(self, message: str):
        raise ConfigError(message)


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser, with the options of `command` (the one about to run) filled in."""
    p = Parser(prog="seqbench", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, target) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        if name == command:
            _load(target)(sp)
    return p


def configure_list(p: argparse.ArgumentParser) -> None:
    p.set_defaults(fn=cmd_list)


def cmd_list(args) -> int:
    """Built-in tasks and families, then the plug-ins installed as entry points (loaded, so a
    broken one is named here rather than in the middle of a sweep)."""
    from rich.console import Console
    from rich.markup import escape

    from seqbench import registry
    from seqbench.models import get_family
    from seqbench.tasks import get_task

    console = Console()
    for kind, title, get in (("task", "tasks", get_task), ("model", "models", get_family)):
        console.print(f"[bold]{title}[/]")
        for name in registry.names(kind):
            source = registry.provenance(kind, name)
            where = "" if source is None else (
                f" [plug-in: {source['distribution'] or '?'} {source['version'] or ''}]")
            console.print(f"  {name:15} {escape(get(name).summary + where)}")
    console.print("(a family or task of your own: an import path module:attribute, or an entry "
                  "point in the group seqbench.models / seqbench.tasks)")
    _list_techniques(console)
    return 0


def _list_techniques(console) -> None:
    """The training-technique settings (train.*): help, allowed values, models that offer them."""
    import dataclasses

    from rich.markup import escape

    from seqbench.cell.config import TECHNIQUES, TrainConfig, offering

    console.print("[bold]training techniques[/] (train.* settings of a cell or sweep; seqbench "
                  "run --help; README \"Training techniques\")")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, technique in TECHNIQUES.items():
        f = fields[name]
        choices = f.metadata.get("choices")
        text = f.metadata["help"] + (f"; one of {', '.join(choices)}" if choices else "")
        text += f" (default {f.default})"
        if technique is not None:
            text += f"; models: {', '.join(offering(technique))}"
        console.print(f"  {name:15} {escape(text)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args = parser(command).parse_args(argv)
        return args.fn(args)
    except ConfigError as exc:
        print(f"seqbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
