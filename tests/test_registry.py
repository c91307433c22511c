"""Names of families and tasks (seqbench.registry): built-ins, import paths, entry points; the
messages for what cannot be resolved; display metadata and its checks."""
from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
from conftest import fake_record

from seqbench import display, registry
from seqbench.cli import main
from seqbench.models import FAMILIES, Family, get_family
from seqbench.models.tcn import FAMILIES as TCN
from seqbench.results.store import Store
from seqbench.strict import ConfigError
from seqbench.sweeps.spec import load_spec
from seqbench.tasks import TASKS, get_task
from seqbench.tasks.parity import Parity


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module `my_blocks` on sys.path defining families, tasks and broken objects."""
    (tmp_path / "my_blocks.py").write_text(textwrap.dedent('''
        import dataclasses
        from seqbench.models import FAMILIES as BUILTIN
        from seqbench.tasks.parity import Parity

        RNN = BUILTIN["rnn"]
        A = dataclasses.replace(RNN, name="a", label="same")
        B = dataclasses.replace(RNN, name="b", label="same")
        LIKE_GRU = dataclasses.replace(RNN, name="mine", label="gru")

        class MyParity(Parity):
            name = "my_parity"
            label = "my parity"

        NUMBER = 3
        '''))
    (tmp_path / "broken_dep.py").write_text("import a_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_blocks"


def test_builtins_are_registered_under_their_own_names():
    assert list(FAMILIES) == list(registry.BUILTIN["model"])
    assert all(f.name == name for name, f in FAMILIES.items())
    assert list(TASKS) == list(registry.BUILTIN["task"])
    assert all(cls.name == name for name, cls in TASKS.items())


def test_import_paths_resolve_to_the_object(plugin_module):
    assert get_family("my_blocks:RNN") is FAMILIES["rnn"]
    assert get_family("seqbench.models:tcn") is TCN[0]  # a module whose FAMILIES holds one
    assert get_task("my_blocks:MyParity").name == "my_parity"
    assert registry.missing("model", "my_blocks:RNN") is None


@pytest.mark.parametrize(("kind", "name", "message"), [
    ("model", "no_such_pkg.blocks:X",
     "model: import path 'no_such_pkg.blocks:X': no module named 'no_such_pkg'; install the "
     "distribution that provides it"),
    ("model", "broken_dep:X",
     "model: import path 'broken_dep:X': importing 'broken_dep' failed: No module named "
     "'a_dependency_that_is_not_installed' (a dependency of the plug-in is missing)"),
    ("model", "my_blocks:Nope", "model: import path 'my_blocks:Nope': 'my_blocks' has no "
     "attribute 'Nope'"),
    ("model", "my_blocks:NUMBER", "model: import path 'my_blocks:NUMBER' is a int (3); expected "
     "a seqbench.models.Family instance or a module with FAMILIES"),
    ("model", "seqbench.models:recurrent", "model: import path 'seqbench.models:recurrent': "
     "seqbench.models.recurrent.FAMILIES holds 3 families (rnn, lstm, gru) and none is named so"),
    ("model", "seqbench.models:base", "is a module without FAMILIES"),
    ("model", "my_blocks:RNN:x", "model: 'my_blocks:RNN:x' is not an import path module:attribute"),
    ("task", "my_blocks:RNN", "task: import path 'my_blocks:RNN' is a Family"),
    ("task", "seqbench.tasks.base:Task", "task: import path 'seqbench.tasks.base:Task': Task does "
     "not set name, summary, io, readout, solve_threshold"),
    ("task", "nope", "task: unknown value 'nope'; allowed: adding, assoc_recall, copy, "),
])
def test_what_cannot_be_resolved_is_named(plugin_module, kind, name, message):
    get = get_family if kind == "model" else get_task
    with pytest.raises(ConfigError) as caught:
        get(name)
    assert message in str(caught.value)


def test_a_sweep_names_families_by_import_path_and_checks_their_hparams(plugin_module):
    text = ('name = "x"\ntasks = ["parity"]\nmodels = ["my_blocks:RNN", "lstm"]\nlengths = [2]\n'
            '[hparams."my_blocks:RNN"]\nlayers = 2\n')
    cells = load_spec(text, "test").cells()
    assert [(c.model, c.hparams.layers) for c in cells] == [("my_blocks:RNN", 2), ("lstm", 1)]
    with pytest.raises(ConfigError, match=r"^hparams\.bogus: unknown key"):
        load_spec(text.replace("layers = 2", "bogus = 2"), "test").cells()
    with pytest.raises(ConfigError, match=r"^variants\.v\.model: import path 'my_blocks:Nope'"):
        load_spec(text + '[variants.v]\nmodel = "my_blocks:Nope"\n', "test")


def test_two_entries_shown_under_one_name_are_refused(plugin_module):
    text = ('name = "x"\ntasks = ["parity"]\nmodels = ["my_blocks:A", "my_blocks:B"]\n'
            "lengths = [2]\n")
    with pytest.raises(ConfigError, match=r"^models\[1\]: my_blocks:B is shown as 'same' in "
                                          r"tables, as is my_blocks:A; give one of them"):
        load_spec(text, "test")
    # a plug-in labelled like a built-in is shown under its configured name instead
    record = fake_record("parity", "my_blocks:LIKE_GRU", 2, 0.5)
    assert record.model_display["label"] == "gru" and record.model_name == "my_blocks:LIKE_GRU"
    load_spec(text.replace('"my_blocks:A", "my_blocks:B"', '"my_blocks:LIKE_GRU", "gru"'), "t")


def test_report_refuses_records_shown_under_one_name(plugin_module, tmp_path, capsys):
    store = Store(tmp_path / "mixed")
    for model in ("my_blocks:A", "my_blocks:B"):
        store.save(fake_record("parity", model, 2, 0.5))
    assert main(["report", str(store.root)]) == 2
    assert ("report: model name 'same' is shown for my_blocks:A and my_blocks:B; their rows "
            "would merge") in capsys.readouterr().err


def test_missing_does_not_import(tmp_path, monkeypatch):
    """registry.missing finds a module without running it or its package's __init__."""
    package = tmp_path / "loud_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "blocks.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry.missing("model", "loud_pkg.blocks:X") is None
    assert registry.missing("model", "loud_pkg.other:X") == (
        "module 'loud_pkg.other' is not installed")
    assert registry.missing("task", "loud_pkg:X") is None
    assert "and no installed entry point in the group seqbench.tasks" in registry.missing(
        "task", "x")


def test_display_defaults_and_checks():
    mine = display.model("mine")
    assert (mine["label"], mine["order"]) == ("mine", display.DEFAULT_ORDER)
    assert mine == display.model("mine")  # derived from the name: stable
    assert mine["colour"] in display.EXTRA_COLOURS and mine["marker"] in display.EXTRA_MARKERS
    for name in ("transformer-rope", "lstm-bidirectional", "x", "y", "z"):
        for family in FAMILIES.values():
            shown = display.variant(name, family.display())
            assert shown["colour"] != family.colour and shown["marker"] != family.marker
    with pytest.raises(ConfigError, match=r"^model family 'bad': colour: 'red' is not a colour"):
        dataclasses.replace(FAMILIES["rnn"], name="bad", colour="red")
    with pytest.raises(ConfigError, match=r"^model family 'bad': marker: 'x' is not one of"):
        dataclasses.replace(FAMILIES["rnn"], name="bad", marker="x")

    class Bad(Parity):
        length_symbol = "two words"

    with pytest.raises(ConfigError, match=r"task: here: task 'parity': length_symbol: 'two words'"):
        from seqbench.tasks import as_task
        as_task(Bad, "here")


def test_a_record_with_bad_display_is_not_trusted(tmp_path, capsys):
    store = Store(tmp_path / "s")
    path = store.save(fake_record("parity", "rnn", 2, 0.5))
    data = json.loads(path.read_text())
    data["model_display"]["colour"] = "javascript:"
    path.write_text(json.dumps(data))
    assert main(["report", str(store.root)]) == 2
    err = capsys.readouterr().err
    assert "model_display.colour: 'javascript:' is not a colour '#rrggbb'" in err


def test_family_checks_its_declaration():
    with pytest.raises(ConfigError, match=r"^model family 'x': version must be an integer >= 1"):
        Family("x", "", FAMILIES["rnn"].hparams, FAMILIES["rnn"].build, version=0)
    with pytest.raises(ConfigError, match=r"^model family 'x': hparams must be a dataclass"):
        Family("x", "", dict, FAMILIES["rnn"].build)
