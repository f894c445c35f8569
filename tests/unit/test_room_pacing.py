"""RoomSink's audio pacing: libwebrtc's Opus encoder makes one 20 ms packet of every two
10 ms chunks and dates it by when the second came in, so the sink hands each pair over at
the time of its first chunk (paced chunk by chunk, every packet was dated 10 ms late and
an egress that follows sender reports put the audio 10 ms behind the video)."""
from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np

from lkmedia.sinks.room import RoomSink


class _Recorder:
    def __init__(self) -> None:
        self.times: list[float] = []

    async def capture(self, chunk: av.AudioFrame) -> None:
        self.times.append(time.monotonic())


def _chunk(i: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), dtype=np.int16), format="s16", layout="stereo")
    frame.sample_rate = 48_000
    frame.pts = i * 480
    frame.time_base = Fraction(1, 48_000)
    return frame


def test_each_pair_of_10ms_chunks_is_handed_over_at_the_first_ones_time() -> None:
    sink = RoomSink("ws://127.0.0.1:1", "token", video=None, latency=0.0)
    recorder = _Recorder()
    sink._audio_in = recorder  # type: ignore[assignment]

    async def run() -> None:
        for i in range(3, 13):  # (the first chunk sent starts the pairs, whatever its pts)
            await sink._capture_audio(_chunk(i))

    asyncio.run(run())
    t = [x - recorder.times[0] for x in recorder.times]
    for k in range(0, len(t), 2):
        assert abs(t[k] - k * 0.010) < 0.004, (k, t)  # each pair's first chunk: on its own time
        assert t[k + 1] - t[k] < 0.004, (k, t)  # its second: with it, not 10 ms later
    assert sink.samples == 10 * 480
