"""The GPU validation (`scripts/gpu_check.sh`, `tox -e gpu`): one unattended run that checks the
CUDA paths and measures how fast sweeps go on this GPU, all of it written to one folder,
results/gpu-<device name>/ (`--out` to change):

1. tests: the CUDA tests (tests/test_gpu.py, test_measure_gpu.py, test_gpu_packing.py) ->
   tests.log, tests.xml;
2. sweeps: the `gpu-check` preset (a subset of `full`) once per packing (`--packing`, default
   1,auto: one cell per GPU, then the sweep's default cells per GPU), each timed from the command's
   start to its end, into sweep-<N>/ -> cells/hour, and the `full` preset's training time projected
   from each run's measured steps (seqbench.sweeps.projection); `--mps` adds one more run of the
   last packing under CUDA MPS, started for it and stopped after;
3. measure: `seqbench measure --device cuda` for every family at L = 256, 1024, 4096 in fp32 and
   bf16 -> measure-cuda-fp32/, measure-cuda-bf16/;
4. summary.md and summary.json: every stage's outcome and duration, cells/hour per packing, the
   projected wall time of `full`, and every failed cell or point.

Each stage runs as a child process with a time limit (`--stage-timeout`, default 600 s; its whole
process group is killed past it) and its output is shown and kept in <stage>.log. It fails loudly:
a stage that exits non-zero or times out, a sweep cell that ends `oom`, `error` or `timeout`, or a
measured point that is not `ok` is a failure, the summary lists it, and the script exits 1 (the
later stages still run). Exit 2: bad arguments, no CUDA GPU, or an output folder that already
holds a run (sweeps would skip their stored cells and time nothing: pass another --out).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from seqbench.strict import ConfigError, require

STAGES = ("tests", "sweeps", "measure")
CUDA_TESTS = ("tests/test_gpu.py", "tests/test_measure_gpu.py", "tests/test_gpu_packing.py")
PRESET = "gpu-check"
PROJECTED = "full"
MEASURE_LENGTHS = "256,1024,4096"
DTYPES = ("fp32", "bf16")
FAILED_CELLS = ("oom", "error", "timeout")


def slug(name: str) -> str:
    """A device name as a folder name: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def packing_list(text: str) -> list[int | str]:
    """--packing: cells per GPU to time, positive integers or `auto`, each once."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "auto":
            value: int | str = part
        else:
            require(part.isdigit() and int(part) >= 1, "--packing",
                    f"expected positive integers or 'auto', comma-separated, got {part!r}")
            value = int(part)
        require(value not in out, "--packing", f"{part} is given twice")
        out.append(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="results folder (default results/gpu-<device name>)")
    p.add_argument("--packing", default="1,auto",
                   help="cells per GPU to time the gpu-check sweep at (default 1,auto)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"stages to run, comma-separated (default {','.join(STAGES)})")
    p.add_argument("--stage-timeout", type=float, default=600.0,
                   help="seconds each stage may take (default 600)")
    p.add_argument("--mps", action="store_true",
                   help="also time the last packing under CUDA MPS (nvidia-cuda-mps-control)")
    args = p.parse_args(argv)
    args.packing = packing_list(args.packing)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    require(bool(args.stages), "--stages", f"must name at least one of {', '.join(STAGES)}")
    for stage in args.stages:
        require(stage in STAGES, "--stages",
                f"unknown stage {stage!r}; allowed: {', '.join(STAGES)}")
    require(args.stage_timeout > 0, "--stage-timeout", f"must be > 0, got {args.stage_timeout}")
    return args


@dataclass
class Stage:
    """One stage's outcome."""

    name: str
    argv: list[str]
    status: str = "not run"  # ok, failed (exit status), timeout
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # failed cells or points, in words


def run_stage(stage: Stage, out: Path, timeout: float, env: dict | None = None) -> Stage:
    """Run a stage's command in its own process group, its output shown and kept in
    <out>/<name>.log; killed with its group past timeout."""
    log = (out / f"{stage.name}.log").open("w")
    start = time.monotonic()
    proc = subprocess.Popen(stage.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)

    def copy() -> None:
        for line in proc.stdout:
            log.write(line)
            print(f"[{stage.name}] {line}", end="", flush=True)

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
        stage.status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        stop(proc)
        stage.status = f"timeout (killed after {timeout:g} s)"
    except BaseException:  # Ctrl-C or SIGTERM of this script: the stage's group is its own
        stop(proc)
        raise
    reader.join(timeout=10)
    log.close()
    stage.seconds = time.monotonic() - start
    return stage


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End a stage's whole process group: SIGTERM (a sweep stops cleanly), SIGKILL after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mps_daemon(folder: Path):
    """A CUDA MPS control daemon of our own (its pipes in a new temporary folder, short enough for
    a socket path; its log under folder), started without CUDA_VISIBLE_DEVICES (MPS would renumber
    the devices the workers name), stopped after; yields the environment its clients need."""
    pipe, logs = Path(tempfile.mkdtemp(prefix="seqbench-mps-")), folder / "log"
    logs.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    daemon = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env=daemon, check=True, timeout=60)
    try:
        yield env
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=daemon,
                       timeout=120, check=False)
        shutil.rmtree(pipe, ignore_errors=True)


def sweep_folder(out: Path, per_gpu: int | str, mps: bool = False) -> Path:
    return out / f"sweep-{per_gpu}-per-gpu{'-mps' if mps else ''}"


def sweep_stage(out: Path, per_gpu: int | str, timeout: float, mps: bool = False) -> tuple:
    """Run the gpu-check sweep at one packing; (Stage, its run's figures or None). A cell missing
    or ending oom, error or timeout is a problem."""
    from seqbench.results.store import Store
    from seqbench.sweeps.spec import preset

    folder = sweep_folder(out, per_gpu, mps)
    argv = [sys.executable, "-m", "seqbench.cli", "sweep", "--preset", PRESET, "--out",
            str(folder)] + ([] if per_gpu == "auto" else ["--cells-per-gpu", str(per_gpu)])
    stage = Stage(folder.name, argv)
    try:
        if mps:
            with mps_daemon(out / "mps") as env:
                run_stage(stage, out, timeout, env)
        else:
            run_stage(stage, out, timeout)
    except (OSError, subprocess.SubprocessError) as exc:  # MPS would not start
        stage.status = f"failed ({exc})"
        return stage, None
    store = folder / PRESET
    if not (store / "env.json").exists():
        stage.problems.append(f"no results in {store}")
        return stage, None
    records = list(Store(store).load().values())
    missing = len(preset(PRESET).cells()) - len(records)
    stage.problems += [f"{missing} cell(s) not stored"] if missing else []
    stage.problems += [f"{r.task} {r.model_name} L={r.length}: {r.status}: {last_line(r.error)}"
                       for r in records if r.status in FAILED_CELLS]
    executor = json.loads((store / "env.json").read_text())
    return stage, throughput(records, stage.seconds, executor)


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


@cache
def projected_cells() -> list:
    from seqbench.sweeps.spec import preset

    return preset(PROJECTED).labelled_cells()


def throughput(records: list, wall_s: float, executor: dict) -> dict:
    """Cells/hour of a timed gpu-check run and the projected training time of `full`."""
    from seqbench.sweeps.projection import cells_per_hour, project, step_times

    per_gpu = executor.get("cells_per_gpu", 1)
    workers = executor.get("workers", 1)
    projection = project(projected_cells(), step_times(records))
    return {"cells": len(records), "wall_s": wall_s, "cells_per_gpu": per_gpu,
            "workers": workers, "cells_per_hour": cells_per_hour(len(records), wall_s),
            "full_cells": projection.cells, "full_cell_seconds": projection.seconds,
            "full_wall_s": projection.wall_s(workers), "full_missing": list(projection.missing)}


def measure_stage(out: Path, dtype: str, timeout: float) -> Stage:
    """`seqbench measure --device cuda` for every family at MEASURE_LENGTHS in one dtype; a point
    missing or not `ok` is a problem."""
    from seqbench.models import FAMILIES
    from seqbench.results.store import Store

    name = f"measure-cuda-{dtype}"
    stage = run_stage(Stage(name, [
        sys.executable, "-m", "seqbench.cli", "measure", "--device", "cuda", "--dtype", dtype,
        "--lengths", MEASURE_LENGTHS, "--blocks", "5", "--out", str(out), "--name", name]),
        out, timeout)
    points = (list(Store(out / name).read().measurements.values())
              if (out / name / "measurements").exists() else [])
    missing = len(FAMILIES) * len(MEASURE_LENGTHS.split(",")) - len(points)
    stage.problems += [f"{missing} point(s) not measured"] if missing else []
    stage.problems += [f"{m.point['model']} L={m.point['length']} {dtype}: {m.status}: "
                       f"{last_line(m.error)}" for m in points if m.status != "ok"]
    return stage


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h ({seconds / 86400:,.2f} days)"


def summary(gpu: str, stages: list[Stage], runs: dict) -> str:
    """summary.md: the stages, the throughput per packing and the failures."""
    lines = [f"# GPU validation: {gpu}", "", "| stage | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in stages]
    if runs:
        lines += ["", f"## {PRESET} sweep throughput and the projected `{PROJECTED}` preset", "",
                  "| run | cells per GPU | workers | cells | wall s | cells/hour | "
                  f"`{PROJECTED}`: training, all cells | `{PROJECTED}`: wall |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, t in runs.items():
            lines.append(f"| {name} | {t['cells_per_gpu']} | {t['workers']} | {t['cells']} | "
                         f"{t['wall_s']:.0f} | {t['cells_per_hour']:,.0f} | "
                         f"{hours(t['full_cell_seconds'])} | {hours(t['full_wall_s'])} |")
        lines += ["", "Wall s: the whole `seqbench sweep` command (start-up, worker processes, "
                  "evaluation included). The projection counts training steps only, at the full "
                  "budget, from each run's measured seconds per step (seqbench.sweeps.projection); "
                  "a packed run's rates are those of cells sharing the GPU."]
    problems = [(s.name, p) for s in stages for p in s.problems]
    failed = [s for s in stages if s.status != "ok"]
    lines += ["", "## Failures", ""]
    lines += [f"- {s.name}: {s.status} (see {s.name}.log)" for s in failed]
    lines += [f"- {name}: {p}" for name, p in problems]
    if not failed and not problems:
        lines.append("none")
    return "\n".join(lines) + "\n"


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # through run_stage, which stops the stage running


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        args = parse_args(argv)
        out, gpu = prepare(args)
    except ConfigError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    stages: list[Stage] = []
    runs: dict[str, dict] = {}
    if "tests" in args.stages:
        stages.append(run_stage(Stage("tests", [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml",
            str(out / "tests.xml"), *CUDA_TESTS]), out, args.stage_timeout))
    if "sweeps" in args.stages:
        plan = [(n, False) for n in args.packing] + ([(args.packing[-1], True)] if args.mps
                                                      else [])
        for per_gpu, mps in plan:
            stage, figures = sweep_stage(out, per_gpu, args.stage_timeout, mps)
            stages.append(stage)
            if figures is not None:
                runs[stage.name] = figures
    if "measure" in args.stages:
        stages += [measure_stage(out, dtype, args.stage_timeout) for dtype in DTYPES]
    (out / "summary.json").write_text(json.dumps(
        {"gpu": gpu, "stages": [asdict(s) for s in stages], "runs": runs}, indent=1) + "\n")
    text = summary(gpu, stages, runs)
    (out / "summary.md").write_text(text)
    print(text)
    bad = any(s.status != "ok" or s.problems for s in stages)
    print(f"gpu_check: {'FAILED' if bad else 'passed'}; everything is in {out}")
    return 1 if bad else 0


def prepare(args) -> tuple[Path, str]:
    """The output folder (new, or without an earlier run) and the GPU's name; ConfigError where
    there is no GPU, the tests are not here, or the folder holds a run."""
    import torch

    require(torch.cuda.is_available(), "device", "the GPU validation needs a CUDA GPU, and "
            "torch.cuda.is_available() is False here")
    if "tests" in args.stages:
        require(all(Path(t).exists() for t in CUDA_TESTS), "tests",
                f"{CUDA_TESTS[0]} not found: run from the repository root")
    gpu = torch.cuda.get_device_name(0)
    out = Path(args.out or Path("results") / f"gpu-{slug(gpu)}")
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    from seqbench.env import environment

    (out / "env.json").write_text(json.dumps(environment("cuda"), indent=1, default=str) + "\n")
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False) \
        if _which("nvidia-smi") else None
    if smi is not None:
        (out / "nvidia-smi.txt").write_text(smi.stdout)
    return out, gpu


def check_out(out: Path) -> None:
    """ConfigError where out is a file or already holds a run of this script."""
    require(not out.exists() or out.is_dir(), "--out", f"{out} is a file")
    earlier = sorted(p.name for p in (out.iterdir() if out.is_dir() else ())
                     if p.name.startswith(("sweep-", "measure-", "summary")))
    require(not earlier, "--out", f"{out} already holds a run ({', '.join(earlier)}); its "
            "sweeps would skip their stored cells and time nothing: pass another --out or move "
            "it away")


def _which(name: str) -> bool:
    return shutil.which(name) is not None


if __name__ == "__main__":
    sys.exit(main())
