"""PacketSink: inputs are read together at the start (encoder delay cannot deadlock a mux), and a packet that goes back in time is dropped, not fatal."""
from __future__ import annotations

import asyncio
import fractions
from pathlib import Path

import av
import pytest

from lkmedia.core import Caps, Graph, Source
from lkmedia.lkrtc.packets import Template, opus_head
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


class OpusPackets(Source):
    """Opus packets at the given pts (1/48000), as a track egress's source emits them."""

    def __init__(self, pts: list[int], pace: float = 0.0) -> None:
        super().__init__("opus-packets")
        self.pts = pts
        self.pace = pace  # seconds between packets (0: as fast as they are taken)
        self.add_output("out", Caps("audio", encoded=True, codec="opus", sample_rate=48000))

    async def run(self) -> None:
        template = Template("opus", rate=48000, extradata=opus_head(1), layout="mono")
        for pts in self.pts:
            p = av.Packet(bytes([0xF8, 0xFF, 0xFE]))
            p.pts = p.dts = pts
            p.duration = 960
            p.time_base = fractions.Fraction(1, 48000)
            p.stream = template.stream
            await self.emit(p)
            if self.pace:
                await asyncio.sleep(self.pace)


async def test_a_packet_that_goes_back_in_time_is_dropped_and_the_rest_written(tmp_path: Path) -> None:
    """An OGG muxer refuses a packet whose dts goes back (EINVAL, "Invalid argument"): that
    used to end the whole recording; the sink drops that one packet and goes on."""
    pts = [k * 960 for k in range(50)]
    pts.insert(30, 10 * 960)  # one late packet, from 20 frames back
    g = Graph(stop_timeout=5)
    sink = FileSink(str(tmp_path / "a.ogg"))
    g.chain(OpusPackets(pts), sink)
    errors = await asyncio.wait_for(g.run(), 20)
    assert not errors, errors
    assert sink.stats()["backwards"] == 1 and sink.packets == 50
    audio = probe(str(tmp_path / "a.ogg")).stream("audio")
    assert audio.codec == "opus" and audio.frames == 50, audio


class _Timed(FileSink):
    """A FileSink that notes the thread of each write, and can make the n-th one slow."""

    def __init__(self, path: str, slow_at: int | None = None) -> None:
        super().__init__(path, inline_writes=True)
        self.threads: list[str] = []
        self.slow_at = slow_at

    def write(self, packets: list[av.Packet]) -> None:
        import threading
        import time

        self.threads.append(threading.current_thread().name)
        if len(self.threads) == self.slow_at:
            time.sleep(self.slow_write * 2)
        super().write(packets)


@pytest.mark.parametrize("slow_at", [None, 3])
async def test_a_file_is_written_on_the_loop_until_a_write_is_slow(tmp_path: Path, slow_at: int | None) -> None:
    """A live track's batches are written on the event loop (no thread hop per batch); a
    write slower than slow_write puts the sink back on its thread for the rest."""
    import threading

    g = Graph(stop_timeout=5)
    sink = _Timed(str(tmp_path / "a.ogg"), slow_at=slow_at)
    g.chain(OpusPackets([k * 960 for k in range(60)], pace=0.01), sink)
    errors = await asyncio.wait_for(g.run(), 20)
    assert not errors, errors
    loop_thread = threading.current_thread().name
    assert len(sink.threads) >= 4  # (the first packets, then batches of ~0.1 s)
    assert sink.threads[0] != loop_thread  # (the first write opens the file: on the sink's thread)
    if slow_at is None:
        assert set(sink.threads[1:]) == {loop_thread}
        assert sink.inline_writes
    else:
        assert set(sink.threads[1:slow_at]) == {loop_thread}
        assert loop_thread not in sink.threads[slow_at:] and not sink.inline_writes
    audio = probe(str(tmp_path / "a.ogg")).stream("audio")
    assert audio.frames == 60, audio
