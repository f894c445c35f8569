"""Scale, PixelFormat, Resample, FpsConverter and Tee on synthetic media."""
from __future__ import annotations

import asyncio
import itertools
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from lkmedia.core import EOS, Caps, Gap, Graph, LinkError, Sink, Source
from lkmedia.nodes.convert import FpsConverter, PixelFormat, Resample, Scale, copy_video_frame
from lkmedia.nodes.tee import Tee
from lkmedia.sources.synthetic import SyntheticSource

VTB = Fraction(1, 90_000)


class Collect(Sink):
    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.items: list[Any] = []

    async def run(self) -> None:
        for port in list(self.inputs.values()):
            while (item := await port.get()) is not EOS:
                self.items.append(item)


class Frames(Source):
    """Emits video frames at the given times (seconds): irregular input for FpsConverter."""

    def __init__(self, times: list[float], name: str | None = None) -> None:
        super().__init__(name)
        self.times = times
        self.add_output("out", Caps("video", width=64, height=48, pix_fmt="yuv420p"))

    async def run(self) -> None:
        for i, t in enumerate(self.times):
            f = av.VideoFrame(64, 48, "yuv420p")
            np.frombuffer(f.planes[0], np.uint8)[:] = i % 256
            f.pts, f.time_base = round(t / VTB), VTB
            await self.emit(f)


async def run_chain(*nodes: Any, port: str | None = None) -> Collect:
    g = Graph()
    sink = Collect()
    first = nodes[0].out(port) if port else nodes[0]
    g.chain(first, *nodes[1:], sink)
    await asyncio.wait_for(g.run(), 30)
    return sink


def synth(**kw: Any) -> SyntheticSource:
    args: dict[str, Any] = {"width": 640, "height": 360, "fps": 30, "duration": 2}
    args.update(kw)
    return SyntheticSource(**args)


async def test_scale_sizes_and_keeps_timestamps() -> None:
    src = synth(audio=False)
    scale = Scale(320, 240)
    sink = await run_chain(src, scale)
    assert scale.outputs["out"].caps.width == 320 and scale.outputs["out"].caps.fps == 30
    assert len(sink.items) == 60
    assert all((f.width, f.height, f.format.name) == (320, 240, "yuv420p") for f in sink.items)
    assert [f.pts for f in sink.items] == [i * 3000 for i in range(60)]
    assert all(f.time_base == VTB for f in sink.items)


async def test_pixel_format_converts_and_keeps_size() -> None:
    sink = await run_chain(synth(audio=False, duration=0.5), PixelFormat("rgb24"))
    assert len(sink.items) == 15
    f = sink.items[3]
    assert (f.width, f.height, f.format.name, f.pts, f.time_base) == (640, 360, "rgb24", 9000, VTB)
    # A same-format frame passes through as it is (no copy).
    pf = PixelFormat("yuv420p")
    frame = synth().video_frame(0)
    assert next(iter(pf.process(frame))) is frame


async def test_resample_48k_stereo_to_16k_mono() -> None:
    src = synth(video=False, duration=2)
    rs = Resample(16_000, "mono")
    sink = await run_chain(src, rs)
    caps = rs.outputs["out"].caps
    assert (caps.sample_rate, caps.layout, caps.sample_fmt) == (16_000, "mono", "s16")
    frames = sink.items
    assert all(f.sample_rate == 16_000 and f.layout.name == "mono" for f in frames)
    assert abs(sum(f.samples for f in frames) - 32_000) <= 16
    assert frames[0].pts == 0 and all(f.time_base == Fraction(1, 16_000) for f in frames)
    assert all(b.pts == a.pts + a.samples for a, b in itertools.pairwise(frames))


async def test_resample_fixed_frame_size_and_format() -> None:
    sink = await run_chain(synth(video=False, duration=1), Resample(format="fltp", frame_samples=1024))
    frames = sink.items
    assert all(f.samples == 1024 for f in frames[:-1]) and frames[-1].samples <= 1024
    assert all(f.format.name == "fltp" and f.sample_rate == 48_000 for f in frames)
    assert abs(sum(f.samples for f in frames) - 48_000) <= 1024


@pytest.mark.parametrize("fps, count", [(15, 30), (60, 120), (30, 60)])
async def test_fps_converter_counts_and_pts(fps: int, count: int) -> None:
    conv = FpsConverter(fps)
    sink = await run_chain(synth(audio=False, width=320, height=240), conv)
    assert conv.outputs["out"].caps.fps == fps
    assert len(sink.items) == count
    step = 90_000 // fps
    assert [f.pts for f in sink.items] == [n * step for n in range(count)]
    assert all(f.time_base == VTB and f.width == 320 for f in sink.items)
    if fps == 60:  # every input frame shown twice, each output a distinct object
        assert conv.stats()["duplicated"] == 60
        assert len({id(f) for f in sink.items}) == count


async def test_fps_converter_regularises_jittery_input() -> None:
    # 25 fps with jitter, a dropped stretch (0.4-0.8 s) and a burst: 2 s at 10 fps out.
    times = [i / 25 + (0.006 if i % 3 else -0.006) for i in range(50) if not 10 <= i < 20]
    conv = FpsConverter(10)
    sink = await run_chain(Frames(times), conv)
    assert [f.pts for f in sink.items] == [n * 9000 for n in range(20)]
    # Slots 0.4-0.7 s fall in the hole: they repeat the last frame before it (the 10th,
    # luma 9); slot 0.8 s shows the newest frame rounding to it (input 21, the 12th).
    luma = [int(np.frombuffer(f.planes[0], np.uint8)[0]) for f in sink.items]
    assert luma[4:8] == [9, 9, 9, 9] and luma[8] == 11


@pytest.mark.parametrize("phase", [0.0, 0.3, 0.5, 0.7])
async def test_fps_converter_keeps_every_frame_of_a_jittery_live_input(phase: float) -> None:
    # 30 fps in, 30 fps out, +-4 ms of jitter around an arbitrary phase: a frame sitting on
    # a slot boundary must not be dropped for its neighbour (and another repeated); a
    # one-frame flash would vanish from the recording.
    rng = np.random.default_rng(7)
    times = [(i + phase) / 30 + rng.uniform(-0.004, 0.004) for i in range(90)]
    conv = FpsConverter(30)
    sink = await run_chain(Frames(times), conv)
    assert conv.stats()["dropped"] == 0 and conv.stats()["duplicated"] == 0, conv.stats()
    luma = [int(np.frombuffer(f.planes[0], np.uint8)[0]) for f in sink.items]
    assert luma == list(range(90))
    # Each frame moved by the same amount, at most 0.6 of a frame.
    shift = [f.pts * float(VTB) - t for f, t in zip(sink.items, times)]
    assert max(abs(x) for x in shift) <= 0.6 / 30 + 0.004
    assert max(shift) - min(shift) <= 0.009


async def test_fps_converter_drops_only_for_a_real_rate_difference() -> None:
    # A publisher clock 1 % fast: 303 frames in 10 s, with jitter; 300 slots out.
    rng = np.random.default_rng(3)
    times = [i / 30.3 + rng.uniform(-0.004, 0.004) for i in range(303)]
    conv = FpsConverter(30)
    await run_chain(Frames(times), conv)
    st = conv.stats()
    assert st["duplicated"] == 0 and 2 <= st["dropped"] <= 4, st


@pytest.mark.parametrize("owns_input", [False, True])
async def test_fps_converter_copies_only_what_it_must(owns_input: bool) -> None:
    # Jittery 30 fps with a 0.2 s hole (frames 30-35): every frame moves a little; the hole's
    # slots repeat the frame before it. With owns_input (no fan-out before it, as a
    # participant egress without images builds it) a frame's first emission is the input
    # frame retimed in place; only repeats are copies. Shared input: every output is a copy.
    rng = np.random.default_rng(5)
    times = [i / 30 + rng.uniform(-0.004, 0.004) for i in range(60) if not 30 <= i < 36]
    src = Frames(times)
    conv = FpsConverter(30, owns_input=owns_input)
    sink = await run_chain(src, conv)
    st = conv.stats()
    assert st["frames_out"] == 60 and st["duplicated"] == 6, st
    assert st["copies"] == (6 if owns_input else 60), st
    assert [f.pts for f in sink.items] == [n * 3000 for n in range(60)]
    luma = [int(np.frombuffer(f.planes[0], np.uint8)[0]) for f in sink.items]
    assert luma[29:37] == [29] * 7 + [30], luma[29:37]  # (luma counts the frames sent)
    assert len({id(f) for f in sink.items}) == 60


def test_copy_video_frame_is_a_true_copy() -> None:
    f = synth().video_frame(5)
    c = copy_video_frame(f)
    assert c is not f and np.array_equal(c.to_ndarray(), f.to_ndarray())
    np.frombuffer(c.planes[0], np.uint8)[:] = 0
    assert not np.array_equal(c.to_ndarray(), f.to_ndarray())


async def test_gaps_pass_through() -> None:
    gap = Gap(1.0, 2.0)
    assert list(Scale(64, 48).process(gap)) == [gap]
    assert list(Resample(16_000).process(gap)) == [gap]
    assert list(FpsConverter(15).process(gap)) == [gap]


async def test_tee_fans_out_and_copies_caps() -> None:
    g = Graph()
    src = synth(audio=False, duration=0.5)
    tee = Tee(name="split")
    a, b = Collect("a"), Collect("b")
    g.link(src, tee)
    g.link(tee, a)
    g.link(tee, Scale(160, 120, name="small"))
    g.link(g.nodes["small"], b)
    g.build()
    assert tee.outputs["out"].caps == src.outputs["video"].caps
    await asyncio.wait_for(g.run(), 30)
    assert len(a.items) == len(b.items) == 15
    assert a.items[0].width == 640 and b.items[0].width == 160


async def test_wrong_kind_fails_at_build() -> None:
    g = Graph()
    g.chain(SyntheticSource(duration=1, video=False, name="mic"), Scale(320, 240, name="scaler"), Collect())
    with pytest.raises(LinkError) as ei:
        g.build()
    assert "mic" in str(ei.value) and "scaler" in str(ei.value)
    g = Graph()
    g.chain(SyntheticSource(duration=1, audio=False, name="cam"), Resample(16_000, name="rs"), Collect())
    with pytest.raises(LinkError, match="raw audio"):
        g.build()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="pixel format"):
        Scale(320, 240, "nope")
    with pytest.raises(ValueError, match="width"):
        Scale(0, 240)
    with pytest.raises(ValueError, match="layout"):
        Resample(layout="bogus")
    with pytest.raises(ValueError, match="fps"):
        FpsConverter(0)


def test_fit_keeps_the_aspect_within_the_box_and_never_scales_up() -> None:
    from lkmedia.nodes.convert import fit

    assert fit(1920, 1080, 1280, 720) == (1280, 720)
    assert fit(640, 480, 1280, 720) == (640, 480)
    assert fit(1440, 1080, 1280, 720) == (960, 720)
    assert fit(1080, 1920, 1280, 720) == (404, 720)


def test_fit_decides_from_each_frame() -> None:
    import av

    from lkmedia.nodes.convert import Fit

    node = Fit(1280, 720)
    sizes = []
    for i, (w, h) in enumerate(((640, 360), (1920, 1080), (1080, 1920))):
        frame = av.VideoFrame(w, h, "yuv420p")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90_000)
        (out,) = node.process(frame)
        sizes.append((out.width, out.height))
    assert sizes == [(640, 360), (1280, 720), (404, 720)]
