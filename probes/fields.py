"""Config field kinds in one table: parse from text, format back, type-check, describe a widget.

Every config field has a kind chosen from its type hint and metadata by :func:`kind_of`: the CLI
parses ``key=value`` with it, the re-run command in a report formats with it (so
``parse(format(v)) == v``), :meth:`Config.check_types` checks values with it, and the app renders
its form from the :class:`WidgetSpec` it describes. Nothing here imports streamlit: the widget
is a description, the streamlit calls stay in ``app/components.py``.

=========  ============================  ================================  ==========
kind       hint (and metadata)           text                              widget
=========  ============================  ================================  ==========
bool       ``bool``                      true/false, yes/no, 1/0           checkbox
int        ``int``                       ``7``                             int
float      ``float`` (an int is fine)    ``0.25``, ``1e-06``               float
str        ``str``                       the text as is                    text
choice     ``choices`` metadata or       one of the options                select
           ``Literal[...]``
tuple      ``tuple[X, ...]``             ``1,3`` (``()``: empty)           int_list /
                                                                           text_list
optional   ``X | None``                  X's, or none / all / empty        X's
=========  ============================  ================================  ==========
"""

# ruff: noqa: D102  (the kinds override Kind's documented methods; their docstrings would repeat it)

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

import numpy as np
import typeguard

ALL_ITEMS = typeguard.CollectionCheckStrategy.ALL_ITEMS
NONE_WORDS = ("", "none", "all")  # how an optional field is set to None from text
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")

WidgetKind = Literal["select", "checkbox", "int", "float", "text", "int_list", "text_list", "fixed"]


@dataclass(frozen=True)
class WidgetSpec:
    """What the app should render for one field, starting at ``value``.

    ``value`` is the start value (a bool for a checkbox, a number, one of ``options``, a tuple of
    ints); ``text`` is the same value as editable text, for text inputs, which the app reads
    back with the field's :meth:`ConfigField.parse`. ``optional``: empty text means None;
    otherwise an empty text input keeps the start value (str) or means the empty tuple (lists).
    """

    kind: WidgetKind
    label: str
    value: Any
    text: str = ""
    help: str | None = None
    options: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    optional: bool = False


class Kind:
    """One kind of field: how its values read from text, write back, and type-check."""

    name: ClassVar[str]
    widget: ClassVar[WidgetKind]

    @classmethod
    def build(cls, hint: Any, metadata: Mapping[str, Any]) -> Kind | None:
        """The kind for ``hint`` (and metadata), or None if the hint is not of this kind."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """The value ``text`` denotes; ``ValueError`` if it denotes none."""
        raise NotImplementedError

    def format(self, value: Any) -> str:
        """Text that :meth:`parse` reads back as ``value``; ``ValueError`` if there is none."""
        return str(value)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this kind's type."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the text should look like, for error messages."""
        return self.name

    def edit_text(self, value: Any) -> str:
        """``value`` as a text input starts at (a form, not a command line: ``1, 3``, not ``1,3``)."""
        return self.format(value)


class ScalarKind(Kind):
    """A kind for one plain Python type: chosen when the hint is that type, parsed by calling it."""

    python_type: ClassVar[type]

    @classmethod
    def build(cls, hint: Any, metadata: Mapping[str, Any]) -> Kind | None:
        return cls() if hint is cls.python_type else None

    def parse(self, text: str) -> Any:
        return self.python_type(text)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.python_type) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class BoolKind(ScalarKind):
    """``bool``: true/false, yes/no, 1/0 (any case)."""

    name = "bool"
    widget = "checkbox"
    python_type = bool

    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(text)
        return word in TRUE_WORDS

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class IntKind(ScalarKind):
    """``int``; a boolean is not an int here (``True`` for a count is a bug, not a 1)."""

    name = "int"
    widget = "int"
    python_type = int


@dataclass(frozen=True)
class FloatKind(ScalarKind):
    """``float``; an int is a fine float, a boolean is not."""

    name = "float"
    widget = "float"
    python_type = float

    def format(self, value: Any) -> str:
        return repr(float(value))  # shortest text that reads back as the same float

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class StrKind(ScalarKind):
    """``str``: the text as is (spaces kept)."""

    name = "str"
    widget = "text"
    python_type = str

    def parse(self, text: str) -> str:
        return text


SCALARS: tuple[type[Kind], ...] = (BoolKind, IntKind, FloatKind, StrKind)


def _scalar(hint: Any) -> Kind | None:
    return next((k for k in (c.build(hint, {}) for c in SCALARS) if k is not None), None)


@dataclass(frozen=True)
class ChoiceKind(Kind):
    """A value from fixed options: ``choices`` metadata on a scalar, or a ``Literal``."""

    name = "choice"
    widget = "select"
    options: tuple[Any, ...]
    base: Kind | None  # the scalar kind under ``choices``; None for a Literal (typeguard checks it)
    hint: Any = None

    @classmethod
    def build(cls, hint: Any, metadata: Mapping[str, Any]) -> Kind | None:
        if get_origin(hint) is typing.Literal:
            return cls(tuple(get_args(hint)), None, hint)
        choices, base = metadata.get("choices"), _scalar(hint)
        return cls(tuple(choices), base, hint) if choices is not None and base is not None else None

    def parse(self, text: str) -> Any:
        for option in self.options:
            if str(option) == text.strip():
                return option
        raise ValueError(text)

    def accepts(self, value: Any) -> bool:
        if self.base is not None:
            return self.base.accepts(value)  # membership is check_numbers' business
        return _typeguard_accepts(value, self.hint)

    def describe(self) -> str:
        return f"one of {[str(o) for o in self.options]}"


@dataclass(frozen=True)
class TupleKind(Kind):
    """``tuple[X, ...]`` of a scalar X: items separated by commas; ``()`` (or nothing) is empty.

    Items are stripped, so a str item cannot hold a comma or surrounding spaces (format refuses it).
    """

    name = "tuple"
    item: Kind
    hint: Any

    @classmethod
    def build(cls, hint: Any, metadata: Mapping[str, Any]) -> Kind | None:
        args = get_args(hint)
        if get_origin(hint) is not tuple or len(args) != 2 or args[1] is not Ellipsis:
            return None
        item = _scalar(args[0])
        return cls(item, hint) if item is not None else None

    @property
    def widget(self) -> WidgetKind:  # type: ignore[override]
        """int_list for ints (the app may offer layer pickers), text_list for the rest."""
        return "int_list" if isinstance(self.item, IntKind) else "text_list"

    def parse(self, text: str) -> tuple[Any, ...]:
        if text.strip() in ("", "()"):
            return ()
        return tuple(self.item.parse(part.strip()) for part in text.split(",") if part.strip())

    def format(self, value: Any) -> str:
        if not value:
            return "()"
        parts = [self.item.format(v) for v in value]
        bad = [p for p in parts if "," in p or p != p.strip() or not p]
        if bad:
            raise ValueError(f"item {bad[0]!r} cannot be written in a comma-separated list")
        return ",".join(parts)

    def accepts(self, value: Any) -> bool:
        return _typeguard_accepts(value, self.hint)

    def describe(self) -> str:
        return f"{self.item.describe()} values separated by commas"

    def edit_text(self, value: Any) -> str:
        return ", ".join(self.item.format(v) for v in value or ())


@dataclass(frozen=True)
class OptionalKind(Kind):
    """``X | None``: X's text, or none / all / empty for None."""

    name = "optional"
    inner: Kind

    @classmethod
    def build(cls, hint: Any, metadata: Mapping[str, Any]) -> Kind | None:
        args = get_args(hint)
        if get_origin(hint) not in (typing.Union, types.UnionType) or type(None) not in args:
            return None
        rest = [a for a in args if a is not type(None)]
        inner = kind_of(rest[0], metadata) if len(rest) == 1 else None
        return cls(inner) if inner is not None and not isinstance(inner, UnsupportedKind) else None

    @property
    def widget(self) -> WidgetKind:  # type: ignore[override]
        """The inner kind's list or select widget; a text input for scalars (empty: None)."""
        return self.inner.widget if self.inner.widget in ("int_list", "text_list", "select") else "text"

    def parse(self, text: str) -> Any:
        return None if text.strip().lower() in NONE_WORDS else self.inner.parse(text)

    def format(self, value: Any) -> str:
        if value is None:
            return "none"
        text = self.inner.format(value)
        if text.strip().lower() in NONE_WORDS:
            raise ValueError(f"{value!r} would read back as None")
        return text

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def describe(self) -> str:
        return f"{self.inner.describe()}, or none"

    def edit_text(self, value: Any) -> str:
        return "" if value is None else self.inner.edit_text(value)


@dataclass(frozen=True)
class UnsupportedKind(Kind):
    """Any other hint: shown but not editable, checked by typeguard, not settable from text."""

    name = "unsupported"
    widget = "fixed"
    hint: Any

    @classmethod
    def build(cls, hint: Any, metadata: Mapping[str, Any]) -> Kind | None:
        return cls(hint)

    def parse(self, text: str) -> Any:
        raise ValueError(f"{type_name(self.hint)} cannot be set from text")

    def format(self, value: Any) -> str:
        raise ValueError(f"{type_name(self.hint)} cannot be written as text")

    def accepts(self, value: Any) -> bool:
        return _typeguard_accepts(value, self.hint)


# The table: the first kind whose ``build`` matches a field's hint and metadata is its kind.
KINDS: tuple[type[Kind], ...] = (
    OptionalKind,
    ChoiceKind,
    BoolKind,
    IntKind,
    FloatKind,
    StrKind,
    TupleKind,
    UnsupportedKind,
)


def kind_of(hint: Any, metadata: Mapping[str, Any] | None = None) -> Kind:
    """The kind of a field with type ``hint`` and field ``metadata`` (see :data:`KINDS`)."""
    for cls in KINDS:
        kind = cls.build(hint, metadata or {})
        if kind is not None:
            return kind
    raise AssertionError("UnsupportedKind matches every hint")  # pragma: no cover


def _typeguard_accepts(value: Any, hint: Any) -> bool:
    try:
        typeguard.check_type(value, hint, collection_check_strategy=ALL_ITEMS)
    except typeguard.TypeCheckError:
        return False
    return True


def type_name(hint: Any) -> str:
    """``int``, ``tuple[int, ...]``, ``str | None`` — how a type reads in an error message."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def range_text(low: float | None, high: float | None) -> str:
    """``between 1 and 50``, ``≥ 1``, ``≤ 50`` or ``any finite number``: a field's allowed range."""
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    if low is not None:
        return f"≥ {low:g}"
    if high is not None:
        return f"≤ {high:g}"
    return "any finite number"


def range_problem(name: str, value: Any, low: float | None, high: float | None) -> str | None:
    """The one message for a number outside its range (or not finite), naming field and range; else None.

    Every boundary (config checks, the app's number fields) words it the same way:
    ``k must be between 1 and 50, got -5``.
    """
    if value is None:
        return f"{name} is empty: enter a number {range_text(low, high)}"
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return f"{name} must be a number {range_text(low, high)}, got {value!r}"
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return f"{name} must be a finite number {range_text(low, high)}, got {value}"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{name} must be {range_text(low, high)}, got {value:g}"
    return None


@dataclass(frozen=True)
class ConfigField:
    """One field of a config class with its kind; errors name the field."""

    name: str
    hint: Any
    kind: Kind
    metadata: Mapping[str, Any]

    @property
    def hidden(self) -> bool:
        """Fields the app does not render (set elsewhere on the page)."""
        return bool(self.metadata.get("hidden"))

    def parse(self, text: str) -> Any:
        """The value ``text`` denotes for this field (``ValueError`` naming the field)."""
        try:
            return self.kind.parse(text)
        except ValueError as exc:
            raise ValueError(f"setting {self.name}: cannot read {text!r} as {self.kind.describe()}") from exc

    def format(self, value: Any) -> str:
        """Text that :meth:`parse` reads back as ``value`` (``ValueError`` if none exists)."""
        try:
            return self.kind.format(value)
        except ValueError as exc:
            raise ValueError(f"setting {self.name}: {exc}") from exc

    def check(self, value: Any) -> None:
        """``ValueError`` if ``value`` has the wrong type (``"3"`` or ``True`` for an int, 2.5 for an int)."""
        if self.kind.accepts(value):
            return
        if isinstance(value, bool | np.bool_):
            raise ValueError(f"{self.name} must be {type_name(self.hint)}, got the boolean {value!r}")
        raise ValueError(f"{self.name} must be {type_name(self.hint)}, got {type(value).__name__} {value!r}")

    def widget(self, start: Any) -> WidgetSpec:
        """The widget for this field, starting at ``start``."""
        kind = self.kind
        options = kind.options if isinstance(kind, ChoiceKind) else ()
        if isinstance(kind, OptionalKind) and isinstance(kind.inner, ChoiceKind):
            options = (None, *kind.inner.options)
        low, high = self.metadata.get("min"), self.metadata.get("max")
        return WidgetSpec(
            kind=kind.widget,
            label=self.name.replace("_", " "),
            value=start,
            text=kind.edit_text(start) if kind.widget in ("text", "text_list", "int_list") else "",
            help=self.metadata.get("help"),
            options=options,
            min=low,
            max=high,
            optional=isinstance(kind, OptionalKind),
        )


@functools.cache
def config_fields(config_cls: type) -> tuple[ConfigField, ...]:
    """The fields of a config dataclass, in order, each with its kind."""
    hints = get_type_hints(config_cls)
    return tuple(
        ConfigField(f.name, hints[f.name], kind_of(hints[f.name], f.metadata), f.metadata)
        for f in dataclasses.fields(config_cls)
    )


def config_field(config_cls: type, name: str) -> ConfigField:
    """The field ``name`` of ``config_cls``; unknown names list the known ones."""
    found = {f.name: f for f in config_fields(config_cls)}
    if name not in found:
        raise ValueError(f"unknown setting {name!r}; settings: {sorted(found)}")
    return found[name]
