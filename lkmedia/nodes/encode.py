"""Encoders: raw av frames in, av.Packet out, on the node's own worker thread.

Each encoder keeps its codec in a *template stream* of an in-memory container, opened
with a global header. Sinks create their streams from ``packet.stream`` (the template),
so one encode can feed MP4, MPEG-TS, FLV and WebM muxers at once.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import av
from av.audio.resampler import AudioResampler
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from ..core import Caps, Gap, Processor
from ..core.edge import Policy
from .presets import DEFAULT_AUDIO_BITRATE, DEFAULT_KEYFRAME_INTERVAL, get_preset

VIDEO_TIME_BASE = Fraction(1, 90_000)
MAX_SILENCE_FILL = 60.0  # seconds of hole in an audio input filled with silence (longer: the clock jumps)

#: Encoder name -> codec name that edges and muxers talk about.
VIDEO_CODECS = {"libx264": "h264", "h264": "h264", "libvpx": "vp8", "vp8": "vp8",
                "libvpx-vp9": "vp9", "vp9": "vp9", "libsvtav1": "av1", "av1": "av1"}
AUDIO_CODECS = {"aac": "aac", "libopus": "opus", "opus": "opus", "libmp3lame": "mp3",
                "mp3": "mp3", "pcm_s16le": "pcm_s16le"}
_ENCODER_NAME = {"h264": "libx264", "vp8": "libvpx", "vp9": "libvpx-vp9", "av1": "libsvtav1",
                 "opus": "libopus", "mp3": "libmp3lame"}
H264_PROFILES = {"baseline": "baseline", "h264_baseline": "baseline", "main": "main",
                 "h264_main": "main", "high": "high", "h264_high": "high"}


def _template_container() -> Any:
    # Matroska sets AVFMT_GLOBALHEADER, so codecs put SPS/PPS (or AudioSpecificConfig) in
    # extradata, which every muxer we feed knows how to use.
    return av.open(io.BytesIO(), "w", format="matroska")


class VideoEncoder(Processor):
    """H.264 (libx264), VP8/VP9 (libvpx) or AV1 (SVT-AV1).

    ``preset`` is one of LiveKit's EncodingOptionsPreset names; explicit width, height,
    fps and bitrate override it. Frames of another size or pixel format are scaled.
    """

    threaded = True

    def __init__(
        self,
        codec: str = "libx264",
        *,
        preset: str | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        bitrate: int | None = None,
        keyframe_interval: float | None = None,
        profile: str | None = None,
        speed: str = "veryfast",
        threads: int = 0,
        options: dict[str, str] | None = None,
        size_from_input: bool = False,
        name: str | None = None,
        capacity: int = 4,
        policy: Policy = Policy.BLOCK,
    ) -> None:
        super().__init__(name, policy=policy, capacity=capacity)
        self.encoder_name = _ENCODER_NAME.get(codec, codec)
        if self.encoder_name not in VIDEO_CODECS:
            raise ValueError(f"{self.name}: unknown video codec {codec!r}; use one of libx264, libvpx, libvpx-vp9, libsvtav1")
        self.codec = VIDEO_CODECS[self.encoder_name]
        p = get_preset(preset) if preset else get_preset("H264_720P_30")
        self.width = width or p.width
        self.height = height or p.height
        self.fps = Fraction(fps if fps is not None else p.fps).limit_denominator(1001)
        self.bitrate = bitrate or p.bitrate
        self.keyframe_interval = keyframe_interval or DEFAULT_KEYFRAME_INTERVAL
        for what, v in (("width", self.width), ("height", self.height)):
            if v < 16 or v % 2:
                raise ValueError(f"{self.name}: {what} must be even and at least 16, got {v}")
        if self.fps <= 0 or self.bitrate <= 0 or self.keyframe_interval <= 0:
            raise ValueError(f"{self.name}: fps, bitrate and keyframe_interval must be positive")
        self.profile = None
        if profile:
            if profile.lower() not in H264_PROFILES:
                raise ValueError(f"{self.name}: unknown H.264 profile {profile!r} (baseline, main, high)")
            self.profile = H264_PROFILES[profile.lower()]
        self.speed = speed
        self.threads = threads
        self.options = dict(options or {})
        #: Keep the size of the first frame (track egress records a track as it is sent).
        self.size_from_input = size_from_input
        self.outputs["out"].caps = Caps("video", True, self.codec, self.width, self.height, self.fps)
        self._container: Any = None
        self.stream: Any = None
        self._reformatter = VideoReformatter()
        self._last_pts = -1
        self._next_key: int | None = None
        self.frames_in = 0
        self.skipped = 0  # frames with no picture
        self.frames_out = 0
        self.bytes_out = 0

    def accept(self, caps: Caps) -> str | None:
        if caps.media != "video" or caps.encoded:
            return f"{self.name} encodes raw video, got {caps.describe()}"
        return None

    async def setup(self) -> None:
        if not self.size_from_input:
            await self.offload(self._open)

    def _open(self) -> None:
        # Key frames are forced by timestamp (process()), so live sources whose frame rate
        # wanders still get one every keyframe_interval seconds (HLS segments, stream GOPs);
        # the codec's own GOP is only a backstop.
        gop = max(1, round(float(self.fps) * self.keyframe_interval))
        opts: dict[str, str] = {"g": str(gop * 4)}
        if self.encoder_name == "libx264":
            opts.update({"preset": self.speed, "sc_threshold": "0", "forced-idr": "1",
                         "bf": "0" if self.profile == "baseline" else "2"})
            # VBV so the rate holds for live streams (RTMP wants CBR-like output).
            opts.update({"maxrate": str(self.bitrate), "bufsize": str(self.bitrate * 2)})
            if self.profile:
                opts["profile"] = self.profile
        elif self.encoder_name in ("libvpx", "libvpx-vp9"):
            opts.update({"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                         "maxrate": str(self.bitrate), "bufsize": str(self.bitrate * 2)})
            if self.encoder_name == "libvpx-vp9":
                opts["row-mt"] = "1"
        elif self.encoder_name == "libsvtav1":
            opts.update({"preset": "10"})
        opts.update(self.options)
        self._container = _template_container()
        s = self._container.add_stream(self.encoder_name, rate=self.fps, options=opts)
        s.width, s.height, s.pix_fmt = self.width, self.height, "yuv420p"
        s.bit_rate = self.bitrate
        s.time_base = VIDEO_TIME_BASE
        s.codec_context.time_base = VIDEO_TIME_BASE
        if self.threads:
            s.codec_context.thread_count = self.threads
        # PyAV defaults to slice threads, which x264 turns into sliced_threads=1: lower
        # latency but ~8 % more CPU than the frame threads ffmpeg and gst use.
        s.codec_context.thread_type = "FRAME"
        self._container.start_encoding()  # opens the codec and fills extradata
        self.stream = s

    def process(self, frame: Any) -> Iterable[av.Packet]:
        if isinstance(frame, Gap):
            return ()
        if frame.width < 2 or frame.height < 2:
            self.skipped += 1  # no picture to scale or encode (the end of a track)
            return ()
        if self.stream is None:
            if self.size_from_input:
                self.width, self.height = frame.width & ~1, frame.height & ~1
            self._open()
        self.frames_in += 1
        if frame.width != self.width or frame.height != self.height or frame.format.name != "yuv420p":
            src = frame
            frame = self._reformatter.reformat(src, self.width, self.height, "yuv420p",
                                               interpolation="BILINEAR")
            frame.pts, frame.time_base = src.pts, src.time_base
        if frame.pts is None or frame.time_base is None:
            raise ValueError(f"{self.name}: frame without a timestamp")
        pts = round(frame.pts * frame.time_base / VIDEO_TIME_BASE)
        if pts <= self._last_pts:  # libx264 refuses timestamps that go back
            return ()
        self._last_pts = pts
        if self._next_key is None or pts >= self._next_key:
            # Frames may be shared by several encoders; a forced key frame there is harmless.
            # The schedule stays on the grid of the first key frame: no drift over hours.
            frame.pict_type = PictureType.I
            step = round(self.keyframe_interval * 90_000)
            self._next_key = pts + step if self._next_key is None else self._next_key + step
            while self._next_key <= pts:
                self._next_key += step
        elif frame.pict_type == PictureType.I:
            frame.pict_type = PictureType.NONE
        if frame.time_base != VIDEO_TIME_BASE:
            # Frames may be shared by several encoders: every video encoder uses the
            # same time base, so this rewrite is the same value whoever makes it.
            frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        return self._count(self.stream.encode(frame))

    def _count(self, packets: list[av.Packet]) -> list[av.Packet]:
        for p in packets:
            self.frames_out += 1
            self.bytes_out += p.size
        return packets

    def flush(self) -> Iterable[av.Packet]:
        if self.stream is None:
            return ()
        return self._count(self.stream.encode(None))

    def stats(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, "bytes_out": self.bytes_out}


def _silence(like: av.AudioFrame, samples: int) -> Iterator[av.AudioFrame]:
    """``samples`` of digital silence in ``like``'s format, layout and rate, in frames of a second at most."""
    rate = like.sample_rate
    while samples > 0:
        n = min(samples, rate)
        f = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=n)
        for plane in f.planes:
            plane.update(bytes(plane.buffer_size))
        f.sample_rate = rate
        yield f
        samples -= n


class AudioEncoder(Processor):
    """AAC, Opus, MP3 or PCM. Input frames are resampled to what the codec takes."""

    threaded = True

    def __init__(
        self,
        codec: str = "aac",
        *,
        bitrate: int = DEFAULT_AUDIO_BITRATE,
        sample_rate: int = 48_000,
        channels: int = 2,
        options: dict[str, str] | None = None,
        name: str | None = None,
        capacity: int = 16,
    ) -> None:
        super().__init__(name, capacity=capacity)
        self.encoder_name = _ENCODER_NAME.get(codec, codec)
        if self.encoder_name not in AUDIO_CODECS:
            raise ValueError(f"{self.name}: unknown audio codec {codec!r}; use one of aac, opus, mp3, pcm_s16le")
        self.codec = AUDIO_CODECS[self.encoder_name]
        if self.codec == "opus" and sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"{self.name}: Opus takes 8, 12, 16, 24 or 48 kHz, not {sample_rate}")
        if channels not in (1, 2):
            raise ValueError(f"{self.name}: channels must be 1 or 2")
        self.bitrate = bitrate
        self.sample_rate = sample_rate
        self.layout = "stereo" if channels == 2 else "mono"
        self.options = dict(options or {})
        self.outputs["out"].caps = Caps("audio", True, self.codec, sample_rate=sample_rate, layout=self.layout)
        self._container: Any = None
        self.stream: Any = None
        self._resampler: AudioResampler | None = None
        self._next_pts: int | None = None
        self._in_expected: int | None = None
        self.samples_in = 0
        self.bytes_out = 0

    def accept(self, caps: Caps) -> str | None:
        if caps.media != "audio" or caps.encoded:
            return f"{self.name} encodes raw audio, got {caps.describe()}"
        return None

    async def setup(self) -> None:
        await self.offload(self._open)

    def _open(self) -> None:
        self._container = _template_container() if self.codec != "pcm_s16le" else av.open(io.BytesIO(), "w", format="wav")
        s = self._container.add_stream(self.encoder_name, rate=self.sample_rate, options=self.options)
        s.layout = self.layout
        if self.codec != "pcm_s16le":
            s.bit_rate = self.bitrate
        s.time_base = Fraction(1, self.sample_rate)
        self._container.start_encoding()
        self.stream = s
        cc = s.codec_context
        fmt = cc.format.name if cc.format else "s16"
        self._resampler = AudioResampler(format=fmt, layout=self.layout, rate=self.sample_rate,
                                         frame_size=cc.frame_size or None)

    def process(self, frame: Any) -> Iterable[av.Packet]:
        if isinstance(frame, Gap):
            return ()
        if self.stream is None:
            self._open()
        assert self._resampler is not None
        out: list[av.Packet] = []
        if frame.pts is not None and frame.time_base is not None:
            start = round(frame.pts * frame.time_base * self.sample_rate)
            if self._next_pts is None:
                self._next_pts = start
            elif self._in_expected is not None:
                hole = start - self._in_expected
                if hole > self.sample_rate * MAX_SILENCE_FILL:
                    # A jump in the input (a new segment): move the output clock too.
                    self._next_pts += hole
                elif hole > self.sample_rate // 500:
                    # A hole (lost or DTX-skipped packets): silence, so what follows keeps its time.
                    for gap in _silence(frame, hole * frame.sample_rate // self.sample_rate):
                        for f in self._resampler.resample(gap):
                            out.extend(self._encode(f))
            self._in_expected = start + round(frame.samples * self.sample_rate / (frame.sample_rate or self.sample_rate))
        self.samples_in += frame.samples
        for f in self._resampler.resample(frame):
            out.extend(self._encode(f))
        return out

    def _encode(self, f: Any) -> list[av.Packet]:
        # Timestamps count samples from the first frame's time, so the audio track
        # stays continuous and in step with the video clock.
        f.pts = self._next_pts
        f.time_base = Fraction(1, self.sample_rate)
        self._next_pts = (self._next_pts or 0) + f.samples
        pkts = self.stream.encode(f)
        for p in pkts:
            self.bytes_out += p.size
        return pkts

    def flush(self) -> Iterable[av.Packet]:
        if self.stream is None or self._resampler is None:
            return ()
        out: list[av.Packet] = []
        for f in self._resampler.resample(None):
            out.extend(self._encode(f))
        out.extend(self.stream.encode(None))
        return out

    def stats(self) -> dict[str, Any]:
        return {"samples_in": self.samples_in, "bytes_out": self.bytes_out}
