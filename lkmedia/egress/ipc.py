"""The channel between the egress service and one job process: a socketpair carrying one
JSON object per line. Protobuf messages travel base64-encoded in it.

Service → job: ``start`` (the request and what the job needs to run it, secrets
included: they never go on a command line), then ``stop``, ``update_stream`` and ``kill``
requests, each with an ``id`` its ``reply`` repeats. Job → service: ``update`` (an
EgressInfo, in the order the job set them), ``reply`` and, last, ``done``.
"""
from __future__ import annotations

import asyncio
import base64
import json
import socket
from typing import Any

LINE_LIMIT = 16 * 1024 * 1024  # one EgressInfo with every stream and file result fits many times


def pack(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unpack(text: str) -> bytes:
    return base64.b64decode(text)


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    async def send(self, msg: dict[str, Any]) -> None:
        self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        await self.writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the other end has closed (or died)."""
        try:
            line = await self.reader.readline()
        except (ConnectionError, ValueError):  # reset, or a line over LINE_LIMIT
            return None
        if not line:
            return None
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
