"""What an ingress publishes, from IngressInfo's video and audio options, as the Go ingress
computes it (``pkg/params/presets.go``), and the participant token it joins with.

Video: a preset (or custom options) gives the layers the Go ingress would encode. Here
libwebrtc encodes from one ``VideoSource``: the top layer is scaled to the preset's size
and sent at its bitrate and frame rate; with more than one layer the SDK makes the lower
ones itself (for 16:9, 640x360 at 450 kbps and 320x180 at 160 kbps, where the Go presets
have half-size layers at ``top * (1/4)^0.75``): the Python SDK cannot set lower layers.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from livekit import api, rtc
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from ..sinks.room import AudioPublishing, VideoPublishing

_P = lki.IngressVideoEncodingPreset
#: preset -> (width, height, fps, top bitrate, layers)
VIDEO_PRESETS: dict[int, tuple[int, int, float, int, int]] = {
    _P.H264_720P_30FPS_3_LAYERS: (1280, 720, 30, 1_900_000, 3),
    _P.H264_1080P_30FPS_3_LAYERS: (1920, 1080, 30, 3_500_000, 3),
    _P.H264_540P_25FPS_2_LAYERS: (960, 540, 25, 1_000_000, 2),
    _P.H264_720P_30FPS_1_LAYER: (1280, 720, 30, 1_900_000, 1),
    _P.H264_1080P_30FPS_1_LAYER: (1920, 1080, 30, 3_500_000, 1),
    _P.H264_720P_30FPS_3_LAYERS_HIGH_MOTION: (1280, 720, 30, 2_500_000, 3),
    _P.H264_1080P_30FPS_3_LAYERS_HIGH_MOTION: (1920, 1080, 30, 4_500_000, 3),
    _P.H264_540P_25FPS_2_LAYERS_HIGH_MOTION: (960, 540, 25, 1_300_000, 2),
    _P.H264_720P_30FPS_1_LAYER_HIGH_MOTION: (1280, 720, 30, 2_500_000, 1),
    _P.H264_1080P_30FPS_1_LAYER_HIGH_MOTION: (1920, 1080, 30, 4_500_000, 1),
}
# Custom options with no bitrate for a layer: derived from 3.5 Mbps at 1080p30.
_REF_BITRATE, _REF_AREA, _REF_FPS = 3_500_000, 1920 * 1080, 30.0
_CODECS = {lkm.DEFAULT_VC: "h264", lkm.H264_BASELINE: "h264", lkm.H264_MAIN: "h264", lkm.H264_HIGH: "h264",
           lkm.VP8: "vp8"}
_QUALITIES = (lkm.VideoQuality.HIGH, lkm.VideoQuality.MEDIUM, lkm.VideoQuality.LOW)


@dataclass(frozen=True)
class Layer:
    quality: int
    width: int
    height: int
    bitrate: int


@dataclass(frozen=True)
class VideoPlan:
    """The layers the Go ingress would publish (top first) and how lkmedia publishes."""

    layers: tuple[Layer, ...]
    fps: float
    publishing: VideoPublishing

    @property
    def width(self) -> int:
        return self.layers[0].width

    @property
    def height(self) -> int:
        return self.layers[0].height


def _scaled_bitrate(ref: int, area_ratio: float, fps_ratio: float) -> int:
    return round(ref * area_ratio ** 0.75 * fps_ratio ** 0.75)


def _preset_layers(width: int, height: int, bitrate: int, n: int) -> tuple[Layer, ...]:
    out = []
    for k in range(n):
        w, h = width >> k, height >> k
        out.append(Layer(_QUALITIES[k], w, h, _scaled_bitrate(bitrate, (w * h) / (width * height), 1.0)))
    return tuple(out)


def video_plan(opts: lki.IngressVideoOptions | None) -> VideoPlan:
    """The video layers for ``opts`` (IngressInfo.video); the default preset if unset."""
    name = opts.name if opts is not None and opts.name else "video"
    source = opts.source if opts is not None and opts.source else lkm.TrackSource.CAMERA
    if opts is not None and opts.HasField("options"):
        o = opts.options
        fps = o.frame_rate or 30.0
        if o.video_codec not in _CODECS:
            raise ValueError(f"video codec {lkm.VideoCodec.Name(o.video_codec)} cannot be published by an ingress")
        given = sorted(o.layers, key=lambda la: la.width * la.height, reverse=True)
        if not given:
            layers = _preset_layers(1280, 720, 1_700_000, 3)
        else:
            layers = tuple(Layer(la.quality, la.width, la.height, la.bitrate or _scaled_bitrate(
                _REF_BITRATE, la.width * la.height / _REF_AREA, fps / _REF_FPS)) for la in given)
        for la in layers:
            if la.width <= 0 or la.height <= 0:
                raise ValueError(f"video layer {la.width}x{la.height} has no size")
        codec = _CODECS[o.video_codec]
    else:
        preset = opts.preset if opts is not None and opts.HasField("preset") else _P.H264_720P_30FPS_3_LAYERS
        if preset not in VIDEO_PRESETS:
            raise ValueError(f"unknown ingress video preset {preset}")
        w, h, fps, bitrate, n = VIDEO_PRESETS[preset]
        layers, codec = _preset_layers(w, h, bitrate, n), "h264"
    top = layers[0]
    return VideoPlan(layers, float(fps), VideoPublishing(
        codec=codec, max_bitrate=top.bitrate, max_fps=float(fps), simulcast=len(layers) > 1, name=name,
        source=_rtc_source(source)))


def audio_publishing(opts: lki.IngressAudioOptions | None) -> AudioPublishing:
    """Opus settings for ``opts`` (IngressInfo.audio): stereo 96 kbps with DTX by default."""
    name = opts.name if opts is not None and opts.name else "audio"
    source = _rtc_source(opts.source if opts is not None and opts.source else lkm.TrackSource.MICROPHONE)
    if opts is not None and opts.HasField("options"):
        o = opts.options
        if o.audio_codec not in (lkm.DEFAULT_AC, lkm.OPUS):
            raise ValueError(f"audio codec {lkm.AudioCodec.Name(o.audio_codec)} cannot be published by an "
                             "ingress (Opus only)")
        channels = o.channels or 2
        if channels not in (1, 2):
            raise ValueError(f"audio channels must be 1 or 2, not {channels}")
        return AudioPublishing(bitrate=o.bitrate or (96_000 if channels == 2 else 64_000), channels=channels,
                               dtx=not o.disable_dtx, name=name, source=source)
    preset = opts.preset if opts is not None and opts.HasField("preset") else lki.OPUS_STEREO_96KBPS
    if preset == lki.OPUS_MONO_64KBS:
        return AudioPublishing(bitrate=64_000, channels=1, name=name, source=source)
    return AudioPublishing(bitrate=96_000, channels=2, name=name, source=source)


_RTC_SOURCES: dict[int, rtc.TrackSource.ValueType] = {
    lkm.TrackSource.CAMERA: rtc.TrackSource.SOURCE_CAMERA,
    lkm.TrackSource.MICROPHONE: rtc.TrackSource.SOURCE_MICROPHONE,
    lkm.TrackSource.SCREEN_SHARE: rtc.TrackSource.SOURCE_SCREENSHARE,
    lkm.TrackSource.SCREEN_SHARE_AUDIO: rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO,
}


def _rtc_source(source: int) -> rtc.TrackSource.ValueType:
    return _RTC_SOURCES.get(source, rtc.TrackSource.SOURCE_UNKNOWN)


INGRESS_ID_ATTRIBUTE = "ingress.ingressID"


def ingress_token(api_key: str, api_secret: str, info: lki.IngressInfo) -> str:
    """The token the Go ingress builds when the server gives none: kind INGRESS, publish
    only, 24 h, with the ``ingress.ingressID`` attribute."""
    grants = api.VideoGrants(room_join=True, room=info.room_name, can_publish=True, can_subscribe=False,
                             can_update_own_metadata=True)
    return (api.AccessToken(api_key, api_secret)
            .with_identity(info.participant_identity)
            .with_name(info.participant_name)
            .with_metadata(info.participant_metadata)
            .with_kind("ingress")
            .with_attributes({INGRESS_ID_ATTRIBUTE: info.ingress_id})
            .with_grants(grants)
            .with_ttl(datetime.timedelta(hours=24))
            .to_jwt())
