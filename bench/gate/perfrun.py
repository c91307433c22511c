"""The perf gate's measuring side: what is measured (PerfSettings), the measuring processes
(PerfChild, Sides), the interleaved protocol and perf.json. The comparison is seqbench.gate.perf.

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
and the parent checks it. With two sides (A/B) the children alternate point by point, their order
swapped every round, so drift hits both sides alike; the children stay up for the whole job
(Sides), so points can be measured again (the gate's confirmation of an alarm). The protocol (ops
calibrate, time, facts, quit) is unchanged since seqbench 0.2, so a child of an older tree answers.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from seqbench.env import CODE, environment, git
from seqbench.fileio import atomic_write
from seqbench.strict import ConfigError, check_choice, require

console = Console()

PERF_SCHEMA = 2
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
        """The MeasurePoint of every (model, length), validated; no models given: every family
        that applies to the task (seq2seq needs an answer phase)."""
        from seqbench.measure.point import MeasurePoint
        from seqbench.models import FAMILIES
        from seqbench.tasks import get_task

        io = get_task(self.task).io
        models = self.models or [m for m, f in FAMILIES.items() if f.accepts(io)]
        return [MeasurePoint(model=m, length=n, batch_size=self.batch_size, device=self.device,
                             params=self.params, task=self.task)
                for m in models for n in self.lengths]


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

def _empty_point() -> dict:
    return {"train_samples_s": [], "norm_samples": [], "calls_per_block": [], "normalisers_s": [],
            "calibrations": [], "status": "ok", "error": None}


def measure_rounds(children: list[PerfChild], settings: PerfSettings, indices: list[int],
                   recs: list[dict[int, dict]], cals: list[list[dict]], bracket: bool,
                   progress=None) -> None:
    """Interleaved rounds: in each round every point of `indices` is timed on each child in turn
    (the children's order reversed every other round); samples go to recs[child][index] and
    calibrations to cals[child]. bracket: a calibration follows every timing, so each timing sits
    between two calibrations of its child, and its samples are also stored divided by them
    (norm_samples, dimensionless); otherwise (A/B, where the two sides are compared raw and their
    timings should sit as close together as possible) each child is calibrated once before and
    once after the rounds, and norm_samples use those."""
    order = list(range(len(children)))
    first = [len(c) for c in cals]
    kw = {"blocks": settings.blocks, "min_block_s": settings.min_block_s,
          "cal_min_block_s": CAL_MIN_BLOCK_S}

    def calibrate_all():
        for s in order:
            reply = children[s].ask("calibrate", **kw)
            require(reply.pop("ok"), children[s].name, f"calibration failed: {reply.get('error')}")
            cals[s].append(reply)

    calibrate_all()  # bracket: the `before` of each child's first timing
    for r in range(settings.rounds):
        sides = order if r % 2 == 0 else order[::-1]
        for i in indices:
            for s in sides:
                rec = recs[s][i]
                if rec["status"] != "ok":
                    continue
                reply = children[s].ask("time", i=i, calibrate=bracket, **kw)
                if not reply["ok"]:
                    rec["status"], rec["error"] = reply["status"], reply["error"]
                    continue
                rec["train_samples_s"] += reply["samples"]
                rec["calls_per_block"].append(reply["calls_per_block"])
                if bracket:  # the child's previous calibration and this one enclose the timing
                    pair = [cals[s][-1], reply["calibration"]]
                    norm = _normaliser(pair)
                    rec["norm_samples"] += [v / norm for v in reply["samples"]]
                    rec["normalisers_s"].append(norm)
                    rec["calibrations"].append([{k: c[k] for k in ("matmul_s", "lstm_step_s")}
                                                for c in pair])
                    cals[s].append(reply["calibration"])
            if progress:
                progress(r, i)
    if not bracket:
        calibrate_all()
        for s in order:
            norm = _normaliser(cals[s][first[s]:])
            for i in indices:
                rec = recs[s][i]
                rec["norm_samples"] = [v / norm for v in rec["train_samples_s"]]
                rec["normalisers_s"] = [norm] * len(rec["calls_per_block"])


class Sides:
    """The measuring children of one job (one per side: `specs` of (name, tree, slowdown, site)),
    started together and kept up until the job ends, so points can be measured again."""

    def __init__(self, specs: list[tuple[str, Path, dict, Path | None]], settings: PerfSettings,
                 bracket: bool = True):
        self.specs, self.settings, self.bracket = specs, settings, bracket
        self.points = settings.points()
        self.children: list[PerfChild] = []

    def __enter__(self) -> Sides:
        args = [_point_args(p) for p in self.points]
        try:
            for name, tree, slow, site in self.specs:
                self.children.append(PerfChild(name, tree, args, threads=self.settings.threads,
                                               device=self.settings.device, slowdown=slow,
                                               site=site))
            for child in self.children:
                child.ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for child in self.children:
            child.close()

    def _progress(self, r: int, i: int) -> None:
        p = self.points[i]
        console.print(f"  round {r + 1}: {p.model} L={p.length}", highlight=False)

    def measure(self) -> list[dict]:
        """Every point on every side, interleaved: one perf.json payload per side."""
        indices = list(range(len(self.points)))
        recs = [{i: _empty_point() for i in indices} for _ in self.children]
        cals: list[list[dict]] = [[] for _ in self.children]
        measure_rounds(self.children, self.settings, indices, recs, cals, self.bracket,
                       self._progress if console.is_terminal else None)
        return [self._payload(s, [recs[s][i] for i in indices], cals[s])
                for s in range(len(self.children))]

    def remeasure(self, keys: list[str]) -> list[dict[str, dict]]:
        """The points with these keys measured again, as before (fresh samples): per side, the
        point records by key."""
        index = {p.key(): i for i, p in enumerate(self.points)}
        indices = [index[k] for k in keys]
        recs = [{i: _empty_point() for i in indices} for _ in self.children]
        cals: list[list[dict]] = [[] for _ in self.children]
        measure_rounds(self.children, self.settings, indices, recs, cals, self.bracket)
        return [{self.points[i].key(): recs[s][i] for i in indices}
                for s in range(len(self.children))]

    def _payload(self, s: int, points: list[dict], cals: list[dict]) -> dict:
        child, settings = self.children[s], self.settings
        for i, point in enumerate(self.points):
            rec = points[i]
            if rec["status"] == "ok":
                facts = child.ask("facts", i=i)
                if facts.pop("ok"):
                    rec |= facts
                else:
                    rec["status"], rec["error"] = facts["status"], facts["error"]
            samples = rec["train_samples_s"]
            rec |= {"key": point.key(), "point": point.to_dict(),
                    "train_ms": statistics.median(samples) * 1e3 if samples else None}
        return {
            "points": points,
            "calibration": {
                "matmul_s": statistics.median(c["matmul_s"] for c in cals),
                "lstm_step_s": statistics.median(c["lstm_step_s"] for c in cals),
                "measured": len(cals),
            },
            "schema": PERF_SCHEMA, "kind": "seqbench-perf",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "code": str(child.tree), "seqbench_file": child.seqbench_file,
            "git_commit": git(child.tree, "rev-parse", "HEAD"),
            "settings": {k: getattr(settings, k) for k in (
                "rounds", "blocks", "min_block_s", "threads", "batch_size", "params", "device",
                "task")} | {"models": sorted({p.model for p in self.points}),
                            "lengths": list(settings.lengths),
                            "calibration_min_block_s": CAL_MIN_BLOCK_S},
            "env": environment(settings.device) | {"threads": settings.threads,
                                                   "torch": child.torch},
            "test_slowdown": child.slowdown,
        }


def warn_slowdown(slow: dict) -> None:
    if slow:
        console.print(f"[bold yellow]TEST-ONLY {SLOWDOWN_ENV} active: "
                      + ", ".join(f"{m} x{f:g}" for m, f in slow.items()))


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
