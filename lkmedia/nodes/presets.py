"""LiveKit's egress encoding presets and defaults (EncodingOptionsPreset)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VideoPreset:
    width: int
    height: int
    fps: int
    bitrate: int  # bits per second


#: Names and values as LiveKit's EncodingOptionsPreset. Audio stays AAC/Opus 128 kbps.
PRESETS: dict[str, VideoPreset] = {
    "H264_720P_30": VideoPreset(1280, 720, 30, 3_000_000),
    "H264_720P_60": VideoPreset(1280, 720, 60, 4_500_000),
    "H264_1080P_30": VideoPreset(1920, 1080, 30, 4_500_000),
    "H264_1080P_60": VideoPreset(1920, 1080, 60, 6_000_000),
    "PORTRAIT_H264_720P_30": VideoPreset(720, 1280, 30, 3_000_000),
    "PORTRAIT_H264_720P_60": VideoPreset(720, 1280, 60, 4_500_000),
    "PORTRAIT_H264_1080P_30": VideoPreset(1080, 1920, 30, 4_500_000),
    "PORTRAIT_H264_1080P_60": VideoPreset(1080, 1920, 60, 6_000_000),
}

DEFAULT_PRESET = "H264_720P_30"
DEFAULT_AUDIO_BITRATE = 128_000
DEFAULT_KEYFRAME_INTERVAL = 4.0  # seconds, LiveKit's default for streams


def get_preset(name: str) -> VideoPreset:
    key = name.upper()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]
