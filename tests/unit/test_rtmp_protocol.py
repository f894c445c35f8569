"""The RTMP protocol pieces on crafted bytes: AMF0, the chunk stream (all four header
formats, long chunk stream ids, extended timestamps, Set Chunk Size, Abort, the bounds)
and the FLV tags media messages become."""
from __future__ import annotations

import asyncio
import random
import struct

import pytest

from lkmedia.rtmp import amf0
from lkmedia.rtmp.chunks import (
    ABORT,
    AUDIO,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkReader,
    ChunkWriter,
    Message,
    RtmpProtocolError,
    describe_first_byte,
)
from lkmedia.rtmp.flv import HEADER, FlvTag, script_data, split_aggregate


# -- AMF0 -------------------------------------------------------------------------------
def test_amf0_round_trip() -> None:
    meta = amf0.EcmaArray(width=1280.0, height=720.0, videocodecid=7.0, encoder="Lavf", stereo=True)
    values = ["connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "nested": {"a": [1.0, "x", None]}},
              None, meta, "é" * 10, "L" * 70000]
    data = amf0.encode(*values)
    out = amf0.decode_all(data)
    assert out == values
    assert isinstance(out[4], amf0.EcmaArray) and not isinstance(out[2], amf0.EcmaArray)
    assert data[len(amf0.encode(*values[:6]))] == amf0.LONG_STRING


def test_amf0_reads_what_encoders_write() -> None:
    # a date, an undefined, and an ECMA array that ends without its end marker (some encoders)
    data = bytes([amf0.DATE]) + struct.pack(">d", 1.5e12) + b"\x00\x00" + bytes([amf0.UNDEFINED])
    data += bytes([amf0.ECMA_ARRAY]) + (1).to_bytes(4, "big") + b"\x00\x01k" + bytes([amf0.NUMBER]) + struct.pack(">d", 2)
    assert amf0.decode_all(data) == [1.5e12, None, {"k": 2.0}]


def _nested(depth: int) -> dict[str, object]:
    d: dict[str, object] = {}
    for _ in range(depth):
        d = {"a": d}
    return d


@pytest.mark.parametrize("data, words", [
    (b"\x02\x00\x05ab", "string cut short"),
    (b"\x00\x01\x02", "number cut short"),
    (b"\x11\x02", "type 0x11"),  # AMF3 switch
    (b"\x07\x00\x01", "type 0x07"),  # reference
    (b"\x02\x00\x02\xff\xfe", "not UTF-8"),
    (amf0.encode(_nested(40)), "nested deeper"),
    (b"\x0a\xff\xff\xff\xff", "array of"),
])
def test_amf0_refuses_what_it_cannot_read(data: bytes, words: str) -> None:
    with pytest.raises(amf0.AMFError, match=words):
        amf0.decode_all(data)


# -- chunk stream -----------------------------------------------------------------------
def _h0(csid: int, ts: int, length: int, type_id: int, sid: int = 1) -> bytes:
    ext = ts >= 0xFFFFFF
    return (_b(0, csid) + min(ts, 0xFFFFFF).to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id])
            + sid.to_bytes(4, "little") + (ts.to_bytes(4, "big") if ext else b""))


def _b(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([(fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


async def _read_all(data: bytes, **kw: int) -> list[Message]:
    sr = asyncio.StreamReader()
    sr.feed_data(data)
    sr.feed_eof()
    r = ChunkReader(sr, **kw)
    out = []
    while True:
        try:
            out.append(await r.read_message())
        except asyncio.IncompleteReadError:
            return out


async def test_all_header_formats_and_chunk_stream_ids() -> None:
    body = bytes(range(256)) + bytes(44)  # 300 bytes: three chunks at 128
    data = _h0(4, 1000, 300, VIDEO) + body[:128] + _b(3, 4) + body[128:256] + _b(3, 4) + body[256:]
    data += _b(1, 4) + (40).to_bytes(3, "big") + (10).to_bytes(3, "big") + bytes([AUDIO]) + b"a" * 10  # fmt 1
    data += _b(2, 4) + (20).to_bytes(3, "big") + b"b" * 10  # fmt 2: same length and type
    data += _b(3, 4) + b"c" * 10  # fmt 3 starting a message: the delta again
    data += _h0(100, 5, 3, AUDIO, sid=2) + b"xyz"  # two-byte chunk stream id
    data += _h0(400, 6, 2, VIDEO) + b"pq"  # three-byte chunk stream id
    msgs = await _read_all(data)
    assert [(m.type_id, m.timestamp, len(m.payload)) for m in msgs] == [
        (VIDEO, 1000, 300), (AUDIO, 1040, 10), (AUDIO, 1060, 10), (AUDIO, 1080, 10), (AUDIO, 5, 3), (VIDEO, 6, 2)]
    assert msgs[0].payload == body and msgs[0].stream_id == 1 and msgs[4].stream_id == 2
    assert msgs[3].payload == b"c" * 10


async def test_extended_timestamps_on_every_chunk() -> None:
    ts = 0x01234567  # beyond 24 bits: the 4-byte field follows each header, continuations included
    ext = ts.to_bytes(4, "big")
    data = _h0(6, ts, 200, VIDEO) + b"v" * 128 + _b(3, 6) + ext + b"v" * 72
    data += _b(2, 6) + b"\xff\xff\xff" + (0x01000000).to_bytes(4, "big") + b"w" * 128 + _b(3, 6) + (
        0x01000000).to_bytes(4, "big") + b"w" * 72  # an extended delta
    msgs = await _read_all(data)
    assert [(m.timestamp, m.payload[:1]) for m in msgs] == [(ts, b"v"), ((ts + 0x01000000) & 0xFFFFFFFF, b"w")]
    assert all(len(m.payload) == 200 for m in msgs)


async def test_format3_after_format0_repeats_its_timestamp_field() -> None:
    # FFmpeg's writer: after a format-0 header at T, a format-3 message header means "T again"
    data = _h0(5, 33, 1, AUDIO) + b"a" + _b(3, 5) + b"b" + _b(3, 5) + b"c"
    assert [m.timestamp for m in await _read_all(data)] == [33, 66, 99]


async def test_set_chunk_size_and_abort() -> None:
    data = _h0(2, 0, 4, SET_CHUNK_SIZE, sid=0) + (4096).to_bytes(4, "big")
    data += _h0(4, 0, 3000, VIDEO) + b"x" * 3000  # one chunk now
    data += _h0(7, 0, 300, AUDIO) + b"y" * 300  # not cut either
    data += _h0(2, 0, 4, SET_CHUNK_SIZE, sid=0) + (100).to_bytes(4, "big")
    data += _h0(7, 0, 300, AUDIO) + b"z" * 100  # started ...
    data += _h0(2, 0, 4, ABORT, sid=0) + (7).to_bytes(4, "big")  # ... and dropped
    data += _h0(7, 9, 5, AUDIO) + b"fresh"
    msgs = await _read_all(data)
    assert [(m.type_id, len(m.payload)) for m in msgs] == [(VIDEO, 3000), (AUDIO, 300), (AUDIO, 5)]
    assert msgs[-1].payload == b"fresh" and msgs[-1].timestamp == 9


async def test_writer_and_reader_agree() -> None:
    rnd = random.Random(7)

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, b: bytes) -> None:
            self.data += b

    sink = Sink()
    w = ChunkWriter(sink)  # type: ignore[arg-type]
    sent = []
    for i in range(200):
        csid = rnd.choice([3, 4, 63, 64, 319, 320, 5000])
        ts = rnd.choice([0, i * 33, 0xFFFFFE, 0xFFFFFF, 0x7FFFFFFF + i])
        payload = rnd.randbytes(rnd.choice([0, 1, 127, 128, 129, 5000]))
        if i == 100:
            w.set_chunk_size(1000)
        w.write(csid, rnd.choice([AUDIO, VIDEO]), i % 3, ts, payload)
        sent.append((ts & 0xFFFFFFFF, payload))
    msgs = [m for m in await _read_all(bytes(sink.data)) if m.type_id in (AUDIO, VIDEO)]
    assert [(m.timestamp, m.payload) for m in msgs] == sent


@pytest.mark.parametrize("data, words", [
    (_b(1, 4) + bytes(7), "starts with a format-1 header"),
    (_b(3, 9), "starts with a format-3 header"),
    (_h0(4, 0, 4, SET_CHUNK_SIZE, 0) + bytes(4), "Set Chunk Size to 0"),
    (_h0(4, 0, 2_000_000, VIDEO) + bytes(10), "2000000-byte message"),
    (_h0(4, 0, 300, VIDEO) + bytes(128) + _b(1, 4) + bytes(7), "in the middle of a message"),
])
async def test_protocol_errors_in_plain_words(data: bytes, words: str) -> None:
    with pytest.raises(RtmpProtocolError, match=words):
        await _read_all(data, max_message=1 << 20)


async def test_unfinished_messages_are_bounded() -> None:
    data = b"".join(_h0(c, 0, 1000, VIDEO) + bytes(128) for c in range(3, 20))  # 17 messages begun, none ended
    with pytest.raises(RtmpProtocolError, match="more than 1024 bytes of unfinished messages"):
        await _read_all(data, max_buffered=1024)
    with pytest.raises(RtmpProtocolError, match="more than 64 chunk streams"):
        await _read_all(b"".join(_h0(c, 0, 1, VIDEO) + b"x" for c in range(3, 80)))


def test_first_byte_reasons() -> None:
    assert "HTTP" in describe_first_byte(ord("G"))
    assert "TLS handshake" in describe_first_byte(0x16)
    assert "RTMPE" in describe_first_byte(6)
    assert "0x00" in describe_first_byte(0)


# -- FLV --------------------------------------------------------------------------------
def test_flv_tags() -> None:
    assert HEADER[:5] == b"FLV\x01\x05" and len(HEADER) == 13
    tag = FlvTag(VIDEO, 0x12345678, b"abc").encode()
    assert tag[0] == 9 and tag[1:4] == b"\x00\x00\x03" and tag[4:7] == b"\x34\x56\x78" and tag[7] == 0x12
    assert tag[11:14] == b"abc" and tag[-4:] == (14).to_bytes(4, "big")
    meta = amf0.encode("onMetaData", amf0.EcmaArray(width=2.0))
    assert script_data(amf0.encode("@setDataFrame") + meta) == meta
    assert script_data(meta) == meta


def test_aggregate_messages_split_and_retimed() -> None:
    inner = FlvTag(AUDIO, 5000, b"aa").encode() + FlvTag(VIDEO, 5040, b"vvv").encode()
    tags = split_aggregate(inner, 100)
    assert [(t.type, t.timestamp, t.data) for t in tags] == [(AUDIO, 100, b"aa"), (VIDEO, 140, b"vvv")]
    with pytest.raises(ValueError, match="runs past"):
        split_aggregate(inner[:-5], 0)
