"""A/V sync through the mixer and compositor: flash/beep sources -> encode -> file -> probe.

Each source flashes and beeps at the same instants; the offset between them in the
recorded file is what the mixer and compositor (and the encoders and muxer) add.
"""
from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import pytest

from lkmedia.core import Graph
from lkmedia.nodes.audio_mix import AudioMixer
from lkmedia.nodes.compose import Compositor
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import av_offsets, decode_errors, probe
from lkmedia.sinks.file import FileSink
from lkmedia.sources.synthetic import SyntheticSource

SECONDS = 5


async def record(path: Path, sources: int, width: int, direct: bool = False) -> tuple[AudioMixer, Compositor]:
    """``sources`` synthetic sources -> AudioMixer + Compositor -> H.264 + AAC -> FileSink.
    direct: one source straight to the encoders (the reference without mixing)."""
    g = Graph()
    mix = AudioMixer()
    comp = Compositor(width=width, height=360, fps=30)
    sink = FileSink(path)
    venc = VideoEncoder("libx264", width=width, height=360, fps=30, bitrate=800_000)
    aenc = AudioEncoder("aac", bitrate=96_000)
    srcs = [SyntheticSource(width=640, height=360, fps=30, duration=SECONDS, name=f"src{i}") for i in range(sources)]
    if direct:
        g.chain(srcs[0].out("video"), venc, sink)
        g.chain(srcs[0].out("audio"), aenc, sink)
    else:
        for src in srcs:
            g.link(src.out("video"), comp)
            g.link(src.out("audio"), mix)
        g.chain(comp, venc, sink)
        g.chain(mix, aenc, sink)
    await asyncio.wait_for(g.run(), 50)
    return mix, comp


def check(path: Path, width: int) -> list[float]:
    p = probe(str(path))
    v, a = p.stream("video"), p.stream("audio")
    assert (v.codec, v.width, v.height) == ("h264", width, 360)
    assert a.codec == "aac" and a.sample_rate == 48_000 and a.channels == 2
    assert v.frames == 30 * SECONDS
    assert abs((p.duration or 0) - SECONDS) < 0.2
    assert a.frames is not None and abs(a.frames * 1024 / 48_000 - SECONDS) < 0.2  # AAC packets
    assert decode_errors(str(path)) == ""
    offsets = av_offsets(str(path))
    assert len(offsets) >= 4, offsets
    assert all(abs(o) <= 0.020 for o in offsets), offsets
    return offsets


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
async def test_one_source_through_mixer_and_compositor_stays_in_sync(tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"one.{ext}"
    mix, comp = await record(out, 1, 640)
    check(out, 640)
    assert comp.stats()["frames"] == 30 * SECONDS
    assert mix.stats()["windows"] == 100 * SECONDS and mix.stats()["late_dropped"] == 0


async def test_two_sources_mixed_and_composited_stay_in_sync(tmp_path: Path) -> None:
    # Side by side on 1280x360: two 640x360 cells, so a flash fills the whole picture.
    out = tmp_path / "two.mp4"
    mix, comp = await record(out, 2, 1280)
    check(out, 1280)
    assert mix.stats()["joined"] == 2 and comp.stats()["joined"] == 2


async def test_mixing_adds_nothing_to_the_direct_path(tmp_path: Path) -> None:
    await record(tmp_path / "direct.mp4", 1, 640, direct=True)
    await record(tmp_path / "mixed.mp4", 1, 640)
    ref = check(tmp_path / "direct.mp4", 640)
    got = check(tmp_path / "mixed.mp4", 640)
    assert len(got) == len(ref)
    assert all(abs(a - b) <= 0.002 for a, b in zip(got, ref)), (got, ref)


def test_a_gap_in_remuxed_audio_does_not_move_the_beeps_after_it(tmp_path: Path) -> None:
    """A remuxed track has holes where packets were lost: the probe dates each beep from
    its own frame's time, not by counting samples from the start (which put every beep
    after a 20 ms hole 20 ms early)."""
    import av

    gen = SyntheticSource(width=256, height=144, fps=30, channels=1)
    path = tmp_path / "gap.mkv"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = 256, 144, "yuv420p"
        a = c.add_stream("libopus", rate=48_000, layout="mono")
        for i in range(30 * 4):
            f = gen.video_frame(i)
            f.pts, f.time_base = i, Fraction(1, 30)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        for s in range(0, 48_000 * 4, 960):
            pkts = a.encode(gen.audio_frame(s))
            if 48_000 + 24_000 <= s < 48_000 + 24_000 + 960:  # one packet lost, between beeps 2 and 3
                continue
            c.mux(pkts)
        c.mux(a.encode(None))
    offsets = av_offsets(str(path))
    assert len(offsets) == 4 and all(abs(o) <= 0.010 for o in offsets), offsets
