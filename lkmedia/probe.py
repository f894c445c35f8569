"""Probe media the way a user's player would: ffprobe for structure, a full decode for
errors, and flash/beep onsets (from SyntheticSource) for A/V offset."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np


@dataclass
class StreamProbe:
    kind: str  # "video" | "audio"
    codec: str
    duration: float | None
    frames: int | None
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    channels: int | None = None


@dataclass
class Probe:
    path: str
    format: str
    duration: float | None
    streams: list[StreamProbe] = field(default_factory=list)

    def stream(self, kind: str) -> StreamProbe:
        for s in self.streams:
            if s.kind == kind:
                return s
        raise AssertionError(f"{self.path} has no {kind} stream (has {[s.kind for s in self.streams]})")

    def has(self, kind: str) -> bool:
        return any(s.kind == kind for s in self.streams)


def _f(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def probe(path: str, count_frames: bool = True) -> Probe:
    """ffprobe ``path``; frame counts come from reading every packet."""
    cmd = ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams"]
    if count_frames:
        cmd.append("-count_packets")
    out = subprocess.run(cmd + [path], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"ffprobe failed on {path}: {out.stderr.strip()}")
    j = json.loads(out.stdout)
    p = Probe(path, j["format"].get("format_name", ""), _f(j["format"].get("duration")))
    for s in j.get("streams", []):
        if s.get("codec_type") not in ("video", "audio"):
            continue
        p.streams.append(StreamProbe(
            kind=s["codec_type"], codec=s.get("codec_name", ""),
            duration=_f(s.get("duration")),
            frames=int(s["nb_read_packets"]) if "nb_read_packets" in s else None,
            width=s.get("width"), height=s.get("height"),
            sample_rate=int(s["sample_rate"]) if "sample_rate" in s else None,
            channels=s.get("channels"),
        ))
    return p


def decode_errors(path: str) -> str:
    """Decode everything with the ffmpeg CLI; returns its error output ('' if clean).

    The decoded frames keep the file's own time base (``-enc_time_base -1``): by default the
    CLI's null output counts video in 1/frame-rate ticks, and two frames of a variable-rate
    file less than a tick apart (a publisher's own timing, written as it arrived) made it
    report "non monotonically increasing dts" though every frame decodes."""
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-enc_time_base", "-1", "-f", "null", "-"],
                         capture_output=True, text=True, timeout=300)
    return (out.stderr.strip() + (f" (exit {out.returncode})" if out.returncode else "")).strip()


def playable_seconds(path: str) -> float:
    """How many seconds of video (or audio) actually decode."""
    last = 0.0
    try:
        with av.open(path) as c:
            s = c.streams.video[0] if c.streams.video else c.streams.audio[0]
            for frame in c.decode(s):
                if isinstance(frame, av.VideoFrame | av.AudioFrame) and frame.time is not None:
                    last = max(last, frame.time + (1 / float(s.average_rate) if s.type == "video" and s.average_rate else 0))
    except av.FFmpegError:
        pass
    return last


def flash_times(path: str, threshold: float = 175.0) -> list[float]:
    """Times of the first bright frame of each flash (mean luma above ``threshold``)."""
    times: list[float] = []
    prev = False
    with av.open(path) as c:
        if not c.streams.video:
            return []
        for f in c.decode(c.streams.video[0]):
            y = f.to_ndarray(format="gray") if f.format.name != "yuv420p" else np.frombuffer(f.planes[0], np.uint8)  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
            bright = float(y.mean()) > threshold
            if bright and not prev and f.time is not None:
                times.append(float(f.time))
            prev = bright
    return times


def beep_times(path: str, threshold: float = 0.1) -> list[float]:
    """Onsets of each beep: first sample above ``threshold`` after at least 0.3 s of quiet.
    Each decoded frame's samples are dated from that frame's own time, so a gap in the
    stream (a lost packet in a remuxed file) does not move the beeps after it."""
    onsets: list[float] = []
    last = -10.0
    with av.open(path) as c:
        if not c.streams.audio:
            return []
        end = 0.0
        for f in c.decode(c.streams.audio[0]):
            rate = f.sample_rate
            start = float(f.time) if f.time is not None else end
            end = start + f.samples / rate
            a = f.to_ndarray()
            if a.dtype.kind == "i":
                a = a.astype(np.float32) / 32768.0
            if f.format.is_planar:
                a = a.mean(axis=0)
            else:
                a = a.reshape(-1, len(f.layout.channels)).mean(axis=1)
            for i in map(int, np.flatnonzero(np.abs(a) > threshold)):
                t = start + i / rate
                if t - last > 0.3:
                    onsets.append(t)
                last = t
    return onsets


def av_offsets(path: str, after: float = 0.0) -> list[float]:
    """Audio onset minus video flash, seconds, for each flash (from ``after`` s into the
    file) with a beep within 0.5 s. Positive: audio late."""
    flashes = [t for t in flash_times(path) if t >= after]
    beeps = beep_times(path)
    out: list[float] = []
    for t in flashes:
        near = [b - t for b in beeps if abs(b - t) < 0.5]
        if near:
            out.append(min(near, key=abs))
    return out


def assert_av_sync(offsets: list[float], *, subscriptions: int = 1, tolerance: float = 0.040,
                   settling: float = 0.060) -> None:
    """Every |A/V offset| within ``tolerance``, except that the first flash after each of
    ``subscriptions`` (re)subscriptions to a live track may be off by up to ``settling``:
    a LiveKit source learns the receiver's audio jitter-buffer delay from WebRTC stats
    while the buffer is still settling (first flashes seen: up to 37 ms)."""
    big = [o for o in offsets if abs(o) > tolerance]
    assert len(big) <= subscriptions and all(abs(o) <= settling for o in offsets), f"A/V offsets (s): {offsets}"
