"""The perf gate: the training-step time and memory of the current code against a baseline's.

`seqbench gate --perf ...`, three forms sharing one measurement protocol:
    --record DIR                  measure the current code, write DIR/perf.json
    --baseline A --current B      compare two perf.json files (or folders holding one)
    --against GIT_REF [--current DIR]
                                  A/B in one job: a temporary `git worktree` of GIT_REF and this
                                  code, each pip-installed into its own folder, measured side by
                                  side, interleaved, and compared

Protocol. A significance test needs per-block samples (a MeasureRecord keeps only a median and
IQR), so the gate stores its own, in perf.json: the training step (forward, backward, AdamW on a
fixed batch: seqbench.measure.point.Harness) of each model at a few small points, timed with
seqbench.measure.timing.time_blocks in `blocks` short blocks per round over many rounds (default
10 x 5 blocks of >= 10 ms), the points interleaved within each round, so a burst of load on a
shared machine hits a few samples of a point rather than half of them. Every timing sits between
two calibrations (seqbench.gate.child.calibrate: a fixed 256x256 matmul and a fixed LSTM step, code
that does not change with the tree under test), and its samples are also stored divided by the
geometric mean of the enclosing kernel times (norm_samples). The run's median calibration is
merged into DIR/calibration.json.

Measurement always runs in a child process, `python -m seqbench.gate.child` (seqbench.gate.child),
so an A/B job really imports each side's own code; the child reports where its seqbench came from
and the parent checks it. In A/B mode the two children alternate point by point (their order
swapped every round), so drift hits both sides alike, and the raw samples are compared; in
stored-baseline mode the normalised samples are compared, so a slower machine does not look like a
regression (the machine factor, current / baseline calibration, is reported).

A point regresses only with BOTH a slowdown (ratio of medians) above the threshold (default 1.25)
AND a one-sided Mann-Whitney U test at alpha 0.05 (seqbench.gate.stats). Blocks of one run share
that run's machine state, so p alone is optimistic about differences between runs; the ratio
threshold absorbs run-to-run noise. Memory (saved bytes; on CUDA the peak allocated and reserved
bytes of a step) may grow by at most --memory-tolerance (5%). A point that fails now but did not
before, or a missing point, regresses too.

Test-only hook (never set it for real measurements; perf.json records it when active):
SEQBENCH_TEST_SLOWDOWN="lstm=1.5[,gru=1.2]" makes the measured training step of those models that
much slower (seqbench.gate.child.train_closure); in A/B mode on the current side only.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seqbench.env import CODE, environment, git
from seqbench.fileio import atomic_write
from seqbench.gate.stats import (
    DEFAULT_ALPHA,
    DEFAULT_MEMORY_TOLERANCE,
    DEFAULT_THRESHOLD,
    Slowdown,
    slowdown,
)
from seqbench.strict import ConfigError, check_choice, require

console = Console()

PERF_SCHEMA = 2
MEMORY_FIELDS = ("saved_bytes", "train_peak_allocated", "train_peak_reserved")
SLOWDOWN_ENV = "SEQBENCH_TEST_SLOWDOWN"
CAL_MIN_BLOCK_S = 0.01  # calibration blocks around each timed point: short, but many
MARK = "@seqbench-gate@ "  # prefix of the measuring child's protocol lines on stdout


class PerfChild:
    """A measuring process, `python -m seqbench.gate.child`, running the seqbench installed in
    `site` (an A/B side: PYTHONPATH=site) or, with site None, the one this process runs."""

    def __init__(self, name: str, tree: Path, points: list[dict], *, threads: int, device: str,
                 slowdown: dict[str, float] | None = None, site: Path | None = None):
        self.name, self.tree, self.site = name, Path(tree).resolve(), site
        self.slowdown = slowdown or {}
        cfg = {"points": points, "threads": threads, "device": device, "slowdown": slowdown or {}}
        env = os.environ.copy() | {"PYTHONDONTWRITEBYTECODE": "1"}
        if site is not None:
            env["PYTHONPATH"] = str(site)
        env.pop(SLOWDOWN_ENV, None)
        self.workdir = tempfile.TemporaryDirectory(prefix="seqbench-perf-")
        self.stderr = open(Path(self.workdir.name) / "stderr.txt", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seqbench.gate.child", json.dumps(cfg)], cwd=self.workdir.name,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)

    def ready(self) -> None:
        """Wait for the child's greeting (children start in parallel) and check its code."""
        hello = self._read()
        self.seqbench_file = hello["seqbench_file"]
        self.torch = hello["torch"]
        expected = self.site or CODE
        if not Path(self.seqbench_file).resolve().is_relative_to(Path(expected).resolve()):
            raise ConfigError(f"{self.name} code: the child imported seqbench from "
                              f"{self.seqbench_file}, not from {expected}")

    def _read(self) -> dict:
        while line := self.proc.stdout.readline():
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.proc.wait(timeout=30)
        self.stderr.seek(0)
        tail = self.stderr.read().strip().splitlines()[-3:]
        raise ConfigError(f"{self.name} code at {self.tree} cannot be measured (the child "
                          f"exited with {self.proc.returncode}; a tree from before seqbench 0.2 "
                          f"has no seqbench.gate.child): {' | '.join(tail)}")

    def ask(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op} | kw) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        self.workdir.cleanup()


@dataclass(frozen=True)
class PerfSettings:
    """What the perf gate measures (the CLI's --perf options; torch is imported only to
    validate and build the points)."""

    models: tuple[str, ...] = ()  # none given: every registered family
    lengths: tuple[int, ...] = (16, 64)
    batch_size: int = 16
    params: int = 20_000
    device: str = "cpu"
    task: str = "parity"
    rounds: int = 10  # many short rounds: a burst of load on a shared machine hits few samples
    blocks: int = 5
    min_block_s: float = 0.01
    threads: int = 1

    def validate(self) -> None:
        require(self.rounds >= 1, "--rounds", f"must be >= 1, got {self.rounds}")
        require(self.blocks >= 5, "--blocks", f"must be >= 5, got {self.blocks}")
        require(self.min_block_s > 0, "--min-block-s", f"must be > 0, got {self.min_block_s}")
        require(self.threads >= 1, "--threads", f"must be >= 1, got {self.threads}")
        import torch

        require(self.device != "cuda" or torch.cuda.is_available(), "device",
                "cuda is not available on this machine; allowed here: cpu")

    def points(self) -> list:
        """The MeasurePoint of every (model, length), validated."""
        from seqbench.measure.point import MeasurePoint
        from seqbench.models import FAMILIES

        return [MeasurePoint(model=m, length=n, batch_size=self.batch_size, device=self.device,
                             params=self.params, task=self.task)
                for m in self.models or FAMILIES for n in self.lengths]


def slowdown_hook() -> dict[str, float]:
    """The TEST-ONLY SEQBENCH_TEST_SLOWDOWN hook: {"lstm": 1.5} from "lstm=1.5"."""
    text = os.environ.get(SLOWDOWN_ENV, "").strip()
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        require(bool(sep) and factor >= 1.0, SLOWDOWN_ENV,
                f"expected MODEL=FACTOR with FACTOR >= 1, got {part!r}")
        from seqbench.models import FAMILIES

        out[check_choice(SLOWDOWN_ENV, name.strip(), FAMILIES)] = factor
    return out


def _point_args(point) -> dict:
    """The point as the child parses it: only the fields every version of MeasurePoint knows."""
    d = point.to_dict()
    return {k: d[k] for k in ("model", "length", "batch_size", "device", "params", "task")}


def _normaliser(cals: list[dict]) -> float:
    """Seconds of the calibration work around one timed point: the geometric mean of the matmul
    and LSTM-step medians, each averaged over the calibrations before and after the point."""
    mm = statistics.fmean(c["matmul_s"] for c in cals)
    ls = statistics.fmean(c["lstm_step_s"] for c in cals)
    return math.sqrt(mm * ls)


def measure_sides(children: list[PerfChild], settings: PerfSettings, progress=None,
                  bracket: bool = True) -> list[dict]:
    """Interleaved measurement: in each round every point is timed on each child in turn (the
    children's order reversed every other round). bracket: a calibration follows every timing,
    so each timing sits between two calibrations of its child, and its samples are also stored
    divided by them (norm_samples, dimensionless); otherwise (A/B, where the two sides are
    compared raw and their timings should sit as close together as possible) each side is
    calibrated once before and once after the rounds, and norm_samples use that. One perf.json
    payload per child."""
    points = settings.points()
    out = [{"points": [{"train_samples_s": [], "norm_samples": [], "calls_per_block": [],
                        "normalisers_s": [], "calibrations": [], "status": "ok", "error": None}
                       for _ in points],
            "calibrations": []} for _ in children]
    order = list(range(len(children)))
    kw = {"blocks": settings.blocks, "min_block_s": settings.min_block_s,
          "cal_min_block_s": CAL_MIN_BLOCK_S}

    def calibrate_all():
        for s in order:
            reply = children[s].ask("calibrate", **kw)
            require(reply.pop("ok"), children[s].name, f"calibration failed: {reply.get('error')}")
            out[s]["calibrations"].append(reply)

    calibrate_all()  # bracket: the `before` of each child's first timing
    for r in range(settings.rounds):
        sides = order if r % 2 == 0 else order[::-1]
        for i, point in enumerate(points):
            for s in sides:
                rec = out[s]["points"][i]
                if rec["status"] != "ok":
                    continue
                reply = children[s].ask("time", i=i, calibrate=bracket, **kw)
                if not reply["ok"]:
                    rec["status"], rec["error"] = reply["status"], reply["error"]
                    continue
                rec["train_samples_s"] += reply["samples"]
                rec["calls_per_block"].append(reply["calls_per_block"])
                if bracket:  # the child's previous calibration and this one enclose the timing
                    cals = [out[s]["calibrations"][-1], reply["calibration"]]
                    norm = _normaliser(cals)
                    rec["norm_samples"] += [v / norm for v in reply["samples"]]
                    rec["normalisers_s"].append(norm)
                    rec["calibrations"].append([{k: c[k] for k in ("matmul_s", "lstm_step_s")}
                                                for c in cals])
                    out[s]["calibrations"].append(reply["calibration"])
            if progress:
                progress(r, i, point)
    if not bracket:
        calibrate_all()
        for s in order:
            norm = _normaliser(out[s]["calibrations"])
            for rec in out[s]["points"]:
                rec["norm_samples"] = [v / norm for v in rec["train_samples_s"]]
                rec["normalisers_s"] = [norm] * len(rec["calls_per_block"])
    for s, child in enumerate(children):
        cals = out[s].pop("calibrations")
        out[s]["calibration"] = {
            "matmul_s": statistics.median(c["matmul_s"] for c in cals),
            "lstm_step_s": statistics.median(c["lstm_step_s"] for c in cals),
            "measured": len(cals),
        }
        for i, point in enumerate(points):
            rec = out[s]["points"][i]
            if rec["status"] == "ok":
                facts = child.ask("facts", i=i)
                if facts.pop("ok"):
                    rec |= facts
                else:
                    rec["status"], rec["error"] = facts["status"], facts["error"]
            samples = rec["train_samples_s"]
            rec |= {"key": point.key(), "point": point.to_dict(),
                    "train_ms": statistics.median(samples) * 1e3 if samples else None}
        out[s] |= {
            "schema": PERF_SCHEMA, "kind": "seqbench-perf",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "code": str(child.tree), "seqbench_file": child.seqbench_file,
            "git_commit": git(child.tree, "rev-parse", "HEAD"),
            "settings": {k: getattr(settings, k) for k in (
                "rounds", "blocks", "min_block_s", "threads", "batch_size", "params", "device",
                "task")} | {"models": sorted({p.model for p in points}),
                            "lengths": list(settings.lengths),
                            "calibration_min_block_s": CAL_MIN_BLOCK_S},
            "env": environment(settings.device) | {"threads": settings.threads,
                                                   "torch": child.torch},
            "test_slowdown": child.slowdown,
        }
    return out


def _progress(r: int, i: int, point) -> None:
    console.print(f"  round {r + 1}: {point.model} L={point.length}", highlight=False)


def run_children(specs: list[tuple[str, Path, dict, Path | None]], settings: PerfSettings,
                 bracket: bool = True) -> list[dict]:
    """Measure each (name, tree, slowdown, site) side in its own child, interleaved."""
    points = [_point_args(p) for p in settings.points()]
    children = []
    try:
        for name, tree, slow, site in specs:
            children.append(PerfChild(name, tree, points, threads=settings.threads,
                                      device=settings.device, slowdown=slow, site=site))
        for child in children:
            child.ready()
        return measure_sides(children, settings, _progress if console.is_terminal else None,
                             bracket)
    finally:
        for child in children:
            child.close()


def _warn_slowdown(slow: dict) -> None:
    if slow:
        console.print(f"[bold yellow]TEST-ONLY {SLOWDOWN_ENV} active: "
                      + ", ".join(f"{m} x{f:g}" for m, f in slow.items()))


def record_perf(out_dir, settings: PerfSettings) -> Path:
    """Measure the current code; write out_dir/perf.json and merge the calibration into
    out_dir/calibration.json."""
    settings.validate()
    slow = slowdown_hook()
    _warn_slowdown(slow)
    (data,) = run_children([("current", CODE, slow, None)], settings)
    return write_perf(Path(out_dir), data)


def write_perf(out_dir: Path, data: dict) -> Path:
    path = out_dir / "perf.json"
    atomic_write(path, json.dumps(data, indent=1) + "\n")
    cal_path = out_dir / "calibration.json"
    try:
        cal = json.loads(cal_path.read_text()) if cal_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cal = {}
    cal |= {k: data["calibration"][k] for k in ("matmul_s", "lstm_step_s")}
    atomic_write(cal_path, json.dumps(cal, indent=1) + "\n")
    return path


def load_perf(path, role: str) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "perf.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--{role}: cannot read {path}: {exc.strerror}; record one with "
                          "seqbench gate --perf --record DIR") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{role}: {path} is not valid JSON: {exc}") from None
    ok = (isinstance(data, dict) and data.get("kind") == "seqbench-perf"
          and data.get("schema") == PERF_SCHEMA and isinstance(data.get("points"), list))
    require(ok, f"--{role}", f"{path} is not a seqbench perf.json of schema {PERF_SCHEMA}")
    require(bool(data["points"]), f"--{role}", f"{path} holds no measured points")
    return data


# --------------------------------------------------------------------------------------------
# performance: comparison


@dataclass
class PointDiff:
    verdict: str  # regression, missing, new, faster, ok, failed
    name: str
    key: str
    timing: Slowdown | None = None
    base_ms: float | None = None
    cur_ms: float | None = None  # raw median (the ratio is of normalised samples where stated)
    memory: dict = field(default_factory=dict)  # field -> (base, cur)
    reasons: list[str] = field(default_factory=list)

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


def _mem(d: PointDiff) -> str:
    if "saved_bytes" not in d.memory:
        return ""
    b, c = d.memory["saved_bytes"]
    return f"{b} -> {c}" if b != c else str(b)


def _ratio(d: PointDiff) -> tuple[str, str, str]:
    if d.timing is None:
        return "", "", ""
    t = d.timing
    return f"{t.ratio:.3f}", f"[{t.low:.3f}, {t.high:.3f}]", f"{t.p:.2g}"


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def perf_markdown(diffs: list[PointDiff], factor: float, base_label, cur_label, settings: dict,
                  threshold, alpha, memory_tolerance, normalise: bool) -> str:
    failed = [d for d in diffs if d.regression]
    norm = (f"ratios of calibration-normalised times (each timing divided by calibration kernels "
            f"measured around it; machine factor current/baseline {factor:.3f})"
            if normalise else "interleaved A/B in one job: ratios of raw times")
    lines = [
        f"# seqbench performance gate: {'FAIL' if failed else 'PASS'}", "",
        f"- baseline `{base_label}`, current `{cur_label}`; {norm}",
        (f"- training step of each point, {settings.get('rounds')} round(s) x "
         f"{settings.get('blocks')} blocks, {settings.get('threads')} thread(s)"),
        (f"- regression: ratio of medians > {threshold:g} and one-sided Mann-Whitney p < "
         f"{alpha:g}; memory growth > {memory_tolerance:.0%}"),
        f"- {len(diffs)} point(s), {len(failed)} regressed", "",
        "| verdict | point | baseline ms | current ms | ratio | 95% CI | p | saved bytes | reason |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for d in diffs:
        ratio, ci, p = _ratio(d)
        mark = f"**{d.verdict}**" if d.regression else d.verdict
        lines.append(f"| {mark} | {d.name} | {_ms(d.base_ms)} | {_ms(d.cur_ms)} | {ratio} | {ci} "
                     f"| {p} | {_mem(d)} | {'; '.join(d.reasons)} |")
    return "\n".join(lines) + "\n"


def perf_table(diffs: list[PointDiff]) -> Table:
    table = Table(title="performance gate: training step per point")
    for col in ("verdict", "point", "base ms", "cur ms", "ratio", "95% CI", "p", "saved bytes",
                "reason"):
        table.add_column(col, justify="left" if col in ("verdict", "point", "reason") else "right")
    for d in diffs:
        ratio, ci, p = _ratio(d)
        table.add_row(d.verdict, d.name, _ms(d.base_ms), _ms(d.cur_ms), ratio, ci, p, _mem(d),
                      "; ".join(d.reasons), style="bold red" if d.regression else None)
    return table


def _report_perf(base: dict, cur: dict, base_label, cur_label, markdown_path: Path,
                 threshold, alpha, memory_tolerance, normalise: bool) -> int:
    if base.get("test_slowdown") or cur.get("test_slowdown"):
        console.print(f"[bold yellow]note: TEST-ONLY slowdown in baseline "
                      f"{base.get('test_slowdown') or {}}, current {cur.get('test_slowdown') or {}}")
    diffs, factor = compare_perf(base, cur, threshold=threshold, alpha=alpha,
                                 memory_tolerance=memory_tolerance, normalise=normalise)
    console.print(perf_table(diffs))
    atomic_write(markdown_path, perf_markdown(diffs, factor, base_label, cur_label,
                                              cur.get("settings", {}), threshold, alpha,
                                              memory_tolerance, normalise))
    failed = [d for d in diffs if d.regression]
    verdict = "[bold red]FAIL[/]" if failed else "[bold green]PASS[/]"
    norm = (f"normalised; machine factor {factor:.3f}" if normalise
            else f"interleaved, raw times; machine factor {factor:.3f}")
    console.print(f"performance gate {verdict}: {len(diffs)} point(s), {len(failed)} regressed "
                  f"({norm}); markdown: {markdown_path}")
    return 1 if failed else 0


def gate_perf_stored(baseline, current, markdown_path, **kw) -> int:
    base, cur = load_perf(baseline, "baseline"), load_perf(current, "current")
    cur_dir = Path(current) if Path(current).is_dir() else Path(current).parent
    path = Path(markdown_path) if markdown_path else cur_dir / "gate-perf.md"
    return _report_perf(base, cur, baseline, current, path, normalise=True, **kw)


def install(tree: Path, site: Path) -> None:
    """pip-install the seqbench source tree `tree` (its pyproject.toml) into `site`, without its
    dependencies (they are this environment's), as a user's install of that code would be."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
           "--target", str(site), str(tree)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")  # build with this environment's setuptools
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    require(done.returncode == 0, "--against",
            f"cannot install {tree}: {done.stderr.strip()[-400:]}")


def gate_perf_against(ref: str, out_dir, settings: PerfSettings, markdown_path, **kw) -> int:
    """A/B: a temporary git worktree of ref against this code, each pip-installed into its own
    folder and measured in its own child, interleaved in one job."""
    settings.validate()
    top = git(CODE, "rev-parse", "--show-toplevel")
    require(top is not None and (Path(top) / "pyproject.toml").is_file(), "--against",
            f"the running code at {CODE} is not in a git checkout of seqbench")
    commit = git(CODE, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    require(commit is not None, "--against", f"{ref!r} is not a commit in {top}")
    slow = slowdown_hook()
    _warn_slowdown(slow)
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
            base, cur = run_children(
                [("baseline", tree, {}, Path(tmp) / "site-baseline"),
                 ("current", Path(top), slow, Path(tmp) / "site-current")],
                settings, bracket=False)
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
    return _report_perf(base, cur, f"{ref} ({commit[:12]})", f"{top} (working tree)", path,
                        normalise=False, **kw)
