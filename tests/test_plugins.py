"""Bring your own model or task: the example plug-in (examples/plugin), installed into a temporary
folder (the venv is left alone), through a sweep in spawn workers, then report, plot and gate,
with and without the plug-in on the path; a family named by import path; and model versions in the
cell key (part 2 of issue 12).

The commands that read results run in a Python where `import torch` fails, as in test_layers.py:
checking that a record's plug-in is installed must not import it (the plug-in imports torch).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import spy_on_run_cell
from test_layers import NO_TORCH

import seqbench.models
from seqbench.cell.config import CellConfig
from seqbench.cell.train import run_cell
from seqbench.cli import main
from seqbench.models import FAMILIES, get_family
from seqbench.results.store import Store
from seqbench.sweeps.driver import plan_sweep, run_sweep
from seqbench.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
DIST = "seqbench-example-plugin"
TINY = "[train]\nsteps = 4\nbatch_size = 8\neval_every = 2\neval_samples = 16\n"
SWEEP = ('name = "plug"\ntasks = ["majority", "parity"]\nmodels = ["mingru", "gru"]\n'
         "lengths = { majority = [3], parity = [2] }\nparams = 2000\n" + TINY)
READ_ONLY = NO_TORCH + "from seqbench.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plug-in installed (pip --target) into a temporary folder; entry points are
    found wherever that folder is on sys.path (PYTHONPATH)."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(ROOT / "examples" / "plugin", tmp / "source")  # builds write here
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(tmp / "site"), str(source)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return tmp / "site"


@pytest.fixture
def on_path(site, monkeypatch) -> Path:
    """The plug-in importable and its entry points visible in this process."""
    monkeypatch.syspath_prepend(str(site))
    return site


def run_cli(argv: list[str], pythonpath: Path | None, read_only: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    code = ["-c", READ_ONLY] if read_only else ["-m", "seqbench.cli"]
    return subprocess.run([sys.executable, *code, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_sweep_in_spawn_workers_then_report_plot_gate_with_and_without_the_plugin(site, tmp_path):
    config = tmp_path / "plug.toml"
    config.write_text(SWEEP)
    done = run_cli(["sweep", "--config", str(config), "--workers", "2", "--out",
                     str(tmp_path)], site)
    assert done.returncode == 0, done.stderr
    store = Store(tmp_path / "plug")
    records = store.load()
    assert sorted((r.task, r.family) for r in records.values()) == [
        ("majority", "gru"), ("majority", "mingru"), ("parity", "gru"), ("parity", "mingru")]
    assert all(r.status in ("solved", "budget") for r in records.values())
    mine = next(r for r in records.values() if r.family == "mingru" and r.task == "majority")
    assert mine.model_display == {"label": "minGRU", "order": 100, "colour": "#882255",
                                  "marker": "p"}
    assert mine.task_display["length_meaning"] == "number of bits"
    provenance = {(p["kind"], p["name"]): p for p in mine.env["plugins"]}
    assert provenance[("model", "mingru")] == {
        "kind": "model", "name": "mingru", "distribution": DIST, "version": "0.1.0",
        "source": "entry point seqbench.models: mingru = seqbench_example_plugin.mingru:MINGRU"}
    listed = json.loads((store.root / "env.json").read_text())["plugins"]
    assert [(p["kind"], p["name"]) for p in listed] == [("model", "mingru"), ("task", "majority")]

    for argv in (["report", str(store.root)], ["plot", str(store.root)],
                 ["gate", "--baseline", str(store.root), "--current", str(store.root)]):
        done = run_cli(argv, site, read_only=True)
        assert done.returncode == 0, (argv, done.stderr)
    summary = (store.root / "summary.md").read_text()
    assert "| minGRU |" in summary and "## majority" in summary
    assert "L: number of bits" in summary
    assert f"model mingru ({DIST} 0.1.0); task majority ({DIST} 0.1.0)" in (
        store.root / "report.html").read_text()
    assert (store.root / "plots" / "accuracy_majority.png").is_file()
    assert "0 regressed" in " ".join((store.root / "gate.md").read_text().split())

    for argv in (["report", str(store.root)], ["plot", str(store.root)],
                 ["gate", "--baseline", str(store.root), "--current", str(store.root)]):
        done = run_cli(argv, None, read_only=True)
        assert done.returncode == 2, (argv, done.stderr)
        error = done.stderr.strip().splitlines()[-1]
        assert "records use plug-ins that cannot be resolved here" in error
        for name in ("model 'mingru'", "task 'majority'", f"pip install '{DIST}==0.1.0'"):
            assert name in error, (argv, error)


def test_family_and_task_by_import_path(on_path, tmp_path):
    """A cell naming its family and task by import path: trained in this process, stored under
    a portable file name, and reported only where the module is installed."""
    model = "seqbench_example_plugin.mingru:MINGRU"
    task = "seqbench_example_plugin.majority:Majority"
    cfg = CellConfig.from_dict({"task": task, "model": model, "length": 3, "params": 2000,
                                "train": {"steps": 4, "batch_size": 8, "eval_every": 2,
                                          "eval_samples": 16}})
    assert get_family(model) is get_family("mingru")  # one Family object, two names
    record = run_cell(cfg)
    assert record.status in ("solved", "budget") and record.family == model
    assert (record.model_name, record.task_name) == ("minGRU", "majority")
    assert {p["source"] for p in record.env["plugins"]} == {f"import path {model}",
                                                            f"import path {task}"}
    path = Store(tmp_path / "runs").save(record)
    assert ":" not in path.name and path.name.startswith(
        "seqbench_example_plugin.majority-Majority_seqbench_example_plugin.mingru-MINGRU_L3_")
    assert run_cli(["report", str(tmp_path / "runs")], on_path, read_only=True).returncode == 0
    done = run_cli(["report", str(tmp_path / "runs")], None, read_only=True)
    assert done.returncode == 2
    assert ("model 'seqbench_example_plugin.mingru:MINGRU' (import path "
            "seqbench_example_plugin.mingru:MINGRU): module 'seqbench_example_plugin.mingru' is "
            f"not installed; install {DIST}==0.1.0") in done.stderr


def test_list_shows_the_plugins(on_path, capsys):
    assert main(["list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"majority majority: is more than half of L random bits 1 (Hahn 2020); L odd " \
           f"[plug-in: {DIST} 0.1.0]" in out
    assert "mingru minGRU (Feng et al. 2024)" in out


def test_the_example_plugins_own_tests(on_path):
    """examples/plugin/tests, which run seqbench.testing's contract on the plug-in."""
    path = ROOT / "examples" / "plugin" / "tests" / "test_example_plugin.py"
    spec = importlib.util.spec_from_file_location("test_example_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_mingru_meets_the_family_contract()
    module.test_majority_meets_the_task_contract()
    for length in (1, 3, 7):
        module.test_majority_target_and_exact_chance(length)
    module.test_majority_refuses_even_lengths()


# Model versions (part 2): a bumped version reruns the family's cells; the gate names the change --


@pytest.mark.parametrize("bumped", ["rnn", "mingru"])
def test_bumping_a_family_version_reruns_its_cells_and_the_gate_reports_it(
        on_path, tmp_path, monkeypatch, capsys, bumped):
    spec = load_spec('name = "v"\ntasks = ["parity"]\nmodels = ["rnn", "mingru"]\n'
                     "lengths = [2]\nparams = 2000\n" + TINY, "test")
    store, statuses = run_sweep(spec, tmp_path / "v1")
    assert sum(statuses.values()) == 2
    family = get_family(bumped)
    registry = FAMILIES if bumped in FAMILIES else seqbench.models._PLUGINS
    monkeypatch.setitem(registry, bumped, dataclasses.replace(family, version=2))

    plan = plan_sweep(spec, tmp_path / "v1")
    assert [c.model for _, c in plan.todo] == [bumped]  # the other family's cell is still stored
    calls = spy_on_run_cell(monkeypatch)
    _, statuses = run_sweep(spec, tmp_path / "v1")
    assert [c.model for c in calls] == [bumped] and sum(statuses.values()) == 1
    versions = sorted((r.family, r.model_version) for r in store.load().values())
    assert versions == sorted([("rnn", 1), ("mingru", 1), (bumped, 2)])

    current = Store(tmp_path / "v2")
    for record in store.load().values():
        if record.family != bumped or record.model_version == 2:
            current.save(record)
    baseline = tmp_path / "baseline"
    shutil.copytree(store.root, baseline)
    for path in (baseline / "cells").glob(f"parity_{bumped}_*"):
        if json.loads(path.read_text())["model_version"] == 2:
            path.unlink()
    assert main(["gate", "--baseline", str(baseline), "--current", str(current.root)]) == 2
    err = capsys.readouterr().err
    assert (f"incomparable definitions: model {bumped!r} has model_version 1 in the baseline "
            "and 2 in the current run") in err
