"""WebSocketSink: raw PCM to a WebSocket server, as LiveKit egress's websocket output.

The upgrade request carries ``Content-Type: audio/x-raw``; audio goes as binary messages
of s16le interleaved PCM, and ``{"muted":true}`` / ``{"muted":false}`` text messages
mark a mute (a ``Gap(muted=True)`` on the input) and the audio that follows it. Muted
time is not filled with silence: the text messages tell the receiver why audio paused.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import av
from av.audio.resampler import AudioResampler
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..core import EOS, Caps, Gap, LkmediaError, Sink
from ..redact import redact_url
from .results import WebSocketResult

log = logging.getLogger("lkmedia.sinks.websocket")

CONTENT_TYPE = "audio/x-raw"  # egress types.MimeTypeRawAudio


class WebSocketError(LkmediaError):
    """The WebSocket destination could not be reached or was lost for good."""


def _mute_message(muted: bool) -> str:
    return json.dumps({"muted": muted}, separators=(",", ":"))


class WebSocketSink(Sink):
    """Streams one raw audio input to ``url`` (ws:// or wss://).

    ``sample_rate`` / ``channels`` resample to that format (default: the input's).
    A connection that cannot be opened at start fails this sink (its branch only). A
    connection lost mid-stream is retried ``reconnect_attempts`` times with doubling
    backoff; meanwhile at most ``queue_seconds`` of audio wait (oldest dropped), so a
    dead server never stalls the graph nor grows memory.
    """

    content_type = CONTENT_TYPE
    reconnect_attempts = 3
    reconnect_backoff = 0.5
    queue_seconds = 5.0
    connect_timeout = 10.0

    def __init__(
        self,
        url: str,
        *,
        sample_rate: int | None = None,
        channels: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.safe_url = redact_url(url)
        try:
            u = urlsplit(url)
        except ValueError:
            u = None
        if u is None or u.scheme not in ("ws", "wss") or not u.hostname:
            raise ValueError(f"{self.name}: a ws:// or wss:// URL with a host is required, got {self.safe_url!r}")
        if sample_rate is not None and (not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 192_000):
            raise ValueError(f"{self.name}: sample_rate must be 8000-192000 Hz, got {sample_rate!r}")
        if channels is not None and channels not in (1, 2):
            raise ValueError(f"{self.name}: channels must be 1 or 2, got {channels!r}")
        self.url = url
        self.sample_rate = sample_rate
        self.channels = channels
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: deque[str | bytes] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._eof = False
        self._reconnecting = False
        self._muted = False
        self._resampler: AudioResampler | None = None
        self._in_fmt: tuple[str, str, int] | None = None
        self._out: tuple[int, int] | None = None  # (rate, channels) actually sent
        self.bytes_sent = 0
        self.messages = 0
        self.mute_messages = 0
        self.reconnects = 0
        self.dropped_bytes = 0
        self.result = self._result()

    def accept_input(self, caps: Caps) -> str | None:
        if caps.media != "audio":
            return f"{self.name}: WebSocket output is audio only, got {caps.describe()}"
        if caps.encoded:
            return (f"{self.name} sends raw PCM and takes raw audio, got {caps.describe()}: "
                    "link it before the audio encoder")
        if sum(1 for p in self.inputs.values() if p.caps is not None) > 1:
            return f"{self.name} takes one audio input (mix first)"
        return None

    # -- connection ----------------------------------------------------------------
    async def _connect(self) -> ClientConnection:
        try:
            ws = await connect(self.url, additional_headers={"Content-Type": self.content_type},
                               open_timeout=self.connect_timeout, close_timeout=2, compression=None,
                               max_size=2**20)
        except InvalidURI:
            raise WebSocketError(f"{self.name}: {self.safe_url} is not a valid WebSocket URL") from None
        except InvalidStatus as e:
            raise WebSocketError(f"{self.name}: {self.safe_url} refused the WebSocket upgrade "
                                 f"(HTTP {e.response.status_code})") from None
        except (OSError, InvalidHandshake, TimeoutError) as e:
            why = (str(e) or type(e).__name__).replace(self.url, self.safe_url)
            raise WebSocketError(f"{self.name}: cannot connect to {self.safe_url}: {why}") from None
        self._reader = asyncio.create_task(self._drain_incoming(ws))
        return ws

    @staticmethod
    async def _drain_incoming(ws: ClientConnection) -> None:
        # Read what the server sends (and discard it) so that its queue never fills up
        # and stops the connection from reading pongs and close frames.
        with contextlib.suppress(ConnectionClosed, OSError):
            async for _ in ws:
                pass

    async def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None

    async def _reconnect(self, err: BaseException) -> None:
        self._reconnecting = True
        self._space.set()  # a waiting producer now drops oldest instead of blocking
        why = str(err) or type(err).__name__
        log.warning("%s: connection to %s lost (%s), reconnecting", self.name, self.safe_url, why)
        self.report("disconnected", url=self.safe_url, error=why)
        await self._close_ws()
        delay = self.reconnect_backoff
        last: BaseException = err
        for attempt in range(1, self.reconnect_attempts + 1):
            await asyncio.sleep(delay)
            delay *= 2
            try:
                self._ws = await self._connect()
            except WebSocketError as e:
                last = e
                self.report("reconnect_failed", url=self.safe_url, attempt=attempt)
                continue
            self.reconnects += 1
            self._reconnecting = False
            if self._muted:  # the new connection must know audio is paused
                self._queue.appendleft(_mute_message(True))
            self.report("reconnected", url=self.safe_url, attempt=attempt)
            return
        raise WebSocketError(f"{self.name}: connection to {self.safe_url} lost ({why}); "
                             f"{self.reconnect_attempts} reconnect attempts failed ({last})")

    # -- sending -----------------------------------------------------------------------
    async def _send_loop(self) -> None:
        q = self._queue
        while True:
            while not q:
                if self._eof:
                    return
                self._wake.clear()
                await self._wake.wait()
            msg = q.popleft()
            if isinstance(msg, bytes):
                self._queued_bytes -= len(msg)
            self._space.set()
            try:
                assert self._ws is not None
                await self._ws.send(msg)
            except (ConnectionClosed, OSError) as e:
                q.appendleft(msg)
                if isinstance(msg, bytes):
                    self._queued_bytes += len(msg)
                await self._reconnect(e)
                continue
            self.messages += 1
            if isinstance(msg, bytes):
                self.bytes_sent += len(msg)
            else:
                self.mute_messages += 1

    def _limit(self) -> int:
        rate, ch = self._out or (48_000, 2)
        return int(self.queue_seconds * rate * ch * 2)

    async def _enqueue(self, msg: str | bytes) -> None:
        if isinstance(msg, bytes):
            while self._queued_bytes + len(msg) > self._limit() and self._queue:
                if self._reconnecting:
                    self._drop_oldest()
                else:  # connected: ordinary backpressure through the bounded edge
                    self._space.clear()
                    await self._space.wait()
            self._queued_bytes += len(msg)
        self._queue.append(msg)
        self._wake.set()

    def _drop_oldest(self) -> None:
        for i, m in enumerate(self._queue):
            if isinstance(m, bytes):
                del self._queue[i]
                self._queued_bytes -= len(m)
                self.dropped_bytes += len(m)
                return
        self._queue.popleft()

    # -- audio --------------------------------------------------------------------------
    def _pcm(self, frame: av.AudioFrame | None) -> bytes:
        """s16le interleaved bytes of ``frame`` in the output format (None flushes).
        Resampling a 20 ms frame takes microseconds, so it stays on the loop."""
        if frame is not None:
            rate = self.sample_rate or frame.sample_rate
            ch = self.channels or len(frame.layout.channels)
            self._out = (rate, ch)
            fmt = (frame.format.name, frame.layout.name, frame.sample_rate)
            layout = "stereo" if ch == 2 else "mono"
            if fmt == ("s16", layout, rate) and self._resampler is None:
                return bytes(frame.planes[0])[: frame.samples * ch * 2]
            if self._resampler is None or fmt != self._in_fmt:
                tail = self._pcm(None) if self._resampler is not None else b""
                self._resampler = AudioResampler(format="s16", layout=layout, rate=rate)
                self._in_fmt = fmt
                return tail + self._pcm_frames(self._resampler.resample(frame), ch)
            return self._pcm_frames(self._resampler.resample(frame), ch)
        if self._resampler is None or self._out is None:
            return b""
        data = self._pcm_frames(self._resampler.resample(None), self._out[1])
        self._resampler = None
        return data

    @staticmethod
    def _pcm_frames(frames: list[av.AudioFrame], ch: int) -> bytes:
        return b"".join(bytes(f.planes[0])[: f.samples * ch * 2] for f in frames)

    async def _take(self, item: Any) -> None:
        if isinstance(item, Gap):
            if item.muted and not self._muted:
                self._muted = True
                await self._enqueue(_mute_message(True))
            return
        if self._muted:
            self._muted = False
            await self._enqueue(_mute_message(False))
        data = self._pcm(item)
        if data:
            await self._enqueue(data)

    # -- run -----------------------------------------------------------------------------
    async def run(self) -> None:
        port = next(iter(self.inputs.values()), None)
        if port is None:
            return
        self._ws = await self._connect()
        self.report("connected", url=self.safe_url)
        sender = asyncio.create_task(self._send_loop(), name=f"lkmedia:{self.name}:send")
        try:
            while True:
                get = asyncio.ensure_future(port.get())
                await asyncio.wait({get, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender.done():
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                    sender.result()  # raises the sender's failure
                    return
                item = get.result()
                if item is EOS:
                    break
                await self._take(item)
                self.result = self._result()
            tail = self._pcm(None)
            if tail:
                await self._enqueue(tail)
            self._eof = True
            self._wake.set()
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            await self._close_ws()
            self.result = self._result()

    def _result(self) -> WebSocketResult:
        rate, ch = self._out or (self.sample_rate, self.channels)
        seconds = self.bytes_sent / (rate * ch * 2) if rate and ch else 0.0
        return WebSocketResult(self.safe_url, self.content_type, rate or 0, ch or 0, self.bytes_sent, round(seconds, 3),
                               self.messages, self.mute_messages, self.reconnects, self.dropped_bytes)

    def stats(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self._result()).items() if k not in ("url", "content_type")}
