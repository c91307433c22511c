"""Sweeps end to end: the smoke preset, resuming, corrupt records, reports, and the store."""
from __future__ import annotations

import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import fake_record, make_cell, shown, spy_on_run_cell

import seqbench.results.store
import seqbench.sweeps.driver
import seqbench.sweeps.executors
import seqbench.sweeps.spec
from seqbench.cell.config import CellConfig
from seqbench.cell.record import CellRecord
from seqbench.cell.train import run_cell
from seqbench.cli import main
from seqbench.fileio import atomic_write
from seqbench.models import FAMILIES
from seqbench.results.report import write_summary
from seqbench.results.store import Store
from seqbench.strict import ConfigError
from seqbench.sweeps.driver import run_sweep
from seqbench.sweeps.spec import PRESETS, load_spec, preset
from seqbench.tasks import TASKS


@pytest.fixture(scope="session")
def smoke_file(tmp_path_factory) -> Path:
    """The smoke preset at one seed (its other four seeds, there for the gate, only repeat)."""
    text = resources.files("seqbench.sweeps").joinpath("presets", "smoke.toml").read_text()
    assert "seeds = [0, 1, 2, 3, 4]" in text
    path = tmp_path_factory.mktemp("spec") / "smoke.toml"
    path.write_text(text.replace("seeds = [0, 1, 2, 3, 4]", "seeds = [0]"))
    return path


def smoke_spec(smoke_file: Path):
    return load_spec(smoke_file.read_text(), "smoke at one seed")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_file) -> Path:
    """The one-seed smoke sweep, run once through the CLI (default workers) for the module."""
    root = tmp_path_factory.mktemp("results")
    assert main(["sweep", "--config", str(smoke_file), "--out", str(root)]) == 0
    return root / "smoke"


@pytest.fixture
def smoke_copy(smoke, tmp_path) -> Path:
    """A private copy of the smoke results (file times preserved) for tests that change it."""
    return Path(shutil.copytree(smoke, tmp_path / "results" / "smoke"))


def rerun_smoke(folder: Path, smoke_file: Path) -> int:
    return main(["sweep", "--config", str(smoke_file), "--out", str(folder.parent)])


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (folder / "cells").iterdir()}


def test_smoke_sweep_writes_every_cell_and_table(smoke, smoke_file):
    cells = smoke_spec(smoke_file).cells()
    files = sorted((smoke / "cells").iterdir())
    # tasks x families x lengths, seq2seq on its 4 tasks, the RoPE variant on 2
    assert len(files) == len(cells) == 13 * (len(FAMILIES) - 1) * 2 + 4 * 2 + 2 * 2
    records = Store(smoke).load()
    assert set(records) == {c.key() for c in cells}
    for path in files:
        record = CellRecord.from_dict(json.loads(path.read_text()))
        assert path.name.endswith(f"_{record.key}.json")
        assert record.status in ("solved", "budget"), (path.name, record.error)
        assert record.steps >= 1 and 0 <= record.score <= 1
    table = pd.read_csv(smoke / "results.csv")
    assert len(table) == len(cells) and set(table["key"]) == set(records)
    assert {"task", "model", "length", "seed", "status", "score"} <= set(table.columns)
    env = json.loads((smoke / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    summary = (smoke / "summary.md").read_text()
    spec = smoke_spec(smoke_file)
    for task in spec.tasks:
        if task in spec.generalise:  # its table is named after its protocol, columns N=...
            lengths = ",".join(map(str, spec.generalise[task]["lengths"]))
            assert f"## {task} (length generalisation: range to N, tests L={lengths})\n" in summary
            assert f"## {task} (length generalisation: range to N, tests L={lengths}) by test " \
                   f"length\n" in summary
            axis = "N"
        else:
            assert f"## {task}\n" in summary
            axis = "L"
        assert "| model | " + " | ".join(f"{axis}={n}" for n in spec.lengths_for(task)) + " |" \
            in summary
    for model in spec.models:
        # a row in each table of a task it runs on and one in the solve-length table
        tasks = spec.variant(model)[2] or spec.tasks
        tables = len(tasks) + sum(task in spec.generalise for task in tasks)
        assert summary.count(f"| {model} | ") == tables + 1
    assert "## solve length\n" in summary


def test_worker_records_match_an_in_process_run(smoke):
    """A cell's figures do not depend on which process ran it."""
    records = Store(smoke).load().values()
    for stored in [r for r in records if r.family in ("lstm", "transformer")][:2]:
        fresh = run_cell(CellConfig.from_dict(stored.config))
        assert (fresh.status, fresh.steps) == (stored.status, stored.steps)
        assert fresh.history == stored.history


def test_rerun_is_a_no_op(smoke_copy, monkeypatch, capsys, smoke_file):
    before = mtimes(smoke_copy)

    def must_not_run(cfg):
        raise AssertionError(f"cell re-run: {cfg}")

    monkeypatch.setattr(seqbench.sweeps.executors, "run_cell", must_not_run)
    assert rerun_smoke(smoke_copy, smoke_file) == 0
    assert mtimes(smoke_copy) == before
    assert "cells run now: none (all stored)" in capsys.readouterr().out


def test_deleted_record_is_recomputed_alone(smoke_copy, monkeypatch, smoke_file):
    before = mtimes(smoke_copy)
    victim = sorted((smoke_copy / "cells").iterdir())[7]
    stored = CellRecord.from_dict(json.loads(victim.read_text()))
    victim.unlink()
    calls = spy_on_run_cell(monkeypatch)
    assert rerun_smoke(smoke_copy, smoke_file) == 0
    assert [c.key() for c in calls] == [stored.key]
    after = mtimes(smoke_copy)
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != victim.name} == {
        k: v for k, v in before.items() if k != victim.name}
    assert CellRecord.from_dict(json.loads(victim.read_text())).history == stored.history


def truncate(text: str) -> str:
    return text[: len(text) // 2]


def edit_config(text: str) -> str:
    data = json.loads(text)
    data["config"]["seed"] += 100  # the stored key no longer matches the config
    return json.dumps(data)


@pytest.mark.parametrize("damage", [truncate, edit_config, lambda text: "not json"],
                         ids=["truncated", "edited", "garbage"])
def test_corrupt_record_is_ignored_with_a_warning_and_recomputed(smoke_copy, monkeypatch, damage,
                                                                 smoke_file):
    victim = sorted((smoke_copy / "cells").iterdir())[3]
    victim.write_text(damage(victim.read_text()))
    calls = spy_on_run_cell(monkeypatch)
    with pytest.warns(UserWarning, match=rf"ignoring unusable record .*{re.escape(victim.name)}"):
        assert rerun_smoke(smoke_copy, smoke_file) == 0
    assert len(calls) == 1 and victim.name.endswith(f"_{calls[0].key()}.json")
    assert CellRecord.from_dict(json.loads(victim.read_text())).key == calls[0].key()
    assert len(Store(smoke_copy).load()) == len(smoke_spec(smoke_file).cells())


def test_report_regenerates_the_tables_identically(smoke_copy):
    summary = (smoke_copy / "summary.md").read_text()
    table = (smoke_copy / "results.csv").read_text()
    (smoke_copy / "summary.md").unlink()
    (smoke_copy / "results.csv").unlink()
    before = mtimes(smoke_copy)
    assert main(["report", str(smoke_copy)]) == 0
    assert (smoke_copy / "summary.md").read_text() == summary
    assert (smoke_copy / "results.csv").read_text() == table
    assert mtimes(smoke_copy) == before  # reports never touch the records


def test_interrupted_sweep_keeps_finished_cells(tmp_path, monkeypatch):
    spec = load_spec(
        'name = "tiny"\ntasks = ["parity"]\nmodels = ["rnn", "gru"]\nlengths = [2, 3]\n'
        "params = 2000\n[train]\nsteps = 2\neval_every = 2\neval_samples = 16\n", "test")
    started = []

    def interrupt_third(cfg):
        started.append(cfg)
        if len(started) == 3:
            raise KeyboardInterrupt
        return run_cell(cfg)

    monkeypatch.setattr(seqbench.sweeps.executors, "run_cell", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path)
    store = Store(tmp_path / "tiny")
    assert set(store.load()) == {c.key() for c in started[:2]}
    calls = spy_on_run_cell(monkeypatch)
    _, statuses = run_sweep(spec, tmp_path)
    assert len(calls) == 2 and sum(statuses.values()) == 2
    assert set(store.load()) == {c.key() for c in spec.cells()}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name):
    spec = preset(name)
    assert spec.name == name
    cells = spec.cells()
    assert len({c.key() for c in cells}) == len(cells) > 0


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "er" / "file.json"
    atomic_write(path, "first")
    atomic_write(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["file.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "file.json"
    atomic_write(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(seqbench.fileio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.json"]


def test_store_round_trips_and_distrusts_renamed_records(tmp_path):
    store = Store(tmp_path)
    record = fake_record("parity", "rnn", 2, 0.5)
    path = store.save(record)
    assert path == store.cells / f"parity_rnn_L2_s0_{record.key}.json"
    assert store.load() == {record.key: record}
    path.rename(store.path_for(fake_record("parity", "rnn", 3, 0.5)))
    with pytest.warns(UserWarning, match="file name does not match the record's key"):
        assert store.load() == {}


def parse_table(summary: str, task: str) -> tuple[list[str], dict[str, list[str]]]:
    """Column headers and model -> cell texts of a task's markdown table."""
    section = summary.split(f"\n## {task}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    header, *body = ([c.strip() for c in row] for row in rows)
    return header[1:], {row[0]: row[1:] for row in body}


def test_report_bolds_nothing_without_evidence(tmp_path, capsys):
    store = Store(tmp_path / "made-up")
    for record in [
        fake_record("parity", "rnn", 2, 0.9),
        fake_record("parity", "lstm", 2, 0.95),
        fake_record("parity", "gru", 2, None, status="error"),
        fake_record("parity", "rnn", 4, 0.5), fake_record("parity", "rnn", 4, 0.75, seed=1),
        fake_record("parity", "lstm", 4, 0.625),  # ties the rnn mean
        fake_record("parity", "gru", 4, 0.99, status="diverged"),
        fake_record("parity", "gru", 4, 0.25, seed=1),
        fake_record("adding", "tcn", 8, 0.5),
    ]:
        store.save(record)
    assert main(["report", str(store.root)]) == 0
    summary = (store.root / "summary.md").read_text()
    header, rows = parse_table(summary, "parity")
    assert header == ["L=2", "L=4"]
    assert list(rows) == ["rnn", "lstm", "gru"]  # no shortcut row: no record has its score
    # a single seed cannot be tested: nothing is shown as a winner, and the caption says why
    assert rows["rnn"] == ["0.900 0/1", shown([0.5, 0.75], 0)]
    assert rows["lstm"] == ["0.950 0/1", "0.625 0/1"]
    assert rows["gru"] == ["1 error", "0.250 0/2 (1 diverged)"]  # the failed seed counts in n
    assert parse_table(summary, "adding") == (["L=8"], {"tcn": ["0.500 0/1"]})
    section = summary.split("\n## parity\n")[1].split("\n## ")[0]
    assert "**" not in section and "L=2 untestable, L=4 untestable" in section
    assert "made-up" in summary.splitlines()[0]
    assert "parity" in capsys.readouterr().out


MEASURED_SWEEP = """
name = "measured"
tasks = ["parity"]
models = ["rnn", "tcn"]
lengths = [2]
params = 2000
[train]
steps = 2
eval_every = 2
eval_samples = 8
batch_size = 4
[measure]
lengths = [8, 16]
batch_size = 4
rss = false
blocks = 5
"""


def test_sweep_measures_its_points_once(tmp_path, monkeypatch):
    spec = load_spec(MEASURED_SWEEP, "test")
    store, _ = run_sweep(spec, tmp_path)
    points = {p.key() for p in spec.points()}
    assert len(points) == 4
    measurements = store.read().measurements.values()
    assert {m.key for m in measurements} == points
    assert all(m.status == "ok" and m.train_ms > 0 for m in measurements)
    assert len(pd.read_csv(store.root / "measurements.csv")) == 4
    assert "training tokens/s" in (store.root / "summary.md").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a stored measurement was taken again")

    monkeypatch.setattr(seqbench.sweeps.driver, "measure", refuse)
    run_sweep(spec, tmp_path)  # resumes: nothing left to measure


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("lengths = [8, 16]", "lenghts = [8, 16]"), "measure.lenghts: unknown key"),
        (("rss = false", 'dtype = "fp16"'), "dtype: unknown value 'fp16'; allowed: bf16, fp32"),
        (("blocks = 5", "blocks = 2"), "measure.blocks: must be >= 5"),
        (("lengths = [8, 16]", "lengths = [8, 0]"), "length: task 'parity' needs"),
    ],
)
def test_measure_table_is_strict(change, message):
    with pytest.raises(seqbench.sweeps.spec.ConfigError, match=re.escape(message)):
        load_spec(MEASURED_SWEEP.replace(*change), "test")


def labelled(record: CellRecord, hpset: str) -> CellRecord:
    """record as if run under hyper-parameter set hpset (its own learning rate, so its own key)."""
    cfg = make_cell(record.task, record.family, record.length, seed=record.seed,
                    lr={"fast": 1e-2, "slow": 1e-3}[hpset])
    record.config, record.key_payload, record.key = cfg.to_dict(), cfg.payload(), cfg.key()
    record.hpset = hpset
    return record


def test_interval_and_solve_length_tables_are_exact(tmp_path):
    store = Store(tmp_path / "exact")
    for record in [
        fake_record("parity", "rnn", 2, 1.0), fake_record("parity", "rnn", 2, 1.0, seed=1),
        fake_record("parity", "rnn", 4, 0.5), fake_record("parity", "rnn", 4, 0.75, seed=1),
        fake_record("parity", "lstm", 2, 1.0),
        fake_record("parity", "lstm", 4, 1.0), fake_record("parity", "lstm", 4, None, seed=1,
                                                           status="error"),
        fake_record("parity", "gru", 2, 0.25), fake_record("parity", "gru", 2, 0.75, seed=1),
        fake_record("parity", "gru", 4, 0.999, status="diverged"),  # a failed seed never counts
        fake_record("parity", "gru", 4, 0.5, seed=1),
        fake_record("parity", "tcn", 2, 0.5), fake_record("parity", "tcn", 4, 1.0),
        fake_record("adding", "rnn", 8, 0.96), fake_record("adding", "lstm", 8, 0.5),
    ]:
        store.save(record)
    assert main(["report", str(store.root)]) == 0
    summary = (store.root / "summary.md").read_text()
    header, rows = parse_table(summary, "parity")
    assert header == ["L=2", "L=4"]
    assert rows == {
        "rnn": ["1.000 ±0.000 2/2", shown([0.5, 0.75], 0)],
        "lstm": ["1.000 1/1", "1.000 1/2 (1 error)"],
        "gru": [shown([0.25, 0.75], 0), "0.500 0/2 (1 diverged)"],
        "tcn": ["0.500 0/1", "1.000 1/1"],
    }
    assert "n=1-2 seeds" in summary and "seed(s)" not in summary
    # the longest length whose interval over seeds clears the threshold; one seed (or one
    # scored seed beside a failed one) decides nothing: undecided
    header, rows = parse_table(summary, "solve length")
    assert header == ["adding", "parity"]
    assert rows == {"rnn": ["— (L=8 undecided)", "2 (2/2; L=4 undecided)"],
                    "lstm": ["— (L=8 undecided)", "— (L=2, 4 undecided)"],
                    "gru": ["", "— (L=2, 4 undecided)"], "tcn": ["", "— (L=2, 4 undecided)"]}
    assert "lengths tested: adding L=8; parity L=2, 4" in summary


def test_reports_show_the_set_best_on_validation_and_every_set(tmp_path):
    store = Store(tmp_path / "sets")
    for record, val in [  # "fast" is better on the test set, "slow" on validation
        (labelled(fake_record("parity", "rnn", 2, 0.5), "slow"), 0.9),
        (labelled(fake_record("parity", "rnn", 2, 0.7, seed=1), "slow"), 0.9),
        (labelled(fake_record("parity", "rnn", 2, 0.9), "fast"), 0.6),
        (labelled(fake_record("parity", "rnn", 2, 1.0, seed=1), "fast"), 0.6),
        (labelled(fake_record("parity", "lstm", 2, 0.6), "slow"), 0.6),
        (labelled(fake_record("parity", "lstm", 2, None, status="oom"), "fast"), None),
    ]:
        record.val_score = val
        store.save(record)
    summary = write_summary(store, store.read())
    _, rows = parse_table(summary, "parity")
    assert rows == {"rnn": [shown([0.5, 0.7], 0) + " [slow]"], "lstm": ["0.600 0/1 [slow]"]}
    assert "best mean validation score" in summary
    _, rows = parse_table(summary, "parity by hyper-parameter set")
    assert rows == {"rnn [fast]": [shown([0.9, 1.0], 1)], "rnn [slow]": [shown([0.5, 0.7], 0)],
                    "lstm [fast]": ["1 oom"], "lstm [slow]": ["0.600 0/1"]}
    assert parse_table(summary, "solve length")[1] == {"rnn": ["— (L=2 undecided)"],
                                                       "lstm": ["— (L=2 undecided)"]}
    assert set(pd.read_csv(store.root / "results.csv")["hpset"]) == {"slow", "fast"}


HPSET_SWEEP = """
name = "sets"
tasks = ["parity"]
models = ["rnn"]
lengths = [2]
params = 2000
[train]
steps = 2
eval_every = 2
eval_samples = 16
lr = 3e-3
[hpsets.fast]
lr = 1e-2
[hpsets.slow]
lr = 1e-3
"""


def test_hpsets_span_the_grid_and_label_records(tmp_path, monkeypatch):
    spec = load_spec(HPSET_SWEEP, "test")
    labelled_cells = spec.labelled_cells()
    assert [(label.hpset, c.train.lr) for label, c in labelled_cells] == [("fast", 1e-2), ("slow", 1e-3)]
    # a set's settings enter the key like any setting: same key as the same cell without sets
    plain = load_spec(HPSET_SWEEP.split("[hpsets")[0].replace("lr = 3e-3", "lr = 1e-2"), "test")
    assert plain.cells()[0].key() == labelled_cells[0][1].key()
    store, statuses = run_sweep(spec, tmp_path)
    assert sum(statuses.values()) == 2
    assert {r.hpset for r in store.load().values()} == {"fast", "slow"}
    assert set(pd.read_csv(store.root / "results.csv")["hpset"]) == {"fast", "slow"}
    # renaming a set runs nothing again and relabels the stored records
    calls = spy_on_run_cell(monkeypatch)
    run_sweep(load_spec(HPSET_SWEEP.replace("hpsets.fast", "hpsets.quick"), "test"), tmp_path)
    assert calls == []
    assert {r.hpset for r in store.load().values()} == {"quick", "slow"}


def test_sweeps_without_hpsets_keep_their_keys():
    """The committed quick results stay valid: the same keys as before sets existed."""
    stored = {p.name.rsplit("_", 1)[1].removesuffix(".json")
              for p in (Path(__file__).parent.parent / "results" / "quick" / "cells").glob("*.json")}
    assert stored == {c.key() for c in preset("quick").cells()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("lr = 1e-2", "lrr = 1e-2"), "hpsets.fast.lrr: unknown key; allowed: batch_size, clip"),
        (("[hpsets.fast]\nlr = 1e-2", "[hpsets.fast]"), "hpsets.fast: empty set"),
        (("lr = 1e-2", "lr = -1.0"), "hpsets.fast.lr: must be > 0"),
        (("lr = 1e-2", 'lr = "fast"'), "hpsets.fast.lr: expected float, got str 'fast'"),
        (("lr = 1e-2", "lr = 1e-3"),
         "hpsets.slow: gives task parity the same training settings as hpsets.fast"),
        (("[hpsets.fast]\nlr = 1e-2", "[hpsets]\nfast = 3"), "hpsets.fast: expected a table"),
        (("[hpsets.slow]", "[hpsets.'a b']"), "hpsets.a b: a set name uses letters"),
    ],
    ids=["unknown key", "empty set", "bad value", "wrong type", "duplicate", "not a table",
         "bad name"],
)
def test_hpsets_are_strict(tmp_path, capsys, change, message):
    config = tmp_path / "sets.toml"
    config.write_text(HPSET_SWEEP.replace(*change))
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(config), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


DRY_SWEEP = HPSET_SWEEP.replace('name = "sets"', 'name = "dry"').replace(
    "params = 2000", "params = 2000\nseeds = [0, 1]")


def tree(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_dry_run_writes_nothing_and_counts_stored_cells(tmp_path, capsys):
    config = tmp_path / "dry.toml"
    config.write_text(DRY_SWEEP)
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(config), "--out", str(out), "--dry-run"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "4 cells, 0 already stored" in text and "4 to run" in text
    assert "parity rnn L=2 seed=1 [slow]: to run, 128 tokens" in text  # 2 steps x 32 x 2
    assert "remaining: 4 cells, 512 training tokens" in text
    assert "no seconds estimate" in text
    assert not out.exists()
    # store two of the four cells (seed 0 of each set), then ask again
    run_sweep(load_spec(DRY_SWEEP.replace("seeds = [0, 1]", "seeds = [0]"), "test"), out)
    before = tree(out)
    assert main(["sweep", "--config", str(config), "--out", str(out), "--dry-run"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines off a terminal
    assert "4 cells, 2 already stored" in text and "2 to run" in text
    assert "parity rnn L=2 seed=0 [fast]: stored" in text
    assert "remaining: 2 cells, 256 training tokens" in text
    assert re.search(r"estimate from stored tokens/s per model \(rnn [\d,]+\): [\d,]+ s of "
                     r"training for 2 of 2 cells", text)
    assert tree(out) == before


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses(name):
    spec = preset(name)
    assert spec.name == name and spec.cells()


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_presets_cover_every_task_and_family(name):
    cells = preset(name).cells()
    assert {c.task for c in cells} == set(TASKS)
    classic = {"rnn", "lstm", "gru", "tcn", "transformer", "lru"}  # quick: the frontier families
    assert {c.model for c in cells} == (classic if name == "quick" else set(FAMILIES))  # in findings
    if name != "quick":  # seq2seq only where an answer phase follows the question
        assert {c.task for c in cells if c.model == "seq2seq"} == {
            "copy", "reverse", "selective_copy", "assoc_recall"}


def test_quick_preset_runs_three_seeds():
    assert len(preset("quick").seeds) >= 3


def test_full_preset_generalises_the_state_tracking_tasks_with_every_position_scheme():
    spec = preset("full")
    lg = {c.task for c in spec.cells() if c.generalise is not None}
    assert lg == {"parity", "even_pairs", "cycle_nav", "mod_arith"}
    positions = {c.hparams.positions for c in spec.cells() if c.model == "transformer"}
    assert positions == {"sinusoidal", "rope", "alibi"}
    assert spec.device == "cuda" and len(spec.seeds) >= 3


def test_findings_preset_holds_the_two_findings():
    cells = preset("findings").cells()
    parity = {c.model for c in cells if c.task == "parity" and c.generalise is not None}
    assert {"lstm", "transformer"} <= parity
    recall = sorted({c.length for c in cells if c.task == "assoc_recall"})
    assert len(recall) >= 2  # a growing number of key-value pairs


def _spec_with(extra: str):
    return load_spec(f"""
name = "tm"
tasks = ["parity", "copy"]
models = ["lstm", "gru", "transformer"]
lengths = [4]
{extra}
""", "test")


def test_task_models_limit_the_models_of_a_task_and_keep_keys():
    full = _spec_with("")
    some = _spec_with('[task_models]\ncopy = ["transformer"]')
    got = {(c.task, c.model) for c in some.cells()}
    assert got == {("parity", "lstm"), ("parity", "gru"), ("parity", "transformer"),
                   ("copy", "transformer")}
    assert {c.key() for c in some.cells()} <= {c.key() for c in full.cells()}


@pytest.mark.parametrize(("extra", "fragments"), [
    ('[task_models]\ncopy = ["mamba"]', ["task_models.copy", "'mamba'", "allowed: gru, lstm"]),
    ('[task_models]\ndyck = ["lstm"]', ["task_models key", "'dyck'", "allowed: copy, parity"]),
    ('[task_models]\ncopy = []', ["task_models.copy", "non-empty list"]),
    ('[task_models]\ncopy = ["lstm"]\nparity = ["lstm"]', ["task_models", "gru, transformer",
                                                          "run on no task"]),
])
def test_task_models_errors_name_the_field_and_the_allowed_values(extra, fragments):
    with pytest.raises(ConfigError) as error:
        _spec_with(extra)
    assert all(f in str(error.value) for f in fragments), str(error.value)
