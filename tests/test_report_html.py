"""report.html: self-contained, one section per task (its tables, then its figures under their
captions), the cross-task tables after in scrolling boxes, figures made by `report` itself where
missing or stale; results.parquet."""
from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import fake_record

from seqbench.cli import main
from seqbench.results.report import html_report, needs_plots
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
    text = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", page)  # embedded PNGs
    assert not re.search(r"https?:|//[a-z]|<link|<script|@import|url\(", text, re.IGNORECASE)
    for task in ("adding", "copy", "parity"):
        assert f"<h2>{task}</h2>" in page and f"<h3>{task}</h3>" in page
    assert "<h3>solve length</h3>" in page and "Best per column in bold" not in page
    assert "<td>rnn</td><td>0.750 ±3.177 1/2</td>" in page  # one model with a score: no bold
    assert "<td>transformer</td><td>1 oom</td>" in page
    # the figures: made by report itself, one PNG per figure, no SVG unless asked
    made = sorted(p.name for p in (store.root / "plots").glob("*.png"))
    assert "accuracy_parity.png" in made and not list((store.root / "plots").glob("*.svg"))
    assert sorted(re.findall(r'<img alt="([^"]+)"', page)) == sorted(m[:-4] for m in made)


def test_report_html_embeds_the_figures_in_plots_under_their_captions(tmp_path):
    store = write_store(tmp_path / "made-up")
    plots = store.root / "plots"
    plots.mkdir()
    for name in ("accuracy_parity.png", "heatmap_parity.png"):
        (plots / name).write_bytes(PIXEL)
    (plots / "accuracy_parity.svg").write_text("<svg/>")  # PNGs only
    (plots / "figures.json").write_text(json.dumps({"figures": [
        {"file": "accuracy_parity.png", "task": "parity", "caption": "Scores & seeds of parity."},
        {"file": "heatmap_parity.png", "task": "parity", "caption": "Means of parity."}]}))
    assert main(["report", str(store.root)]) == 0
    page = (store.root / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">'
                        r"<figcaption>([^<]+)</figcaption>", page)
    assert [(alt, caption) for alt, _, caption in images] == [
        ("accuracy_parity", "Scores &amp; seeds of parity."), ("heatmap_parity", "Means of parity.")]
    assert all(base64.b64decode(data) == PIXEL for _, data, _ in images)  # not made again
    assert "seqbench plot DIR" not in page


def section(page: str, anchor: str) -> str:
    return page.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]


def test_report_html_has_a_section_per_task_with_its_tables_then_its_figures(tmp_path):
    store = write_store(tmp_path / "made-up")
    assert main(["report", str(store.root)]) == 0
    page = (store.root / "report.html").read_text()
    contents = page.split('<nav class="toc">', 1)[1].split("</nav>", 1)[0]
    assert re.findall(r'href="#([^"]+)"', contents) == [
        "task-copy", "task-adding", "task-parity", "across", "environment"]
    for task in ("copy", "adding", "parity"):
        mine = section(page, f"task-{task}")
        first_figure = mine.index("<figure>")
        assert mine.index(f"<h3>{task}</h3>") < mine.index("<table>") < first_figure
        assert "</table>" not in mine[first_figure:]  # every table before the figures
        alts = re.findall(r'<img alt="([^"]+)"', mine)
        assert {alt.split("_", 1)[0] for alt in alts} >= {"accuracy", "heatmap"}
        assert all(alt.split("_", 1)[1] == task for alt in alts)
        captions = re.findall(r"<figcaption>([^<]+)</figcaption>", mine)
        assert len(captions) == len(alts) and all(c.startswith(f"{task}: ") for c in captions)
    # the solve-length table: after the tasks, in a box that scrolls sideways
    across = section(page, "across")
    assert "<h3>solve length</h3>" in across and "<figure>" not in across
    assert re.search(r'<div class="scroll"><table>(?:(?!</table>).)*</table></div>',
                     across.split("<h3>solve length</h3>", 1)[1], re.DOTALL)
    assert re.search(r"div\.scroll \{[^}]*overflow-x: auto", page)
    assert page.index('<section id="across">') < page.index('<section id="environment">')


def test_report_html_title_has_no_markdown_marks():
    page = html_report([], "seqbench sweep `quick`", [], {"python": "3.11"})
    assert "`" not in page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "<h1>seqbench sweep quick</h1>" in page


def test_report_makes_figures_again_when_records_are_newer(tmp_path):
    store = write_store(tmp_path / "made-up")
    assert main(["report", str(store.root)]) == 0
    plots = store.root / "plots"
    assert not needs_plots(store) and not (plots / "accuracy_dyck.png").exists()
    store.save(fake_record("dyck", "rnn", 10, 0.5))
    earlier = time.time() - 60  # the figures were made before that record was stored
    os.utime(plots / "figures.json", (earlier, earlier))
    assert needs_plots(store)
    assert main(["report", str(store.root)]) == 0
    assert (plots / "accuracy_dyck.png").is_file() and not needs_plots(store)
    assert '<section id="task-dyck">' in (store.root / "report.html").read_text()
    (plots / "heatmap_dyck.png").unlink()  # a figure the list names is gone
    assert needs_plots(store)


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
