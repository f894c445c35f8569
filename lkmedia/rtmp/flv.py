"""RTMP media messages as an FLV byte stream (the FLV file format 10.1, annex E), which
FFmpeg's flv demuxer (PyAV ``format="flv"``) reads.

``FlvPipe`` carries that stream to a reader over an OS pipe: the event loop writes, and
waits while the pipe and a small transport buffer are full (so a slow reader slows the
publisher's TCP connection down, never our memory); the reader (a PyAV demuxer on its own
thread, or another process given ``read_fd``) sees end of file when the writer closes.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from . import amf0

AUDIO, VIDEO, SCRIPT = 8, 9, 18
HEADER = b"FLV\x01\x05\x00\x00\x00\x09" + bytes(4)  # audio and video flags, then PreviousTagSize0
_SET_DATA_FRAME = amf0.encode("@setDataFrame")


@dataclass(slots=True)
class FlvTag:
    type: int  # AUDIO, VIDEO or SCRIPT
    timestamp: int  # milliseconds
    data: bytes

    def encode(self) -> bytes:
        ts = self.timestamp & 0xFFFFFFFF
        n = len(self.data)
        head = bytes((self.type,)) + n.to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
        return head + bytes((ts >> 24,)) + bytes(3) + self.data + (11 + n).to_bytes(4, "big")


def script_data(payload: bytes) -> bytes:
    """An RTMP data message as an FLV script tag body: ``@setDataFrame`` dropped, so that
    ``onMetaData`` comes first as in a file."""
    if payload.startswith(_SET_DATA_FRAME):
        return payload[len(_SET_DATA_FRAME):]
    return payload


def split_aggregate(payload: bytes, timestamp: int) -> list[FlvTag]:
    """The FLV tags an RTMP aggregate message carries, re-timed from the message's timestamp."""
    tags: list[FlvTag] = []
    pos, first = 0, None
    while pos + 11 <= len(payload):
        kind = payload[pos] & 0x1F
        n = int.from_bytes(payload[pos + 1:pos + 4], "big")
        ts = int.from_bytes(payload[pos + 4:pos + 7], "big") | (payload[pos + 7] << 24)
        if pos + 11 + n > len(payload):
            raise ValueError("an aggregate message's tag runs past its end")
        first = ts if first is None else first
        if kind in (AUDIO, VIDEO, SCRIPT):
            tags.append(FlvTag(kind, (timestamp + ts - first) & 0xFFFFFFFF, payload[pos + 11:pos + 11 + n]))
        pos += 11 + n + 4  # the tag, then its back pointer
    return tags


class _PipeProtocol(asyncio.Protocol):
    """Flow control for a write pipe: ``drain()`` waits while the transport is paused."""

    def __init__(self) -> None:
        self._resumed: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None
        self.closed = False

    def pause_writing(self) -> None:
        if self._resumed is None or self._resumed.done():
            self._resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        self.resume_writing()

    async def drain(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            await self._resumed
        if self.closed:
            raise BrokenPipeError("the FLV reader went away")


class FlvPipe:
    """An FLV stream written from the event loop into an OS pipe; read it from ``read_fd``."""

    #: Bytes the transport may hold beyond the pipe's own buffer before writes wait.
    high_water = 256 << 10

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _PipeProtocol | None = None
        self.bytes_written = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(self._write_fd, False)
        fileobj = os.fdopen(self._write_fd, "wb", buffering=0)
        transport, protocol = await loop.connect_write_pipe(_PipeProtocol, fileobj)
        transport.set_write_buffer_limits(high=self.high_water)
        self._transport, self._protocol = transport, protocol
        await self._write(HEADER)

    async def _write(self, data: bytes) -> None:
        assert self._transport is not None and self._protocol is not None, "FlvPipe.open() first"
        if self._protocol.closed:
            raise BrokenPipeError("the FLV reader went away")
        self._transport.write(data)
        self.bytes_written += len(data)
        await self._protocol.drain()

    async def write(self, tag: FlvTag) -> None:
        await self._write(tag.encode())

    def close(self) -> None:
        """End the stream: the reader sees end of file once it has read what was written."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        elif self._write_fd >= 0:
            os.close(self._write_fd)
        self._write_fd = -1

    def reader(self) -> Any:
        """The read end as a binary file object (blocking; read it off the event loop)."""
        return os.fdopen(self.read_fd, "rb", buffering=0)


class FlvWriter:
    """FLV into any byte sink (a file, a buffer): for tests and recordings of what arrived."""

    def __init__(self, out: Any) -> None:
        self._out = out
        out.write(HEADER)

    def write(self, tag: FlvTag) -> None:
        self._out.write(tag.encode())
