"""The perf gate: the training-step time and memory of the current code against a baseline's.

`seqbench gate --perf ...`, three forms sharing one measurement protocol (seqbench.gate.perfrun):
    --record DIR                  measure the current code, write DIR/perf.json
    --baseline A --current B      compare two perf.json files (or folders holding one)
    --against GIT_REF [--current DIR]
                                  A/B in one job: a temporary `git worktree` of GIT_REF and this
                                  code, each pip-installed into its own folder, measured side by
                                  side, interleaved, and compared

A/B compares the raw samples (both sides share the machine's state); stored runs compare the
samples divided by their bracketing calibration, so a slower machine does not look like a
regression (the machine factor, current / baseline calibration, is reported).

Decision. A point's timing is flagged only with BOTH a slowdown (ratio of medians) above the
threshold (default 1.25) AND a one-sided Mann-Whitney U test at alpha 0.05 (seqbench.gate.stats).
Blocks of one run share that run's machine state, so p alone is optimistic about differences
between runs, and a burst of load on a shared machine can make one side slow for a whole stretch
of rounds: identical code was flagged in 2 of 11 A/B runs on a 2-core VM (1.34x at p = 1.5e-6).
So in A/B a flagged point is measured again (same rounds, interleaved, both sides, fresh samples)
and fails only when the re-measurement alone is flagged too; otherwise it is reported as
`unconfirmed`. Stored comparisons cannot re-measure their baseline and are not confirmed.

A/A noise. Each side's samples of a point are split into its even and odd rounds, which measured
the same code: the ratio of their medians (>= 1, the larger of the two sides') is the run's own
noise at that point, reported per point and summarised; a run whose A/A noise reaches the
threshold cannot resolve a slowdown of that size, and the report says so.

Memory (saved bytes; on CUDA the peak allocated and reserved bytes of a step) may grow by at most
--memory-tolerance (5%); it is deterministic and never re-measured. A point that fails now but did
not before, or a missing point, regresses too.
"""
from __future__ import annotations

import math
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seqbench.env import CODE, git
from seqbench.fileio import atomic_write
from seqbench.gate.perfrun import (
    PerfSettings,
    Sides,
    install,
    load_perf,
    slowdown_hook,
    warn_slowdown,
    write_perf,
)
from seqbench.gate.stats import (
    DEFAULT_ALPHA,
    DEFAULT_MEMORY_TOLERANCE,
    DEFAULT_THRESHOLD,
    Slowdown,
    slowdown,
)
from seqbench.strict import ConfigError, require

console = Console()

MEMORY_FIELDS = ("saved_bytes", "train_peak_allocated", "train_peak_reserved")


@dataclass
class PointDiff:
    verdict: str  # regression, missing, new, faster, ok, failed, unconfirmed
    name: str
    key: str
    timing: Slowdown | None = None
    confirm: Slowdown | None = None  # the re-measurement of a flagged point (A/B)
    aa: float | None = None  # A/A noise: the larger side's even/odd-round median ratio, >= 1
    base_ms: float | None = None
    cur_ms: float | None = None  # raw median (the ratio is of normalised samples where stated)
    memory: dict = field(default_factory=dict)  # field -> (base, cur)
    reasons: list[str] = field(default_factory=list)  # a timing alarm's reason comes first

    @property
    def regression(self) -> bool:
        return self.verdict in ("regression", "missing")


def _point_name(rec: dict) -> str:
    p = rec["point"]
    return f"{p['model']} L={p['length']} B={p['batch_size']}"


def machine_factor(base: dict, cur: dict) -> float:
    """How much slower the current machine is: geometric mean of the calibration kernels' ratios."""
    b, c = base["calibration"], cur["calibration"]
    return math.sqrt(c["matmul_s"] / b["matmul_s"] * c["lstm_step_s"] / b["lstm_step_s"])


def _blocks(payload: dict) -> int:
    return int(payload.get("settings", {}).get("blocks") or 5)


def aa_ratio(samples: list[float], blocks: int) -> float | None:
    """A/A noise of one side's samples of a point (`blocks` consecutive samples per round): the
    ratio of the medians of its odd and even rounds, as a factor >= 1; None below two rounds."""
    even = [v for j, v in enumerate(samples) if (j // blocks) % 2 == 0]
    odd = [v for j, v in enumerate(samples) if (j // blocks) % 2 == 1]
    if not even or not odd:
        return None
    r = statistics.median(odd) / statistics.median(even)
    return max(r, 1 / r)


def compare_perf(base: dict, cur: dict, *, threshold: float = DEFAULT_THRESHOLD,
                 alpha: float = DEFAULT_ALPHA, memory_tolerance: float = DEFAULT_MEMORY_TOLERANCE,
                 normalise: bool = True) -> tuple[list[PointDiff], float]:
    """Point by point (matched by measurement key); returns the differences and the machine factor
    (informational). normalise: compare the samples divided by their bracketing calibration (two
    runs at different times or machines), else the raw samples (an interleaved A/B job)."""
    require(threshold > 1, "--threshold", f"must be > 1, got {threshold}")
    require(0 < alpha < 1, "--alpha", f"must be in (0, 1), got {alpha}")
    require(memory_tolerance >= 0, "--memory-tolerance", f"must be >= 0, got {memory_tolerance}")
    bp = {p["key"]: p for p in base["points"]}
    cp = {p["key"]: p for p in cur["points"]}
    if not set(bp) & set(cp):
        raise ConfigError(
            f"no measured point in common: baseline {', '.join(map(_point_name, bp.values()))}; "
            f"current {', '.join(map(_point_name, cp.values()))} (other settings or models?)")
    factor = machine_factor(base, cur)
    diffs = []

    def order(key):
        p = (bp.get(key) or cp[key])["point"]
        return p["model"], p["length"], p["batch_size"], key

    for key in sorted(set(bp) | set(cp), key=order):
        b, c = bp.get(key), cp.get(key)
        name = _point_name(b or c)
        if c is None:
            diffs.append(PointDiff("missing", name, key, reasons=["not measured now"]))
            continue
        if b is None:
            diffs.append(PointDiff("new", name, key, reasons=["not in the baseline"]))
            continue
        d = PointDiff("ok", name, key)
        if c["status"] != "ok" or b["status"] != "ok":
            if c["status"] != "ok":  # a regression unless it failed in the baseline too
                d.verdict = "regression" if b["status"] == "ok" else "failed"
                d.reasons = [f"{c['status']}: {c['error']}"]
            else:
                d.reasons = [f"baseline {b['status']}: {b['error']}"]
            diffs.append(d)
            continue
        field_ = "norm_samples" if normalise else "train_samples_s"
        require(bool(b.get(field_)) and bool(c.get(field_)), "perf.json",
                f"{name}: no {field_} to compare (recorded by another seqbench version?)")
        d.timing = slowdown(b[field_], c[field_], threshold, alpha)
        noise = [aa_ratio(s[field_], _blocks(p)) for s, p in ((b, base), (c, cur))]
        d.aa = max((v for v in noise if v is not None), default=None)
        d.base_ms = statistics.median(b["train_samples_s"]) * 1e3
        d.cur_ms = statistics.median(c["train_samples_s"]) * 1e3
        if d.timing.regression:
            d.reasons.append(f"{d.timing.ratio:.2f}x slower (> {threshold:g}x, "
                             f"p={d.timing.p:.2g} < {alpha:g})")
        elif d.timing.ratio < 1 / threshold:
            d.verdict = "faster"
        for name_ in MEMORY_FIELDS:
            mb, mc = b.get(name_), c.get(name_)
            if mb is None or mc is None:
                continue
            d.memory[name_] = (mb, mc)
            if mc > mb * (1 + memory_tolerance):
                growth = f"+{mc / mb - 1:.1%}" if mb else "from 0"
                d.reasons.append(f"{name_} {mb} -> {mc} ({growth} > {memory_tolerance:.0%})")
        if d.reasons:
            d.verdict = "regression"
        diffs.append(d)
    return diffs, factor


def confirm(diffs: list[PointDiff], base: dict[str, dict], cur: dict[str, dict],
            threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA) -> None:
    """Settle the timing alarms of `diffs` with a re-measurement (point records by key, raw
    samples): an alarm stays a regression only when the fresh samples alone are flagged too."""
    for d in diffs:
        if d.timing is None or not d.timing.regression or d.key not in cur:
            continue
        b, c = base[d.key], cur[d.key]
        if b["status"] != "ok" or c["status"] != "ok":  # the alarm stands
            failed = c if c["status"] != "ok" else b
            d.reasons[0] += f"; re-measurement failed: {failed['status']}: {failed['error']}"
            continue
        d.confirm = slowdown(b["train_samples_s"], c["train_samples_s"], threshold, alpha)
        again = f"re-measured {d.confirm.ratio:.2f}x (p={d.confirm.p:.2g})"
        if d.confirm.regression:
            d.reasons[0] += f"; confirmed: {again}"
        else:
            d.reasons[0] = (f"flagged {d.timing.ratio:.2f}x (p={d.timing.p:.2g}), not confirmed: "
                            f"{again}")
            if len(d.reasons) == 1:  # no memory regression either
                d.verdict = "unconfirmed"


def aa_summary(diffs: list[PointDiff], threshold: float) -> str:
    noise = sorted(d.aa for d in diffs if d.aa is not None)
    if not noise:
        return "A/A noise: not measurable (fewer than two rounds)"
    text = (f"A/A noise (same code, even vs odd rounds of each side): median "
            f"{statistics.median(noise):.3f}x, max {noise[-1]:.3f}x over {len(noise)} point(s)")
    if noise[-1] >= threshold:
        text += (f"; WARNING: this run's own noise reaches the {threshold:g}x threshold, so its "
                 "timing verdicts are unreliable (rerun on a quieter machine)")
    return text


def _mem(d: PointDiff) -> str:
    if "saved_bytes" not in d.memory:
        return ""
    b, c = d.memory["saved_bytes"]
    return f"{b} -> {c}" if b != c else str(b)


def _cells(d: PointDiff) -> list[str]:
    t, c = d.timing, d.confirm
    return [_ms(d.base_ms), _ms(d.cur_ms), "" if t is None else f"{t.ratio:.3f}",
            "" if t is None else f"[{t.low:.3f}, {t.high:.3f}]", "" if t is None else f"{t.p:.2g}",
            "" if d.aa is None else f"{d.aa:.3f}", "" if c is None else f"{c.ratio:.3f}", _mem(d)]


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


COLUMNS = ("verdict", "point", "baseline ms", "current ms", "ratio", "95% CI", "p", "A/A",
           "confirm ratio", "saved bytes", "reason")


def perf_markdown(diffs: list[PointDiff], factor: float, base_label, cur_label, settings: dict,
                  threshold, alpha, memory_tolerance, normalise: bool) -> str:
    failed = [d for d in diffs if d.regression]
    norm = (f"ratios of calibration-normalised times (each timing divided by calibration kernels "
            f"measured around it; machine factor current/baseline {factor:.3f}); no confirmation "
            "(stored samples: rerun, or use --against)"
            if normalise else "interleaved A/B in one job: ratios of raw times; a flagged point "
            "is measured again and fails only when confirmed")
    lines = [
        f"# seqbench performance gate: {'FAIL' if failed else 'PASS'}", "",
        f"- baseline `{base_label}`, current `{cur_label}`; {norm}",
        (f"- training step of each point, {settings.get('rounds')} round(s) x "
         f"{settings.get('blocks')} blocks, {settings.get('threads')} thread(s)"),
        (f"- regression: ratio of medians > {threshold:g} and one-sided Mann-Whitney p < "
         f"{alpha:g}; memory growth > {memory_tolerance:.0%}"),
        f"- {aa_summary(diffs, threshold)}",
        (f"- {len(diffs)} point(s), {len(failed)} regressed, "
         f"{sum(d.verdict == 'unconfirmed' for d in diffs)} unconfirmed alarm(s)"), "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for d in diffs:
        mark = f"**{d.verdict}**" if d.regression else d.verdict
        lines.append("| " + " | ".join([mark, d.name, *_cells(d), "; ".join(d.reasons)]) + " |")
    return "\n".join(lines) + "\n"


def perf_table(diffs: list[PointDiff]) -> Table:
    table = Table(title="performance gate: training step per point")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("verdict", "point", "reason") else "right")
    for d in diffs:
        table.add_row(d.verdict, d.name, *_cells(d), "; ".join(d.reasons),
                      style="bold red" if d.regression else None)
    return table


def _report_perf(base: dict, cur: dict, diffs: list[PointDiff], factor: float, base_label,
                 cur_label, markdown_path: Path, threshold, alpha, memory_tolerance,
                 normalise: bool) -> int:
    if base.get("test_slowdown") or cur.get("test_slowdown"):
        console.print(f"[bold yellow]note: TEST-ONLY slowdown in baseline "
                      f"{base.get('test_slowdown') or {}}, current {cur.get('test_slowdown') or {}}")
    console.print(perf_table(diffs))
    atomic_write(markdown_path, perf_markdown(diffs, factor, base_label, cur_label,
                                              cur.get("settings", {}), threshold, alpha,
                                              memory_tolerance, normalise))
    failed = [d for d in diffs if d.regression]
    verdict = "[bold red]FAIL[/]" if failed else "[bold green]PASS[/]"
    norm = (f"normalised; machine factor {factor:.3f}" if normalise
            else f"interleaved, raw times; machine factor {factor:.3f}")
    unconfirmed = sum(d.verdict == "unconfirmed" for d in diffs)
    console.print(f"performance gate {verdict}: {len(diffs)} point(s), {len(failed)} regressed, "
                  f"{unconfirmed} unconfirmed alarm(s) ({norm}); {aa_summary(diffs, threshold)}; "
                  f"markdown: {markdown_path}", highlight=False)
    return 1 if failed else 0


def record_perf(out_dir, settings: PerfSettings) -> Path:
    """Measure the current code; write out_dir/perf.json and merge the calibration into
    out_dir/calibration.json."""
    settings.validate()
    slow = slowdown_hook()
    warn_slowdown(slow)
    with Sides([("current", CODE, slow, None)], settings) as sides:
        (data,) = sides.measure()
    return write_perf(Path(out_dir), data)


def gate_perf_stored(baseline, current, markdown_path, **kw) -> int:
    base, cur = load_perf(baseline, "baseline"), load_perf(current, "current")
    cur_dir = Path(current) if Path(current).is_dir() else Path(current).parent
    path = Path(markdown_path) if markdown_path else cur_dir / "gate-perf.md"
    diffs, factor = compare_perf(base, cur, normalise=True, **kw)
    return _report_perf(base, cur, diffs, factor, baseline, current, path, normalise=True, **kw)


def _measure_ab(tree: Path, top: Path, tmp: Path, slow: dict, settings: PerfSettings,
                kw: dict) -> tuple[dict, dict, list[PointDiff], float]:
    """Both sides measured interleaved, compared, and the flagged points measured again."""
    specs = [("baseline", tree, {}, tmp / "site-baseline"),
             ("current", top, slow, tmp / "site-current")]
    with Sides(specs, settings, bracket=False) as sides:
        base, cur = sides.measure()
        diffs, factor = compare_perf(base, cur, normalise=False, **kw)
        flagged = [d.key for d in diffs if d.timing is not None and d.timing.regression]
        if flagged:
            console.print(f"{len(flagged)} point(s) flagged: measuring them again, interleaved, "
                          "to confirm")
            again = sides.remeasure(flagged)
            confirm(diffs, *again, threshold=kw["threshold"], alpha=kw["alpha"])
            for payload, recs in zip((base, cur), again, strict=True):
                for p in payload["points"]:
                    if p["key"] in recs:
                        p["confirmation"] = {k: recs[p["key"]][k] for k in (
                            "train_samples_s", "calls_per_block", "status", "error")}
    return base, cur, diffs, factor


def gate_perf_against(ref: str, out_dir, settings: PerfSettings, markdown_path, **kw) -> int:
    """A/B: a temporary git worktree of ref against this code, each pip-installed into its own
    folder and measured in its own child, interleaved in one job; flagged points are confirmed."""
    settings.validate()
    kw = {"threshold": DEFAULT_THRESHOLD, "alpha": DEFAULT_ALPHA,
          "memory_tolerance": DEFAULT_MEMORY_TOLERANCE} | kw
    top = git(CODE, "rev-parse", "--show-toplevel")
    require(top is not None and (Path(top) / "pyproject.toml").is_file(), "--against",
            f"the running code at {CODE} is not in a git checkout of seqbench")
    commit = git(CODE, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    require(commit is not None, "--against", f"{ref!r} is not a commit in {top}")
    slow = slowdown_hook()
    warn_slowdown(slow)
    console.print(f"A/B: {ref} ({commit[:12]}) against the code at {top}, interleaved")
    with tempfile.TemporaryDirectory(prefix="seqbench-ab-") as tmp:
        tree = Path(tmp) / "tree"
        added = subprocess.run(["git", "-C", top, "worktree", "add", "--detach", "--quiet",
                                str(tree), commit], capture_output=True, text=True, check=False)
        require(added.returncode == 0, "--against",
                f"git worktree add failed: {added.stderr.strip()}")
        try:
            install(tree, Path(tmp) / "site-baseline")
            install(Path(top), Path(tmp) / "site-current")
            base, cur, diffs, factor = _measure_ab(tree, Path(top), Path(tmp), slow, settings,
                                                   kw)
        finally:
            subprocess.run(["git", "-C", top, "worktree", "remove", "--force", str(tree)],
                           capture_output=True, check=False)
            subprocess.run(["git", "-C", top, "worktree", "prune"], capture_output=True,
                           check=False)
    base["git_ref"], base["git_commit"] = ref, commit
    out_dir = Path(out_dir)
    write_perf(out_dir / "baseline", base)
    write_perf(out_dir / "current", cur)
    path = Path(markdown_path) if markdown_path else out_dir / "gate-perf.md"
    return _report_perf(base, cur, diffs, factor, f"{ref} ({commit[:12]})",
                        f"{top} (working tree)", path, normalise=False, **kw)
