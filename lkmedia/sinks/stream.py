"""StreamSink: one encode streamed live to several RTMP(S)/SRT destinations at once.

Each destination is independent (egress ``pkg/pipeline/builder/stream.go``): its own
muxer on its own thread, its own bounded queue, its own reconnect loop and status. A slow
or refused destination drops its own backlog; it never blocks the encoder, so the MP4
recording beside it and the other destinations go on. Stream keys never leave this
module unredacted: every log line, error, report and result carries ``redact_url(url)``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, ClassVar

import av

from ..core import EOS, Caps, InputPort, Sink, clone_packet, get_any
from ..core.errors import LkmediaError
from ..redact import redact_key
from .results import DestinationResult, StreamResult
from .stream_destination import Destination, PacketQueue, StreamStatus
from .stream_url import StreamURL, StreamURLError, parse_stream_url, redact_url

log = logging.getLogger("lkmedia.sinks.stream")


class StreamFailed(LkmediaError, ConnectionError):
    """Every destination of a StreamSink failed (ends that sink's branch only)."""



class StreamSink(Sink):
    """Streams one H.264 + AAC encode to every URL in ``urls``.

    reconnect: retry a failed destination with exponential backoff (0.5 s doubling up to
    max_backoff) until it has got no media through for idle_timeout seconds (LiveKit's
    liveness rule), then it is FAILED. queue_seconds bounds each destination's backlog.
    The sink fails (branch scope) only when every destination has FAILED.
    """

    codecs: ClassVar[dict[str, set[str]]] = {"video": {"h264"}, "audio": {"aac"}}

    def __init__(
        self,
        urls: list[str] | str,
        *,
        name: str | None = None,
        reconnect: bool = True,
        max_backoff: float = 30.0,
        idle_timeout: float = 30.0,
        queue_seconds: float = 10.0,
    ) -> None:
        super().__init__(name)
        if isinstance(urls, str):
            urls = [urls]
        if max_backoff < 0.5 or idle_timeout <= 0 or queue_seconds <= 0:
            raise ValueError(f"{self.name}: max_backoff must be >= 0.5 s, idle_timeout and "
                             "queue_seconds positive")
        self.reconnect = reconnect
        self.max_backoff = float(max_backoff)
        self.idle_timeout = float(idle_timeout)
        self.queue_seconds = float(queue_seconds)
        self._dests: list[Destination] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._templates: dict[str, Any] | None = None
        for u in urls:
            self.add_url(u)
        if not self._dests:
            raise ValueError(f"{self.name}: needs at least one stream URL")
        self.result = StreamResult(self.destinations())

    # -- destinations ------------------------------------------------------
    def add_url(self, url: str) -> str:
        """Start streaming to ``url`` (now, if running). Returns the redacted URL."""
        parsed = parse_stream_url(url)
        with self._lock:
            if any(d.url.url == parsed.url and not (d.terminal or d.removed) for d in self._dests):
                raise StreamURLError(f"{self.name}: already streaming to {parsed.redacted}")
            d = Destination(parsed, self)
            self._dests.append(d)
            if self._templates is not None:
                d.start(self._templates, from_keyframe=True)
        log.info("%s: added %s", self.name, parsed.redacted)
        self._changed(d)
        return parsed.redacted

    def remove_url(self, url: str) -> DestinationResult:
        """Finish streaming to ``url`` cleanly. Returns its (redacted) status."""
        parsed = parse_stream_url(url)
        with self._lock:
            found = [d for d in self._dests if d.url.url == parsed.url and not d.removed]
        if not found:
            raise StreamURLError(f"{self.name}: not streaming to {parsed.redacted}")
        d = found[-1]
        d.removed = True
        d.finish()
        log.info("%s: removing %s", self.name, parsed.redacted)
        return d.info()

    def destinations(self) -> list[DestinationResult]:
        with self._lock:
            return [d.info() for d in self._dests]

    def _changed(self, d: Destination) -> None:
        """Called on any thread when a destination's status changes."""
        info = d.info()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                if loop is asyncio.get_running_loop():
                    self._publish(info)
                    return
            except RuntimeError:
                pass
            try:
                loop.call_soon_threadsafe(self._publish, info)
            except RuntimeError:
                pass
        else:
            self.result = StreamResult(self.destinations())

    def _publish(self, info: DestinationResult) -> None:
        self.result = StreamResult(self.destinations())
        self.report("stream", url=info.url, status=info.status, error=info.error, retries=info.retries,
                    last_retry_at=info.last_retry_at, started_at=info.started_at, ended_at=info.ended_at)

    # -- graph -------------------------------------------------------------
    def accept_input(self, caps: Caps) -> str | None:
        if not caps.encoded:
            return f"stream output takes encoded packets, got {caps.describe()}: put an encoder in between"
        allowed = self.codecs.get(caps.media, set())
        if caps.codec is not None and caps.codec not in allowed:
            return (f"RTMP/SRT streams carry H.264 video and AAC audio, "
                    f"not {caps.media} codec {caps.codec!r}")
        if [p.caps.media for p in self.inputs.values() if p.caps is not None].count(caps.media) > 1:
            return f"a stream output takes one {caps.media} stream"
        return None

    def input_added(self, port: InputPort) -> None:
        if self._templates is not None:
            log.warning("%s: %s linked after streaming started; it is ignored", self.name, port)
            port.close()

    def _all_failed(self) -> bool:
        with self._lock:
            live = [d for d in self._dests if not d.removed]
        return bool(live) and all(d.status is StreamStatus.FAILED for d in live)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        live = [p for p in self.inputs.values() if p.edge is not None]
        waiting = set(live)  # ports whose first packet (stream template) is not known yet
        templates: dict[str, Any] = {}
        pending = PacketQueue(self.queue_seconds, any(p.caps and p.caps.media == "video" for p in live), False)
        watchdog = asyncio.create_task(self._watchdog())
        rr = 0
        try:
            while live:
                if self._all_failed():
                    raise self._failure()
                rr += 1
                got = _poll(live, rr)
                if got is None:
                    try:
                        async with asyncio.timeout(0.5):  # not wait_for: it can swallow a cancel on 3.11
                            got = await get_any(live, rr)
                    except TimeoutError:
                        continue
                port, item = got
                if item is EOS:
                    live.remove(port)
                    waiting.discard(port)
                else:
                    media = port.caps.media if port.caps is not None else item.stream.type
                    if port in waiting:
                        templates[media] = item.stream
                        waiting.discard(port)
                    if self._templates is None:
                        pending.put(media, item)
                    else:
                        self._feed(media, item)
                if self._templates is None and not waiting and templates:
                    self._start(templates, pending)
            self._finish_all()
            # Threads the watchdog gave up on (terminal) are not waited for.
            while any(d.alive and not d.terminal for d in self._dests):
                await asyncio.sleep(0.05)
        except BaseException:
            for d in self._dests:
                d.finish()
            raise
        finally:
            watchdog.cancel()
            self.result = StreamResult(self.destinations())
        if self._all_failed():
            raise self._failure()

    def _failure(self) -> StreamFailed:
        return StreamFailed("every stream destination failed: " + "; ".join(
            f"{d.url}: {d.error}" for d in self.destinations() if d.status == "FAILED"))

    def _start(self, templates: dict[str, Any], pending: PacketQueue) -> None:
        with self._lock:
            self._templates = templates
            for d in self._dests:
                if not d.terminal and d.queue is None:
                    d.start(templates, from_keyframe=False)
        for media, pkt, _ in pending.get(0) or []:
            self._feed(media, pkt)

    def _feed(self, media: str, pkt: av.Packet) -> None:
        first = True
        for d in self._dests:
            if d.queue is None or d.terminal or d.queue.ended:
                continue
            d.queue.put(media, pkt if first else clone_packet(pkt))
            first = False

    def _finish_all(self) -> None:
        with self._lock:
            dests = list(self._dests)
        for d in dests:
            d.finish()

    async def _watchdog(self) -> None:
        """Destinations stuck inside a connect or a write (FFmpeg gives PyAV output no
        timeout) fail after idle_timeout; their thread is left to unblock on its own."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for d in list(self._dests):
                if d.alive and not d.terminal and now - d.last_ok > self.idle_timeout + 1.0:
                    d.set_status(StreamStatus.FAILED,
                                 f"no media got through for {self.idle_timeout:g} s (idle timeout)")
                    if d.queue is not None:
                        d.queue.end()

    def stats(self) -> dict[str, Any]:
        ds = self.destinations()
        return {"destinations": len(ds), "active": sum(d.status == "ACTIVE" for d in ds),
                "failed": sum(d.status == "FAILED" for d in ds), "bytes": sum(d.bytes for d in ds)}


def _poll(ports: list[InputPort], start: int) -> tuple[InputPort, Any] | None:
    n = len(ports)
    for k in range(n):
        p = ports[(start + k) % n]
        item = p.get_nowait()
        if item is not None:
            return p, item
    return None


__all__ = ["PacketQueue", "StreamFailed", "StreamSink", "StreamStatus", "StreamURL", "StreamURLError",
           "parse_stream_url", "redact_key", "redact_url"]
