"""AMF0 (Action Message Format 0), the encoding of RTMP commands and stream metadata.

Values map to Python as: number -> float, boolean -> bool, string and long string -> str,
object and ECMA array -> dict (ECMA arrays as ``EcmaArray``), null and undefined -> None,
strict array -> list, date -> float (ms since the epoch). A reference, typed object or a
switch to AMF3 is refused: publishers do not send them in the commands a server reads.
"""
from __future__ import annotations

import struct
from typing import Any

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED = 0x00, 0x01, 0x02, 0x03, 0x05, 0x06
ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING = 0x08, 0x09, 0x0A, 0x0B, 0x0C

MAX_DEPTH = 16  # nested objects: a command never needs more, and it bounds the recursion
MAX_ITEMS = 4096  # entries in one object or array


class AMFError(ValueError):
    """Bytes that are not the AMF0 a publisher sends (the message names what was wrong)."""


class EcmaArray(dict[str, Any]):
    """An AMF0 ECMA array (``onMetaData``'s body), kept apart from an object when encoding."""


def decode_all(data: bytes) -> list[Any]:
    """Every value in ``data`` (a command: name, transaction id, arguments)."""
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        value, pos = _value(data, pos, 0)
        out.append(value)
    return out


def _need(data: bytes, pos: int, n: int, what: str) -> None:
    if pos + n > len(data):
        raise AMFError(f"AMF0 {what} cut short at byte {pos}")


def _string(data: bytes, pos: int, size_bytes: int = 2) -> tuple[str, int]:
    _need(data, pos, size_bytes, "string length")
    n = int.from_bytes(data[pos:pos + size_bytes], "big")
    pos += size_bytes
    _need(data, pos, n, "string")
    try:
        return data[pos:pos + n].decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise AMFError(f"AMF0 string at byte {pos} is not UTF-8") from None


def _pairs(data: bytes, pos: int, depth: int, out: dict[str, Any]) -> int:
    for _ in range(MAX_ITEMS + 1):
        if pos >= len(data):  # some encoders end an ECMA array (onMetaData) without the end marker
            return pos
        key, pos = _string(data, pos)
        if key == "" and pos < len(data) and data[pos] == OBJECT_END:
            return pos + 1
        out[key], pos = _value(data, pos, depth + 1)
    raise AMFError(f"AMF0 object with more than {MAX_ITEMS} entries")


def _value(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise AMFError(f"AMF0 values nested deeper than {MAX_DEPTH}")
    _need(data, pos, 1, "type marker")
    marker, pos = data[pos], pos + 1
    if marker == NUMBER:
        _need(data, pos, 8, "number")
        return struct.unpack_from(">d", data, pos)[0], pos + 8
    if marker == BOOLEAN:
        _need(data, pos, 1, "boolean")
        return data[pos] != 0, pos + 1
    if marker == STRING:
        return _string(data, pos)
    if marker == LONG_STRING:
        return _string(data, pos, 4)
    if marker in (NULL, UNDEFINED):
        return None, pos
    if marker == OBJECT:
        obj: dict[str, Any] = {}
        return obj, _pairs(data, pos, depth, obj)
    if marker == ECMA_ARRAY:
        _need(data, pos, 4, "array count")
        arr = EcmaArray()
        return arr, _pairs(data, pos + 4, depth, arr)
    if marker == STRICT_ARRAY:
        _need(data, pos, 4, "array count")
        n = int.from_bytes(data[pos:pos + 4], "big")
        if n > MAX_ITEMS:
            raise AMFError(f"AMF0 array of {n} items (at most {MAX_ITEMS})")
        pos += 4
        items = []
        for _ in range(n):
            v, pos = _value(data, pos, depth + 1)
            items.append(v)
        return items, pos
    if marker == DATE:
        _need(data, pos, 10, "date")
        return struct.unpack_from(">d", data, pos)[0], pos + 10
    raise AMFError(f"AMF0 type 0x{marker:02x} at byte {pos - 1} is not supported")


def encode(*values: Any) -> bytes:
    """The AMF0 encoding of ``values``, one after the other (a command or a status)."""
    out = bytearray()
    for v in values:
        _encode(v, out)
    return bytes(out)


def _encode_str(s: str, out: bytearray) -> None:
    b = s.encode("utf-8")
    out += len(b).to_bytes(2, "big") + b


def _encode(v: Any, out: bytearray) -> None:
    if v is None:
        out.append(NULL)
    elif isinstance(v, bool):
        out += bytes((BOOLEAN, int(v)))
    elif isinstance(v, int | float):
        out.append(NUMBER)
        out += struct.pack(">d", float(v))
    elif isinstance(v, str):
        b = v.encode("utf-8")
        if len(b) > 0xFFFF:
            out.append(LONG_STRING)
            out += len(b).to_bytes(4, "big") + b
        else:
            out.append(STRING)
            out += len(b).to_bytes(2, "big") + b
    elif isinstance(v, dict):
        if isinstance(v, EcmaArray):
            out.append(ECMA_ARRAY)
            out += len(v).to_bytes(4, "big")
        else:
            out.append(OBJECT)
        for key, item in v.items():
            _encode_str(str(key), out)
            _encode(item, out)
        out += b"\x00\x00" + bytes((OBJECT_END,))
    elif isinstance(v, list | tuple):
        out.append(STRICT_ARRAY)
        out += len(v).to_bytes(4, "big")
        for item in v:
            _encode(item, out)
    else:
        raise TypeError(f"no AMF0 encoding for {type(v).__name__}")
