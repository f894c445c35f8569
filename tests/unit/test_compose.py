"""Compositor: layouts, letterbox, background, hold, leave, exact frame counts, live deadline."""
from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
import pytest

from lkmedia.core import EOS, Caps, Gap, Graph, Sink, Source
from lkmedia.nodes.compose import DARK, LIGHT, Compositor, grid_shape, layout_cells, letterbox

RED = (81, 90, 240)
GREEN = (145, 54, 34)
BLUE = (41, 240, 110)
YELLOW = (210, 16, 146)
COLOURS = [RED, GREEN, BLUE, YELLOW]


def solid(yuv: tuple[int, int, int], w: int, h: int, pts: int) -> av.VideoFrame:
    f = av.VideoFrame(w, h, "yuv420p")
    for p, v in zip(f.planes, yuv):
        np.frombuffer(p, np.uint8)[:] = v
    f.pts, f.time_base = pts, Fraction(1, 90_000)
    return f


class Solid(Source):
    """Solid-colour frames at ``fps`` for ``seconds`` (or at the given ``times``),
    optionally switching colour at ``switch`` seconds. live: sent on the graph clock;
    stall_after: stop sending (without EOS) after that many seconds; eos_delay: on stop,
    no more frames, and EOS that much later."""

    def __init__(self, yuv: tuple[int, int, int], seconds: float = 1.0, fps: float = 30, w: int = 640,
                 h: int = 360, times: list[float] | None = None, then: tuple[float, tuple[int, int, int]] | None = None,
                 live: bool = False, stall_after: float | None = None, gap: tuple[float, float] | None = None,
                 eos_delay: float = 0.0) -> None:
        super().__init__()
        self.yuv, self.w, self.h, self.then, self.live = yuv, w, h, then, live
        self.stall_after, self.gap, self.eos_delay = stall_after, gap, eos_delay
        self.times = times if times is not None else [i / fps for i in range(round(seconds * fps))]
        self.add_output("out", Caps("video", width=w, height=h, pix_fmt="yuv420p"))

    async def run(self) -> None:
        clock = self.graph.clock  # type: ignore[union-attr]
        for t in self.times:
            if self.stop_requested:
                await asyncio.sleep(self.eos_delay)  # (a source that takes its time to hang up)
                return
            if self.stall_after is not None and t >= self.stall_after:
                await self.wait_stop()
                return
            if self.gap and self.gap[0] <= t < self.gap[1]:
                if t == min(x for x in self.times if x >= self.gap[0]):
                    await self.emit(Gap(*self.gap))
                continue
            if self.live:
                await clock.sleep_until(t)
            yuv = self.then[1] if self.then and t >= self.then[0] else self.yuv
            await self.emit(solid(yuv, self.w, self.h, round(t * 90_000)))


class Collect(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[av.VideoFrame] = []
        self.arrivals: list[float] = []

    async def run(self) -> None:
        port = next(iter(self.inputs.values()))
        while (item := await port.get()) is not EOS:
            self.frames.append(item)
            self.arrivals.append(self.graph.clock.now())  # type: ignore[union-attr]


def yuv_at(f: av.VideoFrame, x: int, y: int) -> tuple[int, int, int]:
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in f.planes]
    return int(planes[0][y, x]), int(planes[1][y // 2, x // 2]), int(planes[2][y // 2, x // 2])


async def compose(*sources: Source, **kw: object) -> tuple[Compositor, Collect]:
    g = Graph()
    comp = Compositor(**{"width": 640, "height": 360, **kw})  # type: ignore[arg-type]
    out = Collect()
    for s in sources:
        g.link(s, comp)
    g.link(comp, out)
    await asyncio.wait_for(g.run(), 30)
    return comp, out


async def live_for(src: Source, seconds: float) -> tuple[Collect, float]:
    """A live compositor (latency 0.1 s) of ``src`` run ``seconds``, then stopped: its
    frames (their timeline checked) and the graph-clock time of the stop."""
    g = Graph()
    comp = Compositor(width=640, height=360, live=True, latency=0.1)
    out = Collect()
    g.link(src, comp)
    g.link(comp, out)
    await g.start()
    await asyncio.sleep(seconds)
    t_stop = g.clock.now()
    await asyncio.wait_for(g.stop(5), 10)
    check_timeline(out.frames)
    return out, t_stop


def check_timeline(frames: list[av.VideoFrame], fps: int = 30, first: int = 0) -> None:
    for i, f in enumerate(frames):
        assert f.pts == round((first + i) * 90_000 / fps) and f.time_base == Fraction(1, 90_000)
        assert (f.width, f.height, f.format.name) == (640, 360, "yuv420p")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
async def test_grid_puts_each_input_in_its_cell(n: int) -> None:
    _comp, out = await compose(*(Solid(COLOURS[i], seconds=0.2) for i in range(n)))
    assert len(out.frames) == 6
    check_timeline(out.frames)
    cells = layout_cells("grid", n, 0, 640, 360)
    for f in out.frames:
        for i, (x, y, w, h) in enumerate(cells):  # type: ignore[misc]
            assert yuv_at(f, x + w // 2, y + h // 2) == COLOURS[i]
    if n == 2:  # two 16:9 inputs side by side: letterboxed, dark bars above and below
        assert yuv_at(out.frames[0], 160, 10) == DARK
    if n == 3:
        assert yuv_at(out.frames[0], 480, 270) == DARK  # the empty fourth cell


def test_grid_shapes_follow_livekit() -> None:
    assert [grid_shape(n) for n in (1, 2, 3, 4, 5, 9, 10, 16, 17, 25, 40)] == [
        (1, 1), (2, 1), (2, 2), (2, 2), (3, 3), (3, 3), (4, 4), (4, 4), (5, 5), (5, 5), (5, 5)]
    assert grid_shape(2, 720, 1280) == (1, 2)  # portrait: one above the other
    assert grid_shape(12, 720, 1280) == (3, 3)  # 4x4 needs 960 px: the next smaller grid
    assert grid_shape(5, 640, 360) == (2, 2)  # 3x3 needs 700 px
    cells = layout_cells("grid", 30, 0, 1280, 720)
    assert cells[24] == (1024, 576, 256, 144) and cells[25:] == [None] * 5  # only the first page
    three = layout_cells("grid", 3, 0, 1280, 720)
    assert three[2] == (0, 360, 640, 360)  # a partial last row is left-aligned
    assert letterbox(640, 480, (0, 0, 640, 360)) == (80, 0, 480, 360)  # 4:3 in 16:9: pillarbox
    x, y, w, h = letterbox(640, 360, (0, 0, 320, 360))
    assert (w, h) == (320, 180) and x == 0 and y == 90 and not (x | y | w | h) & 1


async def test_light_background_and_aspect_ratio_kept() -> None:
    _comp, out = await compose(Solid(BLUE, seconds=0.1, w=320, h=240), layout="grid-light")
    f = out.frames[0]
    assert yuv_at(f, 20, 180) == LIGHT and yuv_at(f, 620, 180) == LIGHT  # pillarbox bars
    assert yuv_at(f, 320, 180) == BLUE and yuv_at(f, 320, 2) == BLUE  # full height
    _, out = await compose(Solid(BLUE, seconds=0.1, w=320, h=240))
    assert yuv_at(out.frames[0], 20, 180) == DARK


async def test_hold_last_frame_until_the_next_one() -> None:
    # B sends a red frame at 0 s and a green one at 1 s only: red is held in between.
    a = Solid(BLUE, seconds=2.0)
    b = Solid(RED, times=[0.0, 1.0], then=(1.0, GREEN))
    _comp, out = await compose(a, b)
    assert len(out.frames) == 60
    check_timeline(out.frames)
    for i in (0, 15, 29):
        assert yuv_at(out.frames[i], 480, 180) == RED
    for i in (30, 45):
        assert yuv_at(out.frames[i], 480, 180) == GREEN


async def test_gap_holds_and_does_not_stall() -> None:
    a = Solid(BLUE, seconds=1.0)
    b = Solid(RED, seconds=1.0, gap=(0.2, 0.7), then=(0.7, GREEN))
    _comp, out = await compose(a, b)
    assert len(out.frames) == 30
    assert yuv_at(out.frames[15], 480, 180) == RED  # held through the gap
    assert yuv_at(out.frames[25], 480, 180) == GREEN


async def test_input_leaving_changes_the_layout() -> None:
    comp, out = await compose(Solid(BLUE, seconds=2.0), Solid(RED, seconds=1.0))
    assert len(out.frames) == 60
    check_timeline(out.frames)
    assert yuv_at(out.frames[29], 160, 180) == BLUE and yuv_at(out.frames[29], 480, 180) == RED
    for i in (30, 59):  # RED left: BLUE alone fills the canvas
        assert yuv_at(out.frames[i], 480, 180) == BLUE and yuv_at(out.frames[i], 320, 10) == BLUE
    assert comp.stats()["joined"] == 2


async def test_frame_count_is_fps_times_duration() -> None:
    # Inputs at 25 and 60 fps, output 30 fps for 2 s: exactly 60 frames, pts monotonic.
    _comp, out = await compose(Solid(RED, seconds=2.0, fps=25), Solid(GREEN, seconds=2.0, fps=60))
    assert len(out.frames) == 60
    check_timeline(out.frames)
    pts = [f.pts for f in out.frames]
    assert pts == sorted(set(pts))


async def test_speaker_layouts_and_runtime_switch() -> None:
    g = Graph()
    comp = Compositor(width=640, height=360, layout="speaker")
    out = Collect()
    srcs = [Solid(c, seconds=0.5) for c in COLOURS[:3]]
    edges = [g.link(s, comp) for s in srcs]
    g.link(comp, out)
    comp.set_speaker(edges[1].dst)  # type: ignore[arg-type]
    await asyncio.wait_for(g.run(), 30)
    f = out.frames[0]
    # LiveKit's focus layout: a carousel a sixth of the width on the left, the speaker on the right
    assert yuv_at(f, 373, 180) == GREEN  # the speaker, large
    assert yuv_at(f, 53, 33) == RED and yuv_at(f, 53, 99) == BLUE  # the carousel, 16:10 tiles
    with pytest.raises(ValueError, match="unknown layout 'mosaic'"):
        comp.set_layout("mosaic")
    with pytest.raises(ValueError, match="no input 'in9'"):
        comp.set_speaker("in9")
    cells = layout_cells("single-speaker-light", 3, 2, 640, 360)
    assert cells == [None, None, (0, 0, 640, 360)]


async def test_arrange_orders_tiles_and_labels_name_them() -> None:
    g = Graph()
    comp = Compositor(width=640, height=360, labels=True)
    out = Collect()
    edges = [g.link(Solid(c, seconds=0.2), comp) for c in (RED, GREEN)]
    g.link(comp, out)
    comp.arrange([edges[1].dst.name, edges[0].dst.name])  # type: ignore[union-attr]
    comp.set_label(edges[0].dst, "Alice")  # type: ignore[arg-type]
    await asyncio.wait_for(g.run(), 30)
    f = out.frames[0]
    assert yuv_at(f, 160, 180) == GREEN and yuv_at(f, 480, 180) == RED  # GREEN first
    y = f.to_ndarray()[:360]
    band = y[330:358, 322:380]  # Alice's label, at the bottom left of the right tile's cell
    assert band.max() > 200 and band.min() < DARK[0]  # white text on a darker band
    assert (y[330:358, 2:60] == DARK[0]).all()  # no label on the other


async def test_set_layout_while_running() -> None:
    g = Graph()
    comp = Compositor(width=640, height=360)
    out = Collect()
    g.link(Solid(RED, seconds=1.0, live=True), comp)
    g.link(Solid(GREEN, seconds=1.0, live=True), comp)
    g.link(comp, out)
    await g.start()
    await asyncio.sleep(0.5)
    comp.set_layout("single-speaker-light")
    comp.set_speaker("in1")
    await asyncio.wait_for(g.wait(), 10)
    assert yuv_at(out.frames[0], 160, 180) == RED
    assert yuv_at(out.frames[-1], 160, 180) == GREEN and yuv_at(out.frames[-1], 320, 10) == GREEN


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="unknown layout 'tiles'"):
        Compositor(layout="tiles")
    with pytest.raises(ValueError, match="width and height must be even"):
        Compositor(width=641)
    with pytest.raises(ValueError, match="fps"):
        Compositor(fps=0)
    assert "raw video" in (Compositor().accept_input(Caps("audio")) or "")


async def test_live_stalled_input_holds_and_frames_stay_on_time() -> None:
    out, _ = await live_for(Solid(RED, seconds=10, live=True, stall_after=0.3), 1.0)
    assert len(out.frames) >= 25
    lateness = [at - (f.pts / 90_000 + 0.1) for f, at in zip(out.frames, out.arrivals)]
    assert min(lateness) >= -0.005  # never before its deadline
    assert sorted(lateness)[int(len(lateness) * 0.9)] <= 0.08 and max(lateness) <= 0.3, lateness
    assert yuv_at(out.frames[-1], 320, 180) == RED  # last frame held


async def test_a_live_composition_ends_where_stop_was_asked_however_slowly_inputs_end() -> None:
    """Sources that take their time to disconnect after stop (CI: five LiveKit
    participants on two cores) must not leave a black tail on the recording: the last
    frame is the stop's, with the inputs still on it."""
    out, t_stop = await live_for(Solid(RED, seconds=10, live=True, eos_delay=0.6), 1.0)
    assert out.frames[-1].pts / 90_000 <= t_stop + 1 / 30, (out.frames[-1].pts / 90_000, t_stop)
    assert out.frames[-1].pts / 90_000 >= t_stop - 2 / 30, (out.frames[-1].pts / 90_000, t_stop)
    assert yuv_at(out.frames[-1], 320, 180) == RED


async def test_live_with_no_inputs_emits_background() -> None:
    g = Graph()
    comp = Compositor(width=640, height=360, live=True, layout="grid-light")
    out = Collect()
    g.link(comp, out)
    await g.start()
    await asyncio.sleep(0.5)
    await asyncio.wait_for(g.stop(5), 10)
    assert len(out.frames) >= 10
    check_timeline(out.frames)
    assert yuv_at(out.frames[-1], 320, 180) == LIGHT


@pytest.mark.parametrize(("change", "first_green"), [(0.49, 15), (0.51, 15), (0.52, 16)])
async def test_a_change_shows_on_the_nearest_output_frame(change: float, first_green: int) -> None:
    """Resampling to the output rate moves a picture by at most half a frame interval
    either way: a flash 10 ms before frame 15 (0.5 s) shows on frame 15, not on 16."""
    times = sorted({i / 100 for i in range(100)} | {change})
    _comp, out = await compose(Solid(RED, times=times, then=(change, GREEN)))
    colours = [yuv_at(f, 320, 180) for f in out.frames]
    assert colours.index(GREEN) == first_green, colours
