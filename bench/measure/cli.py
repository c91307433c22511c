"""`seqbench measure`: speed, memory, FLOPs and streaming of model points into a measurement store,
and --check-overhead, the sweep's training step against a bare PyTorch loop
(seqbench.measure.overhead: exit 0 pass, 1 over the bar, 3 too noisy to judge)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seqbench.fileio import atomic_write, check_writable, single_component
from seqbench.options import add_options, add_threads, apply_threads, comma_list
from seqbench.strict import parse_count, require

console = Console()


def configure(p: argparse.ArgumentParser) -> None:
    from seqbench.measure.point import MeasurePoint

    p.add_argument("--models",
                   help="comma-separated families (default: every family that applies to --task)")
    p.add_argument("--lengths", default="64,256,1024,4096", help="comma-separated lengths")
    add_options(p, MeasurePoint, skip=("model", "length", "seed", "hparams", "params", "batching"))
    # (not --batching: it would make the documented abbreviation --batch ambiguous)
    p.add_argument("--varlen-batching", default="padded", metavar="A,B,...",
                   help="with --length-spread: comma-separated ways to run the variable-length "
                        "batches, of padded, packed (rnn, lstm, gru), bucketed; one point each "
                        "(default: padded)")
    p.add_argument("--params", default="20k", help="parameter budget, e.g. 20000 or 20k")
    p.add_argument("--blocks", type=int, default=7, help="timed blocks per figure (>= 5)")
    p.add_argument("--stream", default="", help="stream positions, e.g. 1024,4096,16384")
    p.add_argument("--no-rss", action="store_true", help="skip the fresh-process RSS figure")
    p.add_argument("--check-overhead", action="store_true",
                   help="compare the sweep's training step with a bare PyTorch loop, against "
                        "an A/A control; exit 0 within 5%%, 1 over it, 3 too noisy to judge")
    p.add_argument("--rounds", type=int, default=0,
                   help="with --check-overhead: interleaved rounds (default 8)")
    p.add_argument("--out", default="results", help="results root")
    p.add_argument("--name", help="store folder name under --out (default "
                                  "measure-<device>-<dtype>)")
    add_threads(p, "torch's choice")
    p.set_defaults(fn=cmd_measure)


def point_line(record, i: int, n: int) -> None:
    """One line about a measured point."""
    figure = (f"train {record.train_ms:.2f} ms, infer {record.infer_ms:.2f} ms"
              if record.status == "ok" else f"{record.status}: {record.error}")
    p = record.point
    print(f"[{i}/{n}] measure {p['model']} L={p['length']}: {figure}", flush=True)


def cmd_measure(args) -> int:
    from seqbench.cell.cli import check_device
    from seqbench.env import environment
    from seqbench.measure.point import MeasurePoint, matmul_peak, measure
    from seqbench.models import FAMILIES
    from seqbench.options import given
    from seqbench.results.cli import print_tables
    from seqbench.results.report import write_summary
    from seqbench.results.store import Store
    from seqbench.tasks import get_task

    apply_threads(args.threads, None)
    fields = given(args, MeasurePoint) | {"params": parse_count("--params", args.params)}
    io = get_task(fields.get("task", MeasurePoint.task)).io  # by default every family it fits
    models = (comma_list("--models", args.models) if args.models
              else [m for m, family in FAMILIES.items() if family.accepts(io)])
    batchings = comma_list("--varlen-batching", args.varlen_batching)
    points = [MeasurePoint.from_dict(fields | {"model": m, "length": n, "batching": b})
              for m in models for n in comma_list("--lengths", args.lengths, int)
              for b in batchings]
    stream = tuple(comma_list("--stream", args.stream, int)) if args.stream else ()
    require(args.blocks >= 5, "--blocks", f"must be >= 5, got {args.blocks}")
    require(args.rounds >= 0, "--rounds", f"must be >= 1 (0 = default), got {args.rounds}")
    require(args.rounds == 0 or args.check_overhead, "--rounds", "only with --check-overhead")
    device, dtype = points[0].device, points[0].dtype
    check_device(device)
    name = single_component("--name", args.name) if args.name else f"measure-{device}-{dtype}"
    store = Store(Path(args.out) / name)
    check_writable(store.root, "--out")  # before minutes of measuring
    if args.check_overhead:
        return _check_overhead(points, store, args.rounds)
    import torch

    peak = matmul_peak(device, dtype)
    atomic_write(store.root / "calibration.json", json.dumps(
        {"matmul_peak_flops_per_s": peak, "device": device, "dtype": dtype,
         "threads": torch.get_num_threads()}, indent=1) + "\n")
    console.print(f"matmul peak on {device} ({dtype}): {peak / 1e9:.1f} GFLOP/s")
    records = []
    for i, point in enumerate(points, 1):
        record = measure(point, peak=peak, rss=not args.no_rss, blocks=args.blocks,
                         stream_positions=stream)
        if point.length_spread > 0:  # one row per way of batching in the tables
            record.variant = f"{point.model}-{point.batching}"
        store.save_measurement(record)
        records.append(record)
        point_line(record, i, len(points))
    loaded = store.read()
    write_summary(store, loaded,
                  environment(device) | {"matmul_peak_flops_per_s": peak})
    print_tables(loaded, store.root)
    if points[0].length_spread > 0:
        _batching_table(records)
    return 0


def _batching_table(records) -> None:
    """Training tokens/s (real tokens) of each way of batching variable-length sequences, and
    its ratio to padded batches, per model and length."""
    table = Table(title="variable lengths: training tokens/s (real tokens), ratio to padded")
    for col in ("model", "length", "spread", "batching", "tokens/s", "vs padded"):
        table.add_column(col, justify="right")
    padded = {(r.point["model"], r.point["length"]): r.train_tokens_per_s for r in records
              if r.point["batching"] == "padded" and r.status == "ok"}
    for r in records:
        p = r.point
        base = padded.get((p["model"], p["length"]))
        speed = r.train_tokens_per_s
        table.add_row(p["model"], str(p["length"]), f"{p['length_spread']:g}", p["batching"],
                      f"{speed:,.0f}" if speed else r.status,
                      f"{speed / base:.2f}x" if speed and base else "")
    console.print(table)


def _check_overhead(points, store, rounds: int) -> int:
    """The sweep's training step against a bare hand-written loop and its A/A copy."""
    from seqbench.measure.overhead import (
        AA_BAR,
        NOISY_EXIT,
        OVERHEAD_BAR,
        ROUNDS,
        exit_status,
        overhead,
    )

    rounds = rounds or ROUNDS
    rows = []
    for p in points:
        rows.append(overhead(p, rounds))
        r = rows[-1]
        print(f"[{len(rows)}/{len(points)}] overhead {r['model']} L={r['length']}: ratio "
              f"{r['ratio']:.3f}, A/A {r['aa']:.3f} [{r['aa_low']:.3f}, {r['aa_high']:.3f}]: "
              f"{r['verdict']}", flush=True)
    table = Table(title=f"sweep step vs bare PyTorch loop ({rounds} interleaved rounds; ratio "
                        "and A/A: medians of per-round ratios [90% interval])")
    for col in ("model", "length", "sweep ms", "bare ms", "bare copy ms", "ratio", "A/A",
                "verdict"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], str(r["length"]), f"{r['sweep_ms']:.3f}", f"{r['bare_ms']:.3f}",
                      f"{r['bare_copy_ms']:.3f}",
                      f"{r['ratio']:.3f} [{r['ratio_low']:.3f}, {r['ratio_high']:.3f}]",
                      f"{r['aa']:.3f} [{r['aa_low']:.3f}, {r['aa_high']:.3f}]", r["verdict"])
    console.print(table)
    atomic_write(store.root / "overhead.json", json.dumps(rows, indent=1) + "\n")
    worst = max(rows, key=lambda r: r["ratio"])
    noise = max(max(1 - r["aa_low"], r["aa_high"] - 1) for r in rows)
    console.print(f"worst ratio {worst['ratio']:.3f} ({worst['model']} L={worst['length']}; bar: "
                  f"<= {OVERHEAD_BAR}); A/A intervals within {noise:.1%} of 1 at worst (judged "
                  f"only within {AA_BAR:.0%})")
    status = exit_status(rows)
    if status == NOISY_EXIT:
        unconfirmed = [f"{r['model']} L={r['length']}" for r in rows
                       if r["verdict"] == "unconfirmed"]
        console.print(f"too noisy to judge: the A/A interval of "
                      f"{sum(r['verdict'] == 'noisy' for r in rows)} point(s) reaches beyond "
                      f"{AA_BAR:.0%}" + (f"; a failure a second measurement did not confirm: "
                                         f"{', '.join(unconfirmed)}" if unconfirmed else "") +
                      f"; rerun on a quieter machine, with --threads 1 or more --rounds "
                      f"(exit {NOISY_EXIT})")
    else:
        console.print("PASS" if status == 0 else "FAIL: " + ", ".join(
            f"{r['model']} L={r['length']} {r['ratio']:.3f}" for r in rows
            if r["verdict"] == "fail"))
    return status
