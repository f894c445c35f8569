"""Raw-media converters: Scale, PixelFormat, Resample, FpsConverter.

Each keeps one converter (VideoReformatter / AudioResampler) for its whole life: the
SwsContext or filter graph is built once, not per frame. Frames they create carry
lkmedia's time bases (video 1/90000, audio 1/sample_rate); a frame that needs no work
passes through as the same object, untouched. Gaps pass through.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.audio.resampler import AudioResampler
from av.video.reformatter import VideoReformatter

from ..core import Caps, Gap, Processor
from ..core.edge import Policy

VIDEO_TIME_BASE = Fraction(1, 90_000)


def _check_video(node: Processor, caps: Caps) -> str | None:
    if caps.media != "video" or caps.encoded:
        return f"{node.name} converts raw video, got {caps.describe()}"
    return None


def _check_audio(node: Processor, caps: Caps) -> str | None:
    if caps.media != "audio" or caps.encoded:
        return f"{node.name} converts raw audio, got {caps.describe()}"
    return None


def _pix_fmt(name: str, pix_fmt: str) -> str:
    try:
        av.VideoFormat(pix_fmt)
    except (ValueError, av.FFmpegError):
        raise ValueError(f"{name}: unknown pixel format {pix_fmt!r}") from None
    return pix_fmt


class Scale(Processor):
    """Resize (and convert) video frames to ``width`` x ``height`` in ``pix_fmt``."""

    threaded = True

    def __init__(
        self,
        width: int,
        height: int,
        pix_fmt: str = "yuv420p",
        *,
        interpolation: str = "BILINEAR",
        name: str | None = None,
        policy: Policy = Policy.BLOCK,
        capacity: int = 8,
    ) -> None:
        super().__init__(name, policy=policy, capacity=capacity)
        for what, v in (("width", width), ("height", height)):
            if not isinstance(v, int) or v < 2:
                raise ValueError(f"{self.name}: {what} must be an integer of at least 2, got {v!r}")
        self.width: int | None = width
        self.height: int | None = height
        self.pix_fmt = _pix_fmt(self.name, pix_fmt)
        self.interpolation = interpolation
        self._reformatter = VideoReformatter()
        self.frames = 0

    def accept(self, caps: Caps) -> str | None:
        return _check_video(self, caps)

    def negotiate(self) -> None:
        super().negotiate()
        caps = self.inputs["in"].caps or Caps("video")
        self.outputs["out"].caps = caps.with_(
            width=self.width or caps.width, height=self.height or caps.height, pix_fmt=self.pix_fmt)

    def process(self, frame: Any) -> Iterable[Any]:
        if isinstance(frame, Gap):
            return (frame,)
        out = self._reformatter.reformat(frame, self.width, self.height, self.pix_fmt,
                                         interpolation=self.interpolation)
        if out is not frame:  # a new frame is ours to stamp
            out.pts, out.time_base = frame.pts, frame.time_base
        self.frames += 1
        return (out,)

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames}


class Fit(Scale):
    """Scale video down to fit ``box_w`` x ``box_h``, keeping its aspect (never up; even
    sizes), deciding from each frame: for inputs whose size is known only once media flows
    (WebRTC, RTMP) or changes midway."""

    def __init__(self, box_w: int, box_h: int, pix_fmt: str = "yuv420p", *, name: str | None = None) -> None:
        super().__init__(box_w, box_h, pix_fmt, name=name)
        self.box = (box_w, box_h)
        self._for: tuple[int, int] | None = None

    def negotiate(self) -> None:
        super().negotiate()
        caps = self.inputs["in"].caps or Caps("video")
        w: int | None = None  # known at the first frame
        h: int | None = None
        if caps.width and caps.height:
            w, h = fit(caps.width, caps.height, *self.box)
        self.outputs["out"].caps = self.outputs["out"].caps.with_(width=w, height=h)  # type: ignore[union-attr]

    def process(self, frame: Any) -> Iterable[Any]:
        if not isinstance(frame, Gap) and (frame.width, frame.height) != self._for:
            self._for = (frame.width, frame.height)
            self.width, self.height = fit(frame.width, frame.height, *self.box)
        return super().process(frame)


def fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """``width`` x ``height`` scaled to fit ``box_w`` x ``box_h`` (never up), even sizes."""
    k = min(1.0, box_w / width, box_h / height)
    return max(2, round(width * k / 2) * 2), max(2, round(height * k / 2) * 2)


class PixelFormat(Scale):
    """Convert video frames to ``pix_fmt``, keeping their size."""

    def __init__(self, pix_fmt: str, *, name: str | None = None,
                 policy: Policy = Policy.BLOCK, capacity: int = 8) -> None:
        super().__init__(2, 2, pix_fmt, name=name, policy=policy, capacity=capacity)
        self.width = self.height = None


class Resample(Processor):
    """Convert audio to ``sample_rate`` / ``layout`` / sample ``format`` (None: keep the
    input's), optionally in frames of exactly ``frame_samples`` samples.

    Output timestamps count samples at the new rate from the first input frame's time,
    so the track stays continuous; a jump in the input (> 20 ms) moves them too.
    """

    threaded = True

    def __init__(
        self,
        sample_rate: int | None = None,
        layout: str | None = None,
        format: str | None = None,
        frame_samples: int | None = None,
        *,
        name: str | None = None,
        capacity: int = 16,
    ) -> None:
        super().__init__(name, capacity=capacity)
        if sample_rate is not None and not 1000 <= sample_rate <= 384_000:
            raise ValueError(f"{self.name}: sample_rate must be between 1000 and 384000, got {sample_rate}")
        if frame_samples is not None and frame_samples < 1:
            raise ValueError(f"{self.name}: frame_samples must be positive, got {frame_samples}")
        if layout is not None:
            try:
                av.AudioLayout(layout)
            except (ValueError, av.FFmpegError):
                raise ValueError(f"{self.name}: unknown channel layout {layout!r}") from None
        if format is not None:
            try:
                av.AudioFormat(format)
            except (ValueError, av.FFmpegError):
                raise ValueError(f"{self.name}: unknown sample format {format!r}") from None
        self.sample_rate = sample_rate
        self.layout = layout
        self.format = format
        self.frame_samples = frame_samples
        self._resampler: AudioResampler | None = None
        self._in_key: tuple[str, str, int] | None = None
        self._rate = 0  # output rate, known from the first frame
        self._next: int | None = None  # output pts of the next sample
        self._in_expected: Fraction | None = None  # input time where the next frame should start
        self.samples_in = 0
        self.samples_out = 0

    def accept(self, caps: Caps) -> str | None:
        return _check_audio(self, caps)

    def negotiate(self) -> None:
        super().negotiate()
        caps = self.inputs["in"].caps or Caps("audio")
        self.outputs["out"].caps = caps.with_(
            sample_rate=self.sample_rate or caps.sample_rate,
            layout=self.layout or caps.layout,
            sample_fmt=self.format or caps.sample_fmt)

    def _stamp(self, frames: list[Any], src: Any = None) -> list[Any]:
        out = []
        for f in frames:
            if f is src:  # passthrough: the received frame, already on our clock
                self._next = (f.pts or 0) + f.samples
            else:
                if self._next is None:
                    self._next = 0
                f.pts, f.time_base = self._next, Fraction(1, self._rate)
                self._next += f.samples
            self.samples_out += f.samples
            out.append(f)
        return out

    def process(self, frame: Any) -> Iterable[Any]:
        if isinstance(frame, Gap):
            return (frame,)
        out: list[Any] = []
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._resampler is None or key != self._in_key:
            if self._resampler is not None:  # the input changed: drain, then start anew
                out.extend(self._stamp(self._resampler.resample(None)))
            self._in_key = key
            self._rate = self.sample_rate or frame.sample_rate
            self._resampler = AudioResampler(format=self.format or frame.format.name,
                                             layout=self.layout or frame.layout.name,
                                             rate=self._rate, frame_size=self.frame_samples)
        if frame.pts is not None and frame.time_base is not None:
            t = frame.pts * frame.time_base
            if self._next is None:
                self._next = round(t * self._rate)
            elif self._in_expected is not None and abs(t - self._in_expected) > Fraction(1, 50):
                self._next += round((t - self._in_expected) * self._rate)
            self._in_expected = t + Fraction(frame.samples, frame.sample_rate)
        self.samples_in += frame.samples
        out.extend(self._stamp(self._resampler.resample(frame), frame))
        return out

    def flush(self) -> Iterable[Any]:
        if self._resampler is None:
            return ()
        return self._stamp(self._resampler.resample(None))

    def stats(self) -> dict[str, Any]:
        return {"samples_in": self.samples_in, "samples_out": self.samples_out}


def copy_video_frame(frame: av.VideoFrame) -> av.VideoFrame:
    """A new frame with ``frame``'s picture (a copy: PyAV cannot share the buffer)."""
    new = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for sp, dp in zip(frame.planes, new.planes):
        src = np.frombuffer(sp, np.uint8)  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
        dst = np.frombuffer(dp, np.uint8)  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
        if sp.line_size == dp.line_size and src.size == dst.size:
            dst[:] = src
        else:
            rows = dp.buffer_size // dp.line_size
            n = min(sp.line_size, dp.line_size)
            dst.reshape(rows, dp.line_size)[:, :n] = src[: rows * sp.line_size].reshape(rows, sp.line_size)[:, :n]
    for attr in ("colorspace", "color_range"):
        try:
            setattr(new, attr, getattr(frame, attr))
        except (AttributeError, ValueError, TypeError):
            pass
    return new


PHASE_WEIGHT = 0.05  # the phase follows about the last 20 inputs
PHASE_WRAP = 0.6  # slots: frames move by at most this much of a frame


class FpsConverter(Processor):
    """Constant frame rate: frames are dropped or repeated so that output frame n has
    pts n/fps (time base 1/90000); each output slot shows the last input frame mapped to
    it. A jump of more than ``max_fill`` seconds is not filled.

    Live input arrives at about the output rate with a few ms of jitter and an arbitrary
    phase. Rounding each timestamp to the nearest slot would, for inputs that sit near a
    slot boundary, put two frames in one slot and none in the next (a dropped frame and a
    repeated one, many times a second). So the slots are centred on the input's phase: a
    circular running mean of where inputs fall between slots, reset at each Gap (a new
    subscription has a new phase). Inputs are then moved by at most half a frame, by the
    same amount each time, and only a real rate difference drops or repeats a frame.
    (Half a frame, up to PHASE_WRAP while a clock drift takes the phase past half a slot.)
    """

    threaded = True

    def __init__(self, fps: float | Fraction, *, max_fill: float = 5.0, owns_input: bool = False,
                 name: str | None = None, policy: Policy = Policy.BLOCK, capacity: int = 8) -> None:
        """``owns_input``: nothing else holds the frames that come in (no fan-out before this
        node), so a frame's first emission is retimed in place; only a repeat is a copy."""
        super().__init__(name, policy=policy, capacity=capacity)
        self.owns_input = owns_input
        self.copies = 0
        self.fps = Fraction(fps).limit_denominator(1001)
        if not 0 < self.fps <= 240:
            raise ValueError(f"{self.name}: fps must be in (0, 240], got {fps}")
        self.max_fill = max(1, round(max_fill * self.fps))
        self._held: Any = None
        self._held_t: Fraction | None = None
        self._held_used = False
        self._interval: Fraction | None = None
        self._next: int | None = None  # next output slot
        self._pc = self._ps = 0.0  # running mean of the inputs' phase as a unit vector
        self._phase = 0.0  # slots are centred on this (frames, in [-0.5, 0.5))
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.duplicated = 0

    def accept(self, caps: Caps) -> str | None:
        return _check_video(self, caps)

    def negotiate(self) -> None:
        super().negotiate()
        caps = self.inputs["in"].caps or Caps("video")
        self.outputs["out"].caps = caps.with_(fps=self.fps)

    def _slot(self, t: Fraction) -> int:
        return math.floor(t * self.fps - Fraction(self._phase) + Fraction(1, 2))

    def _track_phase(self, t: Fraction) -> None:
        """Fold this input's place between slots into the running phase."""
        x = float(t * self.fps)
        a = 2 * math.pi * (x - math.floor(x))
        c, s = math.cos(a), math.sin(a)
        if self._pc == 0.0 and self._ps == 0.0:
            self._pc, self._ps = c, s
        else:
            self._pc += PHASE_WEIGHT * (c - self._pc)
            self._ps += PHASE_WEIGHT * (s - self._ps)
        # Inputs at a steady phase (input rate about the output rate) give a long mean
        # vector; inputs all over the slot (60 in, 30 out) a short one: round plainly then.
        if self._pc * self._pc + self._ps * self._ps > 0.25:
            ph = math.atan2(self._ps, self._pc) / (2 * math.pi)
            # Unwrapped next to the last phase: inputs hovering at half a slot must not
            # flip between -0.5 and +0.5 (a drop and a repeat each time). Only a drift past
            # PHASE_WRAP moves by a whole slot.
            d = ph - self._phase
            ph = self._phase + d - math.floor(d + 0.5)
            if abs(ph) > PHASE_WRAP:
                ph -= math.copysign(1.0, ph)
            self._phase = ph
        else:
            self._phase = 0.0

    def _emit(self, n: int) -> Any:
        f = self._held
        pts = round(Fraction(n) / self.fps / VIDEO_TIME_BASE)
        if self._held_used or (not self.owns_input and (f.pts != pts or f.time_base != VIDEO_TIME_BASE)):
            f = copy_video_frame(f)
            self.copies += 1
        if f.pts != pts or f.time_base != VIDEO_TIME_BASE:
            f.pts, f.time_base = pts, VIDEO_TIME_BASE
        if self._held_used:
            self.duplicated += 1
        self._held_used = True
        self.frames_out += 1
        return f

    def _fill_to(self, s: int) -> list[Any]:
        """Emit the held frame for every slot before ``s``."""
        assert self._next is not None
        out = []
        if s - self._next > self.max_fill:  # a long jump: show the frame once, then skip
            out.append(self._emit(self._next))
            self._next = s
        while self._next < s:
            out.append(self._emit(self._next))
            self._next += 1
        return out

    def process(self, frame: Any) -> Iterable[Any]:
        if isinstance(frame, Gap):
            self._pc = self._ps = 0.0  # what comes after a hole has a phase of its own
            return (frame,)
        if frame.pts is None or frame.time_base is None:
            t = (self._held_t + (self._interval or 1 / self.fps)) if self._held_t is not None else Fraction(0)
        else:
            t = frame.pts * frame.time_base
        self.frames_in += 1
        self._track_phase(t)
        s = self._slot(t)
        out: list[Any] = []
        if self._held is None:
            self._next = s
        else:
            assert self._next is not None
            if s + self.max_fill < self._next:  # time went back (a reset): follow it
                self._next = s
            out = self._fill_to(s)
            if not self._held_used:
                self.dropped += 1
            if self._held_t is not None and t > self._held_t:
                self._interval = t - self._held_t
        self._held, self._held_t, self._held_used = frame, t, False
        return out

    def flush(self) -> Iterable[Any]:
        if self._held is None or self._held_t is None:
            return ()
        f = self._held
        dur = Fraction(f.duration) * f.time_base if f.duration and f.time_base else None
        end = self._held_t + (dur or self._interval or 1 / self.fps)
        out = self._fill_to(self._slot(end))
        if not self._held_used:
            self.dropped += 1
        self._held = None
        return out

    def stats(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out,
                "dropped": self.dropped, "duplicated": self.duplicated, "copies": self.copies}

