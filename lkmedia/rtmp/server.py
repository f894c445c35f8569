"""An asyncio RTMP ingest server: publishers connect, the stream key of their ``publish``
command is checked by ``validate`` before anything else happens, and an accepted stream is
handed to ``on_session`` as FLV tags.

One connection's walk: handshake -> ``connect`` (answered with Window Acknowledgement
Size, Set Peer Bandwidth, Set Chunk Size and ``_result``) -> ``releaseStream`` /
``FCPublish`` / ``createStream`` -> ``publish``. Then ``validate(PublishRequest)`` runs
while nothing more is read from the socket: a ``PublishRefused`` sends an error
``onStatus`` (``NetStream.Publish.BadName`` unless it says otherwise) and closes the
connection; anything it returns becomes ``RtmpSession.accepted``, ``NetStream.Publish.Start``
is sent, and ``on_session(session)`` reads the media through ``session.tags()``. The
connection ends when the publisher ends its stream (``FCUnpublish``/``deleteStream``),
disconnects, stops sending for ``Limits.media_timeout`` or breaks the protocol; the reason
is ``session.end_reason``. With an ``ssl_context`` it listens for RTMPS (lkmedia.rtmp.tls). Whatever a connection does, it ends only itself: garbage bytes
are logged in plain words and the server goes on serving.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..redact import redact_key
from . import amf0
from .chunks import (
    ACK,
    AGGREGATE,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    DATA_AMF3,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
    Message,
    RtmpProtocolError,
    server_handshake,
)
from .flv import FlvPipe, FlvTag, script_data, split_aggregate
from .tls import TlsListener

log = logging.getLogger("lkmedia.rtmp")

BAD_NAME = "NetStream.Publish.BadName"
_END_COMMANDS = ("FCUnpublish", "deleteStream", "closeStream")
_CONTROL_CSID, _COMMAND_CSID, _STATUS_CSID = 2, 3, 5


@dataclass
class Limits:
    """Timeouts (seconds) and sizes that bound what one connection may hold or take."""
    handshake_timeout: float = 10.0  # TCP (and TLS) accept to the end of the RTMP handshake
    publish_timeout: float = 30.0  # handshake to the publish command
    validate_timeout: float = 10.0  # the stream key check; then the publish is refused
    media_timeout: float = 10.0  # no message at all from a publishing client this long: ended
    max_message: int = 16 << 20  # one message (24-bit lengths allow 16 MiB)
    max_buffered: int = 32 << 20  # all unfinished messages of a connection together
    max_connections: int = 256
    chunk_size: int = 4096  # what we send with
    window_ack_size: int = 2_500_000  # asked of the client


class PublishRefused(Exception):
    """Raised by a validator: the publish is refused with ``code`` and ``reason`` (sent to the
    publisher as the status description; it must not contain the key)."""

    def __init__(self, reason: str, code: str = BAD_NAME) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


@dataclass(frozen=True)
class PublishRequest:
    stream_key: str = field(repr=False)  # the last path element of the publishing name (as Go)
    app: str
    tc_url: str = field(repr=False)
    publish_type: str  # "live", "record", "append"
    peer: str
    secure: bool  # arrived over RTMPS

    def __repr__(self) -> str:
        return (f"PublishRequest(key={redact_key(self.stream_key)}, app={self.app!r}, type={self.publish_type!r}, "
                f"peer={self.peer}, secure={self.secure})")


Validator = Callable[[PublishRequest], Awaitable[Any]]


class RtmpSession:
    """An accepted publish: read its media with ``tags()`` (once), or ``pipe_to()`` an FlvPipe."""

    def __init__(self, conn: _Connection, request: PublishRequest, accepted: Any, stream_id: int) -> None:
        self._conn = conn
        self.request = request
        self.accepted = accepted
        self.stream_id = stream_id
        self.end_reason = ""
        self.clean_end = False  # the publisher ended its stream (not a drop, a timeout or an error)
        self.error = ""  # set when the stream failed (stalled, broke the protocol), not when it was dropped
        self.media_messages = 0

    async def tags(self) -> AsyncIterator[FlvTag]:
        """The stream's media as FLV tags, read from the socket as they are asked for."""
        async for tag in self._conn.media(self):
            yield tag

    async def pipe_to(self, pipe: FlvPipe) -> None:
        """Write the stream into ``pipe`` until it ends (the pipe is not closed here)."""
        async for tag in self.tags():
            await pipe.write(tag)

    def close(self, reason: str = "ended by the server") -> None:
        """End the session from our side (``end_reason`` says ``reason``)."""
        self._conn.close_reason = self._conn.close_reason or reason
        self.end_reason = self.end_reason or reason
        self._conn.close()


SessionHandler = Callable[[RtmpSession], Awaitable[None]]


class RtmpServer:
    """Listens on ``host:port`` (TLS with ``ssl_context``: RTMPS); ``port=0`` picks a free one."""

    def __init__(self, validate: Validator, on_session: SessionHandler, *, host: str = "0.0.0.0", port: int = 1935,
                 ssl_context: ssl.SSLContext | None = None, limits: Limits | None = None) -> None:
        self.validate, self.on_session = validate, on_session
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.limits = limits or Limits()
        self._server: asyncio.Server | None = None
        self._tls: TlsListener | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Connection] = set()
        self._closing = False  # close() has begun: its cancellations end connections quietly
        self.refused = 0
        self.accepted = 0

    @property
    def scheme(self) -> str:
        return "rtmps" if self.ssl_context is not None else "rtmp"

    async def start(self) -> None:
        if self.ssl_context is not None:
            self._tls = TlsListener(self.host, self.port, self.ssl_context, self._accept, self.limits.handshake_timeout)
            self._tls.start()
            self.port = self._tls.port
        else:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s server listening on %s:%d", self.scheme.upper(), self.host, self.port)

    async def close(self) -> None:
        """Stop listening and end every connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._tls is not None:
            await self._tls.close()
            self._tls = None
        for conn in list(self._conns):
            conn.close_reason = conn.close_reason or "the server is shutting down"
            conn.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RtmpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if len(self._conns) >= self.limits.max_connections:
            log.warning("rtmp %s: refused, already %d connections", peer, len(self._conns))
            writer.close()
            return
        conn = _Connection(self, reader, writer, peer)
        self._conns.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        except asyncio.CancelledError:
            # close() cancelled it: end quietly. (A cancelled connection task makes asyncio's
            # StreamReaderProtocol log "Exception in callback" on Python 3.11.)
            if not self._closing:
                raise
        finally:
            self._conns.discard(conn)
            if task is not None:
                self._tasks.discard(task)


def _peer(writer: asyncio.StreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


class _Connection:
    def __init__(self, server: RtmpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str) -> None:
        self.server, self.limits = server, server.limits
        self._reader, self._writer = reader, writer
        self.r = ChunkReader(reader, self.limits.max_message, self.limits.max_buffered)
        self.w = ChunkWriter(writer)
        self.peer = peer
        self.app = ""
        self.tc_url = ""
        self._next_stream = 1
        self._peer_window = 0  # the client's Window Acknowledgement Size: ack every this many bytes
        self._acked = 0
        self.close_reason = ""  # set when we end a session ourselves

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()

    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                await server_handshake(self._reader, self._writer)
            async with asyncio.timeout(self.limits.publish_timeout):
                request, stream_id = await self._until_publish()
            await self._publish(request, stream_id)
        except RtmpProtocolError as e:
            log.warning("rtmp %s: connection ended: %s", self.peer, e)
        except amf0.AMFError as e:
            log.warning("rtmp %s: connection ended: a malformed command (%s)", self.peer, e)
        except TimeoutError:
            log.warning("rtmp %s: connection ended: no publish within the time allowed", self.peer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
            log.info("rtmp %s: connection closed before publishing (%s)", self.peer, _closed(e))
        except Exception:  # a bug of ours: it ends this connection only
            log.exception("rtmp %s: connection ended: internal error", self.peer)
        finally:
            self.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    # -- before publish -----------------------------------------------------------------
    async def _until_publish(self) -> tuple[PublishRequest, int]:
        while True:
            msg = await self._next()
            if msg.type_id in (AUDIO, VIDEO, DATA_AMF0, DATA_AMF3, AGGREGATE):
                raise RtmpProtocolError("media sent before a publish was accepted")
            if msg.type_id not in (COMMAND_AMF0, COMMAND_AMF3):
                continue
            name, txn, args = _command(msg)
            if name == "publish":
                return self._publish_request(args), msg.stream_id
            await self._answer(name, txn, args, msg.stream_id)

    async def _next(self) -> Message:
        """The next message, with the protocol's housekeeping (acks, pings) done."""
        while True:
            msg = await self.r.read_message()
            if self._peer_window and self.r.bytes_read - self._acked >= self._peer_window:
                self._acked = self.r.bytes_read
                self.w.write(_CONTROL_CSID, ACK, 0, 0, (self._acked & 0xFFFFFFFF).to_bytes(4, "big"))
            if msg.type_id == WINDOW_ACK_SIZE and len(msg.payload) >= 4:
                self._peer_window = int.from_bytes(msg.payload[:4], "big")
            elif msg.type_id == USER_CONTROL and msg.payload[:2] == b"\x00\x06":  # ping request
                self.w.write(_CONTROL_CSID, USER_CONTROL, 0, 0, b"\x00\x07" + msg.payload[2:6])
            elif msg.type_id in (ACK, USER_CONTROL, SET_PEER_BANDWIDTH):
                pass
            else:
                return msg

    async def _answer(self, name: str, txn: float, args: list[Any], stream_id: int) -> None:
        if name == "connect":
            obj = args[0] if args and isinstance(args[0], dict) else {}
            self.app, self.tc_url = str(obj.get("app") or ""), str(obj.get("tcUrl") or "")
            enc = obj.get("objectEncoding")
            enc = enc if isinstance(enc, float) else 0.0
            self.w.write(_CONTROL_CSID, WINDOW_ACK_SIZE, 0, 0, self.limits.window_ack_size.to_bytes(4, "big"))
            self.w.write(_CONTROL_CSID, SET_PEER_BANDWIDTH, 0, 0, self.limits.window_ack_size.to_bytes(4, "big") + b"\x02")
            self.w.set_chunk_size(self.limits.chunk_size)
            self._result(txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
                         {"level": "status", "code": "NetConnection.Connect.Success",
                          "description": "Connection succeeded.", "objectEncoding": enc})
        elif name == "createStream":
            if self._next_stream > 8:
                raise RtmpProtocolError("more than 8 streams created on one connection")
            self._result(txn, None, float(self._next_stream))
            self._next_stream += 1
        elif name == "play":
            self._status(stream_id, "error", "NetStream.Play.Failed", "This server takes publishers only.")
            await self.w.drain()
            raise RtmpProtocolError("a player connected (this server takes publishers only)")
        elif txn:  # releaseStream, FCPublish, _checkbw, ...: an empty answer
            self._result(txn, None, None)
        await self.w.drain()

    def _result(self, txn: float, *values: Any) -> None:
        self.w.write(_COMMAND_CSID, COMMAND_AMF0, 0, 0, amf0.encode("_result", txn, *values))

    def _status(self, stream_id: int, level: str, code: str, description: str) -> None:
        info = {"level": level, "code": code, "description": description}
        self.w.write(_STATUS_CSID, COMMAND_AMF0, stream_id, 0, amf0.encode("onStatus", 0.0, None, info))

    def _publish_request(self, args: list[Any]) -> PublishRequest:
        name = str(args[1]) if len(args) > 1 and args[1] is not None else ""
        kind = str(args[2]) if len(args) > 2 and args[2] is not None else "live"
        key = posixpath.split(name)[1]
        return PublishRequest(key, self.app, self.tc_url, kind, self.peer, self.server.ssl_context is not None)

    # -- publish ------------------------------------------------------------------------
    async def _publish(self, request: PublishRequest, stream_id: int) -> None:
        key = redact_key(request.stream_key) if request.stream_key else "(none)"
        try:
            if not request.stream_key:
                raise PublishRefused("missing stream key")
            async with asyncio.timeout(self.limits.validate_timeout):
                accepted = await self.server.validate(request)
        except PublishRefused as e:
            self._refuse(request, stream_id, e.code, e.reason)
            await self.w.drain()
            return
        except TimeoutError:
            self._refuse(request, stream_id, BAD_NAME, "the stream key could not be checked in time")
            await self.w.drain()
            return
        except Exception:
            log.exception("rtmp %s: checking stream key %s failed", self.peer, key)
            self._refuse(request, stream_id, BAD_NAME, "the stream key could not be checked")
            await self.w.drain()
            return
        self.server.accepted += 1
        self.w.write(_CONTROL_CSID, USER_CONTROL, 0, 0, b"\x00\x00" + stream_id.to_bytes(4, "big"))  # Stream Begin
        self._status(stream_id, "status", "NetStream.Publish.Start", "Start publishing")
        with contextlib.suppress(ConnectionError):  # gone already: the session sees it at its first read
            await self.w.drain()
        log.info("rtmp %s: publishing with key %s (app %r)", self.peer, key, request.app)
        session = RtmpSession(self, request, accepted, stream_id)
        try:
            await self.server.on_session(session)
        except Exception:
            log.exception("rtmp %s: the session handler failed", self.peer)
            session.end_reason = session.end_reason or "the session handler failed"
        log.info("rtmp %s: session with key %s ended: %s", self.peer, key, session.end_reason or "closed")
        if session.clean_end and not self.close_reason:
            await self._linger()

    async def _linger(self, seconds: float = 2.0) -> None:
        """After the publisher ended its stream: let it finish (deleteStream, its own close)
        rather than cut it off, which some clients report as an error."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(seconds):
                while True:
                    await self._next()

    def _refuse(self, request: PublishRequest, stream_id: int, code: str, reason: str) -> None:
        self.server.refused += 1
        key = redact_key(request.stream_key) if request.stream_key else "(none)"
        log.warning("rtmp %s: publish with key %s refused: %s", self.peer, key, reason)
        self._status(stream_id, "error", code, reason)

    async def media(self, session: RtmpSession) -> AsyncIterator[FlvTag]:
        try:
            while True:
                async with asyncio.timeout(self.limits.media_timeout):
                    msg = await self._next()
                for tag in self._media_tags(msg):
                    session.media_messages += 1
                    yield tag
                if msg.type_id in (COMMAND_AMF0, COMMAND_AMF3):
                    name, txn, args = _command(msg)
                    if name in _END_COMMANDS:
                        session.end_reason, session.clean_end = "the publisher ended the stream", True
                        self._status(session.stream_id, "status", "NetStream.Unpublish.Success", "Stopped publishing")
                        return
                    await self._answer(name, txn, args, msg.stream_id)
        except TimeoutError:
            session.end_reason = session.error = f"no data from the publisher for {self.limits.media_timeout:g} s"
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
            session.end_reason = (self.close_reason or
                                  f"the publisher disconnected without ending the stream ({_closed(e)})")
        except (RtmpProtocolError, amf0.AMFError, ValueError) as e:
            session.end_reason = session.error = f"protocol error: {e}"
        finally:
            if not session.clean_end:
                self.close()

    @staticmethod
    def _media_tags(msg: Message) -> list[FlvTag]:
        t = msg.type_id
        if t in (AUDIO, VIDEO):
            return [FlvTag(t, msg.timestamp, msg.payload)] if msg.payload else []
        if t == DATA_AMF0:
            return [FlvTag(18, msg.timestamp, script_data(msg.payload))]
        if t == DATA_AMF3:
            return [FlvTag(18, msg.timestamp, script_data(msg.payload[1:]))]
        if t == AGGREGATE:
            return split_aggregate(msg.payload, msg.timestamp)
        return []


def _command(msg: Message) -> tuple[str, float, list[Any]]:
    payload = msg.payload[1:] if msg.type_id == COMMAND_AMF3 else msg.payload  # AMF3 commands: a 0 then AMF0
    values = amf0.decode_all(payload)
    if not values or not isinstance(values[0], str):
        raise amf0.AMFError("a command without a name")
    txn = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
    return values[0], txn, values[2:]


def _closed(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return f"end of stream after {len(e.partial)} of {e.expected} bytes" if e.partial else "end of stream"
    return str(e) or type(e).__name__

