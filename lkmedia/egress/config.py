"""A LiveKit egress request, validated, as the settings a recipe builds a graph from.

Layer one of three (request -> config -> recipe -> graph, STYLE.md point 9). Rules and
error messages follow the Go egress (``pkg/config/pipeline.go``, ``output.go``,
``encoding.go``) so an API caller sees the same answers; defaults are the Go code's:
1280x720 at 30 fps, 3000 kbps H.264 Main, AAC 128 kbps at 44.1 kHz, key frames every 4 s
for streams, every segment for HLS.
"""
from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol import egress as lk
from livekit.protocol import models as lkm

from ..nodes.layouts import LAYOUTS
from ..sinks.stream_url import StreamURLError, parse_stream_url
from .errors import NO_COMPATIBLE_CODEC, InvalidRequest, incompatible, invalid_input, not_supported

STREAM_KEYFRAME_INTERVAL = 4.0
DEFAULT_SEGMENT_DURATION = 4
DEFAULT_IMAGE_INTERVAL = 10
MIN_SEGMENT_DURATION = 1

#: What lkmedia can write into each output type (LiveKit's CodecCompatibility, as far
#: as our encoders go: the only video encoder for composites is H.264, as in Go).
CODECS: dict[str, dict[str, set[str]]] = {
    "mp4": {"audio": {"aac", "opus"}, "video": {"h264"}},
    "ogg": {"audio": {"opus"}, "video": set()},
    "mp3": {"audio": {"mp3"}, "video": set()},
    "hls": {"audio": {"aac"}, "video": {"h264"}},
    "rtmp": {"audio": {"aac"}, "video": {"h264"}},
    "srt": {"audio": {"aac"}, "video": {"h264"}},
}
#: The codec each output type prefers when the request names none (Go DefaultAudioCodecs).
DEFAULT_AUDIO = {"mp4": "aac", "ogg": "opus", "mp3": "mp3", "hls": "aac", "rtmp": "aac", "srt": "aac"}
FILE_TYPES = {lk.EncodedFileType.MP4: "mp4", lk.EncodedFileType.OGG: "ogg", lk.EncodedFileType.MP3: "mp3"}
PRESETS = {
    lk.H264_720P_30: (1280, 720, 30, 3000), lk.H264_720P_60: (1280, 720, 60, 4500),
    lk.H264_1080P_30: (1920, 1080, 30, 4500), lk.H264_1080P_60: (1920, 1080, 60, 6000),
    lk.PORTRAIT_H264_720P_30: (720, 1280, 30, 3000), lk.PORTRAIT_H264_720P_60: (720, 1280, 60, 4500),
    lk.PORTRAIT_H264_1080P_30: (1080, 1920, 30, 4500), lk.PORTRAIT_H264_1080P_60: (1080, 1920, 60, 6000),
}


@dataclass
class Encoding:
    width: int = 1280
    height: int = 720
    fps: int = 30
    video_bitrate: int = 3000  # kbps, as in the API
    profile: str = "main"
    keyframe_interval: float = 0.0  # seconds; 0 = the encoder's default
    audio_codec: str | None = None  # chosen from the outputs when the request names none
    audio_bitrate: int = 128  # kbps
    audio_frequency: int = 44100
    passthrough: bool = False


@dataclass
class FileOutput:
    filepath: str  # an absolute request path without its leading '/' (see ``absolute``)
    file_type: str | None  # mp4 | ogg | mp3 | (track egress: decided by the track's codec)
    disable_manifest: bool = False
    storage: Any = None  # an S3Upload / GCPUpload / ... message, or None for the config default
    absolute: bool = False  # the request named an absolute path: with no upload, the file goes there


@dataclass
class SegmentsOutput:
    filename_prefix: str
    playlist_name: str
    live_playlist_name: str
    segment_duration: int
    suffix: str  # index | timestamp
    disable_manifest: bool = False
    storage: Any = None
    absolute: bool = False


@dataclass
class StreamOutput:
    protocol: str  # rtmp | srt | websocket
    urls: list[str]


@dataclass
class ImagesOutput:
    capture_interval: int
    width: int
    height: int
    filename_prefix: str
    suffix: str  # index | timestamp | none_overwrite
    disable_manifest: bool = False
    storage: Any = None
    absolute: bool = False


@dataclass
class EgressConfig:
    egress_id: str
    room_id: str
    room_name: str
    request_type: str  # room_composite | participant | track_composite | track | web
    audio_enabled: bool = False
    video_enabled: bool = False
    identity: str = ""
    screen_share: bool = False
    audio_track_id: str = ""
    video_track_id: str = ""
    track_id: str = ""
    layout: str = ""
    custom_base_url: str = ""
    engine: str = "native"  # native | chrome (web egress, a template page)
    url: str = ""  # web egress: the page
    await_start_signal: bool = False  # Chrome: record from the page's START_RECORDING
    audio_mixing: str = "default"
    encoding: Encoding = field(default_factory=Encoding)
    file: FileOutput | None = None
    segments: SegmentsOutput | None = None
    stream: StreamOutput | None = None
    websocket: StreamOutput | None = None
    images: list[ImagesOutput] = field(default_factory=list)
    webhooks: list[Any] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        out = []
        if self.file is not None:
            out.append("file")
        if self.segments is not None:
            out.append("segments")
        if self.stream is not None:
            out.append("stream")
        if self.websocket is not None:
            out.append("websocket")
        if self.images:
            out.append("images")
        return out


#: Where absolute output paths may go unless the operator says otherwise: anywhere, as the
#: Go egress writes them (``output_roots``).
ANY_ROOT = ("/",)


def egress_config(egress_id: str, room_id: str, request: Any, output_roots: Sequence[str] = ANY_ROOT
                  ) -> EgressConfig:
    """Validate ``request`` (a livekit.protocol.egress *EgressRequest) like the Go egress.
    Raises InvalidRequest with the Go egress's message. Absolute output paths must lie
    under one of ``output_roots``."""
    if not egress_id:
        raise invalid_input("egressID")
    if isinstance(request, lk.StartEgressRequest):
        c = _v2_config(egress_id, room_id, request)
    else:
        c = _v1_config(egress_id, room_id, request)
    _check_paths(c, output_roots)
    return c


def _v1_config(egress_id: str, room_id: str, request: Any) -> EgressConfig:
    kind = {
        lk.RoomCompositeEgressRequest: "room_composite", lk.ParticipantEgressRequest: "participant",
        lk.TrackCompositeEgressRequest: "track_composite", lk.TrackEgressRequest: "track",
        lk.WebEgressRequest: "web",
    }.get(type(request))
    if kind is None:
        raise invalid_input("request")
    c = EgressConfig(egress_id=egress_id, room_id=room_id, room_name=getattr(request, "room_name", ""),
                     request_type=kind, webhooks=list(getattr(request, "webhooks", [])))
    if kind == "web":
        _web(c, request)
    elif kind == "room_composite":
        _room_composite(c, request)
        c.audio_mixing = lk.AudioMixing.Name(request.audio_mixing).lower().removesuffix("_mixing")
    elif kind == "participant":
        c.identity, c.screen_share = request.identity, request.screen_share
        c.audio_enabled = c.video_enabled = True
        if not c.identity:
            raise invalid_input("identity")
    elif kind == "track_composite":
        c.audio_track_id, c.video_track_id = request.audio_track_id, request.video_track_id
        c.audio_enabled, c.video_enabled = bool(c.audio_track_id), bool(c.video_track_id)
        if not (c.audio_enabled or c.video_enabled):
            raise invalid_input("audio_track_id or video_track_id")
    elif kind == "track":
        c.track_id = request.track_id
        if not c.track_id:
            raise invalid_input("track_id")
    if not c.room_name and kind != "web":
        raise invalid_input("room_name")
    if kind == "track":
        _direct_output(c, request)
        return c
    _encoding(c, request)
    _encoded_outputs(c, request)
    _choose_codecs(c)
    return c


def _room_composite(c: EgressConfig, r: Any) -> None:
    """A RoomCompositeEgressRequest or a v2 TemplateSource: the built-in layouts are
    composed natively (no browser); a page of its own needs the Chrome engine."""
    c.layout, c.custom_base_url = r.layout, r.custom_base_url
    c.audio_enabled, c.video_enabled = not r.video_only, not r.audio_only
    if not (c.audio_enabled or c.video_enabled):
        raise invalid_input("audio_only and video_only")
    if r.custom_base_url or (r.layout and r.layout not in LAYOUTS):
        # The page renders the room (Chrome); it signals when to start.
        c.engine, c.await_start_signal = "chrome", True
        if r.custom_base_url and not r.custom_base_url.startswith(("http://", "https://")):
            raise InvalidRequest(f"invalid custom_base_url {_shown(r.custom_base_url)}: must be http:// or https://")
    c.layout = r.layout or "grid"


def _web(c: EgressConfig, r: Any) -> None:
    """A WebEgressRequest or a v2 WebSource: any page, recorded in Chrome."""
    c.engine, c.url, c.await_start_signal = "chrome", r.url, r.await_start_signal
    c.audio_enabled, c.video_enabled = not r.video_only, not r.audio_only
    if not c.url:
        raise invalid_input("url")
    if not c.url.startswith(("http://", "https://")):
        raise InvalidRequest(f"invalid url {_shown(c.url)}: a web egress records an http:// or https:// page")
    if not (c.audio_enabled or c.video_enabled):
        raise invalid_input("audio_only and video_only")


def _v2_config(egress_id: str, room_id: str, r: lk.StartEgressRequest) -> EgressConfig:
    """The v2 StartEgress with a MediaSource, as the v1 request it amounts to: a
    participant's video (+ that participant's audio), or a video track (+ audio tracks),
    or audio only (tracks, or every track mixed); with a TemplateSource, a room composite.
    Per-output storage is kept."""
    source = r.WhichOneof("source")
    if source not in ("media", "template", "web"):
        raise not_supported(f"StartEgress with a {source or 'missing'} source (media, template and web sources are)")
    if not r.room_name and source != "web":
        raise invalid_input("room_name")
    if source in ("template", "web"):
        c = EgressConfig(egress_id=egress_id, room_id=room_id, room_name=r.room_name,
                         request_type="room_composite" if source == "template" else "web", webhooks=list(r.webhooks))
        if source == "template":
            _room_composite(c, r.template)
        else:
            _web(c, r.web)
        _encoding(c, r)
        _v2_outputs(c, r)
        _choose_codecs(c)
        return c
    m = r.media
    audio = m.audio if m.HasField("audio") else None
    routes = list(audio.routes) if audio is not None else []
    for rt in routes:
        if rt.channel != lk.AudioChannel.AUDIO_CHANNEL_BOTH or rt.WhichOneof("match") == "participant_kind":
            raise not_supported("audio routes by channel or participant kind")
    track_routes = [rt.track_id for rt in routes if rt.WhichOneof("match") == "track_id"]
    who = [rt.participant_identity for rt in routes if rt.WhichOneof("match") == "participant_identity"]
    c = EgressConfig(egress_id=egress_id, room_id=room_id, room_name=r.room_name, request_type="",
                     webhooks=list(r.webhooks))
    video = m.WhichOneof("video")
    if video == "participant_video":
        if not m.participant_video.identity:
            raise invalid_input("participant_video.identity")
        if track_routes or any(w != m.participant_video.identity for w in who):
            raise not_supported("participant video with another participant's audio")
        c.request_type, c.identity = "participant", m.participant_video.identity
        c.screen_share = m.participant_video.prefer_screen_share
        c.video_enabled, c.audio_enabled = True, bool(who) or bool(audio and audio.capture_all)
    elif video == "video_track_id" or track_routes:
        if len(track_routes) > 1 or who or (audio is not None and audio.capture_all):
            raise not_supported("more than one audio track with a video track")
        c.request_type = "track_composite"
        c.video_track_id = m.video_track_id
        c.audio_track_id = track_routes[0] if track_routes else ""
        c.video_enabled, c.audio_enabled = bool(c.video_track_id), bool(c.audio_track_id)
    elif audio is not None and audio.capture_all and not routes:
        c.request_type, c.audio_enabled = "room_composite", True
    else:
        raise invalid_input("media source")
    _encoding(c, r)
    _v2_outputs(c, r)
    _choose_codecs(c)
    return c


def _v2_outputs(c: EgressConfig, r: lk.StartEgressRequest) -> None:
    """v2 outputs are one list; each may carry its own storage (else the request's)."""
    shim = lk.ParticipantEgressRequest()
    storages: dict[str, Any] = {}
    for out in r.outputs:
        which = out.WhichOneof("config")
        st = out.storage if out.HasField("storage") else (r.storage if r.HasField("storage") else None)
        if which == "file":  # v2 FileOutput: the same fields, no storage of its own
            shim.file_outputs.add(file_type=out.file.file_type, filepath=out.file.filepath,
                                  disable_manifest=out.file.disable_manifest)
        elif which == "stream":
            shim.stream_outputs.add().CopyFrom(out.stream)
        elif which == "segments":
            shim.segment_outputs.add().CopyFrom(out.segments)
        elif which == "images":
            shim.image_outputs.add().CopyFrom(out.images)
        else:
            raise invalid_input("output config")
        storages.setdefault(which, st)
    _encoded_outputs(c, shim)
    for which, target in (("file", c.file), ("segments", c.segments)):
        if target is not None and storages.get(which) is not None:
            target.storage = storages[which]
    for img in c.images:
        img.storage = storages.get("images")


def _encoding(c: EgressConfig, r: Any) -> None:
    e = c.encoding
    which = r.WhichOneof("encoding" if isinstance(r, lk.StartEgressRequest) else "options")
    if which == "preset":
        if r.preset == lk.PASSTHROUGH:
            raise not_supported("PASSTHROUGH preset for this request type")
        if r.preset not in PRESETS:
            raise invalid_input("preset")
        e.width, e.height, e.fps, e.video_bitrate = PRESETS[r.preset]
    elif which == "advanced":
        a = r.advanced
        if a.audio_codec == lkm.OPUS:
            e.audio_codec = "opus"
        elif a.audio_codec == lkm.AAC:
            e.audio_codec = "aac"
        elif a.audio_codec == lkm.AC_MP3:
            e.audio_codec = "mp3"
        if a.video_codec == lkm.H264_BASELINE:
            e.profile = "baseline"
        elif a.video_codec == lkm.H264_HIGH:
            e.profile = "high"
        elif a.video_codec not in (lkm.DEFAULT_VC, lkm.H264_MAIN):
            raise not_supported(f"video codec {lkm.VideoCodec.Name(a.video_codec)}")
        for name in ("width", "height"):
            v = getattr(a, name)
            if v and (v < 16 or v % 2):
                raise invalid_input(name)
        e.width = a.width or e.width
        e.height = a.height or e.height
        e.fps = a.framerate or e.fps
        e.video_bitrate = a.video_bitrate or e.video_bitrate
        e.audio_bitrate = a.audio_bitrate or e.audio_bitrate
        e.audio_frequency = a.audio_frequency or e.audio_frequency
        e.keyframe_interval = a.key_frame_interval or e.keyframe_interval
        if a.depth and a.depth not in (8, 16, 24):
            raise invalid_input("depth")
        if e.fps <= 0 or e.fps > 120 or e.video_bitrate < 0 or e.audio_bitrate < 0 or e.keyframe_interval < 0:
            raise invalid_input("advanced encoding options")


def _single(name: str, repeated: Any, deprecated: Any) -> Any:
    if len(repeated) > 1:
        raise invalid_input(f"multiple {name} outputs")
    if len(repeated) == 1:
        return repeated[0]
    return deprecated


def _storage(msg: Any) -> Any:
    for f in ("s3", "gcp", "azure", "aliOSS"):
        if msg.HasField(f):
            return getattr(msg, f)
    return None


def _encoded_outputs(c: EgressConfig, r: Any) -> None:
    has = r.HasField if hasattr(r, "HasField") else (lambda _: False)
    file = _single("file", r.file_outputs, r.file if "file" in r.DESCRIPTOR.fields_by_name and has("file") else None)
    stream = _single("stream", r.stream_outputs,
                     r.stream if "stream" in r.DESCRIPTOR.fields_by_name and has("stream") else None)
    segs = _single("segmented file", r.segment_outputs,
                   r.segments if "segments" in r.DESCRIPTOR.fields_by_name and has("segments") else None)
    if file is not None:
        ft = FILE_TYPES.get(file.file_type)
        c.file = FileOutput(file.filepath, ft, file.disable_manifest, _storage(file))
    if stream is not None:
        c.stream = _stream_output(stream)
    if segs is not None:
        dur = segs.segment_duration or DEFAULT_SEGMENT_DURATION
        if dur < MIN_SEGMENT_DURATION:
            raise invalid_input("segment_duration")
        suffix = "timestamp" if segs.filename_suffix == lk.SegmentedFileSuffix.TIMESTAMP else "index"
        c.segments = SegmentsOutput(segs.filename_prefix, segs.playlist_name, segs.live_playlist_name,
                                    dur, suffix, segs.disable_manifest, _storage(segs))
        if c.segments.live_playlist_name and c.segments.live_playlist_name == c.segments.playlist_name:
            raise invalid_input("live_playlist_name must differ from playlist_name")
    for img in r.image_outputs:
        if not c.video_enabled:
            raise invalid_input("audio_only images")
        suffix = {lk.IMAGE_SUFFIX_TIMESTAMP: "timestamp", lk.IMAGE_SUFFIX_NONE_OVERWRITE: "none_overwrite"}.get(
            img.filename_suffix, "index")
        if img.width < 0 or img.height < 0 or img.width % 2 or img.height % 2:
            raise invalid_input("image width/height")
        c.images.append(ImagesOutput(img.capture_interval or DEFAULT_IMAGE_INTERVAL, img.width, img.height,
                                     img.filename_prefix, suffix, img.disable_manifest, _storage(img)))
    if not c.outputs:
        raise invalid_input("output")
    if c.images and not (c.file or c.segments or c.stream):
        c.audio_enabled = False  # image-only: video only, as Go does
    e = c.encoding
    if c.segments is not None:
        if c.stream is not None and e.keyframe_interval > 0:
            c.segments.segment_duration = max(MIN_SEGMENT_DURATION,
                                              min(c.segments.segment_duration, int(e.keyframe_interval)))
        e.keyframe_interval = float(c.segments.segment_duration)
    elif e.keyframe_interval == 0 and c.stream is not None:
        e.keyframe_interval = STREAM_KEYFRAME_INTERVAL


def _stream_output(stream: Any) -> StreamOutput:
    urls = list(stream.urls)
    proto = {lk.StreamProtocol.RTMP: "rtmp", lk.StreamProtocol.SRT: "srt"}.get(stream.protocol)
    if proto is None:
        if not urls:
            raise invalid_input("stream protocol")
        scheme = urls[0].split("://", 1)[0].lower() if "://" in urls[0] else ""
        proto = {"rtmp": "rtmp", "rtmps": "rtmp", "mux": "rtmp", "srt": "srt"}.get(scheme)
        if proto is None:
            raise InvalidRequest(f"invalid url {_shown(urls[0])}: invalid protocol")
    if not urls:
        raise invalid_input("stream url")
    for u in urls:
        try:
            parse_stream_url(u)
        except StreamURLError as e:
            raise InvalidRequest(f"invalid url: {e}") from None
    return StreamOutput(proto, urls)


def _shown(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return f"{scheme}://..." if scheme else "(no scheme)"


def _direct_output(c: EgressConfig, r: lk.TrackEgressRequest) -> None:
    which = r.WhichOneof("output")
    if which == "file":
        c.file = FileOutput(r.file.filepath, None, r.file.disable_manifest, _storage(r.file))
    elif which == "websocket_url":
        if not r.websocket_url.startswith(("ws://", "wss://")):
            raise InvalidRequest(f"invalid url {_shown(r.websocket_url)}: websocket_url must be ws:// or wss://")
        c.websocket = StreamOutput("websocket", [r.websocket_url])
    else:
        raise invalid_input("output")


def _output_types(c: EgressConfig) -> list[str]:
    out = []
    if c.file is not None:
        out.append(c.file.file_type or "file")
    if c.segments is not None:
        out.append("hls")
    if c.stream is not None:
        out.append(c.stream.protocol)
    return out


def _choose_codecs(c: EgressConfig) -> None:
    """The audio codec every output takes, and the file type for DEFAULT_FILETYPE."""
    e = c.encoding
    types = [t for t in _output_types(c) if t != "file"]
    if c.file is not None and c.file.file_type is None:
        # Go: audio-only -> a type compatible with the audio codec (OGG first), else MP4.
        if not c.video_enabled:
            want = e.audio_codec
            c.file.file_type = "ogg" if want in (None, "opus") and not types else (
                "mp3" if want == "mp3" else "mp4")
            if want is None and types:
                c.file.file_type = "mp4"
        else:
            c.file.file_type = "mp4"
        types.insert(0, c.file.file_type)
    for t in types:
        if c.video_enabled and not CODECS[t]["video"]:
            raise incompatible(t.upper(), "video")
    if c.audio_enabled:
        allowed = {"aac", "opus", "mp3"} if e.audio_codec is None else {e.audio_codec}
        for t in types:
            allowed &= CODECS[t]["audio"]
            if not allowed:
                if e.audio_codec:
                    raise incompatible(t.upper(), e.audio_codec.upper())
                raise InvalidRequest(NO_COMPATIBLE_CODEC)
        if e.audio_codec is None:
            e.audio_codec = next((DEFAULT_AUDIO[t] for t in types if DEFAULT_AUDIO[t] in allowed), sorted(allowed)[0])


def _check_paths(c: EgressConfig, roots: Sequence[str]) -> None:
    """Absolute output paths (``/out/{room_name}.mp4``, a mounted volume) are kept as the Go
    egress keeps them, if they lie under ``roots``; '..' never leads out of one."""
    outputs: list[tuple[str, Any, str]] = []
    if c.file is not None:
        outputs.append(("filepath", c.file, "filepath"))
    if c.segments is not None:
        outputs.append(("filename_prefix", c.segments, "filename_prefix"))
    outputs += [("filename_prefix", img, "filename_prefix") for img in c.images]
    for name, out, attr in outputs:
        path = getattr(out, attr) or ""
        if not path.startswith("/"):
            continue
        folder = path.endswith("/")
        norm = posixpath.normpath(path)
        static = posixpath.dirname(norm.split("{", 1)[0] + "x")
        if not any(_under(static, r) for r in roots):
            raise InvalidRequest(f"{name} {path!r} is outside the directories this egress may write to "
                                 f"(output_roots: {', '.join(roots)})")
        setattr(out, attr, norm.lstrip("/") + ("/" if folder and norm != "/" else ""))
        out.absolute = True


def _under(path: str, root: str) -> bool:
    root = posixpath.normpath(root)
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")
