"""A small RTMP publisher for tests: the steps FFmpeg takes, one call each, so that a test
can stop anywhere (after the publish, mid-stream), send crafted messages (aggregate,
extended timestamps, garbage) and read what the server answered."""
from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

from ..rtmp import amf0
from ..rtmp.chunks import (
    COMMAND_AMF0,
    HANDSHAKE_SIZE,
    ChunkReader,
    ChunkWriter,
)


class RtmpTestClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.r = ChunkReader(reader)
        self.w = ChunkWriter(writer)
        self._txn = 1.0
        self.stream_id = 0

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None,
                      handshake: bool = True) -> RtmpTestClient:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
        c = cls(reader, writer)
        if handshake:
            writer.write(b"\x03" + bytes(8) + os.urandom(HANDSHAKE_SIZE - 8))
            s = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
            writer.write(s[1:1 + HANDSHAKE_SIZE])  # C2 echoes S1
            await writer.drain()
        return c

    async def command(self, name: str, *args: Any, stream_id: int = 0, csid: int = 3) -> None:
        self.w.write(csid, COMMAND_AMF0, stream_id, 0, amf0.encode(name, self._txn, *args))
        self._txn += 1
        await self.w.drain()

    async def reply(self, timeout: float = 5.0) -> list[Any]:
        """The next command the server sends (``_result``, ``onStatus``), decoded."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.r.read_message()
                if msg.type_id == COMMAND_AMF0:
                    return amf0.decode_all(msg.payload)

    async def publish(self, key: str, app: str = "live") -> dict[str, Any]:
        """connect, createStream, publish; the status object the server answered with."""
        await self.command("connect", {"app": app, "tcUrl": f"rtmp://127.0.0.1/{app}", "type": "nonprivate"})
        assert (await self.reply())[0] == "_result"
        await self.command("releaseStream", None, key)
        await self.command("FCPublish", None, key)
        await self.command("createStream", None)
        while (r := await self.reply())[0] != "_result" or not isinstance(r[-1], float):
            pass
        self.stream_id = int(r[-1])
        await self.command("publish", None, key, "live", stream_id=self.stream_id, csid=8)
        while (r := await self.reply())[0] != "onStatus":
            pass
        status: dict[str, Any] = r[3]
        return status

    def send(self, type_id: int, timestamp: int, payload: bytes, csid: int = 6) -> None:
        self.w.write(csid, type_id, self.stream_id, timestamp, payload)

    async def unpublish(self) -> None:
        await self.command("FCUnpublish", None, "")
        await self.command("deleteStream", None, float(self.stream_id))

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (what it still sends is skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()

