"""FileSink: one recording file (MP4, WebM, MKV, OGG, MP3, MPEG-TS, FLV).

A recording must survive the process being killed at any moment (LiveKit's mp4mux
leaves an unplayable MP4 then). So while recording, MP4 is written *fragmented*
(a moof+mdat every ``fragment_seconds``) and Matroska in short clusters, and every
packet is flushed to the OS (``flush_packets``). On a clean close an MP4 is remuxed
(stream copy) into a regular faststart MP4 and atomically renamed over the fragmented one.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import av

from .base import ALL_AUDIO, ALL_VIDEO, PacketSink
from .results import FileResult

log = logging.getLogger("lkmedia.sinks.file")


@dataclass(frozen=True)
class FileFormat:
    """A container a FileSink writes: FFmpeg muxer name and the codecs it may carry."""

    name: str  # our name ("mp4", "mkv", ...)
    muxer: str  # FFmpeg muxer
    ext: str
    label: str  # for error messages
    video: frozenset[str]
    audio: frozenset[str]


def _fmt(name: str, muxer: str, ext: str, label: str, video: set[str], audio: set[str]) -> FileFormat:
    return FileFormat(name, muxer, ext, label, frozenset(video), frozenset(audio))


#: LiveKit's CodecCompatibility table (features doc 1.3), widened where the container
#: itself is fine with more (VP9/AV1 in MP4, anything in MKV).
FORMATS: dict[str, FileFormat] = {f.name: f for f in (
    _fmt("mp4", "mp4", ".mp4", "MP4 file", {"h264", "hevc", "vp9", "av1"}, {"aac", "opus", "mp3"}),
    _fmt("webm", "webm", ".webm", "WebM file", {"vp8", "vp9", "av1"}, {"opus", "vorbis"}),
    _fmt("ogg", "ogg", ".ogg", "OGG file", set(), {"opus", "vorbis", "flac"}),
    _fmt("mp3", "mp3", ".mp3", "MP3 file", set(), {"mp3"}),
    _fmt("mkv", "matroska", ".mkv", "MKV file", set(ALL_VIDEO), set(ALL_AUDIO)),
    _fmt("ts", "mpegts", ".ts", "MPEG-TS file", {"h264", "hevc"}, {"aac", "opus", "mp3"}),
    _fmt("flv", "flv", ".flv", "FLV file", {"h264"}, {"aac", "mp3"}),
)}
_ALIASES = {"matroska": "mkv", "mpegts": "ts", "m4a": "mp4", "opus": "ogg", "oga": "ogg"}
#: File extension -> format name.
EXTENSIONS: dict[str, str] = {f.ext: f.name for f in FORMATS.values()} | {
    ".m4a": "mp4", ".opus": "ogg", ".oga": "ogg", ".mka": "mkv"}


def format_for(path: str, format: str | None = None) -> FileFormat:
    """The container for ``path``: ``format`` if given, else from the extension."""
    if format is not None:
        key = _ALIASES.get(format.lower().lstrip("."), format.lower().lstrip("."))
        if key not in FORMATS:
            raise ValueError(f"unknown file format {format!r} (use one of {', '.join(FORMATS)})")
        return FORMATS[key]
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ValueError(
            f"cannot tell the container of {path!r} from its extension {ext or '(none)'!r}: "
            f"use one of {', '.join(sorted(EXTENSIONS))} or pass format=")
    return FORMATS[EXTENSIONS[ext]]


class FileSink(PacketSink):
    """Writes every linked encoded stream into one file at ``path``.

    fragment_seconds: MP4 fragment / Matroska cluster / OGG page length, so about the
    most media a crash can lose beyond what is still inside the encoders. 0.5 s by
    default: a SIGKILL after 10 s keeps 9.5 s (1 s fragments kept only 9.0 s); the cost
    is a ~100-byte moof per fragment, and finalisation removes them anyway.
    finalize: on a clean close, remux a fragmented MP4 into a regular faststart MP4
    (the fragmented file is kept, and the failure logged, if that fails).
    inline_writes: write on the event loop (PacketSink.inline_writes), for a light job
    whose packets come a few at a time (a track egress written as published). Not where
    encoders feed the file: measured on a participant egress at 720p30, writing its
    x264 output on the loop cost 0.05 CPU s per media s more than on the sink's thread.
    ``result`` (after close): a FileResult. ``stats()`` works while recording.
    """

    linger = 0.1  # (a file: writes may wait a little; its fragments are 0.5 s anyway)

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: str | None = None,
        *,
        fragment_seconds: float = 0.5,
        finalize: bool = True,
        start_at_zero: bool = False,
        inline_writes: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.inline_writes = inline_writes
        self.start_at_zero = start_at_zero
        self._shift: float | None = None  # seconds taken off every timestamp (start_at_zero)
        self.path = os.path.abspath(os.fspath(path))
        self.format = format_for(self.path, format)
        if not 0.05 <= fragment_seconds <= 60:
            raise ValueError(f"{self.name}: fragment_seconds must be between 0.05 and 60, got {fragment_seconds}")
        self.fragment_seconds = float(fragment_seconds)
        self.finalize = finalize
        self.kind = self.format.label
        self.codecs = {"video": set(self.format.video), "audio": set(self.format.audio)}
        self._container: Any = None
        self._streams: dict[int, Any] = {}  # id(template stream) -> own stream
        self._ends: dict[int, float] = {}  # own stream index -> end time (s)
        self._frame_seconds: dict[int, float] = {}  # for video packets without a duration
        self._start: float | None = None
        self._lock = threading.Lock()
        self.started_at: float | None = None  # Unix seconds
        self.ended_at: float | None = None
        self.finalized = False

    def multi_stream_ok(self, media: str) -> bool:
        return self.format.name == "mkv"

    # -- setup ---------------------------------------------------------------
    async def setup(self) -> None:
        await self.offload(self._check_path)

    def _check_path(self) -> None:
        """Fail before media flows if the file cannot be written, naming the path."""
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            existed = os.path.exists(self.path)
            with open(self.path, "ab"):
                pass
            if not existed:  # only a probe: the muxer creates it when media arrives
                os.unlink(self.path)
        except OSError as e:
            raise OSError(f"cannot write {self.path}: {e.strerror or e}") from None

    # -- writing (sink thread) -------------------------------------------------
    def _muxer_options(self) -> dict[str, str]:
        opts = {"flush_packets": "1"}
        us = str(round(self.fragment_seconds * 1_000_000))
        name = self.format.name
        if name == "mp4":
            # frag_duration cuts a fragment every fragment_seconds of media whatever the
            # keyframe interval; frag_keyframe also cuts at keyframes (harmless, aligned).
            # delay_moov (not empty_moov) writes the moov with the first fragment, once
            # the start offsets are known, so it carries edit lists (B-frame delay, AAC
            # priming) and both tracks start at 0, in sync.
            opts.update({"movflags": "delay_moov+default_base_moof+frag_keyframe",
                         "frag_duration": us})
        elif name in ("mkv", "webm"):
            opts["cluster_time_limit"] = str(round(self.fragment_seconds * 1000))
        elif name == "ogg":
            opts["page_duration"] = us
        return opts

    def open(self, templates: list[av.stream.Stream]) -> None:
        self.started_at = time.time()
        try:
            c = av.open(self.path, "w", format=self.format.muxer, options=self._muxer_options())
        except av.FFmpegError as e:
            raise OSError(f"cannot open {self.path}: {e}") from e
        try:
            for t in templates:
                if t is None:
                    raise ValueError("a packet arrived without a stream (no template to mux it from)")
                try:
                    s = c.add_stream_from_template(t)
                except ValueError as e:
                    raise ValueError(f"{self.format.label} {self.path} cannot take {t.type} "
                                     f"codec {t.codec_context.name if t.codec_context else t}: {e}") from e
                self._streams[id(t)] = s
                if t.type == "video":
                    tcc: Any = t.codec_context
                    rate = t.average_rate or (tcc.framerate if tcc else None)
                    if rate:
                        self._frame_seconds[s.index] = 1 / float(rate)
        except Exception:
            c.close()
            raise
        self._container = c

    def write(self, packets: list[av.Packet]) -> None:
        with self._lock:
            c = self._container
            if c is None:
                return
            if self.start_at_zero and self._shift is None:
                # The first batch holds every input's first packet (PacketSink.run).
                ts = [float(p.pts * p.time_base) for p in packets if p.pts is not None and p.time_base is not None]
                self._shift = min(ts) if ts else 0.0
            for p in packets:
                own = self._streams.get(id(p.stream))
                if own is None:
                    raise ValueError("a packet came from a stream that was not there at the start")
                tb = p.time_base  # (read once: PyAV makes a new Fraction each time)
                if self._shift and tb is not None:  # this sink owns the packet (it sets .stream)
                    d = round(self._shift * tb.denominator / tb.numerator)
                    if p.pts is not None:
                        p.pts -= d
                    if p.dts is not None:
                        p.dts -= d
                pts = p.pts
                if pts is not None and tb is not None:
                    num, den = tb.numerator, tb.denominator
                    t0 = pts * num / den
                    duration = p.duration
                    end = t0 + (duration * num / den if duration else self._frame_seconds.get(own.index, 0.0))
                    if self._start is None or t0 < self._start:
                        self._start = t0
                    if end > self._ends.get(own.index, float("-inf")):
                        self._ends[own.index] = end
                p.stream = own
                c.mux(p)

    def close(self) -> None:
        with self._lock:
            self._close_container()
            if self.finalize and self.format.name == "mp4" and self.packets:
                self._finalize_mp4()
            self._fill_result()

    def abort(self) -> None:
        """Cancelled or failed: end the file as it is (playable), no remux."""
        if not self._lock.acquire(timeout=10):
            log.error("%s: writer busy, leaving %s as it is on disk", self.name, self.path)
            self._fill_result()
            return
        try:
            self._close_container()
            self._fill_result()
        finally:
            self._lock.release()

    def _close_container(self) -> None:
        c, self._container = self._container, None
        self.ended_at = time.time()
        if c is not None:
            try:
                c.close()  # writes the trailer (last fragment, cues, Xing header)
            except av.FFmpegError as e:
                log.error("%s: closing %s failed (the file keeps what was flushed): %s", self.name, self.path, e)

    def _finalize_mp4(self) -> None:
        """Stream-copy the fragmented MP4 into a faststart MP4 beside it, then rename."""
        d, base = os.path.split(self.path)
        tmp = os.path.join(d, f".{base}.{os.getpid()}.finalize.tmp")
        try:
            with av.open(self.path) as src, av.open(tmp, "w", format="mp4",
                                                     options={"movflags": "+faststart"}) as dst:
                # opaque: copy the codec parameters only (no encoder is looked up).
                own = {s.index: dst.add_stream_from_template(s, opaque=True)
                       for s in src.streams if s.type in ("video", "audio")}
                for pkt in src.demux(*[src.streams[i] for i in own]):
                    if pkt.dts is None:  # demuxer's end-of-stream marker
                        continue
                    pkt.stream = own[pkt.stream.index]
                    dst.mux(pkt)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(d)
            self.finalized = True
        except (OSError, ValueError, av.FFmpegError) as e:
            log.error("%s: could not finalise %s, keeping the fragmented MP4 (playable): %r",
                      self.name, self.path, e)
            try:
                os.unlink(tmp)
            except OSError:
                pass

    # -- reporting -------------------------------------------------------------
    @property
    def media_duration(self) -> float:
        """Seconds of media written: earliest start to the latest stream end."""
        if self._start is None or not self._ends:
            return 0.0
        return max(0.0, max(self._ends.values()) - self._start)

    @property
    def complete_duration(self) -> float:
        """Seconds that every stream has reached (what a player can show with sound)."""
        if self._start is None or len(self._ends) < len(self._streams):
            return 0.0
        return max(0.0, min(self._ends.values()) - self._start)

    def _fill_result(self) -> None:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = 0
        self.result = FileResult(os.path.basename(self.path), self.path, size, round(self.media_duration, 3),
                                 self.started_at or 0.0, self.ended_at or time.time(), self.format.name,
                                 self.finalized)

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update({"duration": round(self.media_duration, 3),
                  "complete_duration": round(self.complete_duration, 3), "location": self.path})
        return s


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
