"""The codecs an FLV (RTMP) stream's audio and video tags name, in plain words, and whether
this machine's FFmpeg can decode them (E.4.2.1 / E.4.3.1 of the FLV spec, and the
FourCCs of Enhanced RTMP v1/v2).

lkmedia transcodes whatever FFmpeg decodes, so a publish in Sorenson H.263, VP6, MP3,
Nellymoser, G.711, Speex ... is taken (the Go ingress takes only H.264 and AAC). A codec ID
that nothing decodes (JPEG video, "device-specific" sound, reserved IDs, an unknown FourCC)
is refused in words that name it: ``FlvCodecCheck`` looks at the first audio and the first
video tag of a stream, then only counts tags.
"""
from __future__ import annotations

import functools

import av

from .flv import AUDIO, VIDEO, FlvTag

#: FLV video codec ID -> (name, FFmpeg decoder or "" for none).
VIDEO_CODECS: dict[int, tuple[str, str]] = {
    1: ("JPEG", ""), 2: ("Sorenson H.263", "flv"), 3: ("Screen Video", "flashsv"), 4: ("On2 VP6", "vp6f"),
    5: ("On2 VP6 with alpha", "vp6a"), 6: ("Screen Video 2", "flashsv2"), 7: ("H.264", "h264"),
    12: ("HEVC", "hevc"),
}
#: FLV audio codec ID -> (name, FFmpeg decoder or "").
AUDIO_CODECS: dict[int, tuple[str, str]] = {
    0: ("linear PCM", "pcm_s16le"), 1: ("ADPCM", "adpcm_swf"), 2: ("MP3", "mp3"), 3: ("linear PCM", "pcm_s16le"),
    4: ("Nellymoser", "nellymoser"), 5: ("Nellymoser", "nellymoser"), 6: ("Nellymoser", "nellymoser"),
    7: ("G.711 A-law", "pcm_alaw"), 8: ("G.711 mu-law", "pcm_mulaw"), 10: ("AAC", "aac"), 11: ("Speex", "speex"),
    14: ("MP3 8 kHz", "mp3"), 15: ("device-specific sound", ""),
}
#: Enhanced RTMP FourCC -> (name, FFmpeg decoder).
FOURCCS: dict[bytes, tuple[str, str]] = {
    b"avc1": ("H.264", "h264"), b"hvc1": ("HEVC", "hevc"), b"vp08": ("VP8", "vp8"), b"vp09": ("VP9", "vp9"),
    b"av01": ("AV1", "av1"), b"Opus": ("Opus", "opus"), b"fLaC": ("FLAC", "flac"), b"ac-3": ("AC-3", "ac3"),
    b"ec-3": ("E-AC-3", "eac3"), b".mp3": ("MP3", "mp3"), b"mp4a": ("AAC", "aac"),
}
_AUDIO_EX_HEADER = 9  # Enhanced RTMP v2: the codec is a FourCC after the first byte
_HINT = {VIDEO: "H.264 video (or HEVC, VP8, VP9, AV1)", AUDIO: "AAC audio (or Opus, MP3)"}
_VIDEO_MULTITRACK, _AUDIO_MULTITRACK = 6, 5  # packet types whose FourCC comes later


@functools.cache
def decodable(decoder: str) -> bool:
    """True if this FFmpeg has ``decoder``."""
    if not decoder:
        return False
    try:
        av.Codec(decoder, "r")
    except Exception:  # UnknownCodecError, or built without it
        return False
    return True


def refusal(tag: FlvTag) -> str:
    """"" if the codec ``tag`` (an AUDIO or VIDEO tag) carries can be decoded, else why not."""
    if not tag.data:
        return ""
    kind = "video" if tag.type == VIDEO else "audio"
    first = tag.data[0]
    if (tag.type == VIDEO and first & 0x80) or (tag.type == AUDIO and first >> 4 == _AUDIO_EX_HEADER):
        if (first & 0x0F) == (_VIDEO_MULTITRACK if tag.type == VIDEO else _AUDIO_MULTITRACK):
            return ""  # several tracks, each with its FourCC: left to FFmpeg
        fourcc = tag.data[1:5]
        name, decoder = FOURCCS.get(fourcc, ("", ""))
        what = f"{name or 'unknown'} (Enhanced RTMP FourCC {fourcc.decode('latin-1')!r})"
    else:
        codec_id = first & 0x0F if tag.type == VIDEO else first >> 4
        name, decoder = (VIDEO_CODECS if tag.type == VIDEO else AUDIO_CODECS).get(codec_id, ("", ""))
        what = f"{name or 'unknown'} (FLV {kind} codec ID {codec_id})"
    if decodable(decoder):
        return ""
    return f"unsupported {kind} codec: {what}; publish {_HINT[tag.type]}"


class FlvCodecCheck:
    """Call with each tag of a stream: "" while it is usable, else (once, at the first tag of
    a kind) why its codec is refused. After the first audio and video tags, a set lookup."""

    def __init__(self) -> None:
        self._pending = {AUDIO, VIDEO}

    def __call__(self, tag: FlvTag) -> str:
        if tag.type not in self._pending:
            return ""
        self._pending.discard(tag.type)
        return refusal(tag)
