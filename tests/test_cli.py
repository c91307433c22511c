"""The `seqbench` command line: list, run, and strict rejection of bad input (exit 2, no output)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import expect_rejected

from seqbench.cell.config import CellConfig
from seqbench.cell.record import CellRecord
from seqbench.cli import main
from seqbench.models import FAMILIES
from seqbench.tasks import TASKS

MODELS = ", ".join(sorted(FAMILIES))  # the allowed models, as error messages list them
TASK_NAMES = ", ".join(sorted(TASKS))
TINY_RUN = ["--params", "2000", "--steps", "3", "--batch-size", "8", "--eval-every", "3",
            "--eval-samples", "16"]

VALID_SWEEP = """\
name = "tiny"
tasks = ["parity"]
models = ["rnn"]
lengths = [2]
params = 2000

[train]
steps = 2
eval_every = 2
eval_samples = 16
"""


def test_list_names_every_task_and_model(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*TASKS, *FAMILIES]:
        assert f"  {name} " in out


def test_run_writes_one_record(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["run", "--task", "copy", "--model", "gru", "--length", "3", "--seed", "2",
            "--hp", "layers=2", "--out", str(out), *TINY_RUN]
    assert main(argv) == 0
    files = list((out / "cells").iterdir())
    assert len(files) == 1
    record = CellRecord.from_dict(json.loads(files[0].read_text()))
    cfg = CellConfig.from_dict(record.config)
    assert (cfg.task, cfg.model, cfg.length, cfg.seed, cfg.params) == ("copy", "gru", 3, 2, 2000)
    assert cfg.hparams.layers == 2 and cfg.train.steps == 3 and cfg.train.eval_samples == 16
    assert files[0].name == f"copy_gru_L3_s2_{record.key}.json"
    assert record.status == "budget" and record.steps == 3
    assert str(files[0]) in capsys.readouterr().out.replace("\n", "")


def test_run_exit_code_reports_failed_cell(tmp_path):
    argv = ["run", "--task", "adding", "--model", "rnn", "--length", "4", "--lr", "1e30",
            "--out", str(tmp_path), *TINY_RUN]
    assert main(argv) == 1
    (path,) = (tmp_path / "cells").iterdir()
    assert json.loads(path.read_text())["status"] == "diverged"


RUN_ERRORS = {
    "unknown task": (["--task", "nope", "--model", "rnn", "--length", "4"],
                     ["task: unknown value 'nope'", f"allowed: {TASK_NAMES}"]),
    "unknown model": (["--task", "copy", "--model", "rwkv", "--length", "4"],
                      ["model: unknown value 'rwkv'", f"allowed: {MODELS}"]),
    "length 0": (["--task", "copy", "--model", "rnn", "--length", "0"],
                 ["length: task 'copy' needs an integer length >= 1, got 0"]),
    "length -1": (["--task", "parity", "--model", "rnn", "--length=-1"],
                  ["length: task 'parity' needs an integer length >= 1, got -1"]),
    "adding length 1": (["--task", "adding", "--model", "rnn", "--length", "1"],
                        ["length: task 'adding' needs an integer length >= 2, got 1"]),
    "unknown hp": (["--task", "copy", "--model", "lstm", "--length", "4", "--hp", "depth=2"],
                   ["hparams.depth: unknown key", "allowed: bidirectional, dropout, forget_bias, layers, peephole"]),
    "hp wrong type": (["--task", "copy", "--model", "rnn", "--length", "4", "--hp", "layers=two"],
                      ["hparams.layers: expected int, got str 'two'"]),
    "hp not key=value": (["--task", "copy", "--model", "rnn", "--length", "4", "--hp", "layers"],
                         ["--hp: expected KEY=VALUE"]),
    "unknown training option": (["--task", "copy", "--model", "rnn", "--length", "4",
                                 "--epochs", "3"], ["unrecognized arguments: --epochs 3"]),
    "bad params": (["--task", "copy", "--model", "rnn", "--length", "4", "--params", "lots"],
                   ["params: expected an integer such as 20000"]),
    "unknown device": (["--task", "copy", "--model", "rnn", "--length", "4", "--device", "tpu"],
                       ["device: unknown value 'tpu'", "allowed: cpu, cuda"]),
}


@pytest.mark.parametrize("case", sorted(RUN_ERRORS))
def test_run_rejects_bad_input(tmp_path, capsys, case):
    args, fragments = RUN_ERRORS[case]
    out = tmp_path / "out"
    expect_rejected(capsys, ["run", *TINY_RUN, *args, "--out", str(out)], *fragments)
    assert not out.exists()


def test_bad_thread_count_is_rejected(tmp_path, capsys):
    out = tmp_path / "out"
    expect_rejected(capsys, ["run", "--threads", "0", "--task", "copy", "--model", "rnn",
                             "--length", "2", "--out", str(out)], "--threads: must be >= 1")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_config_error(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "--task", "copy", "--model", "rnn", "--length", "2", "--device", "cuda",
            "--out", str(out)]
    expect_rejected(capsys, argv, "device: cuda is not available")
    config = tmp_path / "gpu.toml"
    config.write_text('device = "cuda"\n' + VALID_SWEEP)
    expect_rejected(capsys, ["sweep", "--config", str(config), "--out", str(out)], "device: cuda")
    assert not out.exists()


SWEEP_ERRORS = {
    "unknown top-level key": ('colour = "red"\n' + VALID_SWEEP,
                              ["colour: unknown key",
                               "allowed: device, generalise, hparams, hpsets, lengths, measure, models, name"]),
    "unknown train key": (VALID_SWEEP + "epochs = 3\n",
                          ["train.epochs: unknown key", "allowed: batch_size, clip, compile, eval_every"]),
    "wrong type": (VALID_SWEEP.replace("steps = 2", 'steps = "ten"'),
                   ["train.steps: expected int, got str 'ten'"]),
    "empty tasks": (VALID_SWEEP.replace('tasks = ["parity"]', "tasks = []"),
                    ["tasks: must not be empty"]),
    "unknown model": (VALID_SWEEP.replace('models = ["rnn"]', 'models = ["rnn", "rwkv"]'),
                      ["model: unknown value 'rwkv'", f"allowed: {MODELS}"]),
    "lengths table missing a task": (
        VALID_SWEEP.replace('tasks = ["parity"]', 'tasks = ["parity", "copy"]')
        .replace("lengths = [2]", "lengths = { parity = [2] }"),
        ["lengths.copy: missing"]),
    "lengths table with an unknown task": (
        VALID_SWEEP.replace("lengths = [2]", "lengths = { parity = [2], copy = [3] }"),
        ["lengths key: unknown value 'copy'", "allowed: parity"]),
    "length too short": (VALID_SWEEP.replace("lengths = [2]", "lengths = [2, 0]"),
                         ["length: task 'parity' needs an integer length >= 1, got 0"]),
    "repeated model": (VALID_SWEEP.replace('models = ["rnn"]', 'models = ["rnn", "rnn"]'),
                       ["models: must not repeat, got ['rnn', 'rnn']"]),
    "missing name": (VALID_SWEEP.replace('name = "tiny"\n', ""), ["name: required key is missing"]),
    "invalid TOML": (VALID_SWEEP + "steps = = 3\n", ["not valid TOML"]),
}


@pytest.mark.parametrize("case", sorted(SWEEP_ERRORS))
def test_sweep_rejects_bad_config(tmp_path, capsys, case):
    text, fragments = SWEEP_ERRORS[case]
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    out = tmp_path / "out"
    expect_rejected(capsys, ["sweep", "--config", str(config), "--out", str(out)], *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--config", "MISSING"], ["config: cannot read", "sweep.toml"]),
        ([], ["give exactly one of --preset (smoke, quick, findings, full, gpu-check, "
              "techniques-attention, techniques-tbptt, techniques-precision) or --config FILE"]),
        (["--preset", "smoke", "--config", "EXISTING"], ["give exactly one of --preset"]),
        (["--preset", "huge"], ["preset: unknown value 'huge'",
                                "allowed: findings, full, gpu-check, quick, smoke, techniques-"]),
    ],
    ids=["missing config file", "neither", "both", "unknown preset"],
)
def test_sweep_rejects_bad_arguments(tmp_path, capsys, args, fragments):
    existing = tmp_path / "existing.toml"
    existing.write_text(VALID_SWEEP)
    args = [str(tmp_path / "sweep.toml") if a == "MISSING" else str(existing) if a == "EXISTING"
            else a for a in args]
    out = tmp_path / "out"
    expect_rejected(capsys, ["sweep", *args, "--out", str(out)], *fragments)
    assert not out.exists()


def test_report_needs_a_records_folder(tmp_path, capsys):
    expect_rejected(capsys, ["report", str(tmp_path / "nothing")], "report: ",
                    "holds no stored records")


def test_console_script_exit_code(tmp_path):
    """The installed entry point really exits with status 2 on bad input."""
    script = Path(sys.executable).parent / "seqbench"
    argv = [str(script), "run", "--task", "nope", "--model", "rnn", "--length", "4",
            "--out", str(tmp_path / "out")]
    bad = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert bad.returncode == 2, bad.stderr
    assert f"task: unknown value 'nope'; allowed: {TASK_NAMES}" in bad.stderr
    assert bad.stdout == "" and not (tmp_path / "out").exists()
