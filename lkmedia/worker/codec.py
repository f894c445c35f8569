"""Dataclasses to JSON and back, for job specs and the messages between a service and its
job processes.

A dataclass becomes an object of its fields; bytes become ``{"@b": base64}``; a protobuf
message becomes ``{"@pb": full name, "b": base64 of its bytes}`` and is read back with
the class registered under that name (the module that defines it must be imported);
lists, tuples, dicts with string keys and the JSON scalars pass through. Reading a
dataclass goes by its field types, so nested dataclasses come back as themselves.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from typing import Any, TypeVar, cast

from google.protobuf import message as pb_message
from google.protobuf import symbol_database

T = TypeVar("T")


class CodecError(ValueError):
    """A value that cannot be encoded, or a document that does not fit its type."""


def encode(value: Any) -> Any:
    """``value`` as plain JSON data."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return {"@b": base64.b64encode(value).decode()}
    if isinstance(value, pb_message.Message):
        return {"@pb": value.DESCRIPTOR.full_name, "b": base64.b64encode(value.SerializeToString()).decode()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CodecError(f"dict keys must be strings: {list(value)[:3]!r}")
        return {k: encode(v) for k, v in value.items()}
    raise CodecError(f"cannot encode a {type(value).__name__}")


def _tagged(data: Any) -> Any:
    """A tagged value (bytes, protobuf) read back; anything else as it is."""
    if isinstance(data, dict):
        if "@b" in data and len(data) == 1:
            return base64.b64decode(data["@b"])
        if "@pb" in data:
            try:
                cls = symbol_database.Default().GetSymbol(data["@pb"])
            except KeyError:
                raise CodecError(f"unknown protobuf message {data['@pb']!r} (is its module imported?)") from None
            return cls.FromString(base64.b64decode(data["b"]))
        return {k: _tagged(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_tagged(v) for v in data]
    return data


def decode(cls: type[T], data: Any) -> T:
    """``data`` (from ``encode``) as a ``cls``."""
    return cast(T, _as(cls, data))


def _as(tp: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _as(options[0], data) if len(options) == 1 else _tagged(data)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, dict):
            raise CodecError(f"{tp.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kw = {f.name: _as(hints.get(f.name, Any), data[f.name])
              for f in dataclasses.fields(tp) if f.init and f.name in data}
        return tp(**kw)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items: list[Any] = [_as(item, v) for v in data]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        args = typing.get_args(tp)
        val = args[1] if len(args) == 2 else Any
        return {k: _as(val, v) for k, v in data.items()}
    if tp is bytes:
        return _tagged(data)
    return _tagged(data)


def dumps(value: Any) -> str:
    return json.dumps(encode(value), separators=(",", ":"))


def loads(cls: type[T], text: str | bytes) -> T:
    return decode(cls, json.loads(text))
