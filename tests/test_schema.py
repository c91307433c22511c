"""The JSON schema of sweep files (seqbench.sweeps.schema): the committed copy is current, every
preset validates, and a file the schema rejects for an unknown key, a wrong type or a bad choice
is one load_spec rejects too."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from importlib import resources

import pytest

from seqbench.strict import ConfigError
from seqbench.sweeps.schema import sweep_schema
from seqbench.sweeps.spec import PRESETS, load_spec

SMALL = """
name = "small"
tasks = ["parity", "copy"]
models = ["lstm", "transformer-rope"]
lengths = { parity = [4], copy = [5] }

[train]
steps = 10

[hparams.lstm]
layers = 1

[variants.transformer-rope]
model = "transformer"
hparams = { positions = "rope" }
"""


@pytest.fixture(scope="module")
def validator():
    """A draft 2020-12 validator of the schema; the tests that use it skip without jsonschema."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = sweep_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_current():
    """bench/sweeps/sweep.schema.json is what the module generates (regenerate: README)."""
    text = resources.files("seqbench.sweeps").joinpath("sweep.schema.json").read_text()
    assert json.loads(text) == sweep_schema()


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate(validator, name):
    text = resources.files("seqbench.sweeps").joinpath("presets", f"{name}.toml").read_text()
    errors = [e.message for e in validator.iter_errors(tomllib.loads(text))]
    assert errors == []


def test_a_valid_file_passes_both(validator):
    validator.validate(tomllib.loads(SMALL))
    load_spec(SMALL, "small")


@pytest.mark.parametrize(("old", "new", "key"), [
    ('name = "small"', 'name = "small"\nseed = 1', "seed"),  # unknown keys
    ("steps = 10", "steps = 10\nwarmup = 5", "warmup"),
    ("layers = 1", "layers = 1\nheads = 2", "heads"),  # a key of another family
    ("[variants.", "[hpsets.a]\nlr = 1e-3\nrate = 3\n\n[variants.", "rate"),
    ("steps = 10", 'steps = "10"', "steps"),  # wrong types
    ("layers = 1", "layers = 1.5", "layers"),
    ('lengths = { parity = [4], copy = [5] }', 'lengths = { parity = 4, copy = [5] }', "parity"),
    ("steps = 10", 'steps = 10\nprecision = "fp8"', "precision"),  # bad choices
    ('name = "small"', 'name = "small"\ndevice = "tpu"', "device"),
    ('positions = "rope"', 'positions = "nope"', "positions"),
    ('model = "transformer"', 'model = "lstm"', "positions"),  # the variant's family decides
])
def test_schema_and_load_spec_reject_the_same_files(validator, old, new, key):
    text = SMALL.replace(old, new, 1)
    assert text != SMALL
    errors = list(validator.iter_errors(tomllib.loads(text)))
    assert any(key in e.message or key in e.absolute_path for e in errors), errors
    with pytest.raises(ConfigError) as caught:
        load_spec(text, "edited")
    assert key in str(caught.value)


def test_each_family_table_has_its_hparams_fields():
    from seqbench.models import FAMILIES

    schema = sweep_schema()
    tables = schema["properties"]["hparams"]["properties"]
    assert list(tables) == list(FAMILIES)
    for name, family in FAMILIES.items():
        table = schema["$defs"][tables[name]["$ref"].rsplit("/", 1)[1]]
        assert list(table["properties"]) == [f.name for f in dataclasses.fields(family.hparams)]


def test_plugin_names_are_left_to_load_spec(validator):
    """Task and family names are open (plug-ins): the schema lists the built-ins and admits any
    other name, which load_spec then resolves or rejects with the allowed names."""
    mine = '"mypkg.tasks:Mine"'
    text = SMALL.replace('"copy"]', f"{mine}]").replace("copy = [5]", f"{mine} = [5]")
    validator.validate(tomllib.loads(text))
    with pytest.raises(ConfigError, match="no module named 'mypkg'"):
        load_spec(text, "plug-in")


def test_every_table_is_closed():
    """Every object the schema declares with properties rejects other keys, as from_mapping."""
    def objects(node):
        if isinstance(node, dict):
            if "properties" in node and node.get("type") == "object" and "$ref" not in node:
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)
    found = list(objects(sweep_schema()))
    closed = [o for o in found if o.get("additionalProperties") is False]
    keyed = [o for o in found if isinstance(o.get("additionalProperties"), dict)]
    assert closed and len(closed) + len(keyed) == len(found)
