"""`seqbench plot`: every figure from stored records alone, on full and on partial results.

The stores here are written record by record (fake_record plus a made-up gradient flow, and
measurement records with made-up figures): plotting reads only what is stored, and this keeps the
module to a few seconds instead of a real sweep's half a minute.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fake_record

from seqbench.cli import main
from seqbench.measure.point import MeasurePoint
from seqbench.measure.record import MeasureRecord
from seqbench.results.store import Store
from seqbench.sweeps.spec import preset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ("adding", "copy", "parity")


def flow(length: int, decay: float, zero_after: int | None = None) -> dict:
    """A gradient flow over distances 0..length-1 decaying geometrically (exact zeros past
    zero_after, as a TCN beyond its receptive field)."""
    distances = list(range(length))
    norms = [0.0 if zero_after is not None and d > zero_after else decay ** d for d in distances]
    return {"distance": distances, "norm": norms}


def write_sweep(root: Path, seeds: tuple[int, ...] = (0,)) -> Store:
    """A stored sweep over the smoke preset's grid of TASKS (plain cells only), every cell with
    both gradient flows."""
    store = Store(root)
    cells = [c for c in preset("smoke").cells() if c.task in TASKS and c.generalise is None]
    for i, cell in enumerate(cells):
        for seed in seeds:
            record = fake_record(cell.task, cell.model, cell.length, 0.3 + 0.05 * (i % 12),
                                 seed=seed)
            span = record.seq_len
            record.grad_flow = {"untrained": flow(span, 0.5),
                                "trained": flow(span, 0.8, 2 if cell.model == "tcn" else None)}
            store.save(record)
    return store


def write_measurement(store: Store, model: str, length: int, status: str = "ok",
                      dtype: str = "fp32") -> None:
    point = MeasurePoint(model=model, length=length, batch_size=8, dtype=dtype, params=2000)
    figures = {} if status != "ok" else {
        "train_tokens_per_s": 1e5 / length ** 0.5, "infer_tokens_per_s": 4e5 / length ** 0.3,
        "saved_bytes": 1000 * length, "rss_growth_bytes": 3000 * length}
    store.save_measurement(MeasureRecord(key=point.key(), point=point.to_dict(),
                                         key_payload=point.payload(), status=status,
                                         error=None if status == "ok" else status, **figures))


def plot(folder: Path, capsys) -> dict[str, Path]:
    """Run `seqbench plot folder`; check it listed exactly the files it wrote, each a non-empty
    PNG or SVG; return them by name."""
    assert main(["plot", str(folder)]) == 0
    listed = [Path(line) for line in capsys.readouterr().out.split()]
    assert listed and all(p.parent == folder / "plots" for p in listed)
    for path in listed:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) if path.suffix == ".png" else b"<svg" in data[:2000]
    return {p.name: p for p in listed}


def names(*stems: str) -> set[str]:
    return {f"{stem}.{ext}" for stem in stems for ext in ("png", "svg")}


@pytest.fixture
def no_training(monkeypatch):
    """Training or measuring anything fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("plot must only read stored records")

    for target in ("seqbench.cell.train.run_cell", "seqbench.measure.point.measure",
                   "seqbench.measure.point.matmul_peak"):
        monkeypatch.setattr(target, refuse)


def test_sweep_and_measurements_give_every_figure_without_training(tmp_path, capsys, no_training):
    store = write_sweep(tmp_path / "smoke")
    for length in (32, 64, 128, 1024):
        for model in ("rnn", "lstm", "gru", "tcn"):
            write_measurement(store, model, length)
        write_measurement(store, "transformer", length, "ok" if length < 1024 else "oom")
    write_measurement(store, "gru", 2048, "error")
    files = plot(store.root, capsys)
    assert set(files) == names(*(f"{kind}_{t}" for kind in ("accuracy", "heatmap", "gradflow")
                                 for t in TASKS), "speed_memory_cpu_fp32_b8")


def test_measurements_alone_with_only_oom_points(tmp_path, capsys):
    store = Store(tmp_path / "measure")
    for model in ("lstm", "transformer"):
        write_measurement(store, model, 4096, "oom", dtype="bf16")
    assert set(plot(store.root, capsys)) == names("speed_memory_cpu_bf16_b8")


def edit(path: Path, **changes) -> None:
    """Change fields of a stored record in place (its key depends on the config only)."""
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_partial_results_still_plot(tmp_path, capsys):
    store = write_sweep(tmp_path / "partial", seeds=(0, 1))
    cells = store.cells
    for path in [*cells.glob("copy_*"), *cells.glob("adding_tcn_*"), *cells.glob("parity_*_L4_*"),
                 *cells.glob("adding_gru_L8_s1_*")]:
        path.unlink()  # a missing task and model, a task left with one length, a missing seed
    for path in cells.glob("adding_lstm_L8_*"):
        edit(path, status="oom", score=None, grad_flow={})
    (diverged,) = cells.glob("adding_rnn_L8_s0_*")
    edit(diverged, status="diverged", score=None,
         grad_flow={"untrained": json.loads(diverged.read_text())["grad_flow"]["untrained"]})
    for path in cells.glob("parity_*"):
        edit(path, grad_flow={})  # as records from before gradient flow was stored
    plots = store.root / "plots"
    plots.mkdir()
    (plots / "gradflow_parity.png").write_bytes(PNG_MAGIC)  # an earlier run's, now unsupported
    (plots / "notes.png").write_bytes(b"")  # not ours: left alone

    files = plot(store.root, capsys)
    assert set(files) == names("accuracy_adding", "heatmap_adding", "gradflow_adding",
                               "accuracy_parity", "heatmap_parity")
    assert sorted(p.name for p in plots.iterdir()) == sorted([*files, "notes.png"])
    svg = files["accuracy_adding.svg"].read_text()
    assert "out of memory (no value)" in svg and "diverged (no value)" in svg
    heatmap = files["heatmap_adding.svg"].read_text()
    assert "2 oom" in heatmap and "1 diverged" in heatmap


@pytest.mark.parametrize("make", ["missing", "empty", "corrupt"])
def test_folder_without_records_exits_2(tmp_path, capsys, make):
    folder = tmp_path / "nothing"
    if make != "missing":
        (folder / "cells").mkdir(parents=True)
    if make == "corrupt":
        (folder / "cells" / "copy_rnn_L2_s0_0123456789abcdef.json").write_text("{")
    assert main(["plot", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    *skipped, error = captured.err.splitlines()
    assert error.startswith("seqbench: error: plot: ") and str(folder) in error
    assert len(skipped) == (make == "corrupt") and all("skipped" in s and "not valid JSON" in s
                                                       for s in skipped)
    assert not (folder / "plots").exists()
