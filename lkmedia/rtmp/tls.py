"""The RTMPS listener: TLS in front of the same RTMP connection handling.

asyncio's own TLS server drops a connection whose TLS handshake fails without telling
anyone; here each accepted socket is looked at first (without reading it), so that plain
RTMP or other bytes sent to the RTMPS port, and failed handshakes, are logged in plain
words like any other bad connection.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from .chunks import RTMP_VERSION, describe_first_byte

log = logging.getLogger("lkmedia.rtmp")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_TLS_HANDSHAKE = 0x16


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context for RTMPS from PEM files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class TlsListener:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, handler: Handler, handshake_timeout: float) -> None:
        self.ctx, self.handler, self.handshake_timeout = ctx, handler, handshake_timeout
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._accepting: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    async def close(self) -> None:
        tasks = [t for t in (self._accepting, *self._conns) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._sock)
            sock.setblocking(False)
            task = loop.create_task(self._connection(sock))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _connection(self, sock: socket.socket) -> None:
        peer = _peer(sock)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.handshake_timeout):
                first = await _peek(sock)
                if first is None:
                    sock.close()
                    return
                if first != _TLS_HANDSHAKE:
                    why = ("plain RTMP sent to the RTMPS port (use rtmps://, or the RTMP port)"
                           if first == RTMP_VERSION else describe_first_byte(first).replace("not RTMP", "not TLS"))
                    log.warning("rtmps %s: connection ended: %s", peer, why)
                    sock.close()
                    return
                reader = asyncio.StreamReader()
                protocol = asyncio.StreamReaderProtocol(reader)
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self.ctx, ssl_handshake_timeout=self.handshake_timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            log.warning("rtmps %s: connection ended: the TLS handshake failed (%s)", peer, reason)
            with contextlib.suppress(OSError):
                sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self.handler(reader, writer)


async def _peek(sock: socket.socket) -> int | None:
    """The first byte the peer sent, left unread; None if it closed without sending any."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
    data = sock.recv(1, socket.MSG_PEEK)
    return data[0] if data else None


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
