"""FileSource: anything FFmpeg reads (files, http(s), HLS, RTMP pull, ...) as graph media.

The input is opened in ``negotiate()`` (so during ``Graph.build()``): a missing file, a
refused URL or an unreadable header fails the build, naming the input (with its
secrets redacted), before any other node has opened anything. Demuxing and decoding
then run on the node's own thread, a batch per hop.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av

from ..core import BuildError, Caps, LinkError, LkmediaError, OutputPort, Source
from ..core.memory import tune_malloc
from ..nodes.decode import VIDEO_TIME_BASE, Retimer, codec_name
from ..redact import redact_url

log = logging.getLogger("lkmedia.sources.file")

#: A live input arrives in real time: what FFmpeg probes before the first frame comes out
#: is latency a session keeps for its whole life (bench/ingress.py: 0.5 s of probing gave
#: 0.74 s glass to glass, 0.1 s gives 0.36 s). An RTMP publish's first tags are the codec
#: headers, so 0.1 s finds both streams (lkmedia.ingress.recipe, lkmedia.sources.rtsp).
LIVE_PROBE = {"analyzeduration": "100000", "probesize": "500000"}

#: FFmpeg errors that mean "this packet is bad", not "the input is gone".
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    av.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError,
    av.error.UndefinedError, av.error.ArgumentError,
)
_RTMP_SCHEMES = {"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"}


class SourceOpenError(BuildError):
    """The input cannot be opened (missing, refused, not media): found at build."""


class SourceReadError(LkmediaError, OSError):
    """The input failed while being read (too much corrupt data, connection lost).
    An OSError too: the graph reports it without a traceback, like other I/O errors."""


def _reason(e: BaseException, timeout: float) -> str:
    """Why an FFmpeg call failed, without the URL FFmpeg puts in its messages."""
    if isinstance(e, av.ExitError):
        return f"no answer within {timeout:g} s"
    if isinstance(e, av.FFmpegError):
        return e.strerror or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return type(e).__name__


class _Meter:
    """One stream's compressed bytes and the media time they span (a few attribute updates
    per packet, on the node's thread)."""

    __slots__ = ("bytes", "first", "last", "packets", "time_base", "timed")

    def __init__(self, time_base: float) -> None:
        self.time_base = time_base
        self.bytes = self.packets = 0
        self.first = self.last = 0.0
        self.timed = False

    def add(self, size: int, ts: int | None) -> None:
        self.bytes += size
        self.packets += 1
        if ts is not None:
            t = ts * self.time_base
            if not self.timed:
                self.first = self.last = t
                self.timed = True
            elif t > self.last:
                self.last = t

    def bitrate(self) -> int:
        n, span = self.packets, self.last - self.first
        if n < 2 or span <= 0:
            return 0
        return round(self.bytes * 8 / (span * n / (n - 1)))  # n packets cover n - 1 gaps, and one more


class FileSource(Source):
    """Reads a file or URL; outputs "video" and/or "audio" (those the input has and
    that are enabled).

    decode: raw frames (video 1/90000, audio 1/sample_rate, timestamps from ~0) or,
    with False, the demuxed av.Packets as they are (``packet.stream`` is the input
    stream, the template a muxer copies: remux without re-encoding).
    realtime: pace output by timestamps on the graph clock (simulates a live input).
    options: FFmpeg demuxer/protocol options. timeout: seconds to open, and to wait
    for each read. max_errors: corrupt packets in a row before the source fails.
    """

    #: Items per hop to the node's thread.
    batch_items = 8

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        decode: bool = True,
        realtime: bool = False,
        video: bool = True,
        audio: bool = True,
        options: dict[str, str] | None = None,
        max_errors: int = 50,
        timeout: float = 10.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if not (video or audio):
            raise ValueError(f"{self.name}: enable video, audio or both")
        if max_errors < 0 or timeout <= 0:
            raise ValueError(f"{self.name}: max_errors must be >= 0 and timeout > 0")
        self.url = os.fspath(url)
        self.display = redact_url(self.url)
        self.decode = decode
        self.realtime = realtime
        self.live = realtime
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.max_errors = max_errors
        self.timeout = float(timeout)
        for kind, on in (("video", video), ("audio", audio)):
            if on:
                self.add_output(kind, Caps(kind, encoded=not decode))
        self._container: Any = None
        self._streams: dict[str, Any] = {}  # kind -> input stream
        self._ports: dict[int, OutputPort] = {}  # stream index -> output
        self._retimers: dict[int, Retimer] = {}
        self._shift: dict[int, int] = {}  # stream index -> offset in its time base
        self._offset: Fraction | None = None
        self._packets: Iterator[av.Packet] | None = None
        self._errors_in_row = 0
        self._meters: dict[int, _Meter] = {}  # stream index -> its compressed bytes so far
        self._rates: dict[str, _Meter] = {}  # the same by kind (a closed input's streams are gone)
        self.packets = 0
        self.frames = 0
        self.samples = 0
        self.errors = 0
        self.seconds = 0.0

    def __repr__(self) -> str:
        return f"<FileSource {self.name} {self.display}>"

    # -- opening (at build) ------------------------------------------------------
    def open(self) -> None:
        """Open the input and keep only the outputs it can feed. Graph.build() calls
        this through negotiate(); call it earlier to learn which outputs exist."""
        if self._container is not None:
            return
        try:
            c = self._open_container()
        except (av.FFmpegError, OSError) as e:
            raise SourceOpenError(f"{self.name}: cannot open {self.display}: {_reason(e, self.timeout)}") from None
        try:
            self._pick_streams(c)
        except Exception:
            c.close()
            raise
        self._container = c
        if c.start_time is not None:
            self._set_offset(Fraction(c.start_time, 1_000_000))

    def _open_container(self) -> Any:
        return av.open(self.url, "r", options=self.options or None, timeout=(self.timeout, self.timeout))

    def streams(self) -> dict[str, Any]:
        """The input streams read, by kind ("video", "audio"), once open."""
        return dict(self._streams)

    def _pick_streams(self, c: Any) -> None:
        found = {kind: c.streams.best(kind) for kind in ("video", "audio")}
        v = found["video"]
        if v is not None and v.disposition & av.stream.Disposition.attached_pic:
            # Cover art (an MP3's picture) is one still image, not a video track.
            moving = [s for s in c.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            found["video"] = moving[0] if moving else None
        have = [k for k, s in found.items() if s is not None]
        if not have:
            raise SourceOpenError(f"{self.name}: {self.display} has no video or audio stream "
                                  f"(format {c.format.name!r})")
        for kind in ("video", "audio"):
            port = self.outputs.get(kind)
            if port is None:
                continue
            s = found[kind]
            if s is None:
                if port.edges:
                    raise SourceOpenError(f"{self.name}: {self.display} has no {kind} stream "
                                          f"(it has {', '.join(have)}): link only its {' and '.join(have)}")
                del self.outputs[kind]
                continue
            if self.decode and s.codec_context is None:
                raise SourceOpenError(f"{self.name}: {self.display}: no decoder for its {kind} codec")
            port.caps = self._caps(kind, s)
            self._streams[kind] = s
        if not self.outputs:
            raise SourceOpenError(f"{self.name}: {self.display} has only {', '.join(have)}, "
                                  "which this source was told not to read")

    def _caps(self, kind: str, s: Any) -> Caps:
        cc = s.codec_context
        codec = codec_name(s)
        if kind == "video":
            fps = s.average_rate or s.guessed_rate
            fps = Fraction(fps) if fps else None
            return Caps("video", encoded=not self.decode, codec=None if self.decode else codec,
                        width=cc.width or None, height=cc.height or None, fps=fps,
                        pix_fmt=cc.pix_fmt if self.decode else None)
        layout = cc.layout.name if cc.layout is not None and cc.layout.nb_channels else None
        return Caps("audio", encoded=not self.decode, codec=None if self.decode else codec,
                    sample_rate=cc.sample_rate or None, layout=layout,
                    sample_fmt=cc.format.name if self.decode and cc.format is not None else None)

    def negotiate(self) -> None:
        self.open()
        for kind, port in self.outputs.items():
            if port.edges and kind not in self._streams:
                raise LinkError(f"{self.name}: {self.display} has no {kind} stream")

    def _set_offset(self, offset: Fraction) -> None:
        self._offset = offset
        for r in self._retimers.values():
            r.offset = offset
        for s in self._streams.values():
            self._shift[s.index] = round(offset / s.time_base) if s.time_base else 0

    # -- reading (node thread) ---------------------------------------------------
    def _start(self) -> None:
        """Demux only the streams someone listens to."""
        for kind, s in self._streams.items():
            port = self.outputs[kind]
            if not port.edges:
                continue
            self._ports[s.index] = port
            self._meters[s.index] = self._rates[kind] = _Meter(float(s.time_base or 0))
            if self.decode:
                fps = None
                if kind == "video":
                    s.codec_context.thread_type = "AUTO"
                    fps = s.average_rate or s.guessed_rate
                self._retimers[s.index] = Retimer(kind, self._offset or Fraction(0),
                                                  Fraction(fps) if fps else None)
        if self._offset is not None:
            self._set_offset(self._offset)
        self._packets = self._demux()

    def _demux(self) -> Iterator[av.Packet]:
        streams = [self._container.streams[i] for i in self._ports]
        return self._container.demux(streams)

    def _read_batch(self) -> tuple[list[tuple[OutputPort, Any, float]], bool]:
        out: list[tuple[OutputPort, Any, float]] = []
        reads = 0
        while len(out) < self.batch_items and reads < 64:
            assert self._packets is not None
            try:
                pkt = next(self._packets)
            except StopIteration:
                return out, True
            except _DATA_ERRORS as e:
                self._bad(e)
                self._packets = self._demux()  # the generator died with the error
                continue
            except (av.FFmpegError, OSError) as e:
                raise SourceReadError(f"reading {self.display} failed: "
                                      f"{_reason(e, self.timeout)}") from None
            reads += 1
            self._handle(pkt, out)
        return out, False

    def _handle(self, pkt: av.Packet, out: list[tuple[OutputPort, Any, float]]) -> None:
        idx = pkt.stream.index
        port = self._ports.get(idx)
        if port is None:
            return
        if pkt.size:
            self._meters[idx].add(pkt.size, pkt.dts if pkt.dts is not None else pkt.pts)
        if self._offset is None and pkt.size:
            ts = pkt.dts if pkt.dts is not None else pkt.pts
            if ts is not None and pkt.time_base is not None:
                self._set_offset(ts * pkt.time_base)
        if not self.decode:
            if not pkt.size:
                return  # the flush packet demux() ends with
            shift = self._shift.get(idx, 0)
            if shift:
                if pkt.pts is not None:
                    pkt.pts -= shift
                if pkt.dts is not None:
                    pkt.dts -= shift
            self.packets += 1
            self._errors_in_row = 0
            ts = pkt.dts if pkt.dts is not None else pkt.pts
            t = float(ts * pkt.time_base) if ts is not None and pkt.time_base else self.seconds
            self.seconds = max(self.seconds, t)
            out.append((port, pkt, t))
            return
        try:
            frames = pkt.stream.codec_context.decode(pkt)
        except av.FFmpegError as e:  # decoders do no I/O: whatever failed, the packet is bad
            self._bad(e)
            return
        if pkt.size:
            self.packets += 1
            self._errors_in_row = 0
        retime = self._retimers[idx]
        for f in frames:
            f = retime(f)
            if retime.kind == "video":
                self.frames += 1
                t = float(f.pts * VIDEO_TIME_BASE)
            else:
                self.samples += f.samples
                t = f.pts / f.sample_rate
            self.seconds = max(self.seconds, t)
            out.append((port, f, t))

    def _bad(self, e: BaseException) -> None:
        self.errors += 1
        self._errors_in_row += 1
        if self.errors == 1:
            log.warning("%s: skipping corrupt data in %s (%s)", self.name, self.display,
                        _reason(e, self.timeout))
        if self._errors_in_row > self.max_errors:
            raise SourceReadError(f"{self.display}: {self._errors_in_row} corrupt packets "
                                  f"in a row, giving up (last: {_reason(e, self.timeout)})")

    def _close(self) -> None:
        c, self._container = self._container, None
        self._packets = None
        if c is not None:
            c.close()

    # -- run -------------------------------------------------------------------
    async def run(self) -> None:
        tune_malloc()
        if self._container is None:
            await self.offload(self.open)
        clock = self.graph.clock if self.graph is not None else None
        base: float | None = None
        try:
            await self.offload(self._start)
            while not self.stop_requested:
                batch, eof = await self.offload(self._read_batch)
                for port, item, t in batch:
                    if self.realtime and clock is not None:
                        if base is None:
                            base = clock.now() - t
                        delay = base + t - clock.now()
                        if delay > 0 and await self.wait_stop(delay):
                            break
                    await port.emit(item)
                if eof:
                    break
        except asyncio.CancelledError:
            if self._executor is not None:
                self._executor.submit(self._close)  # close once the thread is free
            raise
        except BaseException:
            await self.offload(self._close)
            raise
        finally:
            if self.errors:
                log.warning("%s: skipped %d corrupt packets in %s", self.name, self.errors, self.display)
        await self.offload(self._close)

    def bitrates(self) -> dict[str, int]:
        """The input's average bitrate so far, by kind (bits/s of compressed media over its
        media time; 0 until two packets have been read)."""
        return {kind: m.bitrate() for kind, m in self._rates.items()}

    def stats(self) -> dict[str, Any]:
        return {"packets": self.packets, "frames": self.frames, "samples": self.samples,
                "errors": self.errors, "seconds": round(self.seconds, 3)}
