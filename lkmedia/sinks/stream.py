"""StreamSink: one encode streamed live to several RTMP(S)/SRT destinations at once.

Each destination is independent (egress ``pkg/pipeline/builder/stream.go``): its own
muxer on its own thread, its own bounded queue, its own reconnect loop and status. A slow
or refused destination drops its own backlog; it never blocks the encoder, so the MP4
recording beside it and the other destinations go on. Stream keys never leave this
module unredacted: every log line, error, report and result carries ``redact_url(url)``.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import av

from ..core import EOS, Caps, InputPort, Sink, clone_packet, get_any
from ..core.errors import LkmediaError
from ..redact import redact_key

log = logging.getLogger("lkmedia.sinks.stream")

_RTMP_RE = re.compile(r"^(rtmps?)://([^/\s?#]+)((?:/[^/\s]+)*)/([^/\s]+)/(\S+?)( live=1)?$")
_SECRET_PARAMS = ("streamid", "passphrase", "key", "token", "secret", "pass", "auth")


class StreamStatus(str, enum.Enum):
    """LiveKit's StreamInfo states, plus STARTING (before the first connection) and
    RECONNECTING (between a failure and the next successful write)."""

    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    RECONNECTING = "RECONNECTING"
    FAILED = "FAILED"
    FINISHED = "FINISHED"


class StreamURLError(LkmediaError, ValueError):
    """A stream URL that cannot be used (its key redacted in the message)."""


class StreamFailed(LkmediaError, ConnectionError):
    """Every destination of a StreamSink failed (ends that sink's branch only)."""


@dataclass(frozen=True)
class StreamURL:
    url: str  # what is opened (mux:// expanded)
    redacted: str
    protocol: str  # "rtmp" | "srt"
    secrets: tuple[str, ...]  # substrings scrubbed from any text we emit

    def scrub(self, text: str) -> str:
        text = text.replace(self.url, self.redacted)
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return text


def _redact_srt(url: str) -> tuple[str, tuple[str, ...]]:
    parts = urlsplit(url)
    secrets: list[str] = []
    q = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if any(s in k.lower() for s in _SECRET_PARAMS) and v:
            secrets.append(v)
            v = redact_key(v)
        q.append(f"{k}={v}")
    red = f"srt://{parts.netloc}{parts.path}" + ("?" + "&".join(q) if q else "")
    return red, tuple(secrets)


def parse_stream_url(url: str) -> StreamURL:
    """Validate like LiveKit (``pkg/config/urls.go``): rtmp(s)://host[:port][/path]/app/key
    ( live=1), srt://host:port[?params], mux://key. Raises StreamURLError."""
    if not isinstance(url, str) or not url.strip():
        raise StreamURLError("stream URL is empty")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "mux":
        key = url.split("://", 1)[1]
        if not key or "/" in key:
            raise StreamURLError("mux:// URL must be mux://<stream_key>")
        url, scheme = f"rtmps://global-live.mux.com:443/app/{key}", "rtmps"
    if scheme in ("rtmp", "rtmps"):
        m = _RTMP_RE.match(url)
        if not m:
            tail = url.rsplit("/", 1)
            shown = tail[0] + "/" + redact_key(tail[1]) if len(tail) == 2 and tail[1] else url
            raise StreamURLError(
                f"invalid RTMP URL {shown!r}: expected {scheme}://host[:port]/app/stream_key")
        host = m.group(2)
        if "@" in host:  # user:password@host
            secrets = (host.rsplit("@", 1)[0],)
            host = "***@" + host.rsplit("@", 1)[1]
        else:
            secrets = ()
        if ":" in host:
            h, _, port = host.rpartition(":")
            if not h or not port.isdigit() or not 0 < int(port) < 65536:
                raise StreamURLError(f"invalid RTMP URL: bad host:port {host!r}")
        key = m.group(5)
        red = f"{m.group(1)}://{host}{m.group(3)}/{m.group(4)}/{redact_key(key)}{m.group(6) or ''}"
        return StreamURL(url, red, "rtmp", (key, *secrets))
    if scheme == "srt":
        parts = urlsplit(url)
        red, secrets = _redact_srt(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or not 0 < port < 65536:
            raise StreamURLError(f"invalid SRT URL {red!r}: expected srt://host:port[?streamid=...]")
        return StreamURL(url, red, "srt", secrets)
    shown = scheme + "://..." if scheme else "(no scheme)"
    raise StreamURLError(f"unsupported stream URL {shown}: use rtmp://, rtmps://, mux:// or srt://")


def redact_url(url: str) -> str:
    """The form of ``url`` that may be logged or returned."""
    try:
        return parse_stream_url(url).redacted
    except StreamURLError:
        return "***"


_srt_ffmpeg: str | None | bool = False


def srt_ffmpeg() -> str | None:
    """Path of an ffmpeg CLI built with libsrt, or None (checked once)."""
    global _srt_ffmpeg
    if _srt_ffmpeg is False:
        exe = shutil.which("ffmpeg")
        ok = False
        if exe:
            try:
                out = subprocess.run([exe, "-hide_banner", "-protocols"], capture_output=True,
                                     text=True, timeout=10, check=False).stdout
                ok = "srt" in out.split("Output:", 1)[-1].split()
            except (OSError, subprocess.SubprocessError):
                ok = False
        _srt_ffmpeg = exe if ok else None
    return _srt_ffmpeg  # type: ignore[return-value]


def _srt_target(url: str) -> str:
    """SRT live mode drops what is still unsent at close (linger 0): linger so that a
    clean finish delivers the tail of the stream."""
    if "linger=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "linger=3"


class PacketQueue:
    """Bounded hand-off from the sink's loop to one destination thread.

    Never blocks the producer. When more than ``seconds`` of media (or ``max_items``)
    is waiting, the backlog is dropped and the queue restarts at the next video keyframe.
    """

    def __init__(self, seconds: float, has_video: bool, from_keyframe: bool = True) -> None:
        self.seconds = seconds
        self.max_items = max(64, int(seconds * 200))
        self.has_video = has_video
        self.need_key = has_video and from_keyframe
        self.dropped = 0
        self.ended = False
        self._q: deque[tuple[str, av.Packet, float]] = deque()
        self._cv = threading.Condition()

    def __len__(self) -> int:
        return len(self._q)

    def put(self, media: str, pkt: av.Packet) -> None:
        t = float(pkt.pts * pkt.time_base) if pkt.pts is not None and pkt.time_base else 0.0
        key = not self.has_video or (media == "video" and pkt.is_keyframe)
        with self._cv:
            if self.ended:
                return
            q = self._q
            if q and (len(q) >= self.max_items or t - q[0][2] > self.seconds):
                self.dropped += len(q)
                q.clear()
                self.need_key = self.has_video
            if self.need_key:
                if not key:
                    self.dropped += 1
                    return
                self.need_key = False
            q.append((media, pkt, t))
            self._cv.notify()

    def resync(self) -> None:
        """Drop the backlog; take media again from the next keyframe."""
        with self._cv:
            self.dropped += len(self._q)
            self._q.clear()
            self.need_key = self.has_video

    def end(self) -> None:
        with self._cv:
            self.ended = True
            self._cv.notify_all()

    def get(self, timeout: float) -> list[tuple[str, av.Packet, float]] | None:
        """What is queued ([] on timeout); None once ended and drained."""
        with self._cv:
            if not self._q and not self.ended:
                self._cv.wait(timeout)
            if self._q:
                out = list(self._q)
                self._q.clear()
                return out
            return None if self.ended else []

    def wait_end(self, timeout: float) -> bool:
        """Sleep ``timeout`` seconds unless the queue ends first (True if it ended)."""
        with self._cv:
            return self._cv.wait_for(lambda: self.ended, timeout)


class Destination:
    """One URL: a muxer thread with its own queue, reconnect loop and status."""

    def __init__(self, url: StreamURL, sink: StreamSink) -> None:
        self.url = url
        self.sink = sink
        self.status = StreamStatus.STARTING
        self.error: str | None = None
        self.retries = 0
        self.last_retry_at: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.packets = 0
        self.bytes = 0
        self.queue: PacketQueue | None = None
        self.removed = False
        self.last_ok = time.monotonic()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._templates: dict[str, Any] = {}
        self._container: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    @property
    def terminal(self) -> bool:
        return self.status in (StreamStatus.FAILED, StreamStatus.FINISHED)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def info(self) -> dict[str, Any]:
        end = self.ended_at or time.time()
        return {
            "url": self.url.redacted, "status": self.status.value, "error": self.error,
            "retries": self.retries, "last_retry_at": self.last_retry_at,
            "started_at": self.started_at, "ended_at": self.ended_at,
            "duration": round(end - self.started_at, 3) if self.started_at else 0.0,
            "packets": self.packets, "bytes": self.bytes,
            "dropped": self.queue.dropped if self.queue else 0,
        }

    def set_status(self, status: StreamStatus, error: str | None = None) -> bool:
        with self._lock:
            if self.terminal or (status is self.status and error is None):
                return False
            self.status = status
            if error is not None:
                self.error = self.url.scrub(error)
            now = time.time()
            if status is StreamStatus.ACTIVE and self.started_at is None:
                self.started_at = now
            if status is StreamStatus.RECONNECTING:
                self.retries += 1
                self.last_retry_at = now
            if self.terminal:
                self.ended_at = now
        self.sink._changed(self)
        return True

    # -- thread ------------------------------------------------------------
    def start(self, templates: dict[str, Any], from_keyframe: bool) -> None:
        """from_keyframe: False at the stream's start (audio may precede the first
        video keyframe), True for a destination that joins mid-stream."""
        self._templates = templates
        self.queue = PacketQueue(self.sink.queue_seconds, "video" in templates, from_keyframe)
        self.last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"lkm-stream-{self.sink.name}", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Write what is queued, close cleanly, end as FINISHED."""
        if self.queue is not None:
            self.queue.end()
        elif not self.terminal:
            self.set_status(StreamStatus.FINISHED)

    def _run(self) -> None:
        assert self.queue is not None
        backoff = 0.5
        while not self.terminal:
            try:
                if self._session():
                    self.set_status(StreamStatus.FINISHED)
                    return
                backoff = 0.5  # got media through: start the backoff over
            except Exception as e:  # noqa: BLE001 - any muxer/IO failure is this destination's own
                err = self._describe(e)
                self._close(failed=True)
                log.warning("%s: stream %s: %s", self.sink.name, self.url.redacted, err)
                self.queue.resync()
                idle = time.monotonic() - self.last_ok
                if self.queue.ended:
                    if self.removed or self.started_at is not None:
                        self.set_status(StreamStatus.FINISHED, err)
                    else:
                        self.set_status(StreamStatus.FAILED, f"{err} (media ended before it got through)")
                elif not self.sink.reconnect or isinstance(e, StreamURLError) or idle >= self.sink.idle_timeout:
                    why = "" if not self.sink.reconnect or isinstance(e, StreamURLError) else (
                        f" (no media got through for {idle:.0f} s)")
                    self.set_status(StreamStatus.FAILED, err + why)
                else:
                    self.set_status(StreamStatus.RECONNECTING, err)
                    wait = min(backoff, max(0.0, self.sink.idle_timeout - idle))
                    backoff = min(backoff * 2, self.sink.max_backoff)
                    if self.queue.wait_end(wait) and not self.terminal:
                        if self.removed:
                            self.set_status(StreamStatus.FINISHED)
                        else:
                            self.set_status(StreamStatus.FAILED, f"{err} (media ended while reconnecting)")
        self._close(failed=True)

    def _session(self) -> bool:
        """Connect and write until the queue ends (True) or is abandoned (True)."""
        assert self.queue is not None
        c = self._open()
        streams = {m: c.add_stream_from_template(t) for m, t in self._templates.items()}
        c.start_encoding()  # connects and writes the header
        self.last_ok = time.monotonic()
        while True:
            batch = self.queue.get(0.25)
            if self.terminal:  # the watchdog gave up on this destination
                self._close(failed=True)
                return True
            if batch is None:
                self._close(failed=False)
                return True
            if not batch:
                self.last_ok = time.monotonic()  # connected, nothing to send: not idle
                continue
            for media, pkt, _ in batch:
                pkt.stream = streams[media]
                size = pkt.size
                c.mux(pkt)
                self.packets += 1
                self.bytes += size
            self.last_ok = time.monotonic()
            if self.status is not StreamStatus.ACTIVE:
                self.set_status(StreamStatus.ACTIVE)
                log.info("%s: streaming to %s", self.sink.name, self.url.redacted)

    def _preflight(self) -> None:
        """PyAV opens an output's URL holding the GIL and FFmpeg gives it no timeout: a
        host that drops packets, or a server that never answers, would freeze the whole
        process. So first check, with a timeout, that an RTMP server answers a handshake."""
        parts = urlsplit(self.url.url.split(" ", 1)[0])
        secure = parts.scheme == "rtmps"
        host, port = parts.hostname or "", parts.port or (443 if secure else 1935)
        timeout = max(1.0, min(5.0, self.sink.idle_timeout / 2))
        with socket.create_connection((host, port), timeout) as raw:
            conn = raw
            if secure:  # FFmpeg's tls does not verify certificates by default either
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                conn = ctx.wrap_socket(raw, server_hostname=host)
            conn.sendall(b"\x03" + bytes(1536))  # C0 + C1
            got = b""
            while len(got) < 1537:
                chunk = conn.recv(1537 - len(got))
                if not chunk:
                    raise ConnectionError(0, "the server closed the connection during the RTMP handshake")
                got += chunk
            if got[0] != 3:
                raise ConnectionError(0, f"not an RTMP server (handshake version {got[0]})")

    def _open(self) -> Any:
        if self.url.protocol == "rtmp":
            self._preflight()
            self._container = av.open(self.url.url, "w", format="flv",
                                      container_options={"flvflags": "no_duration_filesize",
                                                         "flush_packets": "1"})
            return self._container
        exe = srt_ffmpeg()
        if exe is None:
            raise StreamURLError("SRT needs an ffmpeg CLI built with libsrt on PATH; none was found")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _close()
        self._proc = subprocess.Popen(
            [exe, "-hide_banner", "-nostdin", "-loglevel", "error",
             "-probesize", "500000", "-analyzeduration", "500000", "-f", "mpegts", "-i", "pipe:0",
             "-c", "copy", "-muxdelay", "0", "-flush_packets", "1", "-f", "mpegts",
             _srt_target(self.url.url)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        # Flush every packet: the pipe must carry media live, not in 32 KB chunks.
        self._container = av.open(self._proc.stdin, "w", format="mpegts",
                                  container_options={"flush_packets": "1"})
        return self._container

    def _close(self, failed: bool) -> None:
        c, self._container = self._container, None
        if c is not None:
            try:
                c.close()
            except Exception as e:
                if not failed:
                    raise
                log.debug("%s: close after failure: %s", self.url.redacted, type(e).__name__)
        p, self._proc = self._proc, None
        if p is not None:
            if not failed:
                # An SRT receiver drops what it holds for its latency window when the
                # sender hangs up: give the tail time to play out first.
                time.sleep(0.5)
            try:
                if p.stdin:
                    p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(2 if failed else 10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            why = self._ffmpeg_error()
            self._stderr.close()
            self._stderr = None
            if p.returncode and not failed:
                raise OSError(f"ffmpeg exited with status {p.returncode}: {why}")

    def _ffmpeg_error(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return self.url.scrub(lines[-1] if lines else "")

    def _describe(self, e: BaseException) -> str:
        if self._proc is not None:
            try:
                self._proc.wait(1)
            except subprocess.TimeoutExpired:
                pass
            why = self._ffmpeg_error()
            if why:
                return f"ffmpeg (SRT): {why}"
        if isinstance(e, TimeoutError):
            msg = "timed out"
        elif isinstance(e, (av.error.FFmpegError, OSError)) and e.strerror:
            msg = e.strerror
        else:
            msg = str(e) or type(e).__name__
        phase = "" if self.status is StreamStatus.ACTIVE else "cannot connect: "
        return self.url.scrub(phase + msg)


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
        self.result = {"streams": self.destinations()}

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

    def remove_url(self, url: str) -> dict[str, Any]:
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

    def destinations(self) -> list[dict[str, Any]]:
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
            self.result["streams"] = self.destinations()

    def _publish(self, info: dict[str, Any]) -> None:
        self.result["streams"] = self.destinations()
        fields = {k: info[k] for k in ("url", "status", "error", "retries", "last_retry_at",
                                       "started_at", "ended_at")}
        self.report("stream", **fields)

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
                        got = await asyncio.wait_for(get_any(live, rr), 0.5)
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
            self.result["streams"] = self.destinations()
        if self._all_failed():
            raise self._failure()

    def _failure(self) -> StreamFailed:
        return StreamFailed("every stream destination failed: " + "; ".join(
            f"{d['url']}: {d['error']}" for d in self.destinations() if d["status"] == "FAILED"))

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
        return {"destinations": len(ds), "active": sum(d["status"] == "ACTIVE" for d in ds),
                "failed": sum(d["status"] == "FAILED" for d in ds),
                "bytes": sum(d["bytes"] for d in ds)}


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
