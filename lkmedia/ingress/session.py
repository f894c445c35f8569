"""One ingress session: an input's media transcoded into a room, with the IngressState the
Go ingress reports along the way (``pkg/service/handler.go``, ``pkg/media/pipeline.go``).

    BUFFERING (started_at, resource_id)
      -> PUBLISHING, once per track as it is published (room_id, tracks, input states),
         then again every ``stats_interval`` with the input's measured bitrates
      -> COMPLETE at the end of a URL's stream / INACTIVE when a reusable (RTMP, WHIP)
         input ends / ERROR with the reason, whatever failed

The input is any source node with raw "video" and/or "audio" outputs (URL pull:
FileSource paced in real time). Video is scaled to fit the top layer of the ingress's
preset (aspect kept, even sizes) and both go to a RoomSink. An input that sends no media
for ``media_timeout`` (the Go ingress's watchdog: 10 s) ends the session in ERROR.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from ..core import Graph, GraphError, Source
from ..nodes.convert import Fit
from ..nodes.decode import Decoder, codec_name
from ..sinks.room import RoomSink
from ..sinks.room_encoded import PASSTHROUGH_CODECS, PassthroughError
from ..sources.file import FileSource
from ..sources.rtsp import RtspSource, is_rtsp
from .presets import audio_publishing, video_plan
from .state import S, buffering, ended, set_status

log = logging.getLogger("lkmedia.ingress")

MEDIA_TIMEOUT = 10.0
STATS_INTERVAL = 10.0  # while PUBLISHING, the state is sent again this often with the input's bitrates
_MIME = {"h264": "video/h264", "hevc": "video/h265", "vp8": "video/vp8", "vp9": "video/vp9", "av1": "video/av1",
         "flv1": "video/x-flash-video", "aac": "audio/aac", "opus": "audio/opus", "mp3": "audio/mpeg",
         "vorbis": "audio/vorbis", "flac": "audio/flac", "pcm_s16le": "audio/pcm", "pcm_alaw": "audio/pcma",
         "pcm_mulaw": "audio/pcmu"}


def input_states(src: FileSource) -> tuple[lki.InputVideoState | None, lki.InputAudioState | None]:
    """What the Go ingress reports of its input: codec, size, rate, channels."""
    video = audio = None
    for kind, s in src.streams().items():
        cc = s.codec_context
        codec = codec_name(s)  # the codec ("mp3"), not FFmpeg's decoder ("mp3float")
        mime = _MIME.get(codec, f"{kind}/{codec}")
        rate = int(s.bit_rate or 0)
        if kind == "video":
            fps = s.average_rate or s.guessed_rate
            video = lki.InputVideoState(mime_type=mime, average_bitrate=rate, width=cc.width, height=cc.height,
                                        framerate=float(fps) if fps else 0.0)
        else:
            audio = lki.InputAudioState(mime_type=mime, average_bitrate=rate, sample_rate=cc.sample_rate,
                                        channels=cc.layout.nb_channels if cc.layout is not None else 0)
    return video, audio


def check_passthrough(src: FileSource) -> None:
    """PassthroughError, in plain words, when the opened input's video cannot go into the
    room as it is: a codec WebRTC does not carry here, or B-frames (frames sent out of
    display order: x264's default and OBS's, which WebRTC has no way to reorder)."""
    s = src.streams().get("video")
    if s is None:
        return
    cc = s.codec_context
    codec = codec_name(s)
    if codec not in PASSTHROUGH_CODECS:
        raise PassthroughError(f"the stream's video is {codec}, which passthrough cannot put into a room "
                               f"(it takes {' or '.join(c.upper() for c in PASSTHROUGH_CODECS)}): publish H.264, "
                               "or ask the operator to turn rtmp_passthrough off")
    if cc is not None and cc.has_b_frames:
        raise PassthroughError("the stream's H.264 has B-frames, which passthrough cannot put into a room: "
                               "publish without them (OBS: x264 options bframes=0; ffmpeg: -bf 0), "
                               "or ask the operator to turn rtmp_passthrough off")


def passthrough_bitrate(src: FileSource) -> int:
    """The encoder's bitrate cap the SDK is given for a passed-through track: the input's
    own rate with headroom when the stream says it, else 8 Mbps (nothing is encoded here, so
    this only bounds what the room is told to expect)."""
    s = src.streams().get("video")
    rate = int(s.bit_rate or 0) if s is not None else 0
    return max(rate * 3 // 2, 2_000_000) if rate else 8_000_000


class IngressSession:
    """Runs ``info``'s ingress from ``source`` into the room at ``ws_url`` as the
    participant ``token`` names; ``on_state`` gets a copy of the state at each change.
    ``state``: the session's BUFFERING state when the service has set (and reported) it
    already; else a new one is made for ``resource_id``. States change by the rules of
    lkmedia.ingress.state, which the service side uses too."""

    def __init__(self, info: lki.IngressInfo, source: Source, ws_url: str, token: str, *,
                 resource_id: str = "", state: lki.IngressState | None = None,
                 on_state: Callable[[lki.IngressState], None] | None = None,
                 media_timeout: float = MEDIA_TIMEOUT, stats_interval: float = STATS_INTERVAL) -> None:
        self.info = info
        self.source = source
        self.ws_url = ws_url
        self._token = token
        self.on_state = on_state
        self.media_timeout = media_timeout
        self.stats_interval = stats_interval
        self._announced = state is not None and state.status == S.ENDPOINT_BUFFERING
        self.state = lki.IngressState.FromString(state.SerializeToString()) if state is not None \
            else buffering(resource_id)
        self.graph: Graph | None = None
        self.sink: RoomSink | None = None
        self._stopping = False
        self._stop_error = ""

    # -- state -----------------------------------------------------------------
    def _send(self) -> None:
        if self.on_state is not None:
            copy = lki.IngressState()
            copy.CopyFrom(self.state)
            self.on_state(copy)

    def _measure(self) -> None:
        """The input's measured bitrates into the state (the Go ingress reports them; an
        RTMP publish's metadata has none)."""
        if not isinstance(self.source, FileSource):
            return
        rates = self.source.bitrates()
        if rates.get("video") and self.state.HasField("video"):
            self.state.video.average_bitrate = rates["video"]
        if rates.get("audio") and self.state.HasField("audio"):
            self.state.audio.average_bitrate = rates["audio"]

    async def _refresh(self) -> None:
        """While PUBLISHING, the state again every ``stats_interval`` with fresh bitrates."""
        while True:
            await asyncio.sleep(self.stats_interval)
            if self.state.status == S.ENDPOINT_PUBLISHING and not self._stopping:
                self._measure()
                set_status(self.state, S.ENDPOINT_PUBLISHING)
                self._send()

    def _published(self, kind: str, sid: str) -> None:
        assert self.sink is not None
        self._measure()
        set_status(self.state, S.ENDPOINT_PUBLISHING)
        self.state.room_id = self.sink.room_sid
        opts = self.sink.video if kind == "video" else self.sink.audio
        self.state.tracks.append(lkm.TrackInfo(
            sid=sid, type=lkm.TrackType.VIDEO if kind == "video" else lkm.TrackType.AUDIO,
            name=opts.name if opts is not None else kind))
        self._send()

    def _end(self, error: str | None) -> lki.IngressState:
        self._measure()  # over the whole session
        self.state = ended(self.state, self.info.reusable, self._stop_error or error or "")
        self._send()
        return self.state

    # -- graph -----------------------------------------------------------------
    def build(self) -> Graph:
        """The session's graph; fails (naming the input) if the input cannot be opened."""
        plan = video_plan(self.info.video if self.info.HasField("video") else None)
        audio = audio_publishing(self.info.audio if self.info.HasField("audio") else None)
        g = Graph()
        src = g.add(self.source)
        if isinstance(src, FileSource):
            src.open()
            if not src.decode:
                check_passthrough(src)
            v, a = input_states(src)
            if v is not None:
                self.state.video.CopyFrom(v)
            if a is not None:
                self.state.audio.CopyFrom(a)
        has_video, has_audio = "video" in src.outputs, "audio" in src.outputs
        passthrough = isinstance(src, FileSource) and not src.decode
        video = plan.publishing
        if passthrough and has_video:
            assert isinstance(src, FileSource)
            video = replace(video, simulcast=False, max_bitrate=passthrough_bitrate(src))
        sink = RoomSink(self.ws_url, self._token, video=video if has_video else None,
                        audio=audio if has_audio else None, on_published=self._published)
        g.add(sink)
        self.sink = sink
        if passthrough:  # the publisher's video as it came; its audio decoded, for Opus
            if has_video:
                g.link(src.out("video"), sink.inp("video"))
            if has_audio:
                g.chain(src.out("audio"), Decoder(name="audio-decoder"), sink.inp("audio"))
        else:
            if has_video:
                g.chain(src.out("video"), Fit(plan.width, plan.height), sink.inp("video"))
            if has_audio:
                g.link(src.out("audio"), sink.inp("audio"))
        self.graph = g
        return g

    async def run(self) -> lki.IngressState:
        """BUFFERING (unless the service reported it), then the session to its end; the final state."""
        if not self._announced:
            self._send()
        if self._stopping:  # stopped before it began
            return self._end(None)
        try:
            g = self.graph or self.build()
            await g.start()
        except Exception as e:
            return self._end(str(e))
        waiter = asyncio.create_task(self._wait(g), name="ingress-graph")
        watch = asyncio.create_task(self._watch_media(), name="ingress-media-watchdog")
        refresh = asyncio.create_task(self._refresh(), name="ingress-stats")
        stalled: str | None = None
        try:
            done, _ = await asyncio.wait({waiter, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                stalled = watch.result()
                with contextlib.suppress(GraphError):
                    await g.stop(timeout=2.0)  # a read blocked on a silent input is cancelled
            error = await waiter
        finally:
            for t in (waiter, watch, refresh):
                t.cancel()
            await asyncio.gather(waiter, watch, refresh, return_exceptions=True)
        return self._end(stalled or error)

    @staticmethod
    async def _wait(g: Graph) -> str | None:
        """The graph to its end: None, or what failed."""
        try:
            errors = await g.wait()
        except GraphError as e:
            return str(e)
        return "; ".join(str(e) for e in errors) or None

    async def stop(self, error: str = "") -> None:
        """End the session (the ingress was updated or deleted, the publisher left); with
        ``error``, it ends ERROR with it."""
        self._stopping = True
        self._stop_error = self._stop_error or error
        if self.graph is not None and self.graph.started:
            self.graph.request_stop()

    async def _watch_media(self) -> str:
        """Returns (the reason) once the input has sent nothing for ``media_timeout``."""
        assert self.sink is not None
        last, since = -1, time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = self.sink.frames + self.sink.samples
            if now != last or self._stopping:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > self.media_timeout:
                return f"the input sent no media for {self.media_timeout:g} s"


def url_source(url: str) -> FileSource:
    """URL pull: anything FFmpeg reads over http(s), HLS included, paced in real time; an
    RTSP server's live stream as it comes (lkmedia.sources.rtsp); SRT through the system
    ffmpeg (lkmedia.sources.srt), paced by its sender."""
    if is_rtsp(url):
        return RtspSource(url, timeout=10.0, name="input")
    if url.lower().startswith("srt://"):
        from ..sources.srt import SrtSource

        # MPEG-TS carries the H.264 parameter sets only with key frames: probe up to a 1 s GOP
        # so the input's size is known (RTMP sends its headers first and needs 0.1 s). With
        # the ffmpeg child's own probe, an SRT session publishes about 4.5 s after it connects.
        return SrtSource(url, name="input", options={"analyzeduration": "1000000", "probesize": "1000000"})
    return FileSource(url, realtime=True, timeout=10.0, name="input")

