"""Request -> spec: an IngressInfo checked once, in the service, as the Go ingress checks it.

A push input (RTMP, WHIP) brings a stream key; the service asks livekit-server for its
IngressInfo (IOInfo.GetIngressInfo) and turns it into an ``IngressSpec`` here: the
protocol's ``ingress.Validate`` rules (room, participant identity, a key or a URL, the
transcoding and encoding options), the input type the key arrived on, ``enabled``. A URL
input comes with its IngressInfo in IngressInternal.StartIngress.

``IngressSpec`` holds no secret (the stream key is dropped; a URL is kept for the job but
only shown redacted). ``IngressLaunch`` is what a job process is given: the spec, this
node's ``ws_url``, the participant's join token (lkmedia.ingress.presets.ingress_token) and
where to read an RTMP publish.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol import ingress as lk
from livekit.protocol import models

from ..redact import redact_url
from .errors import IngressError, disabled, invalid, wrong_input

INPUTS = {lk.IngressInput.RTMP_INPUT: "rtmp", lk.IngressInput.WHIP_INPUT: "whip", lk.IngressInput.URL_INPUT: "url"}
RESOURCE_PREFIX = {"rtmp": "RT_", "whip": "WH_", "url": "UR_"}
_GUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # Go utils.NewGuid's
_VIDEO_SOURCES = (models.TrackSource.UNKNOWN, models.TrackSource.CAMERA, models.TrackSource.SCREEN_SHARE)
_AUDIO_SOURCES = (models.TrackSource.UNKNOWN, models.TrackSource.MICROPHONE, models.TrackSource.SCREEN_SHARE_AUDIO)


@dataclass
class IngressSpec:
    ingress_id: str
    resource_id: str  # this session: RT_/WH_/UR_ + a guid
    input: str  # rtmp | whip | url
    info: lk.IngressInfo  # as livekit-server has it, without the stream key
    transcode: bool  # WHIP: enable_transcoding resolved (off unless asked); RTMP: off with rtmp_passthrough
    url: str = ""  # URL input only (may hold credentials: show redact_url(url))

    @property
    def reusable(self) -> bool:
        """RTMP and WHIP ingresses outlive a session (INACTIVE at its end); a URL pull does not."""
        return self.input != "url"

    def describe(self) -> dict[str, Any]:
        """What health endpoints and logs may show."""
        d = {"ingress_id": self.ingress_id, "resource_id": self.resource_id, "input": self.input,
             "room_name": self.info.room_name, "participant_identity": self.info.participant_identity,
             "transcode": self.transcode}
        if self.url:
            d["url"] = redact_url(self.url)
        return d


@dataclass
class IngressLaunch:
    """A spec with what the node that runs it adds (never stored, never logged)."""
    spec: IngressSpec
    ws_url: str
    token: str = field(repr=False)
    relay_url: str = ""  # RTMP: where the service relays the publish (lkmedia.service.ingress_relay)
    relay_headers: str = field(default="", repr=False)  # its Authorization line
    flv_fd: int = -1  # RTMP in the service's own process: the read end of an FlvPipe
    whip_offer: str = field(default="", repr=False)  # WHIP with transcoding: the client's SDP offer


def new_resource_id(input_name: str) -> str:
    """``RT_``/``WH_``/``UR_`` + 12 characters, the shape of the Go ingress's resource IDs."""
    return RESOURCE_PREFIX[input_name] + "".join(secrets.choice(_GUID_ALPHABET) for _ in range(12))


def validate_info(info: lk.IngressInfo) -> None:
    """The protocol's ``ingress.Validate``: IngressError(invalid_argument) naming what is wrong."""
    if info.input_type not in INPUTS:
        raise invalid("unsupported input type")
    if not info.room_name:
        raise invalid("no room name")
    if info.input_type == lk.IngressInput.URL_INPUT:
        if not info.url:
            raise invalid("no source URL")
        if info.HasField("enabled") and not info.enabled:
            raise invalid("disabled non reusable ingress")
    elif not info.stream_key:
        raise invalid("no stream key")
    if not info.participant_identity:
        raise invalid("no participant identity")
    _check_transcoding(info)
    if info.HasField("video"):
        _check_video(info.video)
    if info.HasField("audio"):
        _check_audio(info.audio)


def transcoding_enabled(info: lk.IngressInfo) -> bool:
    """WHIP transcodes only when asked; every other input always does."""
    if info.input_type == lk.IngressInput.WHIP_INPUT:
        return info.HasField("enable_transcoding") and info.enable_transcoding and not info.bypass_transcoding
    return True


def _check_transcoding(info: lk.IngressInfo) -> None:
    whip = info.input_type == lk.IngressInput.WHIP_INPUT
    if info.bypass_transcoding and not whip:
        raise invalid("bypassing transcoding impossible with selected input type")
    if not whip and info.HasField("enable_transcoding") and not info.enable_transcoding:
        raise invalid("bypassing transcoding impossible with selected input type")
    if not transcoding_enabled(info):
        for kind in ("video", "audio"):
            opts = getattr(info, kind)
            if info.HasField(kind) and opts.WhichOneof("encoding_options") is not None:
                raise invalid(f"{kind} encoding options must be empty if transcoding is disabled")


def _check_video(v: lk.IngressVideoOptions) -> None:
    if v.source not in _VIDEO_SOURCES:
        raise invalid("invalid video parameters: invalid track source")
    which = v.WhichOneof("encoding_options")
    if which == "preset" and v.preset not in lk.IngressVideoEncodingPreset.values():
        raise invalid("invalid video parameters: invalid preset")
    if which != "options":
        return
    o = v.options
    if o.frame_rate < 0:
        raise invalid("invalid video parameters: invalid framerate")
    if o.video_codec not in (models.VideoCodec.DEFAULT_VC, models.VideoCodec.H264_BASELINE, models.VideoCodec.VP8):
        raise invalid("invalid video parameters: video codec unsupported")
    by_quality: dict[int, Any] = {}
    for layer in o.layers:
        if not layer.width or not layer.height:
            raise invalid("invalid video parameters: invalid output media dimensions")
        if layer.width % 2 or layer.height % 2:
            raise invalid("layer width and height must be even")
        if layer.quality in by_quality:
            raise invalid("invalid video parameters: more than one layer with the same quality level")
        by_quality[layer.quality] = layer
    w = h = 0
    for q in sorted(by_quality):
        layer = by_quality[q]
        if layer.width < w or layer.height < h:
            raise invalid("invalid video parameters: video layers do not grow with quality")
        w, h = layer.width, layer.height


def _check_audio(a: lk.IngressAudioOptions) -> None:
    if a.source not in _AUDIO_SOURCES:
        raise invalid("invalid audio parameters: invalid track source")
    which = a.WhichOneof("encoding_options")
    if which == "preset" and a.preset not in lk.IngressAudioEncodingPreset.values():
        raise invalid("invalid audio parameters: invalid preset")
    if which == "options":
        if a.options.audio_codec not in (models.AudioCodec.DEFAULT_AC, models.AudioCodec.OPUS):
            raise invalid("invalid audio parameters: audio codec unsupported")
        if a.options.channels > 2:
            raise invalid("invalid audio parameters: invalid audio channel count")


def spec_from_info(info: lk.IngressInfo, input_name: str, resource_id: str = "") -> IngressSpec:
    """Validate ``info`` for a session arriving on ``input_name``; IngressError if it cannot run."""
    if input_name not in RESOURCE_PREFIX:
        raise IngressError(f"unknown input {input_name!r}", "internal")
    got = INPUTS.get(info.input_type, "an unknown")
    if got != input_name:
        raise wrong_input(input_name, got)
    if info.HasField("enabled") and not info.enabled and input_name != "url":
        raise disabled()
    validate_info(info)
    clean = lk.IngressInfo.FromString(info.SerializeToString())
    clean.stream_key = ""
    return IngressSpec(info.ingress_id, resource_id or new_resource_id(input_name), input_name, clean,
                       transcoding_enabled(info), info.url if input_name == "url" else "")
