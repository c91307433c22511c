"""The accuracy gate (seqbench.gate.accuracy) and baseline updates (seqbench.gate.baseline):
cells matched by key against the committed smoke baseline.

Accuracy drops are injected by editing the scores of copied records (the training code has no
corruption hook; a record's key covers its config, not its results, so an edited record still
loads as trustworthy).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fake_record

from seqbench.cell.config import PROTOCOL
from seqbench.cli import main
from seqbench.gate.accuracy import load_run, parse_tolerances
from seqbench.results.store import Store
from seqbench.strict import ConfigError, stable_key

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baseline"


# ------------------------------------------------------------------------------------------
# accuracy gate


def copy_baseline(tmp_path: Path, name: str = "current") -> Path:
    dst = tmp_path / name
    shutil.copytree(BASELINE, dst)
    return dst


def edit_records(folder: Path, model: str, tasks: tuple[str, ...] | None = None,
                 scores: tuple[float, float] = (0.0, 1.0), **changes) -> int:
    """Change fields of the copied records of one model (of some tasks, with a score in the
    range `scores`) in place (the accuracy-drop injection)."""
    n = 0
    for path in (folder / "cells").glob(f"*_{model}_*.json"):
        data = json.loads(path.read_text())
        if tasks is not None and data["config"]["task"] not in tasks:
            continue
        if not scores[0] <= data["score"] <= scores[1]:
            continue
        for name, value in changes.items():
            data[name] = value(data[name]) if callable(value) else value
        path.write_text(json.dumps(data))
        n += 1
    return n


def gate(capsys, baseline: Path, current: Path, *extra: str) -> tuple[int, str, str, str]:
    code = main(["gate", "--baseline", str(baseline), "--current", str(current), *extra])
    out = capsys.readouterr()
    md = current / "gate.md"
    return code, out.out, out.err, md.read_text() if md.exists() else ""


def smoke_cells(model: str | None = None) -> int:
    """How many cells of the smoke preset (of one family) the committed baseline holds."""
    from seqbench.sweeps.spec import preset

    return sum(model in (None, c.model) for c in preset("smoke").cells())


def test_committed_baseline_is_the_smoke_preset():
    from seqbench.sweeps.spec import preset

    run = load_run(BASELINE, "baseline")
    assert run.impossible == {}
    assert set(run.records) == {c.key() for c in preset("smoke").cells()}
    meta = json.loads((BASELINE / "baseline.json").read_text())
    assert {"who", "what", "why", "when"} <= set(meta)


def test_identical_runs_pass_exactly(tmp_path, capsys):
    current = copy_baseline(tmp_path)
    code, out, _, md = gate(capsys, BASELINE, current)
    assert code == 0
    n = smoke_cells()
    assert f"compared {n} cells by key: {n} identical (0 of them with another loss trajectory)" \
        in " ".join(out.split())
    assert "mode exact, cell by cell (same kernel path: device cpu, cpu_capability " in " ".join(
        out.split())
    assert md.startswith("# seqbench accuracy gate: PASS")
    assert "No differences: every cell is identical." in md


def test_accuracy_drop_is_caught_and_named(tmp_path, capsys):
    current = copy_baseline(tmp_path)
    n = edit_records(current, "lstm", scores=(0.1, 1.0), score=lambda s: s - 0.1,
                     solved=False, status="budget")
    assert n >= 10
    code, out, _, md = gate(capsys, BASELINE, current, "--markdown", str(tmp_path / "g.md"))
    assert code == 1
    md = (tmp_path / "g.md").read_text()
    assert md.startswith("# seqbench accuracy gate: FAIL")
    rows = [line for line in md.splitlines() if line.startswith("| **regression**")]
    assert len(rows) == n and all("| lstm |" in r and "drop 0.100 > 0.02" in r for r in rows)
    assert "lstm" in out and f"{n} regressed" in " ".join(out.split())


def test_tolerances_per_task_and_from_file(tmp_path, capsys):
    current = copy_baseline(tmp_path)
    edited = edit_records(current, "tcn", ("copy", "adding", "mod_arith"), scores=(0.05, 1.0),
                          score=lambda s: s - 0.05)
    solved = [p for p in (current / "cells").glob("*_tcn_*") if json.loads(p.read_text())[
        "solved"] and json.loads(p.read_text())["config"]["task"] in ("copy", "adding",
                                                                      "mod_arith")]
    assert solved == []  # none of these tcn cells is solved: only scores change
    assert gate(capsys, BASELINE, current)[0] == 1
    relaxed = ["--tolerance", "copy=0.06", "--tolerance", "adding=0.06", "--tolerance",
               "mod_arith=0.06"]
    code, _, _, md = gate(capsys, BASELINE, current, *relaxed)
    assert code == 0 and md.count("| within tolerance |") == edited >= 4
    (tmp_path / "tol.toml").write_text("default = 0.06\nmod_arith = 0.01\n")
    code, _, _, md = gate(capsys, BASELINE, current, "--tolerance-file", str(tmp_path / "tol.toml"))
    mod_arith = len([p for p in (current / "cells").glob("mod_arith_tcn_*")
                     if json.loads(p.read_text())["score"] != json.loads(
                         (BASELINE / "cells" / p.name).read_text())["score"]])
    assert code == 1 and md.count("| **regression** | mod_arith | tcn |") == mod_arith >= 1
    tasks = {"copy", "parity"}
    assert parse_tolerances(["0.1", "copy=0.3"], None, tasks).per_task == {"copy": 0.3}
    for bad, message in ((["copy=x"], "expected X or TASK=X"),
                         (["nope=0.1"], "unknown value 'nope'; allowed: copy, parity"),
                         (["-1"], "must be a number >= 0")):
        with pytest.raises(ConfigError, match=message):
            parse_tolerances(bad, None, tasks)


def test_unsolved_diverged_missing_and_new_cells(tmp_path, capsys):
    base, cur = Store(tmp_path / "base"), Store(tmp_path / "cur")
    keep = fake_record("copy", "rnn", 3, 0.5)
    solved = fake_record("parity", "gru", 2, 0.99, status="solved")
    fine = fake_record("adding", "tcn", 4, 0.3)
    gone = fake_record("copy", "lstm", 3, 0.2)
    for r in (keep, solved, fine, gone):
        base.save(r)
    cur.save(keep)
    unsolved = fake_record("parity", "gru", 2, 0.99)  # same score, no longer solved
    cur.save(unsolved)
    diverged = fake_record("adding", "tcn", 4, 0.3, status="diverged")
    cur.save(diverged)
    cur.save(fake_record("copy", "gru", 3, 0.1))  # new
    code, _, _, md = gate(capsys, base.root, cur.root)
    assert code == 1
    assert "| **regression** | parity | gru | 2 | 0 | solved 0.990 | budget 0.990 |" in md
    assert "no longer solved" in md and "status budget -> diverged" in md
    assert "| **missing** | copy | lstm |" in md and "| new | copy | gru |" in md
    # a new cell alone is no failure
    only_new = Store(tmp_path / "new")
    for r in (keep, solved, fine, gone, fake_record("copy", "gru", 3, 0.1)):
        only_new.save(r)
    assert gate(capsys, base.root, only_new.root)[0] == 0


def test_unusable_inputs_exit_2(tmp_path, capsys):
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    code, _, err, _ = gate(capsys, BASELINE, tmp_path / "empty")
    assert code == 2 and "--current: no cell records" in err
    code, _, err, _ = gate(capsys, tmp_path / "empty", BASELINE)
    assert code == 2 and "--baseline: no cell records" in err
    other = Store(tmp_path / "other")
    other.save(fake_record("copy", "rnn", 3, 0.5))
    code, _, err, _ = gate(capsys, BASELINE, other.root)
    assert code == 2 and "no cell in common" in err
    assert main(["gate", "--baseline", str(BASELINE)]) == 2
    assert "--current" in capsys.readouterr().err


def rewrite_version(folder: Path, pattern: str, field: str) -> dict:
    """Store one record of folder again as written under the next version of its task or model
    definition (a new key for the same task/model/length/seed)."""
    path = next((folder / "cells").glob(pattern))
    data = json.loads(path.read_text())
    if field in data:  # the versions are fields of their own too; the protocol is in the payload
        data[field] += 1
    data["key_payload"][field] += 1
    data["key"] = stable_key(data["key_payload"])
    path.unlink()
    (folder / "cells" / f"{path.stem.rpartition('_')[0]}_{data['key']}.json").write_text(
        json.dumps(data))
    return data


@pytest.mark.parametrize(("field", "message"), [
    ("task_version", "task 'copy' has task_version 1 in the baseline and 2"),
    ("model_version", "model 'lstm' has model_version 1 in the baseline and 2"),
    ("protocol", f"the training protocol has protocol {PROTOCOL} in the baseline and "
                 f"{PROTOCOL + 1}"),
])
def test_changed_definition_is_incomparable(tmp_path, capsys, field, message):
    """A current record of the same task/model/length/seed under another task or model version."""
    current = copy_baseline(tmp_path)
    data = rewrite_version(current, "copy_lstm_L2_s0_*.json", field)
    assert data["key"] in load_run(current, "current").records  # trusted under its own version
    code, _, err, _ = gate(capsys, BASELINE, current)
    assert code == 2
    assert f"incomparable definitions: {message} in the current run" in err
    assert "copy/lstm/L=2/seed 0" in err


def test_update_baseline_records_who_what_why_when(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("USER", "tester")
    source = copy_baseline(tmp_path, "run")
    improved = edit_records(source, "rnn", ("copy", "adding", "parity"), scores=(0.0, 0.99),
                            score=lambda s: s + 0.01)
    target = tmp_path / "baseline"
    shutil.copytree(BASELINE, target)
    assert main(["gate", "--update-baseline", "--current", str(source),
                 "--baseline", str(target)]) == 2
    assert "--why" in capsys.readouterr().err
    assert main(["gate", "--update-baseline", "--current", str(source), "--baseline", str(target),
                 "--why", "rnn got better"]) == 0
    meta = json.loads((target / "baseline.json").read_text())
    assert meta["why"] == "rnn got better" and "tester" in meta["who"]
    assert meta["what"]["cells"] == smoke_cells() and meta["what"]["git_commit"]
    assert meta["when"].endswith("+00:00")
    assert meta["history"][-1]["why"] == json.loads((BASELINE / "baseline.json").read_text())[
        "why"]
    assert gate(capsys, target, source)[0] == 0
    assert gate(capsys, BASELINE, source)[3].count("| improved |") == improved >= 4


# ------------------------------------------------------------------------------------------
# kernel paths: what the records say, and the mode the gate picks

AVX512 = {"cpu_capability": "AVX512", "isa_caps": {}}
AVX2 = {"cpu_capability": "AVX2", "isa_caps": {"ATEN_CPU_CAPABILITY": "avx2",
                                               "ONEDNN_MAX_CPU_ISA": "AVX2"}}
PATH = {"device": "cpu", "torch": "2.13.0+cpu", "threads": 1, "blas": "mkl"}


def test_environment_records_the_kernel_path(monkeypatch):
    import torch

    from seqbench.env import KERNEL_PATH, environment, kernel_path

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    env = environment("cpu")
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["isa_caps"].get("ONEDNN_MAX_CPU_ISA") == "AVX2"
    assert "MKL_ENABLE_INSTRUCTIONS" not in env["isa_caps"]
    assert env["blas"] == ("mkl" if torch.backends.mkl.is_available() else env["blas"])
    assert set(kernel_path(env)) == set(KERNEL_PATH) and kernel_path(env)["gpu"] is None


def test_build_info_and_cpu_flags_are_parsed():
    from seqbench.env import build_info, cpu_isa

    show = ("  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605\n"
            "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\n"
            "  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl\n")
    assert build_info(show) == {"blas": "mkl", "blas_version": "2024.2", "onednn": "3.12.0"}
    assert build_info("  - Build settings: BLAS_INFO=open, X=1\n  - OpenBLAS 0.3.27\n") == {
        "blas": "open", "blas_version": "0.3.27", "onednn": None}
    x86 = {"vendor_id": "GenuineIntel", "flags": "fpu sse avx2 fma avx512f avx512_bf16 amx_tile"}
    assert cpu_isa(x86) == ("GenuineIntel", ["fma", "avx2", "avx512f", "avx512_bf16",
                                             "amx_tile"])
    arm = {"CPU implementer": "0x41", "Features": "fp asimd sve sve2 bf16 i8mm"}
    assert cpu_isa(arm) == ("0x41", ["asimd", "sve", "sve2", "bf16", "i8mm"])
    assert cpu_isa({}) == (None, [])


def on_path(record, path: dict):
    record.env = PATH | path
    return record


def seed_group(store: Store, task: str, model: str, length: int, scores, path: dict,
               solved=None) -> None:
    """One cell per seed with these scores (solved: one flag per seed, default none)."""
    for seed, score in enumerate(scores):
        status = "solved" if solved and solved[seed] else "budget"
        store.save(on_path(fake_record(task, model, length, score, seed=seed, status=status),
                           path))


# Three models' honest scores (5 seeds) and the same models after another kernel path: every
# seed moved, as a reseed would move it, by less than the spread between seeds.
HONEST = {("parity", "rnn", 2): [0.50, 0.55, 0.60, 0.45, 0.52],
          ("parity", "gru", 2): [0.70, 0.80, 0.75, 0.65, 0.72],
          ("copy", "lstm", 3): [0.20, 0.25, 0.22, 0.18, 0.30]}
RERUN = {("parity", "rnn", 2): [0.55, 0.50, 0.48, 0.58, 0.50],
         ("parity", "gru", 2): [0.68, 0.77, 0.81, 0.70, 0.66],
         ("copy", "lstm", 3): [0.24, 0.19, 0.28, 0.21, 0.20]}


def two_paths(tmp_path: Path, base_path: dict, cur_path: dict, cur_scores=RERUN) -> tuple:
    base, cur = Store(tmp_path / "base"), Store(tmp_path / "cur")
    for (task, model, length), scores in HONEST.items():
        seed_group(base, task, model, length, scores, base_path)
        seed_group(cur, task, model, length, cur_scores[(task, model, length)], cur_path)
    return base.root, cur.root


def test_same_kernel_path_is_gated_exactly(tmp_path, capsys):
    base, cur = two_paths(tmp_path, AVX512, AVX512, HONEST)
    code, out, _, md = gate(capsys, base, cur)
    assert code == 0 and "- mode: **exact, cell by cell** (same kernel path: device cpu, " \
        "cpu_capability AVX512, isa_caps none, threads 1, torch 2.13.0+cpu, blas mkl)" in md
    assert "15 identical (0 of them with another loss trajectory)" in md
    # the same scores through another loss trajectory: counted, not a verdict
    path = next((cur / "cells").glob("parity_rnn_L2_s0_*.json"))
    data = json.loads(path.read_text())
    data["test_loss"] = 0.123
    path.write_text(json.dumps(data))
    code, _, _, md = gate(capsys, base, cur)
    assert code == 0 and "15 identical (1 of them with another loss trajectory)" in md


@pytest.mark.parametrize(("base_path", "cur_path"), [(AVX512, AVX2), (AVX2, AVX512)])
def test_other_kernel_path_is_gated_by_seed_groups(tmp_path, capsys, base_path, cur_path):
    """An honest rerun on the other path (both directions): cell by cell it differs, seed
    groups pass; the same comparison forced exact fails."""
    base, cur = two_paths(tmp_path, base_path, cur_path)
    code, out, _, md = gate(capsys, base, cur)
    assert code == 0, md
    caps = "ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2"
    b, c = ("none", caps) if base_path is AVX512 else (caps, "none")
    assert (f"- mode: **seed groups** (kernel paths differ: cpu_capability "
            f"{base_path['cpu_capability']} -> {cur_path['cpu_capability']}; isa_caps {b} -> {c})"
            in md)
    assert "compared 3 seed groups (15 cells): 0 regressed" in md
    assert "15 of 15 cells have another score or status" in md
    assert "mode seed groups (kernel paths differ" in " ".join(out.split())
    code, _, _, md = gate(capsys, base, cur, "--mode", "exact")
    assert code == 1 and md.count("| **regression** |") >= 1
    assert "- mode: **exact, cell by cell** (--mode exact; kernel paths differ" in md


def drop(scores: dict, key: tuple, to: float) -> dict:
    return scores | {key: [to] * len(scores[key])}


@pytest.mark.parametrize(("base_path", "cur_path"), [(AVX512, AVX2), (AVX2, AVX512)])
def test_seed_groups_catch_an_accuracy_regression(tmp_path, capsys, base_path, cur_path):
    """gru's parity scores fall to chance (the learning rate set to 0): caught on either path."""
    base, cur = two_paths(tmp_path, base_path, cur_path, drop(RERUN, ("parity", "gru", 2), 0.5))
    code, out, _, md = gate(capsys, base, cur)
    assert code == 1 and "mode: **seed groups**" in md
    rows = [line for line in md.splitlines() if line.startswith("| **regression**")]
    assert len(rows) == 1 and "| parity | gru | 2 |" in rows[0], md
    # the rule by hand: pooled std of the two sides (the current side is constant)
    from seqbench.gate.seeds import allowed_drop

    b = HONEST[("parity", "gru", 2)]
    s_p = math.sqrt(sum((x - statistics.fmean(b)) ** 2 for x in b) / 8)
    assert allowed_drop(b, [0.5] * 5, 0.02, 6.0) == pytest.approx(6 * s_p * math.sqrt(2 / 5))
    assert f"(drop {statistics.fmean(b) - 0.5:.3f} > {6 * s_p * math.sqrt(2 / 5):.3f})" in rows[0]


def test_seed_group_rule_details(tmp_path, capsys):
    """The floor, the solved rule (every baseline seed -> none, not a majority), failed statuses
    and missing seeds, across kernel paths."""
    from seqbench.gate.seeds import allowed_drop, pooled_std

    assert pooled_std([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]) == pytest.approx(0.1)
    assert pooled_std([0.5], [0.4]) is None and allowed_drop([0.5], [0.4], 0.03, 6) == 0.03
    assert allowed_drop([0.5] * 3, [0.49] * 3, 0.02, 6) == 0.02  # no spread: the floor
    base, cur = Store(tmp_path / "base"), Store(tmp_path / "cur")
    yes, no = [True] * 3, [False] * 3
    seed_group(base, "parity", "rnn", 2, [1.0] * 3, AVX512, yes)  # always solved ...
    seed_group(cur, "parity", "rnn", 2, [0.98] * 3, AVX2, no)  # ... now never: regression
    seed_group(base, "parity", "gru", 2, [1.0, 1.0, 0.75], AVX512, [True, True, False])
    seed_group(cur, "parity", "gru", 2, [0.75, 0.75, 0.75], AVX2, no)  # 2/3 -> 0/3: chance
    seed_group(base, "copy", "lstm", 3, [0.2, 0.25, 0.22], AVX512)
    seed_group(cur, "copy", "lstm", 3, [0.2, 0.25, 0.22], AVX2)
    seed_group(base, "copy", "gru", 3, [0.3, 0.31, 0.32], AVX512)
    seed_group(cur, "copy", "gru", 3, [0.3, 0.31], AVX2)  # seed 2 missing
    diverged = on_path(fake_record("copy", "lstm", 3, 0.22, seed=2, status="diverged"), AVX2)
    cur.save(diverged)  # replaces seed 2 of copy/lstm
    code, _, _, md = gate(capsys, base.root, cur.root)
    assert code == 1
    rows = {line.split(" | ")[2] + " " + line.split(" | ")[1]: line for line in md.splitlines()
            if line.startswith("| ")}
    assert "solved by all 3 baseline seeds, now by none of 3" in rows["rnn parity"]
    assert "**regression**" in rows["rnn parity"] and "| 3/3 -> 0/3 |" in rows["rnn parity"]
    assert "| within tolerance |" in rows["gru parity"]  # mean drop 0.167 < 6 se; 2/3 -> 0/3
    assert "status diverged (seed 2)" in rows["lstm copy"]
    assert "seed 2 not in current run" in rows["gru copy"]


def test_mixed_or_unrecorded_paths_use_seed_groups(tmp_path):
    from seqbench.gate.accuracy import choose_mode

    old = {"a": fake_record("copy", "rnn", 3, 0.5)}  # records before the kernel path was kept
    new = {"a": on_path(fake_record("copy", "rnn", 3, 0.5), AVX512)}
    mode, why = choose_mode(old, new)
    assert mode == "seeds" and "cpu_capability not recorded -> AVX512" in why
    mixed = new | {"b": on_path(fake_record("copy", "rnn", 3, 0.5, seed=1), AVX2)}
    assert choose_mode(new, mixed) == ("seeds", "the current run mixes 2 kernel paths")
    assert choose_mode(new, new, "seeds")[0] == "seeds"
    with pytest.raises(ConfigError, match="--mode: unknown value 'cells'"):
        choose_mode(new, new, "cells")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 ISA caps")
def test_avx2_cap_really_changes_the_recorded_path(tmp_path, capsys):
    """Two real sweeps of three tiny cells, natively and under the AVX2 caps, in subprocesses:
    the records say which path ran, and the gate compares them by seed groups."""
    sweep = tmp_path / "tiny.toml"
    sweep.write_text('name = "tiny"\ntasks = ["parity"]\nmodels = ["lstm"]\nlengths = [4]\n'
                     'seeds = [0, 1, 2]\nparams = 2000\n[train]\nsteps = 6\nbatch_size = 8\n'
                     'eval_every = 3\neval_samples = 16\n')
    caps = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    for name, extra in (("native", {}), ("avx2", caps)):
        env = {k: v for k, v in os.environ.items() if k not in caps} | extra
        done = subprocess.run([sys.executable, "-m", "seqbench.cli", "sweep", "--config",
                               str(sweep), "--workers", "1", "--out", str(tmp_path / name)],
                              env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
    envs = {name: {json.loads(p.read_text())["env"]["cpu_capability"] for p in
                   (tmp_path / name / "tiny" / "cells").glob("*.json")} for name in
            ("native", "avx2")}
    assert envs["avx2"] == {"AVX2"} and len(envs["native"]) == 1
    code, _, _, md = gate(capsys, tmp_path / "native" / "tiny", tmp_path / "avx2" / "tiny")
    assert code == 0 and "- mode: **seed groups** (kernel paths differ: " in md
    assert "MKL_ENABLE_INSTRUCTIONS=AVX2" in md


def test_same_trajectory_compares_losses_not_added_history_fields():
    from seqbench.gate.accuracy import same_trajectory
    a = fake_record("parity", "lstm", 4, 0.9)
    b = fake_record("parity", "lstm", 4, 0.9)
    a.history = [{"step": 50, "train_loss": 0.5, "val_loss": 0.4, "val_score": 0.8}]
    b.history = [dict(a.history[0], grad_norm=1.2, clipped=0.0)]  # monitoring fields added later
    assert same_trajectory(a, b)
    b.history = [dict(b.history[0], val_loss=0.41)]
    assert not same_trajectory(a, b)
