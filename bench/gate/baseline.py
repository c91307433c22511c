"""`seqbench gate --update-baseline`: make a run the new baseline, saying who, what, why and when.

Guarded: it writes only into a missing or empty folder or one that already holds a baseline.json
(a baseline this command made), and inside it replaces only what it owns: cells/ (only if cells/
holds nothing but records), perf.json, env.json, results.csv, summary.md, baseline.json. Any other
folder exits 2 naming why; no file this command did not write is ever deleted. Torch-free.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from seqbench.env import CODE, git, kernel_path
from seqbench.fileio import atomic_write
from seqbench.gate.accuracy import describe_path, load_run
from seqbench.strict import ConfigError, require

COPIED = ("env.json", "results.csv", "summary.md")


def _check_target(baseline: Path) -> None:
    if not baseline.exists():
        return
    require(baseline.is_dir(), "--baseline", f"{baseline} exists and is not a folder")
    if not any(baseline.iterdir()) or (baseline / "baseline.json").is_file():
        foreign = [p.name for p in (baseline / "cells").iterdir()
                   if p.suffix != ".json" or not p.is_file()] if (baseline / "cells").is_dir() else []
        require(not foreign, "--baseline", f"{baseline / 'cells'} holds files that are not cell "
                f"records ({', '.join(sorted(foreign)[:3])}); refusing to replace it")
        return
    raise ConfigError(f"--baseline: {baseline} is not empty and holds no baseline.json, so it is "
                      "not a baseline folder; refusing to write into it (give an empty or new "
                      "folder, or an existing baseline)")


def update_baseline(current, baseline, why: str) -> dict:
    """Make current's records (cells, and perf.json when present) the baseline's and write
    baseline.json: who, what, why, when; the previous entries are kept under `history`."""
    require(bool(why and why.strip()), "--why", "say why the baseline changes")
    current, baseline = Path(current), Path(baseline)
    require(current.is_dir(), "--current", f"{current} is not a folder")
    perf = current / "perf.json"
    has_cells = (current / "cells").is_dir() and any((current / "cells").glob("*.json"))
    require(has_cells or perf.is_file(), "--current",
            f"{current} holds neither cells/*.json nor perf.json")
    _check_target(baseline)
    records = {}
    if has_cells:
        run = load_run(current, "current")
        require(not run.impossible, "--current", "a baseline must hold only possible scores: "
                f"{next(iter(run.impossible.values()), '')}")
        records = run.records
    if perf.is_file():
        from seqbench.gate.perfrun import load_perf  # validates the file

        load_perf(perf, "current")
    baseline.mkdir(parents=True, exist_ok=True)
    if has_cells:  # swap the whole cells/ folder in, so no mix of old and new records is seen
        staging, old = baseline / ".cells.new", baseline / ".cells.old"
        for leftover in (staging, old):
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir()
        for record in records.values():
            name = f"{record.task}_{record.family}_L{record.length}_s{record.seed}_{record.key}.json"
            shutil.copy2(current / "cells" / name, staging / name)
        if (baseline / "cells").exists():
            (baseline / "cells").rename(old)
        staging.rename(baseline / "cells")
        shutil.rmtree(old, ignore_errors=True)
        for name in COPIED:
            if (current / name).is_file():
                atomic_write(baseline / name, (current / name).read_text())
    if perf.is_file():
        atomic_write(baseline / "perf.json", perf.read_text())
    previous = {}
    if (baseline / "baseline.json").is_file():
        try:
            previous = json.loads((baseline / "baseline.json").read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
    history = previous.pop("history", []) + ([previous] if previous else [])
    user = os.environ.get("USER") or getpass.getuser()
    git_user = git(CODE, "config", "user.name")
    envs = [r.env for r in records.values()]
    meta = {
        "who": f"{git_user} ({user})" if git_user else user,
        "what": {
            "git_commit": git(CODE, "rev-parse", "HEAD"),
            "git_dirty": bool(git(CODE, "status", "--porcelain", "--untracked-files=no")),
            "records_git_commits": sorted({str(e.get("git_commit")) for e in envs}),
            "cells": len(records),  # taken from current now (0: the baseline's cells were kept)
            "perf": perf.is_file(),  # perf.json taken from current now
            "source": str(current),
            "torch": sorted({str(e.get("torch")) for e in envs}),
            "threads": sorted({e.get("threads") for e in envs if e.get("threads") is not None}),
            "cpu_capability": sorted({str(e.get("cpu_capability")) for e in envs}),
            "kernel_paths": sorted({describe_path(kernel_path(e)) for e in envs}),
        },
        "why": why.strip(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "history": history,
    }
    atomic_write(baseline / "baseline.json", json.dumps(meta, indent=1) + "\n")
    return meta
