"""The perf gate (seqbench.gate.perf, .stats, .child): its statistics against hand computations,
the comparator on a seeded synthetic noise model, real measurements of the same code and of an
injected slowdown, and A/B against a git ref whose code really runs."""
from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import seqbench.gate.perf as perf_module
from seqbench.cli import main
from seqbench.gate.perf import aa_ratio, compare_perf
from seqbench.gate.perfrun import PERF_SCHEMA
from seqbench.gate.stats import mann_whitney, ratio_interval, slowdown
from seqbench.strict import ConfigError

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------
# Mann-Whitney U and the ratio interval


def test_mann_whitney_hand_computed_exact():
    # x above every y: U = 3 * 3 = 9; only 1 of the C(6, 3) = 20 orderings reaches it
    assert mann_whitney([4, 5, 6], [1, 2, 3]) == (9.0, pytest.approx(1 / 20))
    assert mann_whitney([1, 2, 3], [4, 5, 6]) == (0.0, 1.0)
    # x = {3, 5}, y = {1, 2, 4}: 3 beats 1, 2 and 5 beats all three -> U = 5; of the
    # C(5, 2) = 10 orderings U = 6 (x on top) and U = 5 (x = 1st and 3rd) -> p = 2/10
    assert mann_whitney([3, 5], [1, 2, 4]) == (5.0, pytest.approx(0.2))


def test_mann_whitney_hand_computed_ties_normal_approximation():
    # x = 2 3 3 4, y = 1 2 2 3: U = (1 + .5 + .5) + 2 * (3 + .5) + 4 = 13, mean 8;
    # ties: three 2s and three 3s -> sum(t^3 - t) = 48; N = 8;
    # var = 16/12 * (9 - 48/56) = 10.857...; z = (13 - 8 - 0.5) / sqrt(var) = 1.3657
    u, p = mann_whitney([2, 3, 3, 4], [1, 2, 2, 3])
    assert u == 13.0
    var = 16 / 12 * (9 - 48 / 56)
    assert p == pytest.approx(0.5 * math.erfc(4.5 / math.sqrt(var) / math.sqrt(2)))
    assert p == pytest.approx(0.0860, abs=1e-4)


def test_mann_whitney_large_samples_without_ties():
    # n = m = 21 (beyond the exact range): every x above every y, U = 441, mean 220.5,
    # var = 441 * 43 / 12 = 1580.25, z = (441 - 220.5 - 0.5) / sqrt(var) = 5.534
    u, p = mann_whitney([100 + i for i in range(21)], list(range(21)))
    assert u == 441.0
    assert p == pytest.approx(0.5 * math.erfc(220 / math.sqrt(1580.25) / math.sqrt(2)))
    assert mann_whitney([1.0] * 30, [1.0] * 30)[1] == 1.0  # all equal: no evidence


def test_mann_whitney_exact_matches_enumeration():
    x, y = [0.3, 1.7, 2.2], [0.1, 0.9, 1.1, 2.0]
    pooled = sorted(x + y)
    u_obs = mann_whitney(x, y)[0]
    us = [sum(a > b for a in xs for b in pooled if b not in xs)
          for xs in itertools.combinations(pooled, 3)]
    assert mann_whitney(x, y)[1] == pytest.approx(sum(u >= u_obs for u in us) / len(us))


def test_ratio_interval_brackets_the_ratio_and_is_reproducible():
    base, cur = [1.0, 1.1, 0.9, 1.05, 0.95] * 3, [2.0, 2.2, 1.8, 2.1, 1.9] * 3
    lo, hi = ratio_interval(base, cur)
    assert lo <= 2.0 <= hi and (lo, hi) == ratio_interval(base, cur)


# ------------------------------------------------------------------------------------------
# the perf comparator on a seeded synthetic noise model


def lognormal(rng, median: float, n: int = 15) -> list[float]:
    """Per-block samples with 5-10% multiplicative jitter (lognormal)."""
    return list(median * np.exp(rng.normal(0.0, rng.uniform(0.05, 0.10), n)))


def test_slowdown_on_synthetic_noise():
    rng = np.random.default_rng(0)
    flagged = {1.0: 0, 1.05: 0, 1.5: 0}
    trials = 100
    for _ in range(trials):
        for factor in flagged:
            base, cur = lognormal(rng, 3e-3), lognormal(rng, 3e-3 * factor)
            flagged[factor] += slowdown(base, cur).regression
    assert flagged == {1.0: 0, 1.05: 0, 1.5: trials}


def test_slowdown_needs_ratio_and_evidence():
    # a 3x median with p > 0.05: too few samples to tell
    base, cur = [1.0, 1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0, 3.0]
    s = slowdown(base, cur)
    assert s.ratio == 3.0 and s.p > 0.05 and not s.regression
    # certain but small: 10% slower every time
    s = slowdown([1.0 + i / 1000 for i in range(15)], [1.1 + i / 1000 for i in range(15)])
    assert s.p < 1e-4 and not s.regression
    assert slowdown([1.0 + i / 1000 for i in range(15)], [1.3 + i / 1000 for i in range(15)]
                    ).regression


def fake_perf(samples: dict[str, list[float]], *, normaliser: float = 1.0,
              saved: dict[str, int] | None = None, status: dict[str, str] | None = None) -> dict:
    """A perf.json payload with one point per model (L=16)."""
    points = []
    for model, s in samples.items():
        st = (status or {}).get(model, "ok")
        points.append({
            "key": f"k-{model}", "status": st, "error": None if st == "ok" else "Boom",
            "point": {"model": model, "length": 16, "batch_size": 16},
            "train_samples_s": s, "norm_samples": [v / normaliser for v in s],
            "calls_per_block": [1] * (len(s) // 5),
            "saved_bytes": (saved or {}).get(model, 1000),
        })
    return {"schema": PERF_SCHEMA, "kind": "seqbench-perf", "points": points,
            "calibration": {"matmul_s": 1e-3 * normaliser, "lstm_step_s": 2e-3 * normaliser}}


def test_perf_comparator_same_noise_passes_and_slowdown_is_named():
    rng = np.random.default_rng(1)
    models = ("rnn", "lstm", "gru", "tcn", "transformer")
    base = fake_perf({m: lognormal(rng, 2e-3) for m in models})
    same = fake_perf({m: lognormal(rng, 2e-3) for m in models})
    diffs, _ = compare_perf(base, same)
    assert [d.verdict for d in diffs if d.regression] == []
    slow = fake_perf({m: lognormal(rng, 2e-3 * (1.5 if m == "lstm" else 1.05)) for m in models})
    diffs, _ = compare_perf(base, slow)
    assert [d.name for d in diffs if d.regression] == ["lstm L=16 B=16"]


def test_perf_comparator_normalises_a_slower_machine():
    rng = np.random.default_rng(2)
    base = fake_perf({"lstm": lognormal(rng, 2e-3)})
    slower_machine = fake_perf({"lstm": lognormal(rng, 4e-3)}, normaliser=2.0)
    diffs, factor = compare_perf(base, slower_machine)
    assert factor == pytest.approx(2.0) and not diffs[0].regression
    assert compare_perf(base, slower_machine, normalise=False)[0][0].regression


def test_perf_memory_gate_is_tight():
    s = [1e-3] * 10
    base = fake_perf({"lstm": s}, saved={"lstm": 100_000})
    assert not compare_perf(base, fake_perf({"lstm": s}, saved={"lstm": 104_000}))[0][0].regression
    (d,), _ = compare_perf(base, fake_perf({"lstm": s}, saved={"lstm": 106_000}))
    assert d.regression and "saved_bytes 100000 -> 106000" in d.reasons[0]


def test_perf_missing_new_failed_and_incomparable_points():
    s = [1e-3] * 10
    base = fake_perf({"lstm": s, "gru": s})
    diffs, _ = compare_perf(base, fake_perf({"lstm": s, "tcn": s}))
    assert {d.name.split()[0]: d.verdict for d in diffs} == {
        "gru": "missing", "lstm": "ok", "tcn": "new"}
    (d, _), _ = compare_perf(base, fake_perf({"lstm": s, "gru": s}, status={"gru": "oom"}))
    assert d.verdict == "regression" and d.reasons == ["oom: Boom"]
    with pytest.raises(ConfigError, match="no measured point in common"):
        compare_perf(base, fake_perf({"tcn": s}))


def test_perf_cli_rejects_unusable_files(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "perf.json").write_text("{}")
    assert main(["gate", "--perf", "--baseline", str(tmp_path / "nothing"),
                 "--current", str(tmp_path / "a")]) == 2
    assert "--baseline: cannot read" in capsys.readouterr().err
    assert main(["gate", "--perf", "--baseline", str(tmp_path / "a"),
                 "--current", str(tmp_path / "a")]) == 2
    assert "is not a seqbench perf.json" in capsys.readouterr().err


def test_perf_stored_mode_writes_markdown(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for name, factor in (("base", 1.0), ("cur", 1.5)):
        (tmp_path / name).mkdir()
        data = fake_perf({"lstm": lognormal(rng, 2e-3 * factor), "gru": lognormal(rng, 2e-3)})
        (tmp_path / name / "perf.json").write_text(json.dumps(data))
    assert main(["gate", "--perf", "--baseline", str(tmp_path / "base"),
                 "--current", str(tmp_path / "cur")]) == 1
    md = (tmp_path / "cur" / "gate-perf.md").read_text()
    assert md.startswith("# seqbench performance gate: FAIL")
    assert "| **regression** | lstm L=16 B=16 |" in md and "| ok | gru L=16 B=16 |" in md
    assert "lstm" in capsys.readouterr().out


def test_aa_noise_splits_each_side_into_even_and_odd_rounds():
    # blocks of 2: rounds 0 and 2 measured 1.0, rounds 1 and 3 measured 2.0 -> 2x, either way
    assert aa_ratio([1, 1, 2, 2, 1, 1, 2, 2], 2) == 2.0
    assert aa_ratio([2, 2, 1, 1, 2, 2, 1, 1], 2) == 2.0
    # round 0 = (1.0, 3.0), median 2.0; round 1 = (1.1, 3.3), median 2.2 -> 1.1
    assert aa_ratio([1.0, 3.0, 1.1, 3.3], 2) == pytest.approx(1.1)
    assert aa_ratio([1.0] * 5, 5) is None  # one round: nothing to split
    base = fake_perf({"lstm": [1.0] * 5 + [1.2] * 5})
    cur = fake_perf({"lstm": [1.0] * 5 + [1.1] * 5})
    (d,), _ = compare_perf(base, cur)
    assert d.aa == pytest.approx(1.2)  # the larger of the two sides' A/A ratios
    md = perf_module.perf_markdown([d], 1.0, "a", "b", {}, 1.25, 0.05, 0.05, True)
    assert "A/A noise (same code, even vs odd rounds of each side): median 1.200x, max 1.200x " \
        "over 1 point(s)" in md and "WARNING" not in md
    assert "WARNING: this run's own noise reaches the 1.1x threshold" in perf_module.aa_summary(
        [d], 1.1)


def test_confirmation_settles_an_alarm():
    rng = np.random.default_rng(4)
    base = fake_perf({"lstm": lognormal(rng, 2e-3), "gru": lognormal(rng, 2e-3)})
    slow = fake_perf({"lstm": lognormal(rng, 3e-3), "gru": lognormal(rng, 3e-3)})
    diffs, _ = compare_perf(base, slow, normalise=False)
    assert [d.verdict for d in diffs] == ["regression", "regression"]
    again_base = {p["key"]: p for p in fake_perf({"lstm": lognormal(rng, 2e-3),
                                                   "gru": lognormal(rng, 2e-3)})["points"]}
    again_cur = {p["key"]: p for p in fake_perf({"lstm": lognormal(rng, 2e-3),  # a fluke
                                                  "gru": lognormal(rng, 3e-3)})["points"]}
    perf_module.confirm(diffs, again_base, again_cur)
    gru, lstm = diffs
    assert lstm.verdict == "unconfirmed" and not lstm.regression
    assert lstm.reasons[0].startswith(f"flagged {lstm.timing.ratio:.2f}x") and \
        f"not confirmed: re-measured {lstm.confirm.ratio:.2f}x" in lstm.reasons[0]
    assert gru.verdict == "regression" and "; confirmed: re-measured 1.5" in gru.reasons[0]
    # an unconfirmed timing alarm with a memory regression still fails
    big = fake_perf({"lstm": lognormal(rng, 3e-3)}, saved={"lstm": 2000})
    (d,), _ = compare_perf(fake_perf({"lstm": lognormal(rng, 2e-3)}), big, normalise=False)
    perf_module.confirm([d], again_base, again_cur)
    assert d.verdict == "regression" and d.reasons[1].startswith("saved_bytes 1000 -> 2000")


class FakeSides:
    """Stands in for the measuring children of an A/B job: lstm looks 1.5x slower on the first
    measurement; the re-measurement gives `again` for it."""

    calls: list = []

    def __init__(self, specs, settings, bracket=True):
        self.rng = np.random.default_rng(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def measure(self):
        first = {"lstm": 1.5, "gru": 1.0}
        return (fake_perf({m: lognormal(self.rng, 2e-3) for m in first}),
                fake_perf({m: lognormal(self.rng, 2e-3 * f) for m, f in first.items()}))

    def remeasure(self, keys):
        FakeSides.calls.append(keys)
        return [{p["key"]: p for p in fake_perf({"lstm": lognormal(self.rng, 2e-3 * f)})[
            "points"]} for f in (1.0, FakeSides.again)]


@pytest.mark.parametrize(("again", "code", "verdict"), [(1.0, 0, "unconfirmed"),
                                                        (1.5, 1, "**regression**")])
def test_ab_job_confirms_flagged_points_before_failing(tmp_path, monkeypatch, capsys, again,
                                                       code, verdict):
    monkeypatch.setattr(perf_module, "Sides", FakeSides)
    monkeypatch.setattr(perf_module, "install", lambda tree, site: None)
    monkeypatch.setattr(perf_module.PerfSettings, "validate", lambda self: None)
    FakeSides.again, FakeSides.calls = again, []
    out = tmp_path / "ab"
    assert main(["gate", "--perf", "--against", "HEAD", "--current", str(out), *TINY]) == code
    assert FakeSides.calls == [["k-lstm"]]  # only the flagged point is measured again
    md = (out / "gate-perf.md").read_text()
    assert f"| {verdict} | lstm L=16 B=16 |" in md and "| ok | gru L=16 B=16 |" in md
    assert "a flagged point is measured again and fails only when confirmed" in md
    assert f"{int(again == 1.0)} unconfirmed alarm(s)" in md
    cur = json.loads((out / "current" / "perf.json").read_text())
    lstm = next(p for p in cur["points"] if p["point"]["model"] == "lstm")
    assert len(lstm["confirmation"]["train_samples_s"]) == 15


# ------------------------------------------------------------------------------------------
# real measurements (child processes, tiny points)

TINY = ["--models", "lstm,tcn", "--lengths", "16", "--batch-size", "8", "--params", "5k"]


def record(folder: Path, slow: str | None = None) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        if slow:
            mp.setenv("SEQBENCH_TEST_SLOWDOWN", slow)
        else:
            mp.delenv("SEQBENCH_TEST_SLOWDOWN", raising=False)
        assert main(["gate", "--perf", "--record", str(folder), *TINY]) == 0
    return folder


@pytest.mark.timing
def test_record_and_stored_comparison_catch_the_injected_slowdown(tmp_path, capsys):
    """Two records of this code taken one after the other, the second with lstm made 1.5x slower
    by the TEST-ONLY hook, compared after calibration. Stored runs at different times see the
    shared machine in different states (on the 2-core VM this was written on, 98% of same-code
    ratios fell within 0.83-1.18 and the hook was caught 99/100 times): a timing test, rerun once
    on failure by CI."""
    base = record(tmp_path / "a")
    data = json.loads((base / "perf.json").read_text())
    assert [p["status"] for p in data["points"]] == ["ok", "ok"]
    assert all(len(p["train_samples_s"]) == len(p["norm_samples"]) == 50 and p["saved_bytes"] > 0
               for p in data["points"])
    assert data["seqbench_file"] == str(ROOT / "bench" / "__init__.py")  # the editable install
    assert data["test_slowdown"] == {}
    assert json.loads((base / "calibration.json").read_text()).keys() == {
        "matmul_s", "lstm_step_s"}
    slow = record(tmp_path / "slow", "lstm=1.5")
    code = main(["gate", "--perf", "--baseline", str(base), "--current", str(slow)])
    md = (slow / "gate-perf.md").read_text()
    assert json.loads((slow / "perf.json").read_text())["test_slowdown"] == {"lstm": 1.5}
    assert code == 1 and "| **regression** | lstm L=16 B=8 |" in md, md
    assert "| **regression** | tcn" not in md
    assert "lstm" in capsys.readouterr().out


@pytest.mark.timing
def test_ab_against_git_ref_runs_the_other_code(tmp_path, monkeypatch, capsys):
    """Interleaved A/B on real measurements: a clone whose HEAD is this code and whose working
    tree doubles lstm's training work, so a slowdown appears only if the ref's code really ran;
    the TEST-ONLY hook makes the current side's tcn 1.5x slower (caught and confirmed), and gru,
    the same code on both sides, is not flagged."""
    repo = tmp_path / "repo"
    for name in ("bench", "tasks"):
        shutil.copytree(ROOT / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    measure = repo / "bench" / "measure" / "point.py"
    text = measure.read_text()
    anchor = "        self.opt = self.train_step.opt\n"
    assert text.count(anchor) == 1
    measure.write_text(text.replace(anchor, anchor + (
        "        if point.model == 'lstm':  # test patch: twice the work\n"
        "            once = self.train_step\n"
        "            self.train_step = lambda: (once(), once())\n")))
    monkeypatch.setenv("SEQBENCH_TEST_SLOWDOWN", "tcn=1.5")
    monkeypatch.setattr(perf_module, "CODE", (repo / "bench").resolve())  # "this code" = repo
    argv = ["gate", "--perf", "--against", "HEAD", "--current", str(tmp_path / "ab"), *TINY]
    argv[argv.index("lstm,tcn")] = "gru,lstm,tcn"
    expected = ("| **regression** | lstm L=16 B=8 |", "| **regression** | tcn L=16 B=8 |",
                "| ok | gru L=16 B=8 |", "; confirmed: re-measured ")
    code = main(argv)
    md = (tmp_path / "ab" / "gate-perf.md").read_text()
    assert code == 1 and all(row in md for row in expected), md
    base = json.loads((tmp_path / "ab" / "baseline" / "perf.json").read_text())
    cur = json.loads((tmp_path / "ab" / "current" / "perf.json").read_text())
    assert (base["test_slowdown"], cur["test_slowdown"]) == ({}, {"tcn": 1.5})
    # each side ran its own installed copy
    assert cur["seqbench_file"].endswith("/site-current/seqbench/__init__.py")
    assert base["seqbench_file"].endswith("/site-baseline/seqbench/__init__.py")
    assert "seqbench-ab-" in base["seqbench_file"]
    assert base["git_ref"] == "HEAD"
    listed = subprocess.run([*git, "worktree", "list"], check=True, capture_output=True,
                            text=True).stdout
    assert len(listed.strip().splitlines()) == 1  # the temporary worktree is gone


def test_slowdown_hook_rejects_bad_values(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEQBENCH_TEST_SLOWDOWN", "lstm=0.5")
    assert main(["gate", "--perf", "--record", str(tmp_path), *TINY]) == 2
    assert "SEQBENCH_TEST_SLOWDOWN" in capsys.readouterr().err
