"""A synthetic A/V source for tests, demos and benchmarks.

Video: a moving bar on a gradient; once a second (at t = 0, 1, 2 ... s) one all-white
frame (the flash). Audio: silence with a 1 kHz beep starting at the same instants.
Probing an output for both onsets measures its A/V offset (see lkmedia.probe).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import av
import numpy as np

from ..core import Caps, Source
from ..core.memory import tune_malloc

VIDEO_TIME_BASE = Fraction(1, 90_000)
FLASH_Y = 235
BEEP_HZ = 1000.0
BEEP_SECONDS = 0.1
BEEP_AMPLITUDE = 0.5
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.3
AUDIO_MODES = ("beep", "tone", "silence")


class SyntheticSource(Source):
    """Outputs "video" (yuv420p, time base 1/90000) and "audio" (s16 planar-free, 1/rate).

    duration: seconds to produce (None: until stopped). live: pace by the graph clock.
    flash_frames: how many frames each flash lasts (one; more for a capture that may miss
    a single frame, as a screen grab of a playing video can).
    """

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 30,
        sample_rate: int = 48_000,
        channels: int = 2,
        duration: float | None = None,
        live: bool = False,
        video: bool = True,
        audio: bool = True,
        audio_frame_samples: int = 960,
        color: tuple[int, int, int] | None = None,
        audio_mode: str = "beep",
        flash_frames: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if flash_frames < 1:
            raise ValueError(f"{self.name}: flash_frames must be at least 1, got {flash_frames}")
        self.flash_frames = flash_frames
        if width % 2 or height % 2 or width < 16 or height < 16:
            raise ValueError(f"{self.name}: width and height must be even and at least 16")
        if not (video or audio):
            raise ValueError(f"{self.name}: needs video, audio or both")
        if audio_mode not in AUDIO_MODES:
            raise ValueError(f"{self.name}: audio_mode must be one of {', '.join(AUDIO_MODES)}, got {audio_mode!r}")
        self.color = tuple(color) if color is not None else None
        self.audio_mode = audio_mode
        self.width, self.height = width, height
        self.fps = Fraction(fps).limit_denominator(1001)
        self.sample_rate = sample_rate
        self.channels = channels
        self.duration = duration
        self.live = live
        self.audio_frame_samples = audio_frame_samples
        self.layout = "stereo" if channels == 2 else "mono"
        if video:
            self.add_output("video", Caps("video", width=width, height=height, fps=self.fps, pix_fmt="yuv420p"))
        if audio:
            self.add_output("audio", Caps("audio", sample_rate=sample_rate, layout=self.layout, sample_fmt="s16"))
        # Precomputed planes: a horizontal gradient for Y, flat chroma.
        self._bg = np.tile(np.linspace(16, 200, width, dtype=np.uint8), (height, 1))
        self._bar_w = max(2, width // 32)
        self.frames = 0
        self.samples = 0

    # -- generation --------------------------------------------------------
    def video_frame(self, i: int) -> av.VideoFrame:
        f = av.VideoFrame(self.width, self.height, "yuv420p")
        y = np.frombuffer(f.planes[0], np.uint8).reshape(self.height, -1)[:, : self.width]  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
        if self.is_flash(i):
            y[:] = FLASH_Y
        elif self.color is not None:  # a solid colour: each publisher told apart by its tile
            y[:] = self.color[0]
        else:
            y[:] = self._bg
            x = (i * 8) % (self.width - self._bar_w)
            y[:, x : x + self._bar_w] = 235
        for p in (1, 2):
            chroma = self.color[p] if self.color is not None else 128
            np.frombuffer(f.planes[p], np.uint8)[:] = chroma  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
        f.pts = round(i / self.fps / VIDEO_TIME_BASE)
        f.time_base = VIDEO_TIME_BASE
        return f

    def is_flash(self, i: int) -> bool:
        """The first ``flash_frames`` frames at or after each whole second flash."""
        return any(k == 0 or math.floor((k - 1) / self.fps) != math.floor(k / self.fps)
                   for k in range(max(0, i - self.flash_frames + 1), i + 1))

    def audio_frame(self, start: int) -> av.AudioFrame:
        n = self.audio_frame_samples
        t = start + np.arange(n)
        if self.audio_mode == "tone":  # someone talking all the time: the room's active speaker
            samples = TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t / self.sample_rate)
        elif self.audio_mode == "silence":
            samples = np.zeros(n)
        else:
            sec_pos = t % self.sample_rate
            beep = sec_pos < BEEP_SECONDS * self.sample_rate
            samples = np.where(beep, BEEP_AMPLITUDE * np.sin(2 * np.pi * BEEP_HZ * t / self.sample_rate), 0.0)
        pcm = (samples * 32767).astype(np.int16)
        data = np.repeat(pcm[None, :], self.channels, axis=0).T.reshape(1, -1)
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="s16", layout=self.layout)
        f.sample_rate = self.sample_rate
        f.pts = start
        f.time_base = Fraction(1, self.sample_rate)
        return f

    # -- run ---------------------------------------------------------------
    async def run(self) -> None:
        tune_malloc()
        vout = self.outputs.get("video")
        aout = self.outputs.get("audio")
        clock = self.graph.clock if self.graph is not None else None
        end = self.duration
        vi = 0
        ai = 0
        while not self.stop_requested:
            tv = float(vi / self.fps) if vout is not None else float("inf")
            ta = ai / self.sample_rate if aout is not None else float("inf")
            t = min(tv, ta)
            if end is not None and t >= end - 1e-9:
                break
            if self.live and clock is not None:
                await clock.sleep_until(t)
            if tv <= ta:
                await vout.emit(self.video_frame(vi))  # type: ignore[union-attr]
                vi += 1
                self.frames = vi
            else:
                await aout.emit(self.audio_frame(ai))  # type: ignore[union-attr]
                ai += self.audio_frame_samples
                self.samples = ai

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "seconds": self.frames / float(self.fps) if self.frames else 0.0}
