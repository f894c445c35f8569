"""Compositor: raw video inputs that come and go, laid out on one canvas at a fixed fps.

Like GStreamer's compositor (an aggregator), output frames are made on a clock, not on
arrival: frame i (media time i/fps) shows each input's nearest frame, the newest with
pts <= (i + 1/2)/fps, holding the last one while nothing new comes (so resampling moves
a picture by at most half an output interval either way, not up to a whole one late).
Non-live, frame i waits until every active input has a frame past (i + 1/2)/fps (or is at
EOS); live, it is made at graph-clock time i/fps + latency whatever has arrived.

Layouts follow LiveKit's template (lkmedia.nodes.layouts): "grid", "speaker",
"single-speaker", each with a "-light" variant (white background instead of dark).
Inputs keep their aspect ratio (letterboxed in their cell); ``arrange`` sets the order
tiles are shown in, ``set_label`` the name drawn on a tile (``labels=True``). Each input is scaled only when its frame or cell changes,
and planes are blitted with numpy into a new yuv420p frame on the node's thread.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..core import EOS, Caps, Gap, InputWaiter, Node
from ..core.edge import Policy
from ..core.node import InputPort
from .labels import draw_label
from .layouts import LAYOUTS, Rect, grid_shape, layout_cells, letterbox

__all__ = ["DARK", "LAYOUTS", "LIGHT", "Compositor", "grid_shape", "layout_cells", "letterbox"]

log = logging.getLogger("lkmedia.nodes.compose")

VIDEO_TIME_BASE = Fraction(1, 90_000)
#: Background (Y, U, V): LiveKit's dark theme is near-black, "-light" is white.
DARK = (16, 128, 128)
LIGHT = (235, 128, 128)
_REBASE_SECONDS = 1.0
STALE = 18_000  # 200 ms at 90 kHz: a tile showing an older picture than this is behind
#: Live: most frames waiting for their time per input.
_LIVE_QUEUE = 60


def _planes(f: av.VideoFrame, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable/readable numpy views of a yuv420p frame's Y, U, V (no copy)."""
    out = []
    for i, (pw, ph) in enumerate(((w, h), (w // 2, h // 2), (w // 2, h // 2))):
        p = f.planes[i]
        out.append(np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:ph, :pw])  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
    return out[0], out[1], out[2]


class _Video:
    """One input: frames waiting for their time, the one shown, and its scaled cache."""

    __slots__ = (
        "cache_planes",
        "cache_size",
        "cache_src",
        "covered",
        "current",
        "current_pts",
        "eos",
        "frames",
        "last_dur",
        "last_pts",
        "offset",
        "port",
        "queue",
        "reformatter",
    )

    def __init__(self, port: InputPort) -> None:
        self.port = port
        self.queue: deque[tuple[int, Any]] = deque()
        self.current: Any = None
        self.current_pts = 0
        self.last_pts: int | None = None  # newest frame pts received (90 kHz)
        self.last_dur = 0
        self.covered: int | None = None  # known up to here: newest pts or a Gap's end
        self.eos = False
        self.offset: int | None = None
        self.reformatter = VideoReformatter()
        self.cache_src: Any = None
        self.cache_size: tuple[int, int] = (0, 0)
        self.cache_planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.frames = 0

    def end(self) -> int | None:
        """When a departed input leaves the picture: its last frame's end (live: or when
        its EOS came, if later; until then its last frame was held)."""
        if self.last_pts is None:
            return self.covered
        return max(self.last_pts + self.last_dur, self.covered or 0)

    def scaled(self, frame: av.VideoFrame, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if frame is self.cache_src and self.cache_size == (w, h) and self.cache_planes is not None:
            return self.cache_planes
        f = self.reformatter.reformat(frame, w, h, "yuv420p", interpolation="BILINEAR")
        self.cache_src, self.cache_size = frame, (w, h)
        self.cache_planes = _planes(f, w, h)
        return self.cache_planes


class Compositor(Node):
    """Lay out raw video inputs on a ``width`` x ``height`` yuv420p canvas at ``fps``.

    Output "out": frames with pts on a 1/90000 time base, exactly one per 1/fps from the
    first output time. Inputs are linked before start or while running (Graph.link);
    EOS on an input means it left, and it disappears after its last frame. Inputs are
    shown in the order they joined; ``set_speaker`` picks the speaker of the speaker
    layouts (default: the first input). Live inputs carry graph-clock timestamps; one
    whose first timestamp is more than 1 s off is re-based to its arrival time. Live mode
    ends on ``Graph.stop()``, with the last frame before the stop's time (each made at its
    due time, as before); non-live mode when every input is at EOS.
    """

    dynamic_inputs = True

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 30,
        layout: str = "grid",
        live: bool = False,
        latency: float = 0.1,
        labels: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if width % 2 or height % 2 or width < 16 or height < 16 or width > 7680 or height > 4320:
            raise ValueError(f"{self.name}: width and height must be even, 16..7680 x 16..4320, got {width}x{height}")
        self.fps = Fraction(fps).limit_denominator(1001)
        if not 0 < self.fps <= 120:
            raise ValueError(f"{self.name}: fps must be above 0 and at most 120, got {fps}")
        if latency < 0 or latency > 10:
            raise ValueError(f"{self.name}: latency must be 0..10 s, got {latency}")
        self._check_layout(layout)
        self.width, self.height = width, height
        self.layout = layout
        self.live = live
        self.latency = latency
        self._half = round(45_000 / self.fps)  # half an output interval, 90 kHz
        self.add_output("out", Caps("video", width=width, height=height, fps=self.fps, pix_fmt="yuv420p"))
        self._states: dict[str, _Video] = {}
        self._seen: set[str] = set()
        self._speaker: str | None = None
        self._order: dict[str, int] = {}  # port name -> display position (arrange)
        self._labels: dict[str, str] = {}
        self._hidden: set[str] = set()
        self._muted: set[str] = set()
        self.labels = labels
        self._waiter = InputWaiter()
        self._stop = False
        self._index: int | None = None  # next output frame number
        self.frames = 0
        self.late = 0
        self.max_age = 0  # 90 kHz: the oldest frame shown (while its input was still sending)
        self.stale = 0  # frames that showed an input's picture more than STALE old
        self.dropped = 0
        self.joined = 0
        self.compose_seconds = 0.0

    # -- ports and control -------------------------------------------------
    def new_input(self, src: Any) -> InputPort:
        if self.live:  # live raw video: a stalled compositor drops, never blocks a room
            return self.add_input(f"in{len(self.inputs)}", self.accept_input, Policy.DROP_OLDEST, 8)
        return self.add_input(f"in{len(self.inputs)}", self.accept_input, capacity=4)

    def accept_input(self, caps: Caps) -> str | None:
        if caps.media != "video" or caps.encoded:
            return f"{self.name} composes raw video, got {caps.describe()}: decode it first"
        return None

    def input_added(self, port: InputPort) -> None:
        self._waiter.poke()

    def request_stop(self) -> None:
        self._stop = True
        self._waiter.poke()

    def _check_layout(self, layout: str) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"{self.name}: unknown layout {layout!r} (use one of {', '.join(LAYOUTS)})")

    def set_layout(self, layout: str) -> None:
        """Switch layout from the next output frame on."""
        self._check_layout(layout)
        self.layout = layout

    def arrange(self, order: list[str]) -> None:
        """Show tiles in this order of input port names (from the next frame on); inputs
        not named follow, in the order they joined. The first is the speaker layouts'
        focus unless ``set_speaker`` names another."""
        self._order = {name: i for i, name in enumerate(order)}

    def hide(self, port: InputPort | str, hidden: bool = True) -> None:
        """Take an input's tile out of the layout (its track is gone) from the next frame."""
        (self._hidden.add if hidden else self._hidden.discard)(port.name if isinstance(port, InputPort) else port)

    def mute(self, port: InputPort | str, muted: bool = True) -> None:
        """Show an input's tile without its picture (its camera is muted) from the next frame."""
        (self._muted.add if muted else self._muted.discard)(port.name if isinstance(port, InputPort) else port)

    def set_label(self, port: InputPort | str, text: str) -> None:
        """The name drawn on an input's tile (with ``labels``)."""
        self._labels[port.name if isinstance(port, InputPort) else port] = text

    def set_speaker(self, port: InputPort | str) -> None:
        """Make an input (its port or port name) the speaker of the speaker layouts."""
        name = port.name if isinstance(port, InputPort) else port
        if name not in self.inputs:
            raise ValueError(f"{self.name}: no input {name!r} (has {', '.join(self.inputs) or 'none'})")
        self._speaker = name

    # -- input side ---------------------------------------------------------
    def _sync_inputs(self) -> None:
        for name, port in self.inputs.items():
            if name not in self._seen and port.edge is not None:
                self._seen.add(name)
                self._states[name] = _Video(port)
                self.joined += 1

    def _take(self, st: _Video, item: Any) -> None:
        if item is EOS:
            st.eos = True
            if self.live and self.graph is not None:  # held up to now: it leaves from here
                now = round(self.graph.clock.now() * 90_000)
                st.covered = now if st.covered is None else max(st.covered, now)
            return
        if isinstance(item, Gap):  # nothing until item.end: hold the last frame
            end = round(item.end * 90_000) + (st.offset or 0)
            st.covered = end if st.covered is None else max(st.covered, end)
            return
        if item.pts is None or item.time_base is None:
            raise ValueError(f"{self.name}: video frame without a timestamp on {st.port.name}")
        pts = round(item.pts * item.time_base * 90_000)
        if self.live and st.offset is None:
            now = round(self.graph.clock.now() * 90_000) if self.graph else pts
            st.offset = now - pts if abs(now - pts) > _REBASE_SECONDS * 90_000 else 0
        pts += st.offset or 0
        if st.last_pts is not None and pts <= st.last_pts:
            self.dropped += 1  # repeated or out of order
            return
        st.last_dur = pts - st.last_pts if st.last_pts is not None else round(90_000 / self.fps)
        st.last_pts = pts
        st.covered = pts if st.covered is None else max(st.covered, pts)
        if self.live and len(st.queue) >= _LIVE_QUEUE:
            st.queue.popleft()  # stamped far ahead of the clock: keep memory bounded
            self.dropped += 1
        st.queue.append((pts, item))
        st.frames += 1

    def _drain(self, states: list[_Video], until: int | None = None) -> int:
        """Take queued items: all of them, or until an input has a frame at ``until``."""
        got = 0
        for st in states:
            while not st.eos and (until is None or st.covered is None or st.covered < until):
                item = st.port.get_nowait()
                if item is None:
                    break
                self._take(st, item)
                got += 1
        return got

    def _pts(self, i: int) -> int:
        return round(i * 90_000 / self.fps)

    # -- picking what to show (event loop) ----------------------------------
    def _pick(self, t: int) -> list[tuple[_Video, Any]]:
        """Advance every input to time ``t``; the inputs on screen with their frames."""
        shown: list[tuple[_Video, Any]] = []
        for name, st in list(self._states.items()):
            q = st.queue
            while q and q[0][0] <= t + self._half:
                st.current_pts, st.current = q.popleft()
            if st.eos and not q:
                end = st.end()
                if end is None or t >= end:
                    del self._states[name]  # departed: out of the layout
                    continue
            if name in self._hidden:
                continue
            if name in self._muted:
                shown.append((st, None))  # a tile with no picture
            elif st.current is not None:
                shown.append((st, st.current))
                if st.last_pts is not None and t - st.last_pts < 90_000:  # still sending (not in a gap)
                    age = t - st.current_pts
                    self.max_age = max(self.max_age, age)
                    self.stale += age > STALE
        return shown

    def _plan(self, shown: list[tuple[_Video, Any]]) -> list[tuple[_Video, Any, Rect, Rect]]:
        if self._order:
            last = len(self._order)
            shown = sorted(shown, key=lambda sf: self._order.get(sf[0].port.name, last))
        names = [st.port.name for st, _ in shown]
        speaker = names.index(self._speaker) if self._speaker in names else 0
        cells = layout_cells(self.layout, len(shown), speaker, self.width, self.height)
        return [(st, f, letterbox(f.width, f.height, c) if f is not None else c, c)
                for (st, f), c in zip(shown, cells) if c is not None]

    # -- composing (node thread) ----------------------------------------------
    def compose(self, pts: int, plan: list[tuple[_Video, Any, Rect, Rect]]) -> av.VideoFrame:
        t0 = time.perf_counter()
        W, H = self.width, self.height
        out = av.VideoFrame(W, H, "yuv420p")
        Y, U, V = _planes(out, W, H)
        bg = LIGHT if self.layout.endswith("-light") else DARK
        Y[:] = bg[0]
        U[:] = bg[1]
        V[:] = bg[2]
        for st, frame, (x, y, w, h), cell in plan:
            if frame is None:  # muted: the background, and its name
                if self.labels:
                    draw_label((Y, U, V), cell, self._labels.get(st.port.name, ""))
                continue
            sy, su, sv = st.scaled(frame, w, h)
            Y[y:y + h, x:x + w] = sy
            x2, y2, w2, h2 = x // 2, y // 2, w // 2, h // 2
            U[y2:y2 + h2, x2:x2 + w2] = su
            V[y2:y2 + h2, x2:x2 + w2] = sv
            if self.labels:
                draw_label((Y, U, V), cell, self._labels.get(st.port.name, ""))
        out.pts = pts
        out.time_base = VIDEO_TIME_BASE
        self.compose_seconds += time.perf_counter() - t0
        return out

    async def _emit_frame(self) -> None:
        assert self._index is not None
        t = self._pts(self._index)
        plan = self._plan(self._pick(t))
        frame = await self.offload(self.compose, t, plan)
        self._index += 1
        self.frames += 1
        await self.outputs["out"].emit(frame)

    # -- run ------------------------------------------------------------------
    async def run(self) -> None:
        if self.live:
            await self._run_live()
        else:
            await self._run_files()

    async def _run_files(self) -> None:
        while True:
            self._sync_inputs()
            states = list(self._states.values())
            if self._index is None:
                waiting = [st for st in states if st.covered is None and not st.eos]
                if waiting:
                    if not self._drain(waiting, -(1 << 62)):
                        await self._waiter.wait([st.port for st in waiting])
                    continue
                firsts = [st.queue[0][0] for st in states if st.queue]
                if not firsts:
                    return  # nothing linked, or every input ended without a frame
                self._index = math.ceil(min(firsts) * self.fps / 90_000 - 1e-6)
            t = self._pts(self._index) + self._half
            need = [st for st in states if not st.eos and (st.covered is None or st.covered < t)]
            if need:
                if not self._drain(need, t):
                    await self._waiter.wait([st.port for st in need])
                continue
            if all(st.eos for st in states):
                ends = [e for st in states if (e := st.end()) is not None]
                if not ends or t >= max(ends):
                    return
            await self._emit_frame()

    async def _run_live(self) -> None:
        assert self.graph is not None
        clock = self.graph.clock
        now = clock.now()
        self._index = 0 if now < self.latency else math.ceil(now * self.fps)
        end: int | None = None  # once stopping: the first frame not to make
        while True:
            self._sync_inputs()
            self._drain(list(self._states.values()))
            now = clock.now()
            if self._stop and end is None:
                # The recording ends where stop was asked. Frames after it would show the
                # inputs leaving (a black tail) while the sources hang up.
                end = max(self._index, math.ceil(now * self.fps - 1e-9))
            if end is not None and self._index >= end:
                return
            due = float(self._index / self.fps) + self.latency
            if now >= due:
                if now - due > 1 / float(self.fps):
                    self.late += 1  # we are behind: the frame goes out late but goes out
                await self._emit_frame()
                continue
            await self._waiter.wait([], max(0.0, due - clock.now()))

    def stats(self) -> dict[str, Any]:
        return {"inputs": len(self._states), "joined": self.joined, "frames": self.frames, "late": self.late,
                "max_age_ms": round(self.max_age / 90), "stale": self.stale,
                "dropped": self.dropped,
                "compose_ms": round(1000 * self.compose_seconds / self.frames, 3) if self.frames else 0.0}
