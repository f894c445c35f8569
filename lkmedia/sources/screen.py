"""Live capture of an X display and a PulseAudio sink into the graph: what a Chrome job
records (lkmedia.chrome.session sets both up).

Video: FFmpeg's x11grab through PyAV, paced by x11grab itself at ``fps``, each frame
stamped with the graph clock at its grab (x11grab's own wall-clock stamp, not the time it
reached the event loop; bgr0, the encoder converts). Audio: a
stream of raw s16le stereo 48 kHz (``parec`` on the sink's monitor, started by the
session) read in 20 ms chunks, stamped by sample count from the first chunk and pulled
back to the graph clock when it runs ahead by ``RESYNC`` or behind by ``LOST`` (the mixer
downstream turns gaps into silence). Measured through a page playing a flash/beep video,
the two stamps agree within 40 ms (tests/integration/livekit/test_chrome.py), so no
offset is applied.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

from ..core import Caps, Source

VIDEO_TIME_BASE = Fraction(1, 90_000)
RATE, CHANNELS = 48_000, 2
CHUNK = 960  # samples per audio frame (20 ms)
RESYNC = 0.08  # seconds the sample count may run ahead of the wall clock before re-stamping
MAX_GRAB_WAIT = 1.0  # a frame's grab stamp further back than this is not trusted (clock step)
LOST = 0.4  # seconds behind: more than the pipe from parec holds (64 KiB, 0.34 s), sound was lost


class ScreenSource(Source):
    """Outputs "video" (bgr0 at ``width`` x ``height``) and/or "audio" (s16 stereo 48 kHz)."""

    live = True

    def __init__(self, display: str, width: int, height: int, fps: float, *,
                 audio: asyncio.StreamReader | None = None, video: bool = True, name: str | None = None) -> None:
        super().__init__(name)
        self.display, self.width, self.height, self.fps = display, width, height, fps
        self._pcm = audio
        if video:
            self.add_output("video", Caps("video", width=width, height=height, fps=Fraction(fps).limit_denominator(1001),
                                          pix_fmt="bgr0"))
        if audio is not None:
            self.add_output("audio", Caps("audio", sample_rate=RATE, layout="stereo", sample_fmt="s16"))
        self.frames = 0
        self.samples = 0
        self.resyncs = 0
        self.first_audio: float | None = None
        self._container: Any = None

    async def setup(self) -> None:
        if "video" in self.outputs:
            opts = {"video_size": f"{self.width}x{self.height}", "framerate": f"{self.fps:g}", "draw_mouse": "0"}
            self._container = await self.offload(lambda: av.open(self.display, format="x11grab", options=opts))

    async def run(self) -> None:
        tasks = []
        if self._container is not None:
            tasks.append(asyncio.create_task(self._video(), name=f"{self.name}-video"))
        if self._pcm is not None:
            tasks.append(asyncio.create_task(self._audio(), name=f"{self.name}-audio"))
        try:
            stop = asyncio.ensure_future(self.wait_stop())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            stop.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)
        finally:
            await self._close()

    async def _video(self) -> None:
        port = self.outputs["video"]
        clock = self.graph.clock  # type: ignore[union-attr]
        frames: Iterator[av.VideoFrame] = self._container.decode(video=0)
        last = -1
        while not self.stop_requested:
            frame = await self.offload(next, frames, None)
            if frame is None:
                raise RuntimeError(f"{self.name}: the display {self.display} closed")
            pts = round(self._grabbed_at(frame, clock.now()) * 90_000)
            if pts <= last:
                continue
            frame.pts, frame.time_base, last = pts, VIDEO_TIME_BASE, pts
            await port.emit(frame)
            self.frames += 1

    @staticmethod
    def _grabbed_at(frame: av.VideoFrame, now: float) -> float:
        """When x11grab took the frame, on the graph clock (``now`` is the graph clock at
        hand-over): x11grab stamps each frame with the wall clock at its grab, so the time
        the frame then spent reaching the event loop (a thread hop, a loop held up under
        load) does not make the picture late against the sound."""
        if frame.pts is None or frame.time_base is None:
            return now
        waited = time.time() - float(frame.pts * frame.time_base)
        return now - waited if 0.0 <= waited < MAX_GRAB_WAIT else now

    async def _audio(self) -> None:
        port = self.outputs["audio"]
        clock = self.graph.clock  # type: ignore[union-attr]
        out = self._pcm
        assert out is not None
        nbytes = CHUNK * CHANNELS * 2
        await _drop_backlog(out)
        start: int | None = None  # sample at which the next chunk begins
        while not self.stop_requested:
            try:
                data = await out.readexactly(nbytes)
            except asyncio.IncompleteReadError:
                raise RuntimeError(f"{self.name}: the audio capture ended (parec exited)") from None
            wall = round(clock.now() * RATE) - CHUNK
            if start is None:
                self.first_audio = clock.now()
                start = wall
            elif start - wall > RESYNC * RATE or wall - start > LOST * RATE:
                # Ahead: a burst read faster than real time. Behind by more than the pipe
                # holds: the capture lost sound while the loop was held up.
                self.resyncs += 1
                start = wall
            pcm = np.frombuffer(data, np.int16).reshape(1, -1)
            f = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
            f.sample_rate, f.pts, f.time_base = RATE, start, Fraction(1, RATE)
            start += CHUNK
            self.samples += CHUNK
            await port.emit(f)

    async def _close(self) -> None:
        if self._container is not None:
            c, self._container = self._container, None
            await self.offload(c.close)

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "audio_seconds": self.samples / RATE, "audio_resyncs": self.resyncs,
                "first_audio": self.first_audio}


async def _drop_backlog(out: asyncio.StreamReader) -> None:
    """Discard what the capture delivered before now: the first chunk read after this is
    fresh, so its stamp (the graph clock) is right."""
    while True:
        try:
            async with asyncio.timeout(0.005):
                if not await out.read(1 << 16):
                    return
        except TimeoutError:
            return
