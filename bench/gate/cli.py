"""`seqbench gate`: the accuracy gate (seqbench.gate.accuracy, torch-free), baseline updates
(seqbench.gate.baseline) and the perf gate (--perf, seqbench.gate.perf)."""
from __future__ import annotations

import argparse
import dataclasses

from rich.console import Console

from seqbench.gate.accuracy import DEFAULT_TOLERANCE
from seqbench.gate.perfrun import PerfSettings
from seqbench.gate.stats import DEFAULT_ALPHA, DEFAULT_MEMORY_TOLERANCE, DEFAULT_THRESHOLD
from seqbench.options import add_threads, comma_list
from seqbench.strict import parse_count, require

console = Console()
DEFAULTS = {f.name: f.default for f in dataclasses.fields(PerfSettings)}


def configure(g: argparse.ArgumentParser) -> None:
    g.description = ("Compare a run with a baseline; exit 0 clean, 1 regression, 2 unusable "
                     "input.")
    g.add_argument("--baseline", default="results/baseline",
                   help="baseline folder (cells/, perf.json) or perf.json (default %(default)s)")
    g.add_argument("--current", help="current sweep folder (cells/) or perf folder / perf.json; "
                   "with --against: where both sides' perf.json go (default results/perf-ab)")
    g.add_argument("--tolerance", action="append", default=[], metavar="[TASK=]X",
                   help=f"allowed absolute score drop (default {DEFAULT_TOLERANCE}), per task "
                   "with TASK=X; repeatable")
    g.add_argument("--tolerance-file", help="TOML: default = 0.02, parity = 0.05, ...")
    g.add_argument("--mode", default="auto", choices=("auto", "exact", "seeds"),
                   help="accuracy: exact (cell by cell), seeds (seed groups against the spread "
                   "between seeds) or auto (default): exact when both runs have the same kernel "
                   "path")
    g.add_argument("--spread-k", type=float, default=None, metavar="K",
                   help="seed groups: allowed mean drop = max(tolerance, K x pooled between-seed "
                   "std x sqrt(1/n_b + 1/n_c)) (default 6)")
    g.add_argument("--markdown", help="Markdown report path (default CURRENT/gate.md, "
                   "perf: CURRENT/gate-perf.md)")
    g.add_argument("--update-baseline", action="store_true",
                   help="copy CURRENT's records into --baseline and record who/what/why/when")
    g.add_argument("--why", help="with --update-baseline: the reason, stored in baseline.json")
    perf = g.add_argument_group("performance (--perf)")
    perf.add_argument("--perf", action="store_true", help="gate training-step time and memory")
    perf.add_argument("--record", metavar="DIR", help="measure this code, write DIR/perf.json")
    perf.add_argument("--against", metavar="GIT_REF",
                      help="A/B: measure a worktree of GIT_REF and this code, interleaved")
    perf.add_argument("--models", help="comma-separated families (default: every family)")
    perf.add_argument("--lengths", default=",".join(map(str, DEFAULTS["lengths"])))
    perf.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    perf.add_argument("--params", default=str(DEFAULTS["params"]))
    perf.add_argument("--device", default=DEFAULTS["device"])
    perf.add_argument("--rounds", type=int, default=DEFAULTS["rounds"],
                      help="interleaved rounds (default %(default)s)")
    perf.add_argument("--blocks", type=int, default=DEFAULTS["blocks"],
                      help="timed blocks per round (>= 5)")
    perf.add_argument("--min-block-s", type=float, default=DEFAULTS["min_block_s"],
                      help="seconds per timed block, at least (default %(default)s)")
    perf.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                      help="slowdown ratio of medians that may regress (default %(default)s)")
    perf.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                      help="Mann-Whitney significance level (default %(default)s)")
    perf.add_argument("--memory-tolerance", type=float, default=DEFAULT_MEMORY_TOLERANCE,
                      help="allowed relative growth of saved bytes / CUDA peaks (default "
                           "%(default)s)")
    add_threads(g, "1")
    g.set_defaults(fn=cmd_gate)


def _settings(args) -> PerfSettings:
    models = tuple(comma_list("--models", args.models)) if args.models else ()
    settings = PerfSettings(models=models, lengths=tuple(comma_list("--lengths", args.lengths, int)),
                            batch_size=args.batch_size,
                            params=parse_count("--params", args.params), device=args.device,
                            rounds=args.rounds, blocks=args.blocks, min_block_s=args.min_block_s,
                            threads=args.threads or 1)
    require(settings.batch_size >= 1, "--batch-size", f"must be >= 1, got {settings.batch_size}")
    settings.points()  # validates models, lengths and the rest
    return settings


def cmd_gate(args) -> int:
    if args.update_baseline:
        from seqbench.gate.baseline import update_baseline

        require(args.current is not None, "--current", "--update-baseline needs --current DIR")
        meta = update_baseline(args.current, args.baseline, args.why)
        console.print(f"baseline {args.baseline} <- {args.current}: {meta['what']['cells']} "
                      f"cells{' + perf.json' if meta['what']['perf'] else ''}; who {meta['who']}, "
                      f"commit {meta['what']['git_commit']}, why: {meta['why']}")
        return 0
    if args.perf:
        from seqbench.gate.perf import gate_perf_against, gate_perf_stored, record_perf

        kw = {"threshold": args.threshold, "alpha": args.alpha,
              "memory_tolerance": args.memory_tolerance}
        require(not (args.record and args.against), "--record",
                "give one of --record DIR, --against GIT_REF, or --baseline/--current")
        if args.record:
            path = record_perf(args.record, _settings(args))
            console.print(f"perf samples: {path}")
            return 0
        if args.against:
            return gate_perf_against(args.against, args.current or "results/perf-ab",
                                     _settings(args), args.markdown, **kw)
        require(args.current is not None, "--current",
                "--perf needs --record DIR, --against GIT_REF, or --baseline A --current B")
        return gate_perf_stored(args.baseline, args.current, args.markdown, **kw)
    for flag in ("record", "against"):
        require(getattr(args, flag) is None, f"--{flag}", "only with --perf")
    require(args.current is not None, "--current", "the sweep folder to gate, e.g. results/smoke")
    from seqbench.gate.accuracy import gate_accuracy

    return gate_accuracy(args.baseline, args.current, args.tolerance, args.tolerance_file,
                         args.markdown, args.mode, args.spread_k)
