"""Layer three: a validated EgressConfig -> the graph that records or streams it.

Sources are not made here: the job links them (LiveKit tracks, or synthetic media in
tests) to ``Recipe.video_in`` / ``Recipe.audio_in`` (or to ``Recipe.mixer`` for an
audio-only room composite, where tracks come and go). Everything downstream of the
raw frames is built here: one encode per media feeding every output (STYLE point 5's
error scope: a failed RTMP URL ends only its branch; the file beside it continues).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol import models as proto_models

from ..core import Graph, Node, Sink
from ..nodes.audio_mix import AudioMixer
from ..nodes.compose import Compositor
from ..nodes.convert import FpsConverter
from ..nodes.decode import Decoder
from ..nodes.encode import AudioEncoder, VideoEncoder
from ..nodes.tee import Tee
from ..sinks.file import FileSink
from ..sinks.images import ImageSink
from ..sinks.segments import HLSSink
from ..sinks.stream import StreamSink
from ..sinks.template import render_filename
from ..sinks.websocket import WebSocketSink
from .config import EgressConfig

#: Track egress keeps the track's codec family: Opus -> OGG, VP8/VP9 -> WebM, H.264/AV1 -> MP4.
#: The codecs in TRACK_PASSTHROUGH are written as the publisher encoded them (lkmedia.lkrtc's
#: subscriber; RED audio reaches it as plain Opus); the others (and WebSocket audio) are
#: decoded by livekit.rtc and re-encoded. A publisher that sends no audio packets at all (a
#: silent microphone, ``lk load-test``'s audio) is written as Opus silence.
TRACK_PASSTHROUGH = {"opus": "ogg", "red": "ogg", "vp8": "webm", "vp9": "webm", "h264": "mp4", "av1": "mp4"}
TRACK_FORMATS = {"opus": ("ogg", "opus"), "vp8": ("webm", "libvpx"), "vp9": ("webm", "libvpx-vp9"),
                 "h264": ("mp4", "libx264"), "av1": ("mp4", "libx264"), "pcmu": ("ogg", "opus"),
                 "pcma": ("ogg", "opus")}


@dataclass
class Output:
    """One of the request's outputs and the sink that writes it."""
    kind: str  # file | segments | stream | websocket | images
    sink: Sink
    config: Any  # its FileOutput / SegmentsOutput / StreamOutput / ImagesOutput


@dataclass
class Recipe:
    graph: Graph
    outputs: list[Output] = field(default_factory=list)
    video_in: Node | None = None
    audio_in: Node | None = None
    mixer: AudioMixer | None = None
    compositor: Compositor | None = None  # room composite: the tracks' tiles
    passthrough: bool = False  # its inputs take the publisher's packets (track egress; participant video)
    encoders: dict[str, Node] = field(default_factory=dict)

    def output(self, kind: str) -> Output | None:
        return next((o for o in self.outputs if o.kind == kind), None)

    @property
    def sinks(self) -> list[Sink]:
        return [o.sink for o in self.outputs]

    def results(self) -> list[Any]:
        """What each sink reports it wrote (lkmedia.sinks.results), in output order."""
        return [o.sink.result for o in self.outputs if o.sink.result is not None]


def filename_fields(cfg: EgressConfig, identity: str = "", track: dict[str, str] | None = None) -> dict[str, str | None]:
    t = track or {}
    return {"room_name": cfg.room_name, "room_id": cfg.room_id, "publisher_identity": identity or cfg.identity,
            "track_id": t.get("track_id", cfg.track_id), "track_type": t.get("track_type"),
            "track_source": t.get("track_source")}


def build_recipe(
    cfg: EgressConfig,
    out_dir: str,
    *,
    live: bool = True,
    track_codec: str | None = None,
    track_kind: str | None = None,
    fields: dict[str, str | None] | None = None,
    now: dt.datetime | None = None,
    freeze_timeout: float | None = None,
    video_passthrough: bool = False,
) -> Recipe:
    """The graph for ``cfg``, writing local files under ``out_dir``. For a track egress,
    ``track_codec`` (opus, vp8, h264 ...) and ``track_kind`` (audio|video) say what the
    subscribed track is. ``video_passthrough`` (see ``participant_passthrough``): the
    participant's video packets go into the file as published."""
    g = Graph(freeze_timeout=freeze_timeout)
    r = Recipe(g)
    f = fields or filename_fields(cfg)
    os.makedirs(out_dir, exist_ok=True)
    if cfg.request_type == "track":
        _track(cfg, r, out_dir, f, now, track_codec, track_kind)
        return r
    if video_passthrough:
        _participant_passthrough(cfg, r, out_dir, f, now, live)
        return r
    _encoders(cfg, r, live)
    _sinks(cfg, r, out_dir, f, now)
    return r


def published_video(part: Any, screen_share: bool = False) -> dict[str, Any] | None:
    """A participant's camera (or screen share) video as the room service lists it (a
    ``ParticipantInfo``): codec, width, height, simulcast. None: none published (yet)."""
    if part is None:
        return None
    want = {proto_models.TrackSource.SCREEN_SHARE} if screen_share else {
        proto_models.TrackSource.CAMERA, proto_models.TrackSource.UNKNOWN}
    for t in part.tracks:
        if t.type == proto_models.TrackType.VIDEO and t.source in want:
            return {"codec": t.mime_type.split("/", 1)[-1].lower(), "width": t.width, "height": t.height,
                    "simulcast": bool(t.simulcast) or len(t.layers) > 1}
    return None


def participant_passthrough(cfg: EgressConfig, video: dict[str, Any] | None) -> bool:
    """Whether a participant egress can write its publisher's video as it arrived (no
    decode, no encode): H.264 published without simulcast layers (one picture size for
    good) at exactly the output's size, into one MP4 file (no segments, stream or images,
    which would need the decoded pictures or a constant frame rate). ``video``: the track
    as the room service lists it (codec, width, height, simulcast)."""
    if cfg.request_type != "participant" or not cfg.video_enabled or video is None:
        return False
    if cfg.file is None or cfg.segments is not None or cfg.stream is not None or cfg.images:
        return False
    if (cfg.file.file_type or "mp4") != "mp4" or video.get("codec") != "h264" or video.get("simulcast"):
        return False
    return (video.get("width"), video.get("height")) == (cfg.encoding.width, cfg.encoding.height)


def _participant_passthrough(cfg: EgressConfig, r: Recipe, out_dir: str, f: dict[str, str | None],
                             now: dt.datetime | None, live: bool) -> None:
    """Video packets straight into the file; audio decoded (Opus), mixed onto the clock
    (silence where it is missing) and encoded as the request says."""
    assert cfg.file is not None
    g, e = r.graph, cfg.encoding
    path = render_filename(cfg.file.filepath, f, cfg.file.file_type or "mp4", out_dir, now=now)
    sink = FileSink(path, name="file", start_at_zero=True)
    g.add(sink)
    r.passthrough = True
    r.video_in = sink
    if cfg.audio_enabled:
        r.audio_in = g.add(Decoder(name="audio_decoder"))
        g.link(r.audio_in, _audio_encode(r, e, live))
        g.link(r.encoders["audio"], sink)
    r.outputs.append(Output("file", sink, cfg.file))


def _audio_encode(r: Recipe, e: Any, live: bool) -> AudioMixer:
    """The mixer and the audio encoder after it (linked; ``r.mixer``, ``r.encoders["audio"]``).
    A clock-driven mixer in front of the encoder, even for one track: audio that arrives
    late or not at all becomes silence in its place on the timeline, so the track never
    slides against the video (and tracks can come and go)."""
    r.mixer = AudioMixer(sample_rate=48_000, channels=2, live=live, name="mixer")
    codec = e.audio_codec or "aac"
    rate = 48_000 if codec == "opus" else e.audio_frequency
    aenc = AudioEncoder(codec, bitrate=e.audio_bitrate * 1000, sample_rate=rate, name="audio_encoder")
    r.graph.link(r.mixer, aenc)
    r.encoders["audio"] = aenc
    return r.mixer


def _video_encoder(e: Any) -> VideoEncoder:
    return VideoEncoder("libx264", width=e.width, height=e.height, fps=e.fps, bitrate=e.video_bitrate * 1000,
                        keyframe_interval=e.keyframe_interval or None, profile=e.profile, name="video_encoder")


def _encoders(cfg: EgressConfig, r: Recipe, live: bool) -> None:
    """One encode per media, feeding every output."""
    g, e = r.graph, cfg.encoding
    encoded = bool(cfg.file or cfg.segments or cfg.stream)
    if cfg.video_enabled and cfg.request_type == "room_composite" and cfg.engine == "native":
        # The room's video tracks are linked to the compositor as they come (the job does
        # it); it makes frames at a constant rate on the graph clock.
        r.video_in = g.add(Tee(name="video"))
        r.compositor = Compositor(width=e.width, height=e.height, fps=e.fps, layout=cfg.layout, live=live,
                                  labels=True, name="compositor")
        g.link(g.add(r.compositor), r.video_in)
        if encoded:
            r.encoders["video"] = venc = _video_encoder(e)
            g.link(r.video_in, venc)
    elif cfg.video_enabled and encoded and not cfg.images:
        # One consumer: the source feeds the frame-rate converter directly (no Tee hop), and
        # the converter retimes the frames it alone holds in place (no copy).
        r.video_in = g.add(FpsConverter(e.fps, owns_input=True, name="fps"))
        r.encoders["video"] = venc = _video_encoder(e)
        g.link(r.video_in, venc)
    elif cfg.video_enabled:
        r.video_in = g.add(Tee(name="video"))  # the images' too
        if encoded:  # a constant frame rate: live tracks arrive bunched after a stall or a rejoin
            r.encoders["video"] = venc = _video_encoder(e)
            g.chain(r.video_in, FpsConverter(e.fps, name="fps"), venc)
    if cfg.audio_enabled:
        r.audio_in = _audio_encode(r, e, live)


def _sinks(cfg: EgressConfig, r: Recipe, out_dir: str, f: dict[str, str | None], now: dt.datetime | None) -> None:
    if cfg.file is not None:
        path = render_filename(cfg.file.filepath, f, cfg.file.file_type or "mp4", out_dir, now=now)
        _add_sink(r, "file", FileSink(path, name="file"), cfg.file)
    if cfg.segments is not None:
        s = cfg.segments
        prefix_path = render_filename(s.filename_prefix or "", f, ".ts", out_dir, now=now)
        directory, prefix = os.path.split(prefix_path[: -len(".ts")])
        playlist = s.playlist_name or f"{prefix}.m3u8"
        playlist = os.path.basename(render_filename(playlist, f, ".m3u8", out_dir, now=now))
        live_pl = os.path.basename(render_filename(s.live_playlist_name, f, ".m3u8", out_dir, now=now)) \
            if s.live_playlist_name else None
        _add_sink(r, "segments", HLSSink(directory, filename_prefix=prefix, playlist_name=playlist,
                                         live_playlist_name=live_pl, segment_duration=float(s.segment_duration),
                                         suffix=s.suffix, name="segments"), s)
    if cfg.stream is not None:
        _add_sink(r, "stream", StreamSink(cfg.stream.urls, name="stream"), cfg.stream)
    for i, img in enumerate(cfg.images):
        prefix_path = render_filename(img.filename_prefix or "", f, ".jpeg", out_dir, now=now)
        directory, prefix = os.path.split(prefix_path[: -len(".jpeg")])
        sink = ImageSink(directory, filename_prefix=prefix, capture_interval=float(img.capture_interval),
                         width=img.width or None, height=img.height or None, suffix=img.suffix, name=f"images{i}")
        r.graph.link(r.video_in, sink)  # type: ignore[arg-type]
        r.outputs.append(Output("images", sink, img))


def _add_sink(r: Recipe, kind: str, sink: Sink, config: Any) -> None:
    for enc in r.encoders.values():
        r.graph.link(enc, sink)
    r.outputs.append(Output(kind, sink, config))


def _track(cfg: EgressConfig, r: Recipe, out_dir: str, f: dict[str, str | None], now: dt.datetime | None,
           codec: str | None, kind: str | None) -> None:
    g = r.graph
    if cfg.websocket is not None:
        if kind != "audio":
            raise ValueError("websocket output takes an audio track")
        r.audio_in = g.add(Tee(name="audio"))
        sink = WebSocketSink(cfg.websocket.urls[0], name="websocket")
        g.link(r.audio_in, sink)
        r.outputs.append(Output("websocket", sink, cfg.websocket))
        return
    assert cfg.file is not None
    if (codec or "").lower() in TRACK_PASSTHROUGH:
        # The publisher's own packets, remuxed: the file sink is the input.
        cfg.file.file_type = TRACK_PASSTHROUGH[(codec or "").lower()]
        path = render_filename(cfg.file.filepath, f, cfg.file.file_type, out_dir, now=now)
        remux = FileSink(path, name="file", start_at_zero=True, inline_writes=True)
        g.add(remux)
        r.passthrough = True
        if kind == "video":
            r.video_in = remux
        else:
            r.audio_in = remux
        r.outputs.append(Output("file", remux, cfg.file))
        return
    fmt, encoder = TRACK_FORMATS.get((codec or "").lower(), ("mp4", "libx264") if kind == "video" else ("ogg", "opus"))
    cfg.file.file_type = fmt
    path = render_filename(cfg.file.filepath, f, fmt, out_dir, now=now)
    tee = g.add(Tee(name=kind or "media"))
    if kind == "video":
        r.video_in = tee
        enc: Node = VideoEncoder(encoder, width=cfg.encoding.width, height=cfg.encoding.height,
                                 fps=cfg.encoding.fps, bitrate=cfg.encoding.video_bitrate * 1000,
                                 size_from_input=True, name="video_encoder")
        r.encoders["video"] = enc
    else:
        r.audio_in = tee
        enc = AudioEncoder("opus" if encoder == "opus" else encoder, sample_rate=48_000, name="audio_encoder")
        r.encoders["audio"] = enc
    g.link(tee, enc)
    # One track, one stream: its file starts at 0 (an OGG that starts at 0.5 s reports
    # a 0.5 s longer duration in players and ffprobe).
    _add_sink(r, "file", FileSink(path, name="file", start_at_zero=True), cfg.file)
