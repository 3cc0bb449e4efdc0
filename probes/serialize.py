"""Lossless conversion between result/config dataclasses and plain data (JSON + numpy arrays).

Results are frozen dataclasses of numpy arrays, strings and numbers. ``to_plain`` turns one into
JSON-able values with every array replaced by a reference into a flat ``arrays`` dict, and
``from_plain`` rebuilds it from the type hints of the dataclass, so a report reloads bit-exactly
and no pickle is ever involved.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

_ARRAY_KEY = "__array__"


def to_plain(obj: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """JSON-able view of ``obj``; numpy arrays are moved into ``arrays`` under ``prefix`` keys."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{prefix}: object arrays cannot be saved without pickle")
        arrays[prefix] = obj
        return {_ARRAY_KEY: prefix}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_plain(getattr(obj, f.name), arrays, f"{prefix}.{f.name}")
            for f in dataclasses.fields(obj)
        }
    if isinstance(obj, dict):
        return {str(k): to_plain(v, arrays, f"{prefix}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v, arrays, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"{prefix}: cannot save a value of type {type(obj).__name__}")


def from_plain(tp: Any, data: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild a value of type ``tp`` from :func:`to_plain` output (inverse, bit-exact)."""
    if isinstance(data, dict) and set(data) == {_ARRAY_KEY}:
        key = data[_ARRAY_KEY]
        if key not in arrays:
            raise ValueError(f"report is missing array {key!r} (truncated or corrupt arrays.npz)")
        return arrays[key]
    if tp is Any or tp is None:
        return data
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return from_plain(options[0], data, arrays) if len(options) == 1 else data
    if origin is typing.Literal:
        return data
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping for {tp.__name__}, got {type(data).__name__}")
        hints = get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown field(s) for {tp.__name__}: {sorted(unknown)}")
        return tp(**{k: from_plain(hints[k], v, arrays) for k, v in data.items()})
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v, arrays) for v in data)
        return tuple(from_plain(a, v, arrays) for a, v in zip(args, data, strict=False))
    if origin is list:
        (arg,) = get_args(tp) or (Any,)
        return [from_plain(arg, v, arrays) for v in data]
    if origin is dict:
        _, val_tp = get_args(tp) or (Any, Any)
        return {k: from_plain(val_tp, v, arrays) for k, v in data.items()}
    if tp is float and isinstance(data, int | float):
        return float(data)
    return data
