"""Redis transport for psrpc: PUBLISH, SUBSCRIBE and the queue lock.

Commands (PUBLISH, ``SET key val NX PX 5000``) go through an asyncio redis-py client
(``decode_responses=False``: payloads are raw protobuf). Subscriptions use one dedicated
connection with a small RESP reader of our own, because the subscriber is what must
survive a Redis restart: it reconnects with backoff, re-subscribes every channel and
notices a dead peer with PINGs, without depending on how a given redis-py version
retries or re-subscribes inside ``PubSub``.

Every subscription has a bounded queue; when it is full the newest message is dropped
and counted (a slow consumer must never stall the reader, and psrpc messages are
retried by their senders). Pub/sub channels are global across Redis DBs; the lock keys
live in the configured DB.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import ssl as _ssl
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf.message import Message

from .wire import RpcError, encode

log = logging.getLogger("lkmedia.rpc")

LOCK_TTL_MS = 5000  # psrpc lockExpiration
DEFAULT_CHANNEL_SIZE = 100  # psrpc bus.DefaultChannelSize
_PING_EVERY = 10.0
_DEAD_AFTER = 30.0


def lock_key(payload: bytes) -> str:
    """The queue-lock key psrpc derives from a received payload: base64(sha256(bytes))."""
    return base64.b64encode(hashlib.sha256(payload).digest()).decode("ascii")


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``, or a bare host for port 6379)."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        host, port = address, "6379"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"redis address {address!r} is not host:port")
    return host, int(port)


class _RespError(Exception):
    """An error reply from Redis (message text never holds our credentials)."""


class _PubSubConn:
    """One RESP2 connection in subscriber mode: writes commands, reads pushes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r = reader
        self._w = writer

    @classmethod
    async def open(
        cls, host: str, port: int, username: str | None, password: str | None,
        tls: _ssl.SSLContext | None, timeout: float,
    ) -> _PubSubConn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls), timeout)
        conn = cls(reader, writer)
        if password:
            conn.send("AUTH", *([username] if username else []), password)
            try:
                reply = await asyncio.wait_for(conn.read(), timeout)
            except _RespError:
                conn.close()
                raise _RespError("redis AUTH failed (check redis username/password)") from None
            if reply != b"OK":
                conn.close()
                raise _RespError("redis AUTH failed")
        return conn

    def send(self, *args: str | bytes) -> None:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self._w.write(b"".join(out))

    async def read(self) -> Any:
        line = await self._r.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the subscriber connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            raise _RespError(body.decode(errors="replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            return None if n < 0 else (await self._r.readexactly(n + 2))[:-2]
        if kind == b"*":
            n = int(body)
            return None if n < 0 else [await self.read() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP type {kind!r}")

    def close(self) -> None:
        self._w.close()


class Subscription:
    """Messages of one channel, in a bounded queue. ``get()`` returns None once closed."""

    def __init__(self, bus: RedisBus, channel: str, size: int) -> None:
        self.bus = bus
        self.channel = channel
        self.dropped = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self._closed = False

    def _deliver(self, payload: bytes) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8...: no log flood
                log.warning("rpc: consumer of %s is behind, %d messages dropped", self.channel, self.dropped)

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def get(self) -> bytes | None:
        if self._closed and self._queue.empty():
            return None
        return await self._queue.get()

    async def close(self) -> None:
        await self.bus.unsubscribe(self)


#: The command connections one bus may open at once. redis-py 8 caps a client's pool at
#: 100 by default and refuses the next command ("Too many connections"): 100 track
#: egresses started at once hold that many (the start queue's claims).
MAX_CONNECTIONS = 1024


class RedisBus:
    """The shared Redis link of every psrpc client and server in this process."""

    def __init__(
        self, address: str = "127.0.0.1:6379", *, username: str | None = None, password: str | None = None,
        db: int = 0, tls: _ssl.SSLContext | None = None, channel_size: int = DEFAULT_CHANNEL_SIZE,
        connect_timeout: float = 5.0,
    ) -> None:
        self._host, self._port = parse_address(address)
        if db < 0:
            raise ValueError(f"redis db must be >= 0, got {db}")
        if channel_size < 1:
            raise ValueError(f"channel_size must be >= 1, got {channel_size}")
        self.address = f"{self._host}:{self._port}"
        self._username, self._password, self._tls = username, password, tls
        self.channel_size = channel_size
        self._timeout = connect_timeout
        self._redis = aioredis.Redis(
            host=self._host, port=self._port, username=username, password=password, db=db,
            ssl=tls is not None, ssl_cert_reqs="required" if tls else "none",
            decode_responses=False, socket_connect_timeout=connect_timeout, socket_timeout=connect_timeout,
            max_connections=MAX_CONNECTIONS,
        )
        self._subs: dict[str, list[Subscription]] = {}
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._conn: _PubSubConn | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_rx = 0.0
        self.reconnects = 0

    @property
    def redis(self) -> aioredis.Redis:
        """The command connection (for keys beside psrpc: the start queue)."""
        return self._redis

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Connects (failing fast with a clear error if Redis is not there) and starts the reader."""
        if self._task is not None:
            return
        try:
            await self._redis.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise ConnectionError(f"cannot reach redis at {self.address}: {type(e).__name__}") from None
        except redis.exceptions.AuthenticationError:
            raise ConnectionError(f"redis at {self.address} refused our credentials") from None
        self._task = asyncio.create_task(self._run(), name=f"rpc-bus-{self.address}")
        try:
            await asyncio.wait_for(self._connected.wait(), self._timeout)
        except TimeoutError:
            await self.close()
            raise ConnectionError(f"cannot subscribe on redis at {self.address}") from None

    async def close(self) -> None:
        """Stops the reader, ends every subscription and closes both connections."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for subs in self._subs.values():
            for s in subs:
                s._end()
        self._subs.clear()
        for fut in self._confirm.values():
            if not fut.done():
                fut.cancel()
        self._confirm.clear()
        closer = getattr(self._redis, "aclose", None) or self._redis.close
        await closer()

    async def __aenter__(self) -> RedisBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    # -- commands --------------------------------------------------------------------
    async def publish(self, channel: str, msg: Message) -> None:
        """PUBLISH ``msg`` in its envelope. Raises RpcError(unavailable) when Redis is down."""
        payload = encode(msg)
        try:
            await self._redis.publish(channel, payload)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise RpcError("unavailable", f"message bus unavailable ({type(e).__name__})") from None

    async def try_lock(self, payload: bytes) -> bool:
        """psrpc's queue lock on a received payload; False if another subscriber has it."""
        try:
            return bool(await self._redis.set(lock_key(payload), secrets.randbits(62), nx=True, px=LOCK_TTL_MS))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            return False  # like Go: an error means the message is dropped

    # -- subscriptions ---------------------------------------------------------------
    async def subscribe(self, channel: str, *, size: int | None = None) -> Subscription:
        """Subscribes and returns once Redis has confirmed it, so nothing published
        afterwards is missed. Raises RpcError(unavailable) if that takes too long."""
        if self._task is None or self._closing:
            raise RuntimeError("RedisBus.subscribe() before start() or after close()")
        sub = Subscription(self, channel, size or self.channel_size)
        subs = self._subs.setdefault(channel, [])
        subs.append(sub)
        if len(subs) == 1:
            self._confirm[channel] = asyncio.get_running_loop().create_future()
            if self._conn is not None:
                self._conn.send("SUBSCRIBE", channel)
        fut = self._confirm.get(channel)
        if fut is not None:
            try:
                await asyncio.wait_for(asyncio.shield(fut), self._timeout)
            except TimeoutError:
                await self.unsubscribe(sub)
                raise RpcError("unavailable", f"redis did not confirm the subscription to {channel}") from None
            except asyncio.CancelledError:
                await self.unsubscribe(sub)
                if fut.cancelled() and self._closing:  # the bus closed under us, not our caller
                    raise RuntimeError("RedisBus closed") from None
                raise
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        sub._end()
        subs = self._subs.get(sub.channel)
        if not subs or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[sub.channel]
            fut = self._confirm.pop(sub.channel, None)
            if fut is not None and not fut.done():
                fut.cancel()
            if self._conn is not None:
                self._conn.send("UNSUBSCRIBE", sub.channel)

    def subscribed_channels(self) -> list[str]:
        return sorted(self._subs)

    # -- reader ----------------------------------------------------------------------
    async def _run(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                conn = await _PubSubConn.open(
                    self._host, self._port, self._username, self._password, self._tls, self._timeout
                )
            except (OSError, TimeoutError, _RespError) as e:
                log.warning("rpc: redis subscriber at %s unavailable (%s), retrying in %.1fs",
                            self.address, e if isinstance(e, _RespError) else type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._conn = conn
            if self._subs:
                conn.send("SUBSCRIBE", *self._subs)
            else:
                conn.send("PING")
            pinger = asyncio.create_task(self._keepalive(conn))
            try:
                await self._read(conn, on_ready=lambda: self._connected.set())
            except (OSError, ConnectionError, asyncio.IncompleteReadError, _RespError, ValueError) as e:
                if not self._closing:
                    log.warning("rpc: lost redis subscriber connection to %s (%s); reconnecting",
                                self.address, type(e).__name__)
            finally:
                self._conn = None
                self._connected.clear()
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger
                conn.close()
            if not self._closing:
                self.reconnects += 1
                delay = 0.1
                await asyncio.sleep(delay)

    async def _read(self, conn: _PubSubConn, on_ready: Any) -> None:
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        ready = False
        while True:
            item = await conn.read()
            self._last_rx = loop.time()
            if not isinstance(item, list) or not item:
                if not ready and item == b"PONG":
                    ready = True
                    on_ready()
                continue
            kind = item[0]
            if kind == b"message" and len(item) == 3:
                for sub in list(self._subs.get(item[1].decode("utf-8", "replace"), ())):
                    sub._deliver(item[2])
            elif kind == b"subscribe" and len(item) == 3:
                ch = item[1].decode("utf-8", "replace")
                fut = self._confirm.pop(ch, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                if not ready:
                    ready = True
                    on_ready()
            elif kind == b"pong" and not ready:
                ready = True
                on_ready()

    async def _keepalive(self, conn: _PubSubConn) -> None:
        """PINGs an idle subscriber; closes it when Redis stops answering (half-open TCP)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_PING_EVERY)
            idle = loop.time() - self._last_rx
            if idle > _DEAD_AFTER:
                log.warning("rpc: redis subscriber silent for %.0fs, reconnecting", idle)
                conn.close()
                return
            if idle >= _PING_EVERY:
                conn.send("PING")
