"""`seqbench run`: one cell from the command line. Every field of a cell has an option derived from
CellConfig, TrainConfig and Generalise (seqbench.options); model hyper-parameters are --hp K=V."""
from __future__ import annotations

import argparse
import tomllib

from seqbench.options import add_options, add_threads, apply_threads, given
from seqbench.strict import ConfigError, parse_count, require


def _count(text: str) -> int:
    try:
        return parse_count("--params", text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def literal(field: str, text: str):
    """A KEY=VALUE option: the value as a TOML literal (1, 0.5, true, "x"), else the bare string."""
    name, sep, value = text.partition("=")
    require(bool(sep) and bool(name), field, f"expected KEY=VALUE, got {text!r}")
    try:
        return name, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return name, value


def configure(p: argparse.ArgumentParser) -> None:
    from seqbench.cell.config import CellConfig, Generalise, TrainConfig

    add_options(p.add_argument_group("cell"), CellConfig, required=("task", "model", "length"),
                types={"params": _count})
    add_options(p.add_argument_group("training"), TrainConfig)
    add_options(p.add_argument_group("length generalisation (give --generalise-lengths)"),
                Generalise, prefix="generalise-")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="model hyper-parameter, e.g. layers=2 (seqbench list shows the families)")
    p.add_argument("--out", default="results/runs", help="store folder for the record")
    add_threads(p, "1, so that scores do not depend on the machine's core count")
    p.set_defaults(fn=cmd_run)


def cmd_run(args) -> int:
    from rich.console import Console

    from seqbench.cell.config import CellConfig, Generalise, TrainConfig
    from seqbench.cell.train import run_cell
    from seqbench.results.store import Store
    from seqbench.sweeps.cli import describe

    data = given(args, CellConfig) | {"train": given(args, TrainConfig),
                                      "hparams": dict(literal("--hp", h) for h in args.hp)}
    generalise = given(args, Generalise, "generalise-")
    if generalise:
        require("lengths" in generalise, "--generalise-lengths",
                "give the test lengths to use --generalise-train or --generalise-samples")
        data["generalise"] = generalise
    cfg = CellConfig.from_dict(data)
    check_device(cfg.device)
    apply_threads(args.threads, 1)  # float sums, and so scores, depend on the thread count
    record = run_cell(cfg)
    path = Store(args.out).save(record)
    console = Console()
    console.print(describe(record))
    console.print(f"record: {path}")
    return 0 if record.status in ("solved", "budget") else 1


def check_device(device: str) -> None:
    import torch

    require(device != "cuda" or torch.cuda.is_available(), "device",
            "cuda is not available on this machine; allowed here: cpu")
