"""Decoding: av.Packet in, raw frames on lkmedia's time bases out.

Raw video leaves with ``time_base = 1/90000``, raw audio with ``1/sample_rate`` and pts
counted in samples. ``Retimer`` does that conversion for FileSource (which decodes
itself) and for the Decoder node (packets from ``FileSource(decode=False)`` or any
other packet edge), so both follow the same rules.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import av

from ..core import Caps, Processor

log = logging.getLogger("lkmedia.nodes.decode")

VIDEO_TIME_BASE = Fraction(1, 90_000)
#: Where FFmpeg's default decoder for a codec is not the software one we want.
#: libdav1d: FFmpeg's own AV1 decoder needs a hardware one. libvpx for VP9, as browsers and
#: the Go egress decode it: a superframe of spatial layers (libwebrtc's SVC) gives its top
#: layer, where FFmpeg's own decoder gives a picture per layer.
_PREFERRED_DECODER = {"av1": "libdav1d", "vp9": "libvpx-vp9"}


def decoder_codec(codec: str) -> av.Codec:
    """The software decoder for a codec name ("h264", "aac", "opus", "av1", ...)."""
    for name in (_PREFERRED_DECODER.get(codec), codec):
        if name is None:
            continue
        try:
            return av.Codec(name, "r")
        except (av.codec.codec.UnknownCodecError, RuntimeError, ValueError):
            continue
    raise ValueError(f"no decoder for codec {codec!r}")


def codec_name(stream: Any) -> str:
    """The codec an edge talks about ("mp3", not FFmpeg's decoder name "mp3float")."""
    cc = stream.codec_context
    if cc is not None and cc.codec is not None:
        return cc.codec.canonical_name
    return stream.codec.canonical_name if getattr(stream, "codec", None) else "unknown"


def open_decoder(template: Any, codec: str | None, *, threads: bool = True) -> Any:
    """A decoder context of our own, set up from a template stream's parameters.

    The template's context may be an encoder or shared with another node, so it is
    never used to decode: the parameters the decoder needs are copied instead.
    """
    tcc = template.codec_context if template is not None else None
    name = codec or (codec_name(template) if template is not None else None)
    if not name:
        raise ValueError("cannot tell which decoder to open: no codec and no template stream")
    cc: Any = av.CodecContext.create(decoder_codec(name), "r")
    if tcc is not None:
        if tcc.extradata:
            cc.extradata = tcc.extradata
        if tcc.type == "video":
            if tcc.width and tcc.height:
                cc.width, cc.height = tcc.width, tcc.height
            if tcc.pix_fmt:
                cc.pix_fmt = tcc.pix_fmt
        elif tcc.type == "audio":
            if tcc.sample_rate:
                cc.sample_rate = tcc.sample_rate
            if tcc.layout is not None and tcc.layout.nb_channels:
                cc.layout = tcc.layout
            if tcc.format is not None and not tcc.is_encoder:
                cc.format = tcc.format
    if threads and cc.type == "video":
        cc.thread_type = "AUTO"
    return cc


class Retimer:
    """Puts frames fresh from a decoder on lkmedia's time bases, ``offset`` s earlier.

    Decoded frames belong to whoever decoded them, so they are retimed in place.
    Audio stays sample-continuous across small rounding jitter (coarse container time
    bases such as WebM's 1 ms), while real jumps are kept.
    """

    def __init__(self, kind: str, offset: Fraction = Fraction(0), fps: Fraction | None = None) -> None:
        self.kind = kind
        self.offset = offset
        self.step = round(VIDEO_TIME_BASE.denominator / fps) if fps else 3000
        self.time_base: Fraction | None = None  # for frames that come without one (flush)
        self._last: int | None = None
        self._next: int | None = None  # audio: the pts that continues the last frame

    def __call__(self, frame: Any) -> Any:
        return self.video(frame) if self.kind == "video" else self.audio(frame)

    def _seconds(self, frame: Any) -> Fraction | None:
        tb = frame.time_base or self.time_base
        if frame.pts is None or tb is None:
            return None
        return frame.pts * tb - self.offset

    def video(self, frame: av.VideoFrame) -> av.VideoFrame:
        t = self._seconds(frame)
        if t is None:
            pts = 0 if self._last is None else self._last + self.step
        else:
            pts = round(t / VIDEO_TIME_BASE)
        tb = frame.time_base or self.time_base
        if frame.duration and tb is not None:
            frame.duration = round(frame.duration * tb / VIDEO_TIME_BASE)
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        self._last = pts
        return frame

    def audio(self, frame: av.AudioFrame) -> av.AudioFrame:
        rate = frame.sample_rate
        t = self._seconds(frame)
        if t is None:
            pts = self._next if self._next is not None else 0
        else:
            pts = round(t * rate)
            # Within 3 ms of where the last frame ended: the same stream, rounded.
            if self._next is not None and abs(pts - self._next) <= rate * 3 // 1000:
                pts = self._next
        frame.pts, frame.time_base = pts, Fraction(1, rate)
        frame.duration = frame.samples
        self._next = pts + frame.samples
        return frame


class Decoder(Processor):
    """Packets (``FileSource(decode=False)``, an ingress, ...) to raw frames.

    The decoder is opened from the first packet's template stream (``packet.stream``),
    so extradata (SPS/PPS, AudioSpecificConfig, OpusHead) comes along; packets of another
    template (a live source's next track, maybe in another codec) get a decoder of their
    own, after what the last one held is flushed. Undecodable packets are skipped and
    counted in ``stats()``.
    """

    threaded = True

    def __init__(self, name: str | None = None, *, max_errors: int = 50, capacity: int = 16) -> None:
        super().__init__(name, capacity=capacity)
        self.max_errors = max_errors
        self._cc: Any = None
        self._template: Any = None
        self._retimer: Retimer | None = None
        self._kind: str | None = None
        self._codec: str | None = None
        self.packets = 0
        self.frames = 0
        self.errors = 0
        self._errors_in_row = 0

    def accept(self, caps: Caps) -> str | None:
        if not caps.encoded:
            return f"{self.name} decodes packets, got {caps.describe()}"
        return None

    def negotiate(self) -> None:
        super().negotiate()
        caps = self.inputs["in"].caps
        if caps is None:  # learnt from the first packet's stream instead
            return
        self._kind = caps.media
        self._codec = caps.codec
        # An audio packet decodes in tens of microseconds, less than the hop to a thread costs.
        self.threaded = caps.media != "audio"
        self.outputs["out"].caps = Caps(
            caps.media, width=caps.width, height=caps.height, fps=caps.fps,
            sample_rate=caps.sample_rate, layout=caps.layout)

    def _open(self, packet: av.Packet) -> None:
        self._template = packet.stream
        self._cc = open_decoder(packet.stream, self._codec)
        kind = self._kind or self._cc.type
        fps = None
        if kind == "video" and self.inputs["in"].caps is not None:
            fps = self.inputs["in"].caps.fps
        self._retimer = Retimer(kind, fps=fps)

    def process(self, packet: Any) -> Iterable[Any]:
        if not isinstance(packet, av.Packet):
            return ()  # a Gap or other in-band item has no meaning on a packet edge
        held: list[Any] = []
        if self._cc is None:
            self._open(packet)
        elif packet.stream is not None and packet.stream is not self._template:
            held = list(self.flush())
            self._open(packet)
        assert self._retimer is not None
        self.packets += 1
        if packet.time_base is not None:
            self._retimer.time_base = packet.time_base
        try:
            frames = self._cc.decode(packet)
        except av.FFmpegError as e:
            self._bad(e)
            return held
        self._errors_in_row = 0
        return held + self._out(frames)

    def _bad(self, e: Exception) -> None:
        self.errors += 1
        self._errors_in_row += 1
        if self.errors == 1:
            log.warning("%s: skipping undecodable packets (%s)", self.name, e)
        if self._errors_in_row > self.max_errors:
            raise ValueError(f"{self._errors_in_row} undecodable packets in a row (last: {e})")

    def _out(self, frames: list[Any]) -> list[Any]:
        assert self._retimer is not None
        out = [self._retimer(f) for f in frames]
        self.frames += len(out)
        return out

    def flush(self) -> Iterable[Any]:
        if self._cc is None:
            return ()
        try:
            return self._out(self._cc.decode(None))
        except av.FFmpegError as e:
            log.warning("%s: flushing the decoder failed: %s", self.name, e)
            return ()

    def stats(self) -> dict[str, Any]:
        return {"packets": self.packets, "frames": self.frames, "errors": self.errors}
