"""RoomSink: publish a graph's raw video and audio into a LiveKit room (what an ingress's
session ends in).

It joins with a token, publishes a ``VideoSource`` (libwebrtc encodes it: H.264 or VP8,
simulcast layers made by the SDK) and an ``AudioSource`` (libwebrtc encodes Opus) the
first time each input delivers a frame, and releases every frame at its media time on
one timeline shared by both inputs: the first frame of either is sent ``latency`` after
it arrived, each later one at ``start + (pts - first pts)``, so what left together in the
input leaves together here (libwebrtc stamps video with its capture time and audio as it
is played out of the source). A frame already late goes at once.

Video may instead come as encoded H.264 or VP8 packets: they go into the room as they came
(passthrough, lkmedia.sinks.room_encoded), one layer, nothing encoded here.

``on_published(kind, track_sid)`` is called when a track is published (the Go ingress
reports PUBLISHING there). A room that cannot be joined fails the graph, naming the URL.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from av.audio.resampler import AudioResampler
from livekit import rtc

from ..core import EOS, Caps, Gap, LkmediaError, Sink
from ..redact import redact_url
from .room_capture import DirectAudio, capture_video
from .room_encoded import PASSTHROUGH_CODECS, EncodedVideo

log = logging.getLogger("lkmedia.sinks.room")

AUDIO_CHUNK_MS = 10  # what libwebrtc takes from an AudioSource at a time (direct capture: exactly 10 ms)
# (Captures through the source's queue, 40 ms each, cost a quarter of the FFI round trips but
# drifted: each time the queue ran dry under load, libwebrtc skipped a 10 ms tick and all the
# audio after it played that much later; A/V offsets grew to 90-120 ms within 7 s.)
CODECS = {"h264": rtc.VideoCodec.H264, "vp8": rtc.VideoCodec.VP8, "vp9": rtc.VideoCodec.VP9,
          "av1": rtc.VideoCodec.AV1}


class RoomError(LkmediaError):
    """The room could not be joined or a track could not be published."""


@dataclass(frozen=True)
class VideoPublishing:
    """How video goes into the room: libwebrtc's encoder settings for the top layer."""

    codec: str = "h264"
    max_bitrate: int = 1_900_000
    max_fps: float = 30.0
    simulcast: bool = True
    name: str = "video"
    source: rtc.TrackSource.ValueType = rtc.TrackSource.SOURCE_CAMERA

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"video codec {self.codec!r} cannot be published; use one of {sorted(CODECS)}")


@dataclass(frozen=True)
class AudioPublishing:
    """How audio goes into the room: Opus at ``bitrate`` with ``channels``."""

    bitrate: int = 96_000
    channels: int = 2
    dtx: bool = True
    name: str = "audio"
    source: rtc.TrackSource.ValueType = rtc.TrackSource.SOURCE_MICROPHONE
    sample_rate: int = 48_000

    def __post_init__(self) -> None:
        if self.channels not in (1, 2):
            raise ValueError(f"audio channels must be 1 or 2, not {self.channels}")


class RoomSink(Sink):
    """Publishes one raw video input and/or one raw audio input into a room as the
    participant ``token`` names. Link raw frames (decode, scale first)."""

    dynamic_inputs = False
    error_scope = "graph"
    connect_timeout = 15.0

    def __init__(
        self,
        url: str,
        token: str,
        *,
        video: VideoPublishing | None = VideoPublishing(),
        audio: AudioPublishing | None = AudioPublishing(),
        latency: float = 0.05,
        on_published: Callable[[str, str], None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if video is None and audio is None:
            raise ValueError("RoomSink needs video, audio or both")
        self.url = url
        self._token = token
        self.video, self.audio = video, audio
        self.latency = latency
        self.on_published = on_published
        if video is not None:
            self.add_input("video", _accept_video, capacity=4)
        if audio is not None:
            self.add_input("audio", lambda c: None if c.media == "audio" and not c.encoded
                           else f"takes raw audio, got {c.describe()}", capacity=16)
        self.room: rtc.Room | None = None
        self._vsrc: rtc.VideoSource | None = None
        self._asrc: rtc.AudioSource | None = None
        self._resampler: AudioResampler | None = None
        self._audio_in: DirectAudio | None = None
        self._encoded: EncodedVideo | None = None  # passthrough
        self.tracks: dict[str, str] = {}  # kind -> track sid
        self.room_sid = ""
        self._start: tuple[float, float] | None = None  # (monotonic, media seconds) of the first frame
        self.frames = 0
        self.samples = 0
        self._chunks = 0  # audio chunks handed over
        self.late = 0

    def accept_input(self, caps: Caps) -> str | None:
        return None

    # -- room ------------------------------------------------------------------
    async def setup(self) -> None:
        room = rtc.Room()
        try:
            await asyncio.wait_for(room.connect(self.url, self._token, rtc.RoomOptions(auto_subscribe=False)),
                                   self.connect_timeout)
        except (rtc.ConnectError, TimeoutError, OSError) as e:
            with contextlib.suppress(Exception):
                await room.disconnect()
            raise RoomError(f"could not join the room at {redact_url(self.url)}: "
                            f"{e or 'timed out'}") from e
        self.room = room
        with contextlib.suppress(Exception):
            self.room_sid = await asyncio.wait_for(room.sid, 5)  # (an async property)

    async def _publish(self, kind: str, frame: Any) -> None:
        if kind == "video":
            assert self.video is not None
            self._vsrc = rtc.VideoSource(frame.width, frame.height)
            track: Any = rtc.LocalVideoTrack.create_video_track(self.video.name, self._vsrc)
            opts = rtc.TrackPublishOptions(source=self.video.source, video_codec=CODECS[self.video.codec],
                                           simulcast=self.video.simulcast)
            opts.video_encoding.max_bitrate = self.video.max_bitrate
            opts.video_encoding.max_framerate = self.video.max_fps
        else:
            assert self.audio is not None
            self._asrc = rtc.AudioSource(self.audio.sample_rate, self.audio.channels, queue_size_ms=0)
            self._resampler = AudioResampler(format="s16", layout="stereo" if self.audio.channels == 2 else "mono",
                                             rate=self.audio.sample_rate,
                                             frame_size=self.audio.sample_rate * AUDIO_CHUNK_MS // 1000)
            self._audio_in = DirectAudio(self._asrc, self.room)
            track = rtc.LocalAudioTrack.create_audio_track(self.audio.name, self._asrc)
            opts = rtc.TrackPublishOptions(source=self.audio.source, dtx=self.audio.dtx, red=False)
            opts.audio_encoding.max_bitrate = self.audio.bitrate
        await self._publish_track(kind, track, opts)

    async def _publish_track(self, kind: str, track: Any, opts: rtc.TrackPublishOptions) -> None:
        assert self.room is not None
        try:
            pub = await self.room.local_participant.publish_track(track, opts)
        except Exception as e:
            raise RoomError(f"could not publish the {kind} track: {e}") from e
        self.tracks[kind] = pub.sid
        log.info("%s: published %s track %s", self.name, kind, pub.sid)
        if self.on_published is not None:
            self.on_published(kind, pub.sid)

    # -- pacing ----------------------------------------------------------------
    async def _wait_for(self, t: float) -> None:
        """Sleep until media time ``t`` (seconds) is due on the shared timeline."""
        if self._start is None:
            self._start = (time.monotonic() + self.latency, t)
        due = self._start[0] + (t - self._start[1])
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.1:
            self.late += 1

    async def _send_encoded(self, packet: av.Packet) -> None:
        """Passthrough: the publisher's own access units (room_encoded)."""
        assert self.video is not None
        if self._encoded is None:
            self._encoded = EncodedVideo(packet)
            track, opts = self._encoded.track(self.video.name, self.video.source, self.video.max_bitrate)
            await self._publish_track("video", track, opts)
        if packet.pts is not None and packet.time_base is not None:
            await self._wait_for(float(packet.pts * packet.time_base))
        self._encoded.send(packet)
        self.frames += 1

    async def _send_video(self, frame: Any) -> None:
        if isinstance(frame, av.Packet):
            await self._send_encoded(frame)
            return
        if frame.width < 2 or frame.height < 2:
            return
        if self._vsrc is None:
            await self._publish("video", frame)
        assert self._vsrc is not None
        if frame.pts is not None and frame.time_base is not None:
            await self._wait_for(float(frame.pts * frame.time_base))
        capture_video(self._vsrc, frame)
        self.frames += 1

    async def _send_audio(self, frame: av.AudioFrame) -> None:
        if self._asrc is None:
            await self._publish("audio", frame)
        assert self._asrc is not None and self._resampler is not None
        for chunk in self._resampler.resample(frame):
            await self._capture_audio(chunk)

    async def _capture_audio(self, chunk: av.AudioFrame) -> None:
        """One resampled 10 ms chunk, due at its own pts (which counts the resampler's
        leftovers: the input frame's would date a chunk that began with them up to 10 ms
        early). Chunks go in pairs, counted from the first one sent, each pair at its first
        chunk's time: libwebrtc's Opus encoder makes a 20 ms packet of every two chunks and
        dates it by when the second came in, so chunk-by-chunk pacing dated every packet
        10 ms late (A/V offsets 13.5 ms against 4 ms paired, measured through an encoded
        subscriber). Under 10 ms left at the end is dropped: direct capture takes exactly 10 ms."""
        assert self._audio_in is not None
        if chunk.pts is not None and chunk.time_base is not None:
            second = self._chunks % 2 * AUDIO_CHUNK_MS / 1000
            await self._wait_for(float(chunk.pts * chunk.time_base) - second)
        await self._audio_in.capture(chunk)
        self._chunks += 1
        self.samples += chunk.samples

    # -- run -------------------------------------------------------------------
    async def run(self) -> None:
        live = [p for p in self.inputs.values() if p.edge is not None]
        try:
            # One task per input: audio's capture waits on libwebrtc's pace, video's not.
            await asyncio.gather(*(self._pump(p) for p in live))
        finally:
            await self._leave()

    async def _pump(self, port: Any) -> None:
        send = self._send_video if port.name == "video" else self._send_audio
        while True:
            item = await port.get()
            if item is EOS:
                return
            if isinstance(item, Gap):
                continue  # nothing to send: the track stays published and quiet
            await send(item)

    async def _leave(self) -> None:
        if self._audio_in is not None:
            await asyncio.sleep(2 * AUDIO_CHUNK_MS / 1000)  # (the last chunks, handed over unawaited, get in)
            self._audio_in.close()
            self._audio_in = None
        if self.room is not None:
            with contextlib.suppress(Exception):
                await self.room.disconnect()
            self.room = None
        for src in (self._vsrc, self._asrc, self._encoded.source if self._encoded else None):
            if src is not None:
                with contextlib.suppress(Exception):
                    await src.aclose()
        self._vsrc = self._asrc = None

    def stats(self) -> dict[str, Any]:
        out = {"frames": self.frames, "audio_s": round(self.samples / 48_000, 2), "late": self.late,
               "tracks": dict(self.tracks)}
        if self._encoded is not None:
            out["passthrough"] = self._encoded.stats()
        return out


def _accept_video(caps: Caps) -> str | None:
    if caps.media != "video":
        return f"takes video, got {caps.describe()}"
    if caps.encoded and caps.codec not in (None, *PASSTHROUGH_CODECS):
        return (f"passes through {' or '.join(PASSTHROUGH_CODECS)} only, got {caps.describe()}: "
                "decode it (and let the room sink encode)")
    return None
