"""`seqbench plot`: every figure from stored records alone, on full and on partial results; what
the figures draw (every model visible where several coincide, the seed spread, the shortcut
learner's score per length, step-time IQR bars on throughput, training curves).

The stores here are written record by record (fake_record plus a made-up history, shortcut result
and gradient flow, and measurement records with made-up figures): plotting reads only what is
stored, and this keeps the module to a few seconds instead of a real sweep's half a minute.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fake_record

from seqbench import display
from seqbench.cell.config import display_of
from seqbench.cli import main
from seqbench.measure.point import MeasurePoint
from seqbench.measure.record import MeasureRecord
from seqbench.models import FAMILIES
from seqbench.results.dynamics import seed_mean
from seqbench.results.plots import accuracy_figure, speed_memory_figure, with_shortcut
from seqbench.results.plotstyle import SEABORN, new_figure
from seqbench.results.render import Job, render
from seqbench.results.store import Store, cell_frame, measurement_frame
from seqbench.sweeps.spec import preset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ("adding", "copy", "parity")


def flow(length: int, decay: float, zero_after: int | None = None) -> dict:
    """A gradient flow over distances 0..length-1 decaying geometrically (exact zeros past
    zero_after, as a TCN beyond its receptive field)."""
    distances = list(range(length))
    norms = [0.0 if zero_after is not None and d > zero_after else decay ** d for d in distances]
    return {"distance": distances, "norm": norms}


def shortcut(score: float) -> dict:
    """A stored shortcut-learner result (seqbench.cell.shortcut) with this test score."""
    return {"family": "window", "learner": "lookup", "k": 2, "ngrams": None, "alpha": None,
            "score": score, "val_score": score, "window_score": score, "pooled_score": score,
            "train_samples": 256, "seconds": 0.01}


def write_sweep(root: Path, seeds: tuple[int, ...] = (0,)) -> Store:
    """A stored sweep over the smoke preset's grid of TASKS (plain cells only), every cell with
    a history, a shortcut result and both gradient flows."""
    store = Store(root)
    cells = [c for c in preset("smoke").cells() if c.task in TASKS and c.generalise is None]
    for i, cell in enumerate(cells):
        for seed in seeds:
            score = 0.3 + 0.05 * (i % 12)
            record = fake_record(cell.task, cell.model, cell.length, score, seed=seed)
            record.history = [{"step": 10, "val_score": score / 2}, {"step": 20, "val_score": score}]
            record.shortcut = shortcut(0.2 + 0.01 * cell.length)
            span = record.seq_len
            record.grad_flow = {"untrained": flow(span, 0.5),
                                "trained": flow(span, 0.8, 2 if cell.model == "tcn" else None)}
            store.save(record)
    return store


def write_measurement(store: Store, model: str, length: int, status: str = "ok",
                      dtype: str = "fp32") -> None:
    """A measured point of batch 8 with made-up figures: step times of 10 ms (IQR 4 ms) for
    training and 2 ms (no IQR) for inference."""
    point = MeasurePoint(model=model, length=length, batch_size=8, dtype=dtype, params=2000)
    figures = {} if status != "ok" else {
        "train_ms": 10.0, "train_ms_iqr": 4.0, "train_tokens_per_s": 8 * length / 0.010,
        "infer_ms": 2.0, "infer_tokens_per_s": 8 * length / 0.002,
        "saved_bytes": 1000 * length, "rss_growth_bytes": 3000 * length}
    store.save_measurement(MeasureRecord(key=point.key(), point=point.to_dict(),
                                         key_payload=point.payload(), status=status,
                                         error=None if status == "ok" else status, **figures))


def plot(folder: Path, capsys, *options: str) -> dict[str, Path]:
    """Run `seqbench plot folder *options`; check it listed exactly the files it wrote, each a
    non-empty PNG or SVG; return them by name."""
    assert main(["plot", str(folder), *options]) == 0
    listed = [Path(line) for line in capsys.readouterr().out.split()]
    assert listed and all(p.parent == folder / "plots" for p in listed)
    for path in listed:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) if path.suffix == ".png" else b"<svg" in data[:2000]
    return {p.name: p for p in listed}


def names(*stems: str, svg: bool = False) -> set[str]:
    return {f"{stem}.{ext}" for stem in stems for ext in ("png", "svg")[:1 + svg]}


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
    kinds = ("accuracy", "heatmap", "training", "gradflow")
    assert set(files) == names(*(f"{kind}_{t}" for kind in kinds for t in TASKS),
                               "speed_memory_cpu_fp32_b8")
    # each listed with its task (none for the measurements) and a caption in figures.json
    listed = json.loads((store.root / "plots" / "figures.json").read_text())["figures"]
    assert {f["file"] for f in listed} == set(files)
    for f in listed:
        assert f["task"] == ("" if f["file"].startswith("speed") else f["file"].split("_", 1)[1][:-4])
        assert len(f["caption"]) > 80 and f["file"] not in f["caption"]
    # SVG on request, beside the same PNGs
    assert set(plot(store.root, capsys, "--svg")) == set(files) | {
        p.replace(".png", ".svg") for p in files}


def test_measurements_alone_with_only_oom_points(tmp_path, capsys):
    store = Store(tmp_path / "measure")
    for model in ("lstm", "transformer"):
        write_measurement(store, model, 4096, "oom", dtype="bf16")
    assert set(plot(store.root, capsys)) == names("speed_memory_cpu_bf16_b8")
    assert not list((store.root / "plots").glob("*.svg"))  # SVG only with --svg


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
        edit(path, status="oom", score=None, grad_flow={}, history=[])
    (diverged,) = cells.glob("adding_rnn_L8_s0_*")
    edit(diverged, status="diverged", score=None,
         grad_flow={"untrained": json.loads(diverged.read_text())["grad_flow"]["untrained"]})
    for path in cells.glob("parity_*"):
        edit(path, grad_flow={})  # as records from before gradient flow was stored
    plots = store.root / "plots"
    plots.mkdir()
    (plots / "gradflow_parity.png").write_bytes(PNG_MAGIC)  # an earlier run's, now unsupported
    (plots / "notes.png").write_bytes(b"")  # not ours: left alone

    files = plot(store.root, capsys, "--svg")
    assert set(files) == names("accuracy_adding", "heatmap_adding", "training_adding",
                               "gradflow_adding", "accuracy_parity", "heatmap_parity",
                               "training_parity", svg=True)
    assert sorted(p.name for p in plots.iterdir()) == sorted([*files, "notes.png", "figures.json"])
    svg = files["accuracy_adding.svg"].read_text()
    assert "out of memory (no value)" in svg and "diverged (no value)" in svg
    heatmap = files["heatmap_adding.svg"].read_text()
    assert "2 oom" in heatmap and "1 diverged" in heatmap


def test_the_same_files_from_one_process_or_several(tmp_path, capsys):
    store = write_sweep(tmp_path / "smoke", seeds=(0, 1))
    write_measurement(store, "lstm", 32)
    write_measurement(store, "gru", 64, "oom")

    def plotted(*options: str) -> dict[str, bytes]:
        plot(store.root, capsys, "--svg", *options)
        return {p.name: p.read_bytes() for p in (store.root / "plots").iterdir()}

    serial = plotted("--jobs", "1")
    assert len(serial) == 2 * (4 * len(TASKS) + 1) + 1  # 4 kinds a task, speed: PNG, SVG; json
    assert plotted("--jobs", "3") == serial  # byte for byte, figures.json too


def blank() -> object:
    return new_figure(2, 2)


def broken() -> object:
    raise ValueError("no such column")


def dies() -> object:
    os._exit(3)


@pytest.mark.parametrize(("build", "workers", "error"), [
    (broken, 1, "no such column"), (broken, 2, "no such column"), (dies, 2, "BrokenProcessPool"),
    (lambda: blank(), 2, "pickle")])
def test_a_failing_figure_is_named(tmp_path, build, workers, error):
    """An exception, a worker that dies or a job that cannot be sent to one stops `plot` with the
    figure's name (no hang)."""
    jobs = [Job("heatmap_bad", "t", "", build, ()),
            *(Job(f"accuracy_{i}", "t", "", blank, ()) for i in range(4))]
    with pytest.raises(RuntimeError, match=f"figure heatmap_bad failed: .*{error}"):
        render(jobs, tmp_path, svg=False, workers=workers)


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


# What the figures draw --------------------------------------------------------------------------


def frame_of(records: list) -> pd.DataFrame:
    return with_shortcut(cell_frame(records))


def test_coinciding_models_stay_visible_with_their_seed_spread():
    records = [fake_record("parity", m, n, 1.0, seed=s)
               for m in ("rnn", "lstm", "gru") for n in (2, 4) for s in (0, 1)]
    records += [fake_record("parity", "tcn", n, score, seed=s)
                for n in (2, 4) for s, score in ((0, 0.5), (1, 0.75))]
    fig = accuracy_figure("parity", frame_of(records))
    fig.canvas.draw()
    bars = {c.get_label(): c for c in fig.axes[0].containers}
    assert set(bars) == {"rnn", "lstm", "gru", "tcn"}
    shown_x = {}
    for model, container in bars.items():
        line = container.lines[0]
        assert list(line.get_xdata()) == [2, 4]  # the data keep their lengths
        points = np.column_stack([line.get_xdata(), line.get_ydata()])
        shown_x[model] = line.get_transform().transform(points)[:, 0]  # where they are drawn
    for i in range(2):  # three models at 1.0 at each length, each drawn apart (pixels)
        at = sorted(shown_x[m][i] for m in ("rnn", "lstm", "gru"))
        assert min(np.diff(at)) > 3
        assert all(bars[m].lines[0].get_ydata()[i] == 1.0 for m in ("rnn", "lstm", "gru"))
    # tcn's bars span its two seeds, worst to best
    spans = [sorted(seg[:, 1]) for seg in bars["tcn"].lines[2][0].get_segments()]
    assert spans == [pytest.approx([0.5, 0.75])] * 2


def test_shortcut_line_follows_the_records_at_each_length():
    records = []
    for n, scores in {2: (0.6, 0.8), 4: (0.55, 0.65), 8: (0.5, 0.5)}.items():
        for seed, score in enumerate(scores):
            record = fake_record("parity", "rnn", n, 0.9, seed=seed)
            record.shortcut = shortcut(score)
            records.append(record)
    fig = accuracy_figure("parity", frame_of(records))
    (line,) = [li for li in fig.axes[0].lines if li.get_label() == "shortcut (n-gram)"]
    assert list(line.get_xdata()) == [2, 4, 8]
    assert list(line.get_ydata()) == pytest.approx([0.7, 0.6, 0.5])
    assert "shortcut (n-gram)" in [t.get_text() for t in fig.legends[0].get_texts()]
    # records without a shortcut result: no line, no legend entry
    for record in records:
        record.shortcut = None
    fig = accuracy_figure("parity", frame_of(records))
    assert "shortcut (n-gram)" not in [li.get_label() for li in fig.axes[0].lines]
    assert "shortcut (n-gram)" not in [t.get_text() for t in fig.legends[0].get_texts()]


def test_throughput_has_step_time_iqr_bars_for_every_model(tmp_path):
    store = Store(tmp_path / "measure")
    models = ("rnn", "lstm", "lru", "s4d", "mamba", "hyena", "linear_attention", "transformer")
    for model in models:
        for length in (16, 64):
            write_measurement(store, model, length)
    fig = speed_memory_figure(measurement_frame(store.read().measurements.values()), "cpu")
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == sorted(models)
    axes = {ax.get_title(): ax for ax in fig.axes}
    train, infer = axes["training throughput"], axes["inference throughput"]
    assert len(train.containers) == len(models)
    for container in train.containers:  # 10 ms median, IQR 4 ms: tokens / (10 -+ 2) ms
        for segment, length in zip(container.lines[2][0].get_segments(), (16, 64)):
            assert sorted(segment[:, 1]) == pytest.approx([8 * length / 0.012, 8 * length / 0.008])
    for container in infer.containers:  # no IQR stored: no bar
        assert all(np.ptp(seg[:, 1]) == 0 for seg in container.lines[2][0].get_segments())


def test_training_curve_mean_holds_solved_seeds_and_drops_diverged_ones():
    rows = [(0, "solved", 10, 0.5), (0, "solved", 20, 1.0),
            (1, "budget", 10, 0.3), (1, "budget", 30, 0.6), (1, "budget", 40, 0.7),
            (2, "diverged", 10, 0.1)]
    mean = seed_mean(pd.DataFrame(rows, columns=["seed", "status", "step", "val_score"]))
    assert mean.to_dict() == pytest.approx({10: 0.3, 20: 0.65, 30: 0.8, 40: 0.85})


def test_every_family_and_a_variant_have_their_own_style():
    styles = [display_of(family, "parity")["model_display"] for family in FAMILIES]
    pairs = [(s["colour"], s["marker"]) for s in styles]
    assert len(set(pairs)) == len(pairs) and len({c for c, _ in pairs}) == len(pairs)
    transformer = display_of("transformer", "parity")["model_display"]
    rope = display.variant("transformer-rope", transformer)
    assert (rope["colour"], rope["marker"]) not in pairs
    assert rope == display.variant("transformer-rope", transformer)  # stable


def test_the_style_is_still_seaborns():
    sns = pytest.importorskip("seaborn")
    style = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}
    del style["image.cmap"]  # seaborn's own colormap; every figure names its colormap
    assert SEABORN == style
