"""Encoders: presets, advanced options, keyframe interval, profiles, codecs, bad input."""
from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest

from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.nodes.presets import PRESETS, get_preset
from lkmedia.sources.synthetic import SyntheticSource


def encode_video(enc: VideoEncoder, seconds: float = 2, w: int = 320, h: int = 240, fps: int = 30) -> list[av.Packet]:
    src = SyntheticSource(width=w, height=h, fps=fps, audio=False)
    enc._open()
    pkts: list[av.Packet] = []
    for i in range(int(seconds * fps)):
        pkts.extend(enc.process(src.video_frame(i)))
    pkts.extend(enc.flush())
    return pkts


def mux(pkts: list[av.Packet], path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream_from_template(pkts[0].stream)
        for p in pkts:
            p.stream = s
            c.mux(p)
    return path


def ffprobe_stream(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["streams"][0]


def test_presets_match_livekit() -> None:
    assert get_preset("h264_720p_30") == PRESETS["H264_720P_30"]
    assert (PRESETS["PORTRAIT_H264_1080P_60"].width, PRESETS["PORTRAIT_H264_1080P_60"].height) == (1080, 1920)
    assert PRESETS["H264_1080P_60"].bitrate == 6_000_000
    with pytest.raises(ValueError, match="unknown preset 'H264_4K'"):
        get_preset("H264_4K")


@pytest.mark.parametrize("preset", ["H264_720P_30", "PORTRAIT_H264_720P_60"])
def test_preset_sets_size_rate_and_bitrate(preset: str, tmp_path: Path) -> None:
    enc = VideoEncoder(preset=preset)
    p = get_preset(preset)
    assert (enc.width, enc.height, enc.fps, enc.bitrate) == (p.width, p.height, p.fps, p.bitrate)
    pkts = encode_video(enc, seconds=1, fps=p.fps)
    info = ffprobe_stream(mux(pkts, tmp_path / "p.mp4"))
    assert (info["width"], info["height"]) == (p.width, p.height)
    assert len(pkts) == p.fps


@pytest.mark.parametrize("profile,expect", [("baseline", "Constrained Baseline"), ("main", "Main"), ("high", "High")])
def test_h264_profiles(profile: str, expect: str, tmp_path: Path) -> None:
    enc = VideoEncoder(width=320, height=240, fps=30, bitrate=500_000, profile=profile)
    info = ffprobe_stream(mux(encode_video(enc), tmp_path / "p.mp4"))
    assert info["profile"] in (expect, expect.replace("Constrained ", ""))


def test_keyframe_interval_and_bitrate() -> None:
    enc = VideoEncoder(width=320, height=240, fps=30, bitrate=400_000, keyframe_interval=0.5)
    pkts = encode_video(enc, seconds=4)
    keys = [float(p.pts * p.time_base) for p in pkts if p.is_keyframe]
    assert keys == pytest.approx([i * 0.5 for i in range(8)], abs=1e-6)
    kbps = sum(p.size for p in pkts) * 8 / 4 / 1000
    assert kbps < 1.5 * 400, kbps  # VBV caps the rate (simple content may use less)


@pytest.mark.parametrize("codec,name", [("libvpx", "vp8"), ("libvpx-vp9", "vp9")])
def test_vpx_encoders(codec: str, name: str, tmp_path: Path) -> None:
    enc = VideoEncoder(codec, width=320, height=240, fps=30, bitrate=300_000)
    pkts = encode_video(enc, seconds=1)
    assert len(pkts) == 30 and pkts[0].is_keyframe
    assert ffprobe_stream(mux(pkts, tmp_path / "v.webm"))["codec_name"] == name


def test_scales_frames_of_another_size() -> None:
    enc = VideoEncoder(width=160, height=120, fps=30, bitrate=200_000)
    pkts = encode_video(enc, seconds=1, w=320, h=240)
    dec = av.CodecContext.create("h264", "r")
    dec.extradata = enc.stream.codec_context.extradata
    frames = [f for p in pkts for f in dec.decode(p)] + list(dec.decode(None))
    assert (frames[0].width, frames[0].height) == (160, 120) and len(frames) == 30


def test_non_monotonic_timestamps_are_dropped_not_fatal() -> None:
    src = SyntheticSource(width=320, height=240, audio=False)
    enc = VideoEncoder(width=320, height=240, fps=30, bitrate=200_000)
    enc._open()
    out = []
    for i in (0, 1, 2, 1, 3):
        out.extend(enc.process(src.video_frame(i)))
    out.extend(enc.flush())
    assert len(out) == 4


def test_a_frame_with_no_picture_is_skipped_not_fatal() -> None:
    """Was: 'video_encoder: Invalid argument returned 22' (sws_scale on the 2x0 frame a
    LiveKit track handed out when its publisher unpublished it)."""
    src = SyntheticSource(width=320, height=240, audio=False)
    enc = VideoEncoder(width=160, height=120, fps=30, bitrate=200_000)
    empty = av.VideoFrame(2, 0, "yuv420p")
    empty.pts, empty.time_base = 4 * 3000, Fraction(1, 90_000)
    out = []
    for i in range(8):
        out.extend(enc.process(src.video_frame(i) if i != 4 else empty))
    out.extend(enc.flush())
    assert len(out) == 7 and enc.skipped == 1


@pytest.mark.parametrize("codec,name,rate", [("aac", "aac", 44100), ("opus", "opus", 48000), ("mp3", "mp3", 44100)])
def test_audio_encoders_keep_time(codec: str, name: str, rate: int) -> None:
    src = SyntheticSource(audio=True, video=False, sample_rate=48000)
    enc = AudioEncoder(codec, sample_rate=rate, bitrate=96_000)
    enc._open()
    pkts = []
    for k in range(100):  # 2 s
        pkts.extend(enc.process(src.audio_frame(k * 960)))
    pkts.extend(enc.flush())
    assert enc.codec == name
    end = max(float((p.pts + p.duration) * p.time_base) for p in pkts)
    assert end == pytest.approx(2.0, abs=0.06)
    assert pkts[0].time_base == Fraction(1, rate)


@pytest.mark.parametrize("kwargs,match", [
    ({"width": 641, "height": 360}, "width must be even"),
    ({"codec": "h265x"}, "unknown video codec 'h265x'"),
    ({"profile": "extreme"}, "unknown H.264 profile 'extreme'"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"bitrate": -1}, "must be positive"),
])
def test_bad_video_options_name_the_problem(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VideoEncoder(**kwargs)


def test_bad_audio_options_name_the_problem() -> None:
    with pytest.raises(ValueError, match="Opus takes"):
        AudioEncoder("opus", sample_rate=44100)
    with pytest.raises(ValueError, match="unknown audio codec 'speex'"):
        AudioEncoder("speex")


def test_synthetic_flash_and_beep_are_at_whole_seconds() -> None:
    src = SyntheticSource(width=64, height=48, fps=30)
    flashes = [i for i in range(90) if src.is_flash(i)]
    assert flashes == [0, 30, 60]
    longer = SyntheticSource(width=64, height=48, fps=30, flash_frames=2)
    assert [i for i in range(90) if longer.is_flash(i)] == [0, 1, 30, 31, 60, 61]
    import numpy as np
    lum = [np.frombuffer(src.video_frame(i).planes[0], np.uint8).mean() for i in (0, 1, 30)]
    assert lum[0] > 200 and lum[1] < 150 and lum[2] > 200
    a = src.audio_frame(48000).to_ndarray()
    assert abs(a).max() > 10000  # the beep at t = 1 s
    assert abs(src.audio_frame(48000 + 9600).to_ndarray()).max() == 0


def test_keyframes_follow_time_when_the_frame_rate_wanders() -> None:
    """A live track at ~17 fps into a 30 fps encoder: key frames stay 1 s apart."""
    enc = VideoEncoder(width=320, height=240, fps=30, bitrate=300_000, keyframe_interval=1.0)
    src = SyntheticSource(width=320, height=240, fps=30, audio=False)
    enc._open()
    pkts: list[av.Packet] = []
    t = 0.0
    import random
    rnd = random.Random(1)
    while t < 5.0:
        f = src.video_frame(0)
        f.pts = round(t * 90_000)
        pkts.extend(enc.process(f))
        t += rnd.uniform(0.04, 0.08)
    pkts.extend(enc.flush())
    keys = [float(p.pts * p.time_base) for p in pkts if p.is_keyframe]
    assert len(keys) == 5 and all(abs(k - round(k)) < 0.09 for k in keys), keys


def test_audio_after_a_hole_in_the_input_keeps_its_time(tmp_path: Path) -> None:
    """Holes in the input (a decoder's lost or DTX-skipped packets) become silence: the
    audio after one was encoded straight on, up to 200 ms early, and past that it moved by
    the hole but carried the resampler's leftover samples along (up to a frame late)."""
    from lkmedia.probe import beep_times
    src = SyntheticSource(audio=True, video=False, sample_rate=48000)
    enc = AudioEncoder("aac", sample_rate=48_000, bitrate=96_000)
    enc._open()
    pkts = []
    for k in range(175):  # 3.5 s in 20 ms frames, less 100 ms at 1.2 s and 300 ms at 2.3 s
        if 60 <= k < 65 or 115 <= k < 130:
            continue
        pkts.extend(enc.process(src.audio_frame(k * 960)))
    pkts.extend(enc.flush())
    beeps = beep_times(str(mux(pkts, tmp_path / "holes.m4a")))
    assert [round(b, 3) for b in beeps] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.003)
