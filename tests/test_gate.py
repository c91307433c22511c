"""The accuracy gate (seqbench.gate.accuracy) and baseline updates (seqbench.gate.baseline):
cells matched by key against the committed smoke baseline.

Accuracy drops are injected by editing the scores of copied records (the training code has no
corruption hook; a record's key covers its config, not its results, so an edited record still
loads as trustworthy).
"""
from __future__ import annotations

import json
import shutil
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
    assert f"{n} cells compared, {n} identical" in " ".join(out.split())
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
    edited = edit_records(current, "tcn", ("copy", "adding", "parity"), scores=(0.05, 1.0),
                          score=lambda s: s - 0.05)
    solved = [p for p in (current / "cells").glob("*_tcn_*") if json.loads(p.read_text())[
        "solved"] and json.loads(p.read_text())["config"]["task"] in ("copy", "adding", "parity")]
    assert solved == []  # none of these tcn cells is solved: only scores change
    assert gate(capsys, BASELINE, current)[0] == 1
    relaxed = ["--tolerance", "copy=0.06", "--tolerance", "adding=0.06", "--tolerance",
               "parity=0.06"]
    code, _, _, md = gate(capsys, BASELINE, current, *relaxed)
    assert code == 0 and md.count("| within tolerance |") == edited >= 4
    (tmp_path / "tol.toml").write_text("default = 0.06\nparity = 0.01\n")
    code, _, _, md = gate(capsys, BASELINE, current, "--tolerance-file", str(tmp_path / "tol.toml"))
    parity = len([p for p in (current / "cells").glob("parity_tcn_*")
                  if json.loads(p.read_text())["score"] != json.loads(
                      (BASELINE / "cells" / p.name).read_text())["score"]])
    assert code == 1 and md.count("| **regression** | parity | tcn |") == parity >= 1
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
