"""The RTMP handshake and chunk stream (Adobe's RTMP specification 1.0, §5.2-5.4).

``ChunkReader`` rebuilds messages from chunks: the four header formats (0: full, 1: no
stream id, 2: timestamp delta only, 3: none), chunk stream ids of one, two or three bytes,
extended timestamps (also on format-3 chunks that follow one, as FFmpeg and OBS write them),
Set Chunk Size and Abort. A format-3 chunk that starts a new message repeats the last
timestamp field of its chunk stream; after a format-0 header that field is the absolute
timestamp, as FFmpeg's writer means it. Memory is bounded: message bodies are collected as
they arrive, and all partial messages together may not exceed ``max_buffered``.

``ChunkWriter`` sends messages as a format-0 chunk and format-3 continuations.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3

# message types (§5.4, §7.1)
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0, AGGREGATE = 8, 9, 15, 17, 18, 20, 22

EXTENDED = 0xFFFFFF
MAX_CHUNK_STREAMS = 64


class RtmpProtocolError(Exception):
    """The peer sent something that is not RTMP, or broke its rules (plain words)."""


@dataclass(slots=True)
class Message:
    type_id: int
    stream_id: int
    timestamp: int  # milliseconds, 32 bits
    payload: bytes


@dataclass(slots=True)
class _ChunkStream:
    timestamp: int = 0
    field: int = 0  # the last timestamp field: absolute after format 0, else the delta
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    started: bool = False  # a format-0 header has been seen
    buf: bytearray | None = None  # the message being collected


def describe_first_byte(b: int) -> str:
    """Why a connection whose first byte is ``b`` is not RTMP, in plain words."""
    if b == 0x16:
        return "not RTMP: a TLS handshake on the plain RTMP port (use the RTMPS port for rtmps://)"
    if b in (6, 8, 9):
        return f"not RTMP: RTMPE (encrypted RTMP, version {b}) is not supported"
    if 0x20 <= b < 0x7F:
        return f"not RTMP: the connection starts with text ({chr(b)!r}...), e.g. an HTTP request"
    return f"not RTMP: the first byte is 0x{b:02x}, RTMP starts with version 3"


async def server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """C0+C1 -> S0+S1+S2 -> C2, the simple handshake every publisher accepts (a zero
    version field in S1 tells a client not to expect the digest scheme)."""
    c0 = await reader.readexactly(1)
    if c0[0] != RTMP_VERSION:
        raise RtmpProtocolError(describe_first_byte(c0[0]))
    c1 = await reader.readexactly(HANDSHAKE_SIZE)
    now = (int(time.monotonic() * 1000) & 0xFFFFFFFF).to_bytes(4, "big")
    s1 = now + bytes(4) + os.urandom(HANDSHAKE_SIZE - 8)
    s2 = c1[:4] + now + c1[8:]  # the client's time and random bytes, echoed
    writer.write(bytes((RTMP_VERSION,)) + s1 + s2)
    await writer.drain()
    await reader.readexactly(HANDSHAKE_SIZE)  # C2 echoes S1; clients differ in what they echo


class ChunkReader:
    def __init__(self, reader: asyncio.StreamReader, max_message: int = EXTENDED,
                 max_buffered: int = 32 << 20) -> None:
        self._r = reader
        self.chunk_size = 128
        self.bytes_read = 0
        self.max_message = max_message
        self.max_buffered = max_buffered
        self._buffered = 0
        self._streams: dict[int, _ChunkStream] = {}

    async def _read(self, n: int) -> bytes:
        data = await self._r.readexactly(n)
        self.bytes_read += n
        return data

    async def read_message(self) -> Message:
        """The next complete message (Set Chunk Size and Abort are applied here, not returned)."""
        while True:
            msg = await self._read_chunk()
            if msg is None:
                continue
            if msg.type_id == SET_CHUNK_SIZE:
                self._set_chunk_size(msg.payload)
            elif msg.type_id == ABORT:
                self._abort(msg.payload)
            else:
                return msg

    def _set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise RtmpProtocolError("Set Chunk Size message shorter than 4 bytes")
        size = int.from_bytes(payload[:4], "big")
        if not 1 <= size <= 0x7FFFFFFF:
            raise RtmpProtocolError(f"Set Chunk Size to {size}, outside 1..2^31-1")
        self.chunk_size = size

    def _abort(self, payload: bytes) -> None:
        if len(payload) >= 4:
            cs = self._streams.get(int.from_bytes(payload[:4], "big"))
            if cs is not None and cs.buf is not None:
                self._buffered -= len(cs.buf)
                cs.buf = None

    async def _basic_header(self) -> tuple[int, int]:
        b = (await self._read(1))[0]
        fmt, csid = b >> 6, b & 0x3F
        if csid == 0:
            csid = 64 + (await self._read(1))[0]
        elif csid == 1:
            x = await self._read(2)
            csid = 64 + x[0] + 256 * x[1]
        return fmt, csid

    def _stream(self, csid: int, fmt: int) -> _ChunkStream:
        cs = self._streams.get(csid)
        if cs is None:
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise RtmpProtocolError(f"more than {MAX_CHUNK_STREAMS} chunk streams in use")
            cs = self._streams[csid] = _ChunkStream()
        if fmt != 0 and not cs.started:
            raise RtmpProtocolError(f"chunk stream {csid} starts with a format-{fmt} header (no full header yet)")
        return cs

    async def _message_header(self, fmt: int, cs: _ChunkStream) -> None:
        new = cs.buf is None
        if fmt == 3:
            if cs.extended:
                field = int.from_bytes(await self._read(4), "big")
                cs.field = field if new else cs.field
            if new:
                cs.timestamp = (cs.timestamp + cs.field) & 0xFFFFFFFF
            return
        if not new:
            raise RtmpProtocolError(f"a format-{fmt} header in the middle of a message")
        h = await self._read((11, 7, 3)[fmt])
        field = int.from_bytes(h[0:3], "big")
        if fmt <= 1:
            cs.length = int.from_bytes(h[3:6], "big")
            cs.type_id = h[6]
            if fmt == 0:
                cs.stream_id = int.from_bytes(h[7:11], "little")
        cs.extended = field == EXTENDED
        if cs.extended:
            field = int.from_bytes(await self._read(4), "big")
        cs.field = field
        cs.timestamp = field if fmt == 0 else (cs.timestamp + field) & 0xFFFFFFFF
        cs.started = True

    async def _read_chunk(self) -> Message | None:
        fmt, csid = await self._basic_header()
        cs = self._stream(csid, fmt)
        await self._message_header(fmt, cs)
        if cs.buf is None:
            if cs.length > self.max_message:
                raise RtmpProtocolError(f"a {cs.length}-byte message (at most {self.max_message})")
            cs.buf = bytearray()
        n = min(self.chunk_size, cs.length - len(cs.buf))
        if self._buffered + n > self.max_buffered:
            raise RtmpProtocolError(f"more than {self.max_buffered} bytes of unfinished messages")
        cs.buf += await self._read(n)
        self._buffered += n
        if len(cs.buf) < cs.length:
            return None
        payload, cs.buf = bytes(cs.buf), None
        self._buffered -= len(payload)
        return Message(cs.type_id, cs.stream_id, cs.timestamp, payload)


class ChunkWriter:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._w = writer
        self.chunk_size = 128

    def write(self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> None:
        """Queue one message (call ``drain()`` to wait until it is sent)."""
        ts = timestamp & 0xFFFFFFFF
        extended = ts >= EXTENDED
        ext = ts.to_bytes(4, "big") if extended else b""
        out = bytearray(_basic(0, csid))
        out += min(ts, EXTENDED).to_bytes(3, "big") + len(payload).to_bytes(3, "big")
        out += bytes((type_id,)) + stream_id.to_bytes(4, "little") + ext
        for off in range(0, max(len(payload), 1), self.chunk_size):
            if off:
                out += _basic(3, csid) + ext
            out += payload[off:off + self.chunk_size]
        self._w.write(bytes(out))

    def set_chunk_size(self, size: int) -> None:
        self.write(2, SET_CHUNK_SIZE, 0, 0, size.to_bytes(4, "big"))
        self.chunk_size = size

    async def drain(self) -> None:
        await self._w.drain()


def _basic(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes(((fmt << 6) | csid,))
    if 64 <= csid <= 319:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))
