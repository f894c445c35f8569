"""The messages between the worker service and one job process, one class each, and the
channel that carries them (a socketpair, one JSON line per message, lkmedia.worker.codec).

Service -> job: ``Start`` (or ``Recover``) first, then ``Stop``, ``Kill`` and ``Request`` (a
job kind's own control call), each answered by a ``Reply`` with its id.
Job -> service: ``Status`` (the job's Info, numbered in the order the job set it),
``Reply``, ``Pong`` (every ``heartbeat`` s, unasked: a job whose event loop stops turning
stops sending them) and last ``Done`` (the final Info). The job owns
its Info; the service relays what it is sent and never edits it.
"""
from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from . import codec

LINE_LIMIT = 16 * 1024 * 1024  # one Info with every result fits many times


@dataclass
class Start:
    """Run a job: ``runner`` names the job kind's child module (``package.module``), ``spec``
    its validated, encoded job spec (secrets included: never on a command line)."""
    runner: str
    spec: Any
    info: bytes
    log_level: str = "info"
    json_log: bool = False
    heartbeat: float = 0.0  # seconds between the job's unasked Pongs (0: none)


@dataclass
class Recover:
    """Report a job whose process died, from what it left on disk (uploads included)."""
    runner: str
    spec: Any
    info: bytes
    cause: str
    log_level: str = "info"
    json_log: bool = False
    heartbeat: float = 0.0


@dataclass
class Stop:
    id: int
    reason: str


@dataclass
class Kill:
    """End FAILED with ``error``; outputs are still finalised."""
    id: int
    error: str


@dataclass
class Request:
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Status:
    seq: int
    info: bytes


@dataclass
class Reply:
    id: int
    error: str = ""
    code: str = ""
    result: dict[str, Any] = field(default_factory=dict)  # a Request's answer (JSON values)


@dataclass
class Pong:
    seq: int


@dataclass
class Done:
    seq: int
    info: bytes


Message = Start | Recover | Stop | Kill | Request | Status | Reply | Pong | Done
_TYPES: dict[str, type[Any]] = {c.__name__: c for c in (Start, Recover, Stop, Kill, Request, Status, Reply,
                                                        Pong, Done)}


class ChannelError(ConnectionError):
    """The other end sent something that is not a message."""


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    async def send(self, msg: Message) -> None:
        line = json.dumps({"type": type(msg).__name__, "body": codec.encode(msg)}, separators=(",", ":"))
        async with self._lock:  # one writer drains at a time; lines never interleave
            self.writer.write(line.encode() + b"\n")
            await self.writer.drain()

    async def receive(self) -> Message | None:
        """The next message, or None once the other end has closed (or died)."""
        try:
            line = await self.reader.readline()
        except (ConnectionError, ValueError):  # reset, or a line over LINE_LIMIT
            return None
        if not line:
            return None
        try:
            doc = json.loads(line)
            cls = _TYPES[doc["type"]]
            msg: Message = codec.decode(cls, doc["body"])
        except (ValueError, KeyError, TypeError) as e:
            raise ChannelError(f"not a job message: {line[:80]!r} ({e})") from None
        return msg

    async def finish(self, timeout: float = 5.0) -> None:
        """Close gracefully: no more from us (the other end reads to the end of what we
        sent), then read what it still sends until it closes too. A socket closed with
        unread messages in it makes the other end's read fail (ECONNRESET), and asyncio
        then drops what it had received but not yet handed out: a job's final status."""
        try:
            async with self._lock:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                await self.writer.drain()
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except (ConnectionError, OSError, TimeoutError, ValueError):
            pass

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
