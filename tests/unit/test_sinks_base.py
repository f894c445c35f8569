"""PacketSink start-up: inputs are read together, so encoder delay cannot deadlock a mux."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lkmedia.core import Caps, Graph, Source
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import probe
from lkmedia.sinks.base import SinkStartError
from lkmedia.sinks.file import FileSink
from lkmedia.sources.synthetic import SyntheticSource


async def test_high_delay_encoder_beside_audio_does_not_deadlock(tmp_path: Path) -> None:
    # x264 "slow" holds ~1 s of frames before its first packet; the audio edges fill first.
    g = Graph(stop_timeout=10)
    src = SyntheticSource(width=320, height=240, duration=4)
    mp4 = FileSink(str(tmp_path / "a.mp4"))
    g.chain(src.out("video"), VideoEncoder(width=320, height=240, speed="slow", bitrate=300_000), mp4)
    g.chain(src.out("audio"), AudioEncoder("aac"), mp4)
    await asyncio.wait_for(g.run(), 30)
    p = probe(str(tmp_path / "a.mp4"))
    assert p.stream("video").frames == 120 and p.has("audio")
    assert p.duration == pytest.approx(4.0, abs=0.2)


class AudioThenNothing(Source):
    """Audio flows; the video output stays silent (a camera that never starts)."""

    def __init__(self) -> None:
        super().__init__("cam")
        self.synth = SyntheticSource(width=64, height=48)
        self.add_output("video", Caps("video", width=64, height=48))
        self.add_output("audio", Caps("audio", sample_rate=48000, layout="stereo"))

    async def run(self) -> None:
        for k in range(300):
            await self.emit(self.synth.audio_frame(k * 960), "audio")
        await self.wait_stop()


async def test_an_input_that_never_starts_fails_the_sink_with_its_name(tmp_path: Path) -> None:
    g = Graph(stop_timeout=5)
    src = AudioThenNothing()
    mp4 = FileSink(str(tmp_path / "b.mp4"))
    mp4.max_start_skew = 2.0
    g.chain(src.out("video"), VideoEncoder(width=64, height=48, name="venc"), mp4)
    g.chain(src.out("audio"), AudioEncoder("aac", name="aenc"), mp4)
    errors = await asyncio.wait_for(g.run(), 20)
    assert len(errors) == 1 and isinstance(errors[0].error, SinkStartError)
    assert "venc.out" in str(errors[0]) and "no media" in str(errors[0])
