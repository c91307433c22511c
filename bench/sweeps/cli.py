"""`seqbench sweep`: run a preset or a sweep file into a store, with a live display on a terminal
and one line per finished cell elsewhere (CI); --dry-run plans without writing.

SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler's cancel) stop the sweep cleanly: the cells in
flight and the processes running them are stopped, nothing half-done is recorded, the claims of
this driver are released, and the command exits with 128 + the signal's number (130, 143) after
saying how much is stored; rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from seqbench.cell.record import FAILED, STATUSES, CellRecord
from seqbench.options import add_threads, apply_threads
from seqbench.results.tables import set_label
from seqbench.strict import ConfigError, require

console = Console()


def configure(p: argparse.ArgumentParser) -> None:
    from seqbench.sweeps.executors import EXECUTORS
    from seqbench.sweeps.spec import PRESETS

    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--config", help="sweep TOML file")
    p.add_argument("--out", default="results", help="results root; writes OUT/<sweep name>/")
    p.add_argument("--workers", type=int, default=0,
                   help="parallel cells (default: one per core on CPU, --cells-per-gpu per "
                        "visible GPU on CUDA; with ray: cells in flight, default the cluster's "
                        "capacity)")
    p.add_argument("--cells-per-gpu", type=int, default=0,
                   help="CUDA: cells sharing each GPU at once, each in its own process (default: "
                        "from the GPUs' free memory, the cells' memory estimates and the cores, "
                        "at most 8; with ray: 1, each cell asking for 1/N of a GPU)")
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="where cells run: local processes, or Ray tasks (seqbench[ray])")
    p.add_argument("--address", help="with --executor ray: a running cluster ('auto', "
                                     "'ray://host:10001'); default: a local instance")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells, how many are stored and the remaining cost; write "
                        "nothing")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any cell of the sweep has a failed record stored (diverged, "
                        "oom, error, timeout), whether it ran now or before")
    p.add_argument("--retry-failed", action="store_true",
                   help="also rerun cells given up after repeated identical failures (oom, error "
                        "and timeout cells are rerun anyway, until that happens)")
    p.add_argument("--force", action="store_true",
                   help="run cells the memory preflight estimates cannot fit this machine")
    add_threads(p, "1 per cell, so that scores do not depend on --workers or the executor")
    p.set_defaults(fn=cmd_sweep)


def describe(record: CellRecord) -> str:
    """One line about a finished cell."""
    score = "-" if record.score is None else f"{record.score:.3f}"
    return (
        f"{cell_name(record.task, record.model_name, record.length, record.seed, record.hpset)}: "
        f"{record.status} score={score} "
        + (f"test-lengths={record.ood_score:.3f} " if record.ood_score is not None else "")
        + f"steps={record.steps} params={record.params_actual} {record.wall_time_s:.1f}s"
        + (f" [{record.error.splitlines()[-1] if record.error else ''}]" if record.error else "")
    )


def cell_name(task: str, model: str, length: int, seed: int, hpset: str = "") -> str:
    return f"{task} {model} L={length} seed={seed}" + (f" [{set_label(hpset)}]" if hpset else "")


SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the sweep driver. A KeyboardInterrupt, so nothing on its way up
    (a cell's failure handling catches Exception only) turns it into a record."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn the first SIGINT or SIGTERM into Interrupted in the main thread; later ones are
    ignored while the sweep stops (so the stopping is not cut short); handlers restored after."""
    def handler(signum, frame):
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cmd_sweep(args) -> int:
    from seqbench.cell.cli import check_device
    from seqbench.sweeps.driver import default_workers
    from seqbench.sweeps.executors import make_executor
    from seqbench.sweeps.spec import PRESETS, preset, spec_from_file

    if (args.preset is None) == (args.config is None):
        raise ConfigError("sweep: give exactly one of --preset (" + ", ".join(PRESETS) + ") or --config FILE")
    spec = preset(args.preset) if args.preset else spec_from_file(args.config)
    require(args.workers >= 0, "--workers", f"must be >= 1 (0 = auto), got {args.workers}")
    require(args.cells_per_gpu >= 0, "--cells-per-gpu",
            f"must be >= 1 (0 = auto), got {args.cells_per_gpu}")
    require(args.cells_per_gpu == 0 or spec.device == "cuda", "--cells-per-gpu",
            'only for CUDA sweeps (device = "cuda")')
    threads = args.threads or 1  # per cell: records do not depend on --workers or executor
    require(threads >= 1, "--threads", f"must be >= 1, got {threads}")
    apply_threads(threads, None)
    require(args.address is None or args.executor == "ray", "--address",
            "only with --executor ray")
    if args.dry_run:  # planning needs no GPU here (and packs --cells-per-gpu, default 1)
        workers = args.workers or default_workers(spec.device, args.cells_per_gpu or 1)
        return _dry_run(spec, args.out, workers if args.executor == "local" else None,
                        args.retry_failed)
    if args.executor == "local":
        check_device(spec.device)  # a Ray cluster's GPUs need not be visible here
    per_gpu = _cells_per_gpu(spec, args, threads)
    workers = args.workers or default_workers(spec.device, per_gpu)
    executor = make_executor(args.executor, workers=workers, threads=threads,
                             address=args.address, max_in_flight=args.workers or None,
                             cells_per_gpu=per_gpu)
    how = (f"{workers} worker(s) x {threads} thread(s)" if args.executor == "local" else
           f"ray {args.address or '(local instance)'}, {threads} thread(s) per cell")
    if spec.device == "cuda":
        how += f", {per_gpu} cell(s) per GPU"
    console.print(f"sweep {spec.name}: {len(spec.cells())} cells -> {Path(args.out) / spec.name} "
                  f"({how})")
    try:
        with interruptible():
            statuses = _run(spec, args, executor)
    except Interrupted as exc:
        from seqbench.sweeps.driver import plan_sweep

        plan = plan_sweep(spec, args.out)
        print(f"seqbench: sweep {spec.name} interrupted by {exc}: the cells in flight were stopped "
              f"and not recorded; {len(plan.stored)} of {len(plan.cells)} cells are stored in "
              f"{plan.root}; run the same command again to resume", file=sys.stderr)
        return 128 + exc.signum
    console.print("cells run now: " + (", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
                                       or "none (all stored)"))
    failed = _stored_summary(spec, args.out, args.retry_failed)
    return 1 if args.strict and failed else 0


def _cells_per_gpu(spec, args, threads: int) -> int:
    """How many cells share each GPU: --cells-per-gpu; else with the local executor what
    --workers implies (workers are pinned to the GPUs round-robin) or the packing rule
    (seqbench.sweeps.packing); with ray 1."""
    if spec.device != "cuda":
        return 1
    if args.executor != "local":
        return args.cells_per_gpu or 1
    import torch

    gpus = torch.cuda.device_count()
    if args.cells_per_gpu:
        most = args.cells_per_gpu * gpus
        require(args.workers <= most, "--workers",
                f"at most --cells-per-gpu x GPUs = {most}, got {args.workers}")
        return args.cells_per_gpu
    if args.workers:
        return -(-args.workers // gpus)  # the most workers pinned to one GPU
    from seqbench.sweeps.packing import choose

    choice = choose(spec.cells(), threads)
    console.print(choice.why)
    return choice.cells_per_gpu


def _run(spec, args, executor) -> Counter:
    """Run the sweep (with the live display on a terminal) and print its tables."""
    from seqbench.measure.cli import point_line
    from seqbench.results.cli import print_tables
    from seqbench.sweeps.driver import plan_sweep, run_sweep

    def on_wait(n: int) -> None:
        console.print(f"waiting for {n} cell(s) that other drivers are running")

    run = dict(on_point=point_line, executor=executor, retry_failed=args.retry_failed,
               force=args.force, on_wait=on_wait)
    if console.is_terminal:
        plan = plan_sweep(spec, args.out, args.retry_failed)
        display = _SweepDisplay(executor, len(plan.todo), len(plan.cells) - len(plan.todo))
        with Live(display, console=console, refresh_per_second=4):
            store, statuses = run_sweep(spec, args.out, on_cell=display.on_cell, **run)
    else:
        def on_cell(record, i, n):
            print(f"[{i}/{n}] {describe(record)}", flush=True)

        store, statuses = run_sweep(spec, args.out, on_cell=on_cell, **run)
    print_tables(store.read(), store.root)
    return statuses


def _stored_summary(spec, out: str, retry_failed: bool) -> int:
    """Print what the store holds for the sweep's cells (whoever ran them, whenever), with the
    cells given up; return how many have a failed record."""
    from seqbench.cell.record import GIVE_UP
    from seqbench.sweeps.driver import GIVEN_UP, plan_sweep

    plan = plan_sweep(spec, out, retry_failed)
    counts = Counter(r.status for r in plan.records.values())
    console.print(f"stored: {len(plan.records)} of {len(plan.cells)} cells: "
                  + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]))
    for (hpset, variant), cfg in plan.cells:
        if plan.state(cfg) == GIVEN_UP:
            record = plan.records[cfg.key()]
            last = (record.error or "").strip().splitlines()[-1:] or [""]
            console.print(f"given up after {GIVE_UP} identical failures: "
                          f"{cell_name(cfg.task, variant or cfg.model, cfg.length, cfg.seed, hpset)}"
                          f": {record.status} {last[0]} (--retry-failed runs it again)")
    return sum(counts[s] for s in FAILED)


class _SweepDisplay:
    """The terminal display of a running sweep, redrawn by rich.live: a bar with done/total,
    elapsed time and ETA; counts per status; the cells in flight (the executor's, at most one per
    worker) with how long each has run."""

    def __init__(self, executor, total: int, stored: int):
        self.executor, self.stored = executor, stored
        self.counts: Counter = Counter()
        self.last = ""
        self.progress = Progress(TextColumn("cells"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console)
        self.bar = self.progress.add_task("cells", total=total)

    def on_cell(self, record: CellRecord, i: int, n: int) -> None:
        self.counts[record.status] += 1
        self.progress.update(self.bar, completed=i, total=n)
        self.last = describe(record)

    def __rich__(self):
        now = time.monotonic()
        counts = "  ".join(f"{s} {self.counts[s]}" for s in STATUSES)
        counts += f"  (already stored, skipped: {self.stored})"
        lines = [self.progress.get_renderable(), Text(counts)]
        if self.last:
            lines.append(Text(f"last: {self.last}", overflow="ellipsis", no_wrap=True))
        for cfg, started in self.executor.running():
            name = cell_name(cfg.task, cfg.model, cfg.length, cfg.seed)
            lines.append(Text(f"running: {name} ({now - started:.0f}s)",
                              overflow="ellipsis", no_wrap=True))
        return Group(*lines)


def _dry_run(spec, out: str, workers: int | None, retry_failed: bool) -> int:
    """What `sweep` would run, and an estimate of its cost; writes nothing."""
    from seqbench.sweeps.driver import STORED, TO_RUN, plan_sweep

    plan = plan_sweep(spec, out, retry_failed)
    todo = plan.todo
    console.print(f"sweep {spec.name} (dry run, nothing written): {len(plan.cells)} cells, "
                  f"{len(plan.stored)} already stored in {plan.root}, {len(todo)} to run")
    if console.is_terminal:
        table = Table()
        for col in ("task", "model", "L", "set", "seed", "state", "tokens", "est. s"):
            table.add_column(col, justify="left" if col in ("task", "model", "set", "state")
                             else "right")
    for (name, variant), cfg in plan.cells:
        state = plan.state(cfg)
        if state not in (STORED, TO_RUN):
            state += f" ({plan.records[cfg.key()].status})"
        seconds = plan.seconds(cfg)
        est = "?" if seconds is None else f"{seconds:.0f}"
        if console.is_terminal:
            table.add_row(cfg.task, variant or cfg.model, str(cfg.length),
                          set_label(name) if name else "",
                          str(cfg.seed), state, f"{plan.tokens(cfg):,}", est)
        else:
            label = cell_name(cfg.task, variant or cfg.model, cfg.length, cfg.seed, name)
            print(f"{label}: {state}, {plan.tokens(cfg):,} tokens, ~{est} s")
    if console.is_terminal:
        console.print(table)
    tokens = sum(plan.tokens(c) for _, c in todo)
    console.print(f"remaining: {len(todo)} cells, {tokens:,} training tokens at the full step "
                  "budget (steps x batch x sequence length; solved cells stop early)")
    known = [(c, plan.seconds(c)) for _, c in todo if plan.seconds(c) is not None]
    if plan.rates:
        rates = ", ".join(f"{m} {r:,.0f}" for m, r in sorted(plan.rates.items()))
        total = sum(s for _, s in known)
        wall = f", about {total / workers:,.0f} s on {workers} worker(s)" if workers else ""
        console.print(f"estimate from stored tokens/s per model ({rates}): {total:,.0f} s of "
                      f"training for {len(known)} of {len(todo)} cells{wall}")
        missing = sorted({c.model for _, c in todo} - set(plan.rates))
        if missing:
            console.print(f"no stored rate for: {', '.join(missing)}")
    elif todo:
        console.print("no seconds estimate: no stored record of this sweep has a measured rate")
    return 0


