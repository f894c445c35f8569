"""Encoded frames as ``av.Packet``s a muxer can take as they are.

``Packetizer`` (one per output) turns each ``EncodedFrame`` into a packet with pts (graph
seconds in 1/48000 for audio, 1/90000 for video), dts, duration, key-frame flag and a
template stream (``packet.stream``) carrying what a muxer needs from the codec: Opus's
OpusHead, the picture size of the video (from the first key frame), H.264's SPS/PPS, AV1's
sequence header.

Audio stays continuous: consecutive Opus packets follow each other sample-exactly, and
a hole (a loss nobody repaired, a DTX pause, a mute) is filled with empty Opus frames,
which decoders take as lost and conceal (``fill_gaps``), so a file keeps its full length
and its A/V sync. Video pts only ever grow, by 1 ms at least.
"""
from __future__ import annotations

import io
import logging
import struct
from fractions import Fraction
from typing import Any

import av

from . import av1
from .frames import EncodedFrame, vp8_size

log = logging.getLogger("lkmedia.lkrtc.packets")

AUDIO_RATE = 48_000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
VIDEO_TIME_BASE = Fraction(1, 90_000)
#: Matroska/WebM keep milliseconds: two frames captured closer than that (a sender
#: catching up) would share a timestamp there, which players and ffmpeg refuse.
VIDEO_MIN_STEP = 90
AUDIO_SNAP = 0.012       # audio this close to where the last packet ended continues it
MAX_FILL = 600.0         # seconds of hole filled at most (longer: the pts jumps)
#: One 20 ms CELT frame of digital silence (TOC 0xf8: mono; 0xfc: stereo), as livekit-server
#: sends it itself (OpusSilenceFrame).
OPUS_SILENCE = bytes.fromhex("f8fffe")
OPUS_SILENCE_SAMPLES = 960
_ENCODERS = {"opus": "libopus", "vp8": "libvpx", "vp9": "libvpx-vp9", "av1": "libsvtav1", "h264": "libx264"}
_DECODERS = {"av1": "libdav1d"}  # (FFmpeg's own AV1 decoder needs a hardware one)

# Opus frame sizes in 48 kHz samples by TOC config (RFC 6716 §3.1)
_OPUS_FRAME = ([480, 960, 1920, 2880] * 3) + [480, 960] * 2 + [120, 240, 480, 960] * 4


def opus_samples(packet: bytes) -> int:
    """The duration of an Opus packet in 48 kHz samples (0 if malformed)."""
    if not packet:
        return 0
    toc = packet[0]
    size = _OPUS_FRAME[toc >> 3]
    code = toc & 3
    if code == 0:
        return size
    if code in (1, 2):
        return 2 * size
    return size * (packet[1] & 0x3F) if len(packet) > 1 else 0


def opus_head(channels: int, pre_skip: int = 0) -> bytes:
    """The OpusHead an Ogg or Matroska muxer writes (RFC 7845 §5.1, mapping family 0)."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, AUDIO_RATE, 0, 0)


def h264_parameter_sets(au: bytes) -> bytes:
    """The SPS and PPS NAL units of an Annex B access unit, in Annex B."""
    out = []
    for nal in au.split(b"\x00\x00\x01"):
        nal = nal.rstrip(b"\x00")
        if nal and (nal[0] & 0x1F) in (7, 8):
            out.append(b"\x00\x00\x00\x01" + nal)
    return b"".join(out)


def _decoded_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """Width and height by decoding one key frame (H.264, VP9: no header to read simply).
    A VP9 superframe of spatial layers decodes to a picture per layer: the largest is the
    track's."""
    sizes: list[tuple[int, int]] = []
    try:
        ctx: Any = av.CodecContext.create(_DECODERS.get(codec, codec), "r")
        for frame in [*ctx.decode(av.Packet(data)), *ctx.decode(None)]:
            sizes.append((frame.width, frame.height))
    except av.FFmpegError as e:
        log.warning("cannot read the picture size of a %s key frame: %s", codec, e)
    return max(sizes, key=lambda wh: wh[0] * wh[1]) if sizes else None


class Template:
    """A stream of an in-memory Matroska muxer, used only as ``packet.stream``: its codec
    parameters travel to the real muxer (``add_stream_from_template``)."""

    def __init__(self, codec: str, *, rate: int | None = None, **params: Any) -> None:
        self._a = av.open(io.BytesIO(), "w", format="matroska")
        seed = self._a.add_stream(_ENCODERS[codec], rate=rate)
        self._b = av.open(io.BytesIO(), "w", format="matroska")
        self.stream: Any = self._b.add_stream_from_template(seed, opaque=True)
        for k, v in params.items():
            setattr(self.stream.codec_context, k, v)
        # copies the context into the stream's codec parameters (not opened: no encoder)
        self._b.start_encoding()


def make_template(codec: str, first: EncodedFrame) -> Template | None:
    """The stream a track's packets belong to, or None for a video frame whose picture size
    cannot be read from it alone."""
    if codec == "opus":
        channels = 2 if first.data and first.data[0] & 0x04 else 1
        return Template("opus", rate=AUDIO_RATE, extradata=opus_head(channels),
                        layout="stereo" if channels == 2 else "mono")
    size = vp8_size(first.data) if codec == "vp8" else _decoded_size(codec, first.data)
    if size is None:
        return None
    params: dict[str, Any] = {"width": size[0], "height": size[1]}
    if codec == "h264":
        sets = h264_parameter_sets(first.data)
        if sets:
            params["extradata"] = sets
    elif codec == "av1":  # (the muxer's av1C is made of it)
        header = av1.sequence_header(first.data)
        if header:
            params["extradata"] = header
    params["pix_fmt"] = "yuv420p"
    return Template(codec, rate=30, **params)


class Packetizer:
    """EncodedFrames of one output to av.Packets (see module doc). ``offset``: what to
    subtract from a frame's local time (time.monotonic() scale) to get graph seconds."""

    def __init__(self, kind: str, codec: str, *, fill_gaps: bool = True) -> None:
        self.kind = kind
        self.codec = codec
        self.fill_gaps = fill_gaps and codec == "opus"
        self.template: Template | None = None
        self._next: int | None = None   # audio: the pts the next packet continues at
        self._last_pts = -1
        self._last_toc = 0
        self.packets = 0
        self.bytes = 0
        self.filled = 0                 # empty Opus frames put in holes
        self.filled_seconds = 0.0
        self.dropped = 0                # frames dropped: back in time, or before a usable first one
        self.silent_seconds = 0.0       # silence written while the publisher sent nothing
        self.need_key = False           # video: no usable first frame yet (ask for a key frame)

    def __call__(self, frame: EncodedFrame, offset: float) -> list[av.Packet]:
        if self.template is None:
            self.template = self._first(frame)
            if self.template is None:
                return []
        t = frame.time - offset
        if self.kind == "audio":
            return self._audio(frame, t)
        return self._video(frame, t)

    def _first(self, frame: EncodedFrame) -> Template | None:
        """The stream's template, from a frame that decodes alone (video: a key frame whose
        picture size can be read). Until one comes, frames are dropped and ``need_key`` says
        a key frame should be asked for (one that had lost a packet, or came without its
        parameter sets, left every frame after it failing until the publisher sent another)."""
        if self.kind == "video" and not frame.keyframe:
            self.dropped += 1
            return None
        template = make_template(self.codec, frame)
        if template is None:
            self.dropped += 1
            self.need_key = True
            return None
        self.need_key = False
        return template

    def _packet(self, data: bytes, pts: int, duration: int, time_base: Fraction, key: bool) -> av.Packet:
        p = av.Packet(data)
        p.pts = p.dts = pts
        p.duration = duration
        p.time_base = time_base
        p.is_keyframe = key
        assert self.template is not None
        p.stream = self.template.stream
        return p

    def _audio(self, frame: EncodedFrame, t: float) -> list[av.Packet]:
        n = opus_samples(frame.data) if self.codec == "opus" else 960
        if n <= 0:
            self.dropped += 1
            return []
        pts = round(t * AUDIO_RATE)
        out: list[av.Packet] = []
        nxt = self._next
        if nxt is not None:
            if abs(pts - nxt) <= AUDIO_SNAP * AUDIO_RATE:
                pts = nxt                          # continuous: ignore rounding and jitter
            elif pts < nxt:
                self.dropped += 1                  # would overlap what was sent (a clock step back)
                return []
            elif self.fill_gaps and pts - nxt <= MAX_FILL * AUDIO_RATE:
                out = self._fill(nxt, pts)
                pts = nxt + sum(p.duration or 0 for p in out)
        self._last_toc = frame.data[0]
        out.append(self._packet(frame.data, pts, n, AUDIO_TIME_BASE, True))
        self._next = pts + n
        self._count(out)
        return out

    def _fill(self, start: int, end: int) -> list[av.Packet]:
        """Empty frames (TOC only: 'lost', concealed by the decoder) from start to the frame
        boundary nearest end, where the next packet goes (to the nearest, not the last one
        before it: after a clock move of a ms back, that put every later packet a frame early)."""
        toc = self._last_toc & 0xFC            # same mode, bandwidth and channels; one frame
        size = _OPUS_FRAME[toc >> 3]
        count = (2 * (end - start) + size) // (2 * size)
        filler = bytes([toc])
        out = [self._packet(filler, start + i * size, size, AUDIO_TIME_BASE, True) for i in range(count)]
        self.filled += count
        self.filled_seconds += count * size / AUDIO_RATE
        return out

    def silence(self, start: float, until: float) -> list[av.Packet]:
        """Opus silence from where the audio got to (from ``start`` if it has not begun) up
        to about ``until`` (graph seconds): what a track is heard as while its publisher
        sends nothing at all (a silent or muted microphone, ``lk load-test``'s audio)."""
        if self.codec != "opus":
            return []
        frame = bytes([OPUS_SILENCE[0] | (self._last_toc & 0x04)]) + OPUS_SILENCE[1:]
        nxt = self._next if self._next is not None else round(start * AUDIO_RATE)
        count = (round(until * AUDIO_RATE) - nxt) // OPUS_SILENCE_SAMPLES
        if count <= 0:
            return []
        if self.template is None:
            self.template = make_template("opus", EncodedFrame(frame, 0, True, 0.0))
        out = [self._packet(frame, nxt + i * OPUS_SILENCE_SAMPLES, OPUS_SILENCE_SAMPLES, AUDIO_TIME_BASE, True)
               for i in range(count)]
        self._next = nxt + count * OPUS_SILENCE_SAMPLES
        self.silent_seconds += count * OPUS_SILENCE_SAMPLES / AUDIO_RATE
        self._count(out)
        return out

    def _video(self, frame: EncodedFrame, t: float) -> list[av.Packet]:
        pts = round(t * 90_000)
        if pts < self._last_pts + VIDEO_MIN_STEP:
            pts = self._last_pts + VIDEO_MIN_STEP
        self._last_pts = pts
        out = [self._packet(frame.data, pts, 0, VIDEO_TIME_BASE, frame.keyframe)]
        self._count(out)
        return out

    def _count(self, packets: list[av.Packet]) -> None:
        self.packets += len(packets)
        self.bytes += sum(p.size for p in packets)
