"""HLSSink: MPEG-TS segments with a full playlist and a sliding live playlist (LiveKit's
SegmentedFileOutput).

Segments are cut at a video keyframe once the running segment reached the target
duration, so the encoder must use ``keyframe_interval = segment_duration`` for segments
of exactly that length (``VideoEncoder(keyframe_interval=segment_duration)``). Audio-only
segments are cut on duration alone, never beyond the target.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import av

from .base import PacketSink
from .results import Segment, SegmentsResult

log = logging.getLogger("lkmedia.sinks.hls")

#: Float noise allowed when comparing durations (seconds).
_EPS = 1e-3
#: What the interleaver may hold while waiting for a stalled stream (packets, seconds).
_INTERLEAVE_MAX = 256
_INTERLEAVE_SPAN = 2.0


def _wall_name(t: float) -> str:
    """LiveKit's timestamp suffix: UTC YYYYMMDDHHMMSS followed by milliseconds."""
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y%m%d%H%M%S") + f"{d.microsecond // 1000:03d}"


def _iso(t: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _atomic_write(path: str, text: str) -> None:
    """Write then rename, so a reader polling the playlist never sees half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _playlist_file(name: str, what: str) -> str:
    if not name or name != os.path.basename(name) or name in (".", ".."):
        raise ValueError(f"{what} must be a file name inside the output directory, got {name!r}")
    return name if name.endswith(".m3u8") else name + ".m3u8"


class _Segment:
    __slots__ = ("duration", "filename", "index", "path", "size", "start", "wall")

    def __init__(self, index: int, filename: str, path: str, start: float, wall: float) -> None:
        self.index = index
        self.filename = filename
        self.path = path
        self.start = start
        self.wall = wall
        self.duration = 0.0
        self.size = 0


class HLSSink(PacketSink):
    """HLS output: H.264 + AAC in MPEG-TS segments, an EVENT playlist of every segment
    (ENDLIST at close) and optionally a live playlist of the last ``live_window``.

    Playlists are rewritten atomically after each segment; ``on_segment(path, duration)``
    runs on the sink thread after that, so an uploader can follow the segments.
    EXT-X-PROGRAM-DATE-TIME is anchored to the wall clock at the first packet and then
    follows media time, so long recordings do not drift.
    The encoder must use ``keyframe_interval = segment_duration`` for exact segments.
    """

    codecs: dict[str, set[str]] = {"video": {"h264"}, "audio": {"aac"}}
    kind = "HLS"

    def __init__(
        self,
        directory: str,
        *,
        filename_prefix: str = "",
        playlist_name: str = "playlist.m3u8",
        live_playlist_name: str | None = None,
        segment_duration: float = 4.0,
        suffix: str = "index",
        live_window: int = 5,
        program_date_time: bool = True,
        on_segment: Callable[[str, float], Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if not directory:
            raise ValueError(f"{self.name}: an output directory is required")
        if not segment_duration or segment_duration <= 0:
            raise ValueError(f"{self.name}: segment_duration must be positive, got {segment_duration!r}")
        if suffix not in ("index", "timestamp"):
            raise ValueError(f"{self.name}: suffix must be 'index' or 'timestamp', got {suffix!r}")
        if live_window < 1:
            raise ValueError(f"{self.name}: live_window must be at least 1, got {live_window}")
        if os.path.isabs(filename_prefix) or ".." in filename_prefix.split("/"):
            raise ValueError(f"{self.name}: filename_prefix must stay inside the directory, got {filename_prefix!r}")
        self.directory = directory
        self.filename_prefix = filename_prefix
        self.playlist_name = _playlist_file(playlist_name, f"{self.name}: playlist_name")
        self.live_playlist_name: str | None = None
        if live_playlist_name is not None:
            live = _playlist_file(live_playlist_name, f"{self.name}: live_playlist_name (it must sit in the "
                                  "same directory as the playlist)")
            if live == self.playlist_name:
                raise ValueError(f"{self.name}: live_playlist_name must differ from playlist_name ({live!r})")
            self.live_playlist_name = live
        self.segment_duration = float(segment_duration)
        self.suffix = suffix
        self.live_window = live_window
        self.program_date_time = program_date_time
        self.on_segment = on_segment
        self.segments: list[_Segment] = []
        self._cur: _Segment | None = None
        self._container: Any = None
        self._map: dict[Any, Any] = {}
        self._has_video = False
        self._pending: dict[Any, list[av.Packet]] = {}
        self._t0: float | None = None
        self._wall0: float | None = None
        self._end = 0.0
        self._closed = False
        self._newest = float("-inf")
        # abort() may run on the loop while a cancelled write() still runs on the thread.
        self._lock = threading.Lock()
        self.result = self._result()

    # -- paths ---------------------------------------------------------------
    @property
    def playlist_path(self) -> str:
        return os.path.join(self.directory, self.playlist_name)

    @property
    def live_playlist_path(self) -> str | None:
        return os.path.join(self.directory, self.live_playlist_name) if self.live_playlist_name else None

    async def setup(self) -> None:
        await self.offload(self._check_directory)

    def _check_directory(self) -> None:
        target = os.path.dirname(os.path.join(self.directory, self.filename_prefix + "x")) or "."
        try:
            os.makedirs(target, exist_ok=True)
        except OSError as e:
            raise OSError(f"{self.name}: cannot create HLS directory {target!r}: {e.strerror or e}") from e
        if not os.access(self.directory, os.W_OK) or not os.access(target, os.W_OK):
            raise PermissionError(f"{self.name}: HLS directory {target!r} is not writable")

    # -- PacketSink hooks (sink thread) ----------------------------------------
    def open(self, templates: list[av.stream.Stream]) -> None:
        self._check_directory()
        self._templates = list(templates)
        self._has_video = any(t.type == "video" for t in templates)
        self._pending = {t: [] for t in templates}

    def write(self, packets: list[av.Packet]) -> None:
        with self._lock:
            self._write_locked(packets)

    def _write_locked(self, packets: list[av.Packet]) -> None:
        if self._wall0 is None:
            self._wall0 = time.time()
        for p in packets:
            q = self._pending.get(p.stream)
            if q is None:  # a template we were not opened with: keep it with its kind
                q = self._pending.setdefault(p.stream, [])
            q.append(p)
            self._newest = max(self._newest, self._key(p))
        self._drain(final=False)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drain(final=True)
        self._finish_segment(final=True)

    def abort(self) -> None:
        """Cancelled: close the open segment and end the playlists with what is on disk."""
        if not self._lock.acquire(timeout=5.0):
            log.error("%s: a segment write is stuck; playlists left as they were", self.name)
            return
        try:
            self._close_locked()
        except Exception:
            log.exception("%s: could not finalise the HLS playlist", self.name)
        finally:
            self._lock.release()

    # -- interleaving ------------------------------------------------------------
    @staticmethod
    def _key(p: av.Packet) -> float:
        # Presentation time: a keyframe (the cut point) then follows every audio packet
        # that plays before it, even when B-frames put its dts earlier.
        ts = p.pts if p.pts is not None else p.dts
        return float(ts * p.time_base) if ts is not None and p.time_base is not None else 0.0

    def _drain(self, final: bool) -> None:
        """Release packets in time order across streams (each stream keeps its own
        order); a stream with nothing
        queued holds the others back (up to _INTERLEAVE_SPAN seconds or _INTERLEAVE_MAX
        packets) so that a cut point sees every packet that precedes it."""
        queues = self._pending
        while True:
            heads = [(self._key(q[0]), i, s) for i, (s, q) in enumerate(queues.items()) if q]
            if not heads:
                return
            first = min(heads, key=lambda h: (h[0], h[1]))
            waiting = len(heads) < len(queues)
            if (waiting and not final and self._newest - first[0] < _INTERLEAVE_SPAN
                    and sum(len(q) for q in queues.values()) < _INTERLEAVE_MAX):
                return
            s = first[2]
            self._mux(queues[s].pop(0))

    # -- segmenting ----------------------------------------------------------------
    def _mux(self, p: av.Packet) -> None:
        tb = p.time_base
        t = float(p.pts * tb) if p.pts is not None and tb is not None else self._end
        dur = float(p.duration * tb) if p.duration and tb is not None else 0.0
        video = p.stream is not None and p.stream.type == "video"
        seg = self._cur
        if seg is None:
            self._start_segment(t)
        elif self._has_video:
            if video and p.is_keyframe and t - seg.start >= self.segment_duration - _EPS:
                self._finish_segment(next_start=t)
                self._start_segment(t)
        elif t + dur - seg.start > self.segment_duration + _EPS and t > seg.start:
            # Audio only: cut before the packet that would overshoot the target.
            self._finish_segment(next_start=t)
            self._start_segment(t)
        self._end = max(self._end, t + dur)
        out = self._map.get(p.stream)
        if out is None:
            raise ValueError(f"{self.name}: a packet of an unknown stream arrived ({p.stream!r})")
        p.stream = out
        self._container.mux(p)

    def _segment_name(self, index: int, wall: float) -> str:
        tail = f"{index:05d}" if self.suffix == "index" else _wall_name(wall)
        prefix = self.filename_prefix
        if prefix and not prefix.endswith("/"):
            prefix += "_"
        return f"{prefix}{tail}.ts"

    def _start_segment(self, t: float) -> None:
        if self._t0 is None:
            self._t0 = t
            if self._wall0 is None:
                self._wall0 = time.time()
        wall = (self._wall0 or 0.0) + (t - self._t0)
        index = len(self.segments)
        filename = self._segment_name(index, wall)
        path = os.path.join(self.directory, filename)
        try:
            # Timestamps run on across segments (one timeline, like a single TS stream),
            # so no per-file shift of negative first timestamps.
            c = av.open(path, "w", format="mpegts", options={"avoid_negative_ts": "disabled"})
        except (OSError, av.FFmpegError) as e:
            raise OSError(f"{self.name}: cannot write HLS segment {path!r}: {e}") from e
        self._map = {tpl: c.add_stream_from_template(tpl) for tpl in self._pending}
        self._container = c
        self._cur = _Segment(index, filename, path, t, wall)

    def _finish_segment(self, next_start: float | None = None, final: bool = False) -> None:
        seg, c = self._cur, self._container
        if seg is None or c is None:
            if final:
                self._write_playlists(final=True)
            return
        self._cur, self._container = None, None
        c.close()
        seg.duration = max(0.0, (next_start if next_start is not None else self._end) - seg.start)
        try:
            seg.size = os.path.getsize(seg.path)
        except OSError:
            seg.size = 0
        self.segments.append(seg)
        self._write_playlists(final=final)
        self.result = self._result()
        if self.on_segment is not None:
            self.on_segment(seg.path, seg.duration)

    # -- playlists ---------------------------------------------------------------
    def target_duration(self) -> int:
        """EXT-X-TARGETDURATION: ceil of the longest segment (float noise ignored)."""
        longest = max((s.duration for s in self.segments), default=self.segment_duration)
        return max(1, math.ceil(longest - _EPS))

    def _render(self, segs: list[_Segment], sequence: int, final: bool, event: bool) -> str:
        lines = ["#EXTM3U", "#EXT-X-VERSION:3"]
        if event:
            lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
        lines += [f"#EXT-X-TARGETDURATION:{self.target_duration()}", f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
        for s in segs:
            if self.program_date_time:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_iso(s.wall)}")
            lines.append(f"#EXTINF:{s.duration:.3f},")
            lines.append(s.filename)
        if final:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def _write_playlists(self, final: bool) -> None:
        segs = self.segments
        _atomic_write(self.playlist_path, self._render(segs, 0, final, event=True))
        live = self.live_playlist_path
        if live is not None:
            window = segs[-self.live_window:]
            seq = window[0].index if window else 0
            _atomic_write(live, self._render(window, seq, final, event=False))

    # -- results -------------------------------------------------------------------
    def _result(self) -> SegmentsResult:
        segs = self.segments
        live = self.live_playlist_path
        return SegmentsResult(
            self.playlist_name, self.live_playlist_name, os.path.abspath(self.playlist_path),
            os.path.abspath(live) if live else None, len(segs), round(sum(s.duration for s in segs), 3),
            sum(s.size for s in segs), self._wall0 or 0.0, (segs[-1].wall + segs[-1].duration) if segs else 0.0,
            [Segment(s.filename, round(s.duration, 3)) for s in segs])

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "segments": len(self.segments)}
