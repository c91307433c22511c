"""The package's layers: what reads results never imports torch, the CLI starts without the
heavy libraries, and the pre-0.2 import names still work with a deprecation warning."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fake_record

from seqbench.results.store import Store

ROOT = Path(__file__).resolve().parent.parent
TORCH_FREE = [
    "seqbench.cli", "seqbench.strict", "seqbench.options", "seqbench.fileio", "seqbench.env",
    "seqbench.registry", "seqbench.display",
    "seqbench.cell.record", "seqbench.measure.record", "seqbench.results.store",
    "seqbench.results.tables", "seqbench.results.accuracy", "seqbench.results.cellstats",
    "seqbench.results.stats", "seqbench.results.report", "seqbench.results.plots",
    "seqbench.results.plotstyle", "seqbench.results.dynamics",
    "seqbench.results.cli", "seqbench.gate.accuracy", "seqbench.gate.baseline",
    "seqbench.gate.stats", "seqbench.gate.perf", "seqbench.gate.cli",
    "seqbench.sweeps.schema",  # sweep_schema() itself reads the family registry: torch
]
# Python in which `import torch` fails: anything that needs torch breaks loudly
NO_TORCH = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] == 'torch':\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, Block())\n")


def python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_results_layer_imports_no_torch():
    done = python(NO_TORCH + "\n".join(f"import {m}" for m in TORCH_FREE))
    assert done.returncode == 0, done.stderr


def test_cli_starts_without_the_heavy_libraries():
    """`seqbench --help` loads only the dispatcher: no torch, pandas, scipy or matplotlib."""
    done = python("import sys; from seqbench.cli import parser; parser().format_help(); "
                  "print(sorted(m for m in ('torch', 'pandas', 'scipy', 'matplotlib', 'numpy') "
                  "if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    """Two small stores of the same cells, the second with one score lower."""
    base, cur = Store(tmp_path / "base"), Store(tmp_path / "cur")
    for model in ("rnn", "gru"):
        for length in (2, 4):
            base.save(fake_record("parity", model, length, 0.75))
            cur.save(fake_record("parity", model, length, 0.5 if model == "gru" else 0.75))
    return base.root, cur.root


def test_report_plot_and_accuracy_gate_run_without_torch(two_runs):
    base, cur = two_runs
    code = NO_TORCH + "from seqbench.cli import main; sys.exit(main(sys.argv[1:]))"
    for argv, expected in ((["report", str(base)], 0), (["plot", str(base)], 0),
                           (["gate", "--baseline", str(base), "--current", str(cur)], 1)):
        done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == expected, (argv, done.stderr)
    assert (base / "report.html").is_file() and (base / "plots" / "heatmap_parity.png").is_file()
    assert "2 regressed" in " ".join((cur / "gate.md").read_text().split())


@pytest.mark.parametrize(("name", "new"), [("bench", "seqbench"), ("tasks", "seqbench.tasks")])
def test_old_import_names_warn(name, new):
    done = python(f"import warnings; warnings.simplefilter('always'); import {name}")
    assert done.returncode == 0, done.stderr
    assert "DeprecationWarning" in done.stderr and new in done.stderr
