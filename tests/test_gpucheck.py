"""The GPU validation on a CPU: its arguments and script, the gpu-check preset (a subset of full),
the projection arithmetic, the throughput figures, the summary and the stage runner's time limit.
(The validation itself needs a GPU: scripts/gpu_check.sh.)"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_cell, record_for

from seqbench.strict import ConfigError
from seqbench.sweeps import gpucheck
from seqbench.sweeps.projection import (
    Projection,
    StepTime,
    cells_per_hour,
    fit,
    observations,
    project,
    step_times,
    tokens_per_step,
)
from seqbench.sweeps.spec import Label, preset

ROOT = Path(__file__).resolve().parent.parent


# --- the preset -----------------------------------------------------------------------------------

def test_gpu_check_cells_are_cells_of_full_at_fewer_steps():
    """With full's step budget and evaluation interval, every gpu-check cell is a full cell (same
    key), under the same labels; every model label of full is measured."""
    full, check = preset("full"), preset("gpu-check")
    full_cells = {cfg.key(): label for label, cfg in gpucheck.projected_cells()}
    steps = {"steps": full.train.steps, "eval_every": full.train.eval_every}
    for label, cfg in check.labelled_cells():
        as_full = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **steps))
        assert full_cells.get(as_full.key()) == label, (cfg.task, cfg.model, cfg.length)
        assert cfg.train.steps < full.train.steps
    labels = {label.variant or cfg.model for label, cfg in check.labelled_cells()}
    assert labels == {label.variant or cfg.model for label, cfg in gpucheck.projected_cells()}


def test_gpu_check_measures_every_family_at_two_sizes():
    sizes: dict[str, set] = {}
    for label, cfg in preset("gpu-check").labelled_cells():
        if not label.variant:
            sizes.setdefault(cfg.model, set()).add(tokens_per_step(cfg))
    assert all(len(s) >= 2 for s in sizes.values()) and len(sizes) == 10


# --- projection arithmetic ------------------------------------------------------------------------

def test_fit_recovers_a_line():
    line = StepTime(2e-3, 1e-7)
    points = [(x, line.seconds(x)) for x in (100.0, 1000.0, 50_000.0)]
    got = fit(points)
    assert got.a == pytest.approx(2e-3, rel=1e-9) and got.b == pytest.approx(1e-7, rel=1e-9)


@pytest.mark.parametrize(("points", "expected"), [
    ([(100.0, 3.0), (200.0, 2.0), (300.0, 1.0)], StepTime(2.0, 0.0)),  # falling: a constant
    ([(100.0, 1.0), (200.0, 3.0)], StepTime(0.0, 700 / 50_000)),  # a < 0: through the origin
    ([(500.0, 2.0), (500.0, 4.0)], StepTime(0.0, 6.0 / 1000)),  # one size: through the origin
])
def test_fit_keeps_both_coefficients_non_negative(points, expected):
    got = fit(points)
    assert got.a == pytest.approx(expected.a) and got.b == pytest.approx(expected.b)


def timed(task, model, length, seconds_per_step, *, steps=200, variant="", status="budget"):
    """A finished record of a cell that took seconds_per_step per training step."""
    cfg = make_cell(task, model, length, steps=steps)
    tokens = tokens_per_step(cfg)
    return record_for(cfg, status, score=0.5, variant=variant,
                      train_time_s=steps * seconds_per_step,
                      train_tokens_per_s=tokens / seconds_per_step)


def test_observations_are_per_step_and_per_label():
    records = [timed("parity", "lstm", 10, 0.002), timed("parity", "lstm", 20, 0.003),
               timed("parity", "lstm", 30, 0.01, variant="lstm-peephole"),
               timed("parity", "gru", 10, 0.5, status="oom")]
    got = observations(records)
    assert set(got) == {"lstm", "lstm-peephole"}  # the failed cell is left out
    assert got["lstm"] == [pytest.approx((80.0, 0.002)), pytest.approx((160.0, 0.003))]


def test_a_variant_measured_once_takes_its_familys_line_scaled():
    family = [timed("parity", "transformer", n, 1e-3 + 1e-6 * 8 * n) for n in (10, 100)]
    rope = timed("parity", "transformer", 50, 1.5 * (1e-3 + 1e-6 * 400), variant="rope")
    alone = timed("parity", "tcn", 50, 0.004)  # no family fit: through the origin
    times = step_times([*family, rope, alone])
    assert times["transformer"].a == pytest.approx(1e-3) and times["transformer"].b == \
        pytest.approx(1e-6)
    assert times["rope"].a == pytest.approx(1.5e-3) and times["rope"].b == pytest.approx(1.5e-6)
    assert times["tcn"] == StepTime(0.0, pytest.approx(0.004 / 400))


def test_project_sums_steps_times_step_time_and_falls_back_to_the_family():
    cells = [(Label(), make_cell("parity", "lstm", 10, steps=100)),
             (Label("s", "lstm-peephole"), make_cell("parity", "lstm", 20, steps=100)),
             (Label(), make_cell("parity", "gru", 10, steps=100))]
    times = {"lstm": StepTime(1e-3, 1e-5)}
    got = project(cells, times)
    tokens = [8 * 10, 8 * 20]  # batch 8 (TINY_TRAIN) x parity's sequence
    expected = sum(100 * (1e-3 + 1e-5 * t) for t in tokens)
    assert got == Projection(pytest.approx(expected), 2, ("gru",))
    assert got.wall_s(4) == pytest.approx(expected / 4)
    assert cells_per_hour(30, 90.0) == pytest.approx(1200.0)


def test_throughput_of_a_run_and_the_projected_full_preset():
    def linear(task, model, n):  # 2 ms a step + 10 ns a token
        return timed(task, model, n, 2e-3 + 1e-8 * tokens_per_step(make_cell(task, model, n)))

    records = [linear("parity", m, n) for m in
               ("rnn", "lstm", "gru", "tcn", "transformer", "lru", "s4d", "mamba",
                "linear_attention", "hyena") for n in (10, 1000)]
    records += [linear("copy", "seq2seq", n) for n in (10, 1000)]  # no answer phase in parity
    t = gpucheck.throughput(records, 60.0, {"cells_per_gpu": 4, "workers": 8})
    assert t["cells"] == 22 and t["cells_per_hour"] == pytest.approx(22 * 60.0)
    assert (t["cells_per_gpu"], t["workers"]) == (4, 8)
    full = gpucheck.projected_cells()
    expected = sum(c.train.steps * (2e-3 + 1e-8 * tokens_per_step(c)) for _, c in full)
    assert t["full_cells"] == len(full) and t["full_missing"] == []  # variants: their families
    assert t["full_cell_seconds"] == pytest.approx(expected)
    assert t["full_wall_s"] == pytest.approx(expected / 8)


# --- the script's arguments and stages ------------------------------------------------------------

def test_arguments_and_their_defaults():
    args = gpucheck.parse_args([])
    assert args.packing == [1, "auto"] and args.stages == list(gpucheck.STAGES)
    assert args.out is None and args.stage_timeout == 600 and not args.mps
    args = gpucheck.parse_args(["--packing", "1,2,4,8", "--stages", "sweeps", "--mps",
                                "--out", "x", "--stage-timeout", "30"])
    assert args.packing == [1, 2, 4, 8] and args.stages == ["sweeps"] and args.mps


@pytest.mark.parametrize(("argv", "message"), [
    (["--packing", "0"], "--packing: expected positive integers or 'auto'"),
    (["--packing", "2,x"], "--packing: expected positive integers or 'auto', comma-separated, "
                           "got 'x'"),
    (["--packing", "auto,1,auto"], "--packing: auto is given twice"),
    (["--stages", "tests,bench"], "--stages: unknown stage 'bench'; allowed: tests, sweeps"),
    (["--stages", ","], "--stages: must name at least one of"),
    (["--stage-timeout", "0"], "--stage-timeout: must be > 0"),
])
def test_bad_arguments_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gpucheck.parse_args(argv)


@pytest.mark.parametrize(("name", "folder"), [
    ("NVIDIA H200", "nvidia-h200"), ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
    ("NVIDIA A100-SXM4-80GB", "nvidia-a100-sxm4-80gb"), ("  ", "gpu")])
def test_device_names_become_folder_names(name, folder):
    assert gpucheck.slug(name) == folder


def test_an_output_folder_with_an_earlier_run_is_refused(tmp_path):
    gpucheck.check_out(tmp_path / "new")
    (tmp_path / "old" / "sweep-1-per-gpu").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds a run \\(sweep-1-per-gpu\\)"):
        gpucheck.check_out(tmp_path / "old")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        gpucheck.check_out(tmp_path / "file")


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})


def test_the_script_refuses_bad_arguments_with_exit_2():
    done = script("--packing", "0")
    assert done.returncode == 2
    assert "gpu_check: error: --packing: expected positive integers" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_script_needs_a_gpu(tmp_path):
    done = script("--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_stage_keeps_its_output_and_status(tmp_path):
    ok = gpucheck.run_stage(gpucheck.Stage("ok", [sys.executable, "-c", "print('hello')"]),
                            tmp_path, 60)
    assert ok.status == "ok" and (tmp_path / "ok.log").read_text() == "hello\n"
    bad = gpucheck.run_stage(gpucheck.Stage("bad", [sys.executable, "-c", "exit(3)"]),
                             tmp_path, 60)
    assert bad.status == "failed (exit 3)"


def test_a_stage_past_its_time_limit_is_killed_with_its_children(tmp_path):
    """A stage whose child process hangs: the whole group is killed at the limit."""
    hang = ("import subprocess, sys, time; print(subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']).pid, flush=True); time.sleep(60)")
    stage = gpucheck.run_stage(gpucheck.Stage("hang", [sys.executable, "-c", hang]), tmp_path, 1.5)
    assert stage.status == "timeout (killed after 1.5 s)" and stage.seconds < 30
    child = int((tmp_path / "hang.log").read_text().split()[0])
    for _ in range(100):  # the grandchild is gone (reaped by init) within a few seconds
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text(
                ).split()[2]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the stage's child outlived the time limit")


def test_summary_lists_runs_and_every_failure():
    stages = [gpucheck.Stage("tests", [], "ok", 50.0),
              gpucheck.Stage("sweep-1-per-gpu", [], "ok", 90.0, ["copy gru L=100: oom: x"]),
              gpucheck.Stage("measure-cuda-bf16", [], "failed (exit 1)", 10.0)]
    runs = {"sweep-1-per-gpu": {"cells_per_gpu": 1, "workers": 1, "cells": 34, "wall_s": 90.0,
                                "cells_per_hour": 1360.0, "full_cell_seconds": 86400.0 * 3,
                                "full_wall_s": 86400.0 * 3}}
    text = gpucheck.summary("NVIDIA H200", stages, runs)
    assert "# GPU validation: NVIDIA H200" in text
    assert "| sweep-1-per-gpu | 1 | 1 | 34 | 90 | 1,360 | 72.0 h (3.00 days) |" in text
    assert "- measure-cuda-bf16: failed (exit 1) (see measure-cuda-bf16.log)" in text
    assert "- sweep-1-per-gpu: copy gru L=100: oom: x" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failing_stage_fails_the_run_loudly(tmp_path, monkeypatch, capsys):
    """The whole script past its GPU check, on a CPU: the sweep stage's command exits 2 (no
    CUDA), so the run exits 1 and its summary names the stage and its log."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(gpucheck, "prepare", lambda args: (out, "Fake GPU"))
    monkeypatch.setattr(gpucheck.signal, "signal", lambda *args: None)  # keep pytest's handlers
    assert gpucheck.main(["--stages", "sweeps", "--packing", "1"]) == 1
    summary = (out / "summary.md").read_text()
    assert "| sweep-1-per-gpu | failed (exit 2) |" in summary
    assert "- sweep-1-per-gpu: failed (exit 2) (see sweep-1-per-gpu.log)" in summary
    assert "device: cuda is not available" in (out / "sweep-1-per-gpu.log").read_text()
    assert "gpu_check: FAILED" in capsys.readouterr().out
