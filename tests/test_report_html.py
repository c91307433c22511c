"""report.html: self-contained, every table, the figures already made; results.parquet."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import fake_record

from seqbench.cli import main
from seqbench.results.store import Store

# a real 1x1 PNG
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def write_store(root: Path) -> Store:
    store = Store(root)
    for record in [
        fake_record("parity", "rnn", 2, 1.0), fake_record("parity", "rnn", 2, 0.5, seed=1),
        fake_record("parity", "transformer", 2, None, status="oom"),
        fake_record("copy", "lstm", 4, 0.25), fake_record("adding", "tcn", 8, 0.5),
    ]:
        store.save(record)
    return store


def test_report_html_is_self_contained_with_every_table(tmp_path):
    store = write_store(tmp_path / "made-up")
    assert main(["report", str(store.root)]) == 0
    page = (store.root / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<style>" in page
    assert not re.search(r"https?:|//[a-z]|<link|<script|@import|url\(", page, re.IGNORECASE)
    for title in ("adding", "copy", "parity", "solve length"):
        assert f"<h2>{title}</h2>" in page
    assert "<td>rnn</td><td>0.750 ±3.177 1/2</td>" in page  # one model with a score: no bold
    assert "<td>transformer</td><td>1 oom</td>" in page
    assert "<img" not in page and "run <code>seqbench plot DIR</code>" in page


def test_report_html_embeds_the_figures_in_plots(tmp_path):
    store = write_store(tmp_path / "made-up")
    (store.root / "plots").mkdir()
    for name in ("accuracy_parity.png", "heatmap_parity.png"):
        (store.root / "plots" / name).write_bytes(PIXEL)
    (store.root / "plots" / "accuracy_parity.svg").write_text("<svg/>")  # PNGs only
    assert main(["report", str(store.root)]) == 0
    page = (store.root / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">', page)
    assert [alt for alt, _ in images] == ["accuracy_parity", "heatmap_parity"]
    assert all(base64.b64decode(data) == PIXEL for _, data in images)
    assert "seqbench plot DIR" not in page


def test_results_parquet_matches_the_csv(tmp_path):
    pytest.importorskip("pyarrow")
    store = write_store(tmp_path / "made-up")
    assert main(["report", str(store.root)]) == 0
    csv = pd.read_csv(store.root / "results.csv")
    parquet = pd.read_parquet(store.root / "results.parquet")
    assert list(parquet.columns) == list(csv.columns)
    columns = ["key", "task", "model", "length", "seed", "status", "score", "train.lr"]
    pd.testing.assert_frame_equal(parquet[columns], csv[columns], check_dtype=False)
    assert (parquet["hpset"] == "").all() and csv["hpset"].isna().all()  # CSV reads "" as NaN
    assert not [p for p in store.root.iterdir() if p.suffix == ".tmp"]
