"""The typed config to and from JSON-able values, field by field from the dataclasses' types:
the lab state stores the value the parser built, and the data plane gets it back unchanged."""

from __future__ import annotations

import dataclasses
import types
import typing
from types import MappingProxyType
from typing import Any, Mapping


def frozen_map(d: Mapping | None = None) -> Mapping:
    """A read-only mapping: what the typed config holds for a table."""
    return MappingProxyType(dict(d or {}))


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: encode(v) for k, v in value.items()}
    return value


def decode(tp: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: decode(hints[f.name], value[f.name])
                     for f in dataclasses.fields(tp) if f.name in value})
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return decode(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in value)
        return tuple(decode(a, v) for a, v in zip(args, value))
    if origin in (Mapping, typing.Mapping, dict) or tp is Mapping:
        return frozen_map({k: decode(args[1], v) for k, v in value.items()} if args else value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


_HINTS: dict[type, dict] = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]
