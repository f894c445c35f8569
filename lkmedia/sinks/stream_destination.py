"""One streaming destination: its own muxer, thread, bounded queue, reconnect loop and status."""
from __future__ import annotations

import enum
import logging
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import av

from .results import DestinationResult
from .stream_url import StreamURL, StreamURLError, _srt_target, srt_ffmpeg

if TYPE_CHECKING:
    from .stream import StreamSink

log = logging.getLogger("lkmedia.sinks.stream")


class StreamStatus(str, enum.Enum):
    """LiveKit's StreamInfo states, plus STARTING (before the first connection) and
    RECONNECTING (between a failure and the next successful write)."""

    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    RECONNECTING = "RECONNECTING"
    FAILED = "FAILED"
    FINISHED = "FINISHED"



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

    def info(self) -> DestinationResult:
        end = self.ended_at or time.time()
        return DestinationResult(
            self.url.redacted, self.status.value, self.error, self.retries, self.last_retry_at or 0.0,
            self.started_at or 0.0, self.ended_at or 0.0,
            round(end - self.started_at, 3) if self.started_at else 0.0, self.packets, self.bytes,
            self.queue.dropped if self.queue else 0)

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
