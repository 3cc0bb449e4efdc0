"""Config field kinds: text → value → text round trips, clear errors, type checks, widget specs.

The round trip over the registry is the contract between the CLI parser and the re-run command a
report records: for every probe, its default and a config with every field changed, the command
``rerun_command`` writes must parse back (through the CLI) to the same config.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from lenslab.analyses.report import rerun_command
from lenslab.cli import build_config, parse_config_value
from lenslab.probes import Config, get_probe, registered_probes
from lenslab.probes.fields import (
    ChoiceKind,
    ConfigField,
    OptionalKind,
    TupleKind,
    UnsupportedKind,
    config_field,
    config_fields,
)


@dataclass(frozen=True)
class _Kinds(Config):
    flag: bool = True
    count: int = field(default=3, metadata={"min": 1, "max": 10, "help": "how many"})
    scale: float = 0.5
    name: str = "a b"
    mode: str = field(default="x", metadata={"choices": ("x", "y")})
    level: Literal["low", "high"] = "low"
    layers: tuple[int, ...] | None = None
    ids: tuple[int, ...] = ()
    words: tuple[str, ...] = ("add", "sub")
    weights: tuple[float, ...] = ()
    limit: int | None = None
    ratio: float | None = None
    label: str | None = None
    pick: str | None = field(default=None, metadata={"choices": ("p", "q")})
    odd: list[int] = field(default_factory=list)


def _field(name: str) -> ConfigField:
    return config_field(_Kinds, name)


# ------------------------------------------------------------------------- the registry round trip
def _other_value(f: ConfigField, value: Any) -> Any:
    """Another valid value for field ``f`` (from its choices, min/max or type), or ``value``."""
    kind = f.kind.inner if isinstance(f.kind, OptionalKind) else f.kind
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if isinstance(kind, ChoiceKind):
        others = [o for o in kind.options if o != value]
        return others[0] if others else value
    if kind.name == "bool":
        return not value
    if kind.name == "int":
        if value is None:  # an optional int left unset: its lowest allowed value
            return low if low is not None else 0
        return value + 1 if high is None or value + 1 <= high else value - 1
    if kind.name == "float":  # a third of the way in: a float whose text form must be exact
        if low is not None and high is not None:
            return low + (high - low) / 3
        return (value + 1 / 3) if low is None or value + 1 / 3 >= low else low + 1 / 3
    if kind.name == "str":
        return f'{value} it\'s a=b "c"'
    if isinstance(kind, TupleKind):
        if isinstance(f.kind, OptionalKind) and value is not None:
            return None
        if "items" in f.metadata:  # a tuple of names from a fixed set
            return tuple(f.metadata["items"][:1])
        return (0, 2) if kind.item.name == "int" else ("x", "y z")
    return value


def _changed(config: Config) -> Config:
    changes = {f.name: _other_value(f, getattr(config, f.name)) for f in config_fields(type(config))}
    return dataclasses.replace(config, **changes)


def _through_the_cli(name: str, config: Config) -> Config:
    result_like = SimpleNamespace(probe=name, model_id="some-model", prompt="a <b>prompt</b>", config=config)
    words = shlex.split(rerun_command(result_like))
    assert words[:3] == ["lenslab", "run", name]
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "--config"]
    return build_config(get_probe(name), pairs)


@pytest.mark.parametrize("name", sorted(registered_probes()))
def test_every_probe_config_round_trips_through_the_rerun_command(name):
    default = get_probe(name).default_config()
    assert _through_the_cli(name, default) == default
    changed = _changed(default)
    changed.check_numbers()  # the changes are valid settings
    unchanged = [
        f.name for f in config_fields(type(default)) if getattr(changed, f.name) == getattr(default, f.name)
    ]
    assert not unchanged, f"{name}: no other valid value found for {unchanged}"
    back = _through_the_cli(name, changed)
    assert back == changed
    for f in config_fields(type(changed)):
        assert type(getattr(back, f.name)) is type(getattr(changed, f.name)), f.name


@pytest.mark.parametrize("name", sorted(registered_probes()))
def test_every_probe_field_has_a_supported_kind(name):
    fields = config_fields(registered_probes()[name].config_cls)
    assert not [f.name for f in fields if isinstance(f.kind, UnsupportedKind)]


# --------------------------------------------------------------------------------- kind by kind
@pytest.mark.parametrize(
    "name, text, value",
    [
        ("flag", "true", True),
        ("flag", "No", False),
        ("flag", "1", True),
        ("flag", " FALSE ", False),
        ("count", "7", 7),
        ("count", " -2 ", -2),
        ("scale", "1e-06", 1e-06),
        ("scale", "2", 2.0),
        ("name", " spaced = kept ", " spaced = kept "),
        ("mode", "y", "y"),
        ("level", "high", "high"),
        ("layers", "1, 3,", (1, 3)),
        ("layers", "none", None),
        ("layers", "ALL", None),
        ("layers", "", None),
        ("layers", "()", ()),
        ("ids", "", ()),
        ("ids", "()", ()),
        ("ids", "4", (4,)),
        ("words", "add, mul", ("add", "mul")),
        ("weights", "0.5,1e3", (0.5, 1000.0)),
        ("limit", "none", None),
        ("limit", "12", 12),
        ("ratio", "0.25", 0.25),
        ("label", "hello", "hello"),
        ("label", "", None),
        ("pick", "q", "q"),
        ("pick", "none", None),
    ],
)
def test_parse(name, text, value):
    parsed = parse_config_value(_Kinds, name, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "name, text",
    [
        ("flag", "maybe"),
        ("count", "seven"),
        ("count", "2.5"),
        ("scale", "half"),
        ("mode", "z"),
        ("level", "medium"),
        ("layers", "1,x"),
        ("ids", "1;2"),
        ("weights", "a"),
        ("limit", "many"),
        ("pick", "r"),
        ("odd", "1,2"),
    ],
)
def test_parse_errors_name_the_field(name, text):
    with pytest.raises(ValueError, match=rf"setting {name}: cannot read {text!r}"):
        parse_config_value(_Kinds, name, text)


def test_unknown_setting_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown setting 'nope'; settings: \['count'"):
        parse_config_value(_Kinds, "nope", "1")


@pytest.mark.parametrize(
    "name, values",
    [
        ("flag", [True, False]),
        ("count", [0, -1, 10**12]),
        ("scale", [0.1, 1 / 3, 1e-300, -2.5, 3.0, 1e16]),
        ("name", ["", " x ", "none", "a,b", 'it\'s "q" = 1']),
        ("mode", ["x", "y"]),
        ("level", ["low", "high"]),
        ("layers", [None, (), (0,), (1, 3, 17)]),
        ("ids", [(), (5, -1)]),
        ("words", [(), ("add",), ("a b", "c")]),
        ("weights", [(), (0.1, 1 / 3)]),
        ("limit", [None, 0, 5]),
        ("ratio", [None, 0.1]),
        ("label", [None, "text"]),
        ("pick", [None, "p"]),
    ],
)
def test_format_then_parse_round_trips(name, values):
    f = _field(name)
    for value in values:
        back = f.parse(f.format(value))
        assert back == value and type(back) is type(value), (name, value, f.format(value))


def test_an_int_in_a_float_field_reads_back_as_the_equal_float():
    assert _field("scale").parse(_field("scale").format(3)) == 3.0


@pytest.mark.parametrize(
    "name, value",
    [("words", ("a,b",)), ("words", (" padded",)), ("words", ("",)), ("label", "none"), ("label", "")],
)
def test_format_refuses_what_would_read_back_differently(name, value):
    with pytest.raises(ValueError, match=rf"setting {name}:"):
        _field(name).format(value)


def test_unsupported_kinds_are_not_settable_from_text():
    with pytest.raises(ValueError, match="setting odd"):
        _field("odd").format([1])


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("count", True, "count must be int, got the boolean True"),
        ("count", 2.5, "count must be int, got float 2.5"),
        ("count", "3", "count must be int, got str '3'"),
        ("scale", False, "scale must be float, got the boolean"),
        ("scale", "1", "scale must be float, got str"),
        ("flag", 1, "flag must be bool, got int 1"),
        ("mode", 1, "mode must be str, got int"),
        ("level", "medium", "level must be Literal"),
        ("layers", (1, "2"), r"layers must be tuple\[int, ...\] \| None, got tuple"),
        ("layers", [1, 2], "layers must be .*, got list"),
        ("words", ("a", 1), r"words must be tuple\[str, ...\]"),
        ("limit", 1.5, r"limit must be int \| None"),
    ],
)
def test_check_rejects_wrong_types_naming_the_field(name, value, message):
    with pytest.raises(ValueError, match=message):
        _field(name).check(value)
    with pytest.raises(ValueError, match=message):
        _Kinds(**{name: value}).check_types()


@pytest.mark.parametrize(
    "name, value",
    [("scale", 2), ("layers", None), ("layers", (1, 2)), ("limit", None), ("ratio", 3), ("flag", False)],
)
def test_check_accepts_well_typed_values(name, value):
    _field(name).check(value)


def test_widget_specs():
    specs = {f.name: f.widget(getattr(_Kinds(), f.name)) for f in config_fields(_Kinds)}
    assert specs["flag"].kind == "checkbox" and specs["flag"].value is True
    count = specs["count"]
    assert (count.kind, count.min, count.max, count.help, count.label) == ("int", 1, 10, "how many", "count")
    assert specs["scale"].kind == "float"
    assert specs["name"].kind == "text" and specs["name"].text == "a b" and not specs["name"].optional
    assert specs["mode"].kind == "select" and specs["mode"].options == ("x", "y")
    assert specs["level"].kind == "select" and specs["level"].options == ("low", "high")
    assert specs["layers"].kind == "int_list" and specs["layers"].optional and specs["layers"].text == ""
    assert _field("layers").widget((1, 3)).text == "1, 3"
    assert specs["words"].kind == "text_list" and specs["words"].text == "add, sub"
    assert specs["limit"].kind == "text" and specs["limit"].optional
    assert specs["pick"].kind == "select" and specs["pick"].options == (None, "p", "q")
    assert specs["odd"].kind == "fixed"
    for name in ("flag", "count", "mode", "layers", "words", "limit"):  # what the form reads back
        f, spec = _field(name), specs[name]
        if spec.kind in ("text", "text_list", "int_list"):
            assert f.parse(spec.text) == getattr(_Kinds(), name)
