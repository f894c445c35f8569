"""AV1 over RTP back to the temporal units a muxer and a decoder take.

An RTP packet of AV1 (the AOM's "RTP Payload Format For AV1", section 4) is an aggregation
header (Z: its first OBU element continues the previous packet's last; Y: its last one goes
on in the next packet; W: how many elements, 0 when each has a length; N: the first packet
of a coded video sequence) and OBU elements, each a LEB128 length and the OBU, but for the
last when W is set. The OBUs travel without their size fields and without temporal
delimiters. ``temporal_unit`` joins one picture's packets into what MP4 and Matroska store
(the "low overhead bitstream format": every OBU with its size field, no temporal
delimiter); ``sequence_header`` finds the sequence header OBU a muxer's av1C is made of.
"""
from __future__ import annotations

OBU_SEQUENCE_HEADER = 1
OBU_TEMPORAL_DELIMITER = 2
OBU_TILE_LIST = 8
_HAS_SIZE = 0x02
_EXTENSION = 0x04


def read_leb128(data: bytes, pos: int) -> tuple[int, int]:
    """(the value, where it ends) of the LEB128 number at ``pos``."""
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            raise ValueError("AV1: a length runs past the end of its packet")
        b = data[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos + i + 1
    raise ValueError("AV1: a length is longer than 8 bytes")


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def aggregation(payload: bytes) -> tuple[bool, bool]:
    """(starts a temporal unit's data, starts a coded video sequence) of one packet: its
    first element is not the continuation of an OBU (Z clear); N set. Raises ValueError
    for a payload too short to hold an element."""
    if len(payload) < 2:
        raise ValueError("AV1 payload is too short")
    return not payload[0] & 0x80, bool(payload[0] & 0x08)


def _elements(payload: bytes) -> list[bytes]:
    count = (payload[0] >> 4) & 0x03
    pos, out = 1, list[bytes]()
    while pos < len(payload):
        if count and len(out) == count - 1:
            size = len(payload) - pos  # the last of W elements: no length
        else:
            size, pos = read_leb128(payload, pos)
        if pos + size > len(payload):
            raise ValueError("AV1: an OBU element runs past the end of its packet")
        out.append(payload[pos:pos + size])
        pos += size
    return out


def _with_size(obu: bytes) -> bytes:
    """The OBU with its size field (as it is when it already has one)."""
    header = obu[0]
    if header & _HAS_SIZE:
        return obu
    n = 2 if header & _EXTENSION else 1
    return bytes([header | _HAS_SIZE]) + obu[1:n] + leb128(len(obu) - n) + obu[n:]


def temporal_unit(payloads: list[bytes]) -> bytes:
    """One picture's RTP payloads, in order, as a temporal unit (see module doc). An OBU
    whose beginning is missing (a continuation with nothing before it) is left out."""
    obus: list[bytes] = []
    partial: bytes | None = None
    for p in payloads:
        if len(p) < 2:
            raise ValueError("AV1 payload is too short")
        elems = _elements(p)
        if p[0] & 0x80 and elems:  # Z: the first element ends the OBU the last packet began
            first = elems.pop(0)
            if partial is not None:
                elems.insert(0, partial + first)
        partial = elems.pop() if p[0] & 0x40 and elems else None  # Y: goes on in the next packet
        obus += elems
    out = []
    for obu in obus:
        if obu and (obu[0] >> 3) & 0x0F not in (OBU_TEMPORAL_DELIMITER, OBU_TILE_LIST):
            out.append(_with_size(obu))
    return b"".join(out)


def sized_obus(tu: bytes) -> list[tuple[int, bytes]]:
    """(type, the whole OBU) of each OBU of a temporal unit whose OBUs have size fields."""
    out, pos = [], 0
    while pos < len(tu):
        header = tu[pos]
        n = 2 if header & _EXTENSION else 1
        if not header & _HAS_SIZE:
            raise ValueError("AV1: an OBU without a size field in a temporal unit")
        size, start = read_leb128(tu, pos + n)
        out.append(((header >> 3) & 0x0F, tu[pos:start + size]))
        pos = start + size
    return out


def sequence_header(tu: bytes) -> bytes | None:
    """The sequence header OBU of a temporal unit (OBUs with size fields), if it has one."""
    try:
        return next((obu for kind, obu in sized_obus(tu) if kind == OBU_SEQUENCE_HEADER), None)
    except ValueError:
        return None


def without_delimiters(tu: bytes) -> bytes:
    """A temporal unit as an encoder or an IVF file gives it (OBUs with size fields) without
    its temporal delimiter: what ``temporal_unit`` makes of the same picture sent over RTP."""
    return b"".join(obu for kind, obu in sized_obus(tu) if kind != OBU_TEMPORAL_DELIMITER)
