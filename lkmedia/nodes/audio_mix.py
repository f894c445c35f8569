"""AudioMixer: any number of raw audio inputs mixed onto one timeline.

Like GStreamer's audioaggregator, the mix runs on timestamps and a deadline, not on
arrival: each input frame is written at its pts into that input's row of one shared
int16 ring buffer, and a window is mixed as a single numpy sum over the rows (then
zeroed: that part of the ring is the far future now). A silent,
late or departed participant never stalls the mix.

Non-live (files, tests): a window is emitted once every active input has data covering
it or is at EOS. Live: the window [t, t+frame) is mixed at graph-clock time
t + latency or a little later (windows go out in batches of ``_LIVE_WINDOWS``, once the
last is due) with whatever arrived by then; data for a window already emitted is dropped and
counted in ``late_dropped``; what never arrived is silence.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.audio.resampler import AudioResampler

from ..core import EOS, Caps, Gap, InputWaiter, Node
from ..core.node import InputPort

_AudioFrame = av.AudioFrame

log = logging.getLogger("lkmedia.nodes.audio_mix")

#: port.meta["channel"] values: where an input is heard in a stereo mix. "left"/"right"
#: downmix the input to mono into one channel (LiveKit's DUAL_CHANNEL_AGENT/ALTERNATE).
CHANNEL_ROUTES = ("both", "left", "right")
#: Non-live: read an input ahead of the output time by at most this much (seconds).
_READ_AHEAD = 1.0
#: Most windows mixed in one go (one numpy sum, one thread hop).
_BATCH_WINDOWS = 50
#: Batches at least this long are mixed on the node's thread.
_OFFLOAD_WINDOWS = 8
#: Live: windows are emitted this many at a time, once the last of them is due: one
#: wake-up, mix and encoder hop per ~85 ms instead of per window (for that much more latency).
_LIVE_WINDOWS = 4
#: Live: an input whose first timestamp is this far (seconds) from the graph clock is
#: re-based so that its first frame lands at its arrival time.
_REBASE_SECONDS = 1.0


def _to_samples(pts: int, tb: Fraction, rate: int) -> int:
    """pts in ``tb`` as a sample count at ``rate``, rounded (integer math: Fraction is slow)."""
    num, den = tb.numerator, tb.denominator
    if num == 1 and den == rate:
        return pts
    return (2 * pts * num * rate + den) // (2 * den)


class _Input:
    """One participant: its row in the shared buffer and where its data ends."""

    __slots__ = ("dst", "end", "eos", "flat", "frames", "offset", "pending", "port", "res_expected",
                 "res_next", "resampler", "route", "row")

    def __init__(self, port: InputPort, row: int) -> None:
        self.port = port
        self.row = row
        self.dst: np.ndarray | None = None  # where its samples go: its row, or one channel of it
        self.flat: memoryview | None = None  # its row as bytes, when it is heard on both channels
        self.end: int | None = None  # output-timeline sample up to which content is known
        self.route = "both"
        self.resampler: AudioResampler | None = None
        self.res_next: int | None = None
        self.res_expected: int | None = None
        self.offset: int | None = None  # live re-basing, samples
        self.pending: list[tuple[int, np.ndarray]] = []  # data not yet writable (too early)
        self.eos = False
        self.frames = 0


class AudioMixer(Node):
    """Mix raw audio inputs into one output "out".

    Output: s16 interleaved (packed) frames of ``frame_ms`` at ``sample_rate``,
    ``channels`` 1 (mono) or 2 (stereo); pts in samples, time base 1/sample_rate,
    contiguous from the first output time. Inputs of any format, rate or layout are
    resampled per input. Link inputs before start or while running (``Graph.link``);
    EOS on an input means that participant left. ``port.meta["channel"]`` ("both",
    default, "left" or "right") routes an input in a stereo mix: set it right after
    ``Graph.link`` (e.g. ``mixer.set_channel(edge.dst, "left")``), before the event loop
    runs again. Live inputs carry graph-clock timestamps (pts * time_base = seconds since
    the graph started); an input whose first timestamp is more than 1 s off is re-based
    to its arrival time. Live mode ends on ``Graph.stop()``; non-live mode ends when
    every input is at EOS (at once if none is linked).
    """

    dynamic_inputs = True

    def __init__(
        self,
        *,
        sample_rate: int = 48_000,
        channels: int = 2,
        frame_ms: float = 10,
        live: bool = False,
        latency: float = 0.2,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if sample_rate < 8000 or sample_rate > 192_000:
            raise ValueError(f"{self.name}: sample_rate must be 8000..192000 Hz, got {sample_rate}")
        if channels not in (1, 2):
            raise ValueError(f"{self.name}: channels must be 1 or 2, got {channels}")
        frame = round(sample_rate * frame_ms / 1000)
        if frame < 1 or frame_ms > 1000:
            raise ValueError(f"{self.name}: frame_ms must be above 0 and at most 1000, got {frame_ms}")
        if latency < 0 or latency > 10:
            raise ValueError(f"{self.name}: latency must be 0..10 s, got {latency}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.layout = "stereo" if channels == 2 else "mono"
        self.frame = frame
        self.live = live
        self.latency = latency
        self.time_base = Fraction(1, sample_rate)
        self._fmt, self._layout = av.AudioFormat("s16"), av.AudioLayout(self.layout)  # parsed once
        self.add_output("out", Caps("audio", sample_rate=sample_rate, layout=self.layout, sample_fmt="s16"))
        self._tol = max(1, sample_rate // 1000)  # 1 ms of jitter counts as contiguous
        self._states: dict[str, _Input] = {}
        self._seen: set[str] = set()
        self._free_rows: list[int] = []
        if live:  # data may arrive up to latency + jitter ahead of the mix
            cap = round(sample_rate * (_READ_AHEAD + max(latency, 0.1) + 1.0)) + frame * _BATCH_WINDOWS
        else:  # inputs are read up to frame + _READ_AHEAD ahead, plus one piece (see _place)
            cap = frame + round(sample_rate * _READ_AHEAD) + frame * _BATCH_WINDOWS
        self._cap = cap
        self._buf = np.zeros((0, cap, channels), np.int16)
        self._acc = np.empty((0, channels), np.int32)  # _mix's sum and its clipped copy
        self._pcm16 = np.empty((0, channels), np.int16)
        self._rows = 0  # rows in use are below this
        self._head = 0  # buffer index of self._out_t
        self._out_t: int | None = None  # next output sample
        self._waiter = InputWaiter()
        self._stop = False
        self.late_dropped = 0
        self.windows = 0
        self.joined = 0

    # -- ports -----------------------------------------------------------
    def new_input(self, src: Any) -> InputPort:
        return self.add_input(f"in{len(self.inputs)}", self.accept_input, capacity=32)

    def accept_input(self, caps: Caps) -> str | None:
        if caps.media != "audio" or caps.encoded:
            return f"{self.name} mixes raw audio, got {caps.describe()}: decode it first"
        return None

    def input_added(self, port: InputPort) -> None:
        self._waiter.poke()

    def set_channel(self, port: InputPort | str, channel: str) -> None:
        """Route an input to "both" channels, or downmixed to "left" or "right" only."""
        p = self.inputs[port] if isinstance(port, str) else port
        self._check_route(channel)
        p.meta["channel"] = channel

    def _check_route(self, route: str) -> None:
        if route not in CHANNEL_ROUTES:
            raise ValueError(f"{self.name}: channel must be one of {', '.join(CHANNEL_ROUTES)}, got {route!r}")
        if route != "both" and self.channels != 2:
            raise ValueError(f"{self.name}: channel {route!r} needs a stereo mix (channels=2)")

    def request_stop(self) -> None:
        self._stop = True
        self._waiter.poke()

    # -- input side (on the event loop) ------------------------------------
    def _sync_inputs(self) -> None:
        new = [(n, p) for n, p in self.inputs.items() if n not in self._seen and p.edge is not None]
        if len(new) > len(self._free_rows):  # grow once for all of them: no repeated copies
            self._grow_rows(len(new) - len(self._free_rows))
        for name, port in new:
            self._seen.add(name)
            row = self._free_rows.pop()
            st = self._states[name] = _Input(port, row)
            self._route(st)
            self.joined += 1
            self._rows = max(self._rows, row + 1)

    def _route(self, st: _Input) -> None:
        row = self._buf[st.row]
        st.dst = row if st.route == "both" else row[:, 0:1] if st.route == "left" else row[:, 1:2]
        st.flat = memoryview(row).cast("B") if st.route == "both" else None

    def _grow_rows(self, need: int) -> None:
        """Room for ``need`` more rows (free rows are kept highest first)."""
        rows = self._buf.shape[0]
        size = max(4, rows * 2)
        while size < rows + need:
            size *= 2
        buf = np.zeros((size, self._cap, self.channels), np.int16)
        if self._rows:
            buf[:self._rows] = self._buf[:self._rows]  # rows above are all zero
        self._buf = buf
        self._free_rows = sorted(self._free_rows + list(range(rows, size)), reverse=True)
        for st in self._states.values():
            self._route(st)

    def _take(self, st: _Input, item: Any) -> None:
        if item is EOS:
            st.eos = True
            return
        if isinstance(item, Gap):
            s = round(item.start * self.sample_rate) + (st.offset or 0)
            e = round(item.end * self.sample_rate) + (st.offset or 0)
            if e > (st.end if st.end is not None else s):
                st.end = e  # the buffer is silence there already
            return
        st.frames += 1
        pts, tb = item.pts, item.time_base  # read once: PyAV builds a Fraction per read
        if pts is None or tb is None:
            raise ValueError(f"{self.name}: audio frame without a timestamp on {st.port.name}")
        start = _to_samples(pts, tb, self.sample_rate)
        if self.live and st.offset is None:
            now = round(self.graph.clock.now() * self.sample_rate) if self.graph else start
            off = now - start
            st.offset = off if abs(off) > _REBASE_SECONDS * self.sample_rate else 0
        start += st.offset or 0
        route = st.port.meta.get("channel", "both")
        if route != st.route:
            self._check_route(route)
            st.route, st.resampler, st.res_next = route, None, None
            self._route(st)
        layout = self.layout if route == "both" else "mono"
        if (st.resampler is None and item.format.name == "s16" and item.layout.name == layout
                and item.sample_rate == self.sample_rate):
            n = item.samples
            ch = self.channels if route == "both" else 1
            self._place(st, start, np.frombuffer(item.planes[0], np.int16, n * ch).reshape(n, ch))
            return
        if st.resampler is None:
            st.resampler = AudioResampler(format="s16", layout=layout, rate=self.sample_rate)
        if st.res_next is None or st.res_expected is None or abs(start - st.res_expected) > self._tol * 20:
            st.res_next = start  # first frame, or a jump in the input: restart the count
        st.res_expected = start + round(item.samples * self.sample_rate / (item.sample_rate or self.sample_rate))
        for f in st.resampler.resample(item):
            self._place(st, st.res_next, self._pcm(f))
            st.res_next += f.samples

    @staticmethod
    def _pcm(f: av.AudioFrame) -> np.ndarray:
        """A read-only (samples, channels) view of a packed s16 frame: no copy."""
        ch = f.layout.nb_channels
        return np.frombuffer(f.planes[0], np.int16, f.samples * ch).reshape(f.samples, ch)  # type: ignore[call-overload]  # (a PyAV plane is a buffer)

    def _place(self, st: _Input, start: int, pcm: np.ndarray) -> None:
        n = len(pcm)
        out_t = self._out_t
        if (start == st.end and out_t is not None and start >= out_t and not st.pending
                and start - out_t + n <= self._cap):  # the common case: contiguous, in the buffer
            self._put(st, start, pcm)
            st.end = start + n
            return
        step = self.frame * _BATCH_WINDOWS
        if n > step:  # a very long frame: keep each piece smaller than the buffer
            for k in range(0, len(pcm), step):
                self._place(st, start + k, pcm[k:k + step])
            return
        n = len(pcm)
        if st.end is not None and abs(start - st.end) <= self._tol:
            start = st.end  # timestamp jitter: keep the input contiguous
        if self._out_t is not None and start < self._out_t:
            cut = self._out_t - start
            self.late_dropped += 1
            if cut >= n:
                return
            pcm, start, n = pcm[cut:], self._out_t, n - cut
        if st.end is not None and start < st.end:  # overlaps what this input sent already
            cut = st.end - start
            if cut >= n:
                return
            pcm, start, n = pcm[cut:], st.end, n - cut
        st.end = start + n
        if self._out_t is None or st.pending or not self._write(st, start, pcm):
            st.pending.append((start, pcm))

    def _write(self, st: _Input, start: int, pcm: np.ndarray) -> bool:
        """Copy into the input's row; False if it lies beyond the buffer for now."""
        assert self._out_t is not None
        if start - self._out_t + len(pcm) > self._cap:
            return False
        self._put(st, start, pcm)
        return True

    def _put(self, st: _Input, start: int, pcm: np.ndarray) -> None:
        """Copy samples [start, start+len) (out_t <= start, end within the ring) in place."""
        cap = self._cap
        pos = (self._head + start - self._out_t) % cap  # type: ignore[operator]
        n = len(pcm)
        if pos + n <= cap:
            st.dst[pos:pos + n] = pcm  # type: ignore[index]
        else:  # wraps around the end of the ring
            k = cap - pos
            st.dst[pos:] = pcm[:k]  # type: ignore[index]
            st.dst[:n - k] = pcm[k:]  # type: ignore[index]

    def _flush_pending(self) -> None:
        for st in self._states.values():
            while st.pending:
                start, pcm = st.pending[0]
                if start < self._out_t:  # type: ignore[operator]
                    cut = self._out_t - start  # type: ignore[operator]
                    self.late_dropped += 1
                    st.pending.pop(0)
                    if cut < len(pcm):
                        st.pending.insert(0, (start + cut, pcm[cut:]))
                    continue
                if not self._write(st, start, pcm):
                    break
                st.pending.pop(0)

    # -- mixing (pure numpy; may run on the node's thread) -------------------
    def _mix(self, t0: int, n: int) -> list[av.AudioFrame]:
        """Mix [t0, t0+n) into frames of ``self.frame`` samples (the last may be short)."""
        h, cap, rows = self._head, self._cap, self._rows
        if self._acc.shape[0] < n:  # kept between calls: no fresh pages per batch
            self._acc = np.empty((n, self.channels), np.int32)
            self._pcm16 = np.empty((n, self.channels), np.int16)
        acc, pcm = self._acc[:n], self._pcm16[:n]
        k = min(n, cap - h)  # the part before the end of the ring; the rest wraps to 0
        for a, b, into in ((h, h + k, acc[:k]), (0, n - k, acc[k:])):
            if b > a:
                part = self._buf[:rows, a:b]
                np.add.reduce(part, axis=0, dtype=np.int32, out=into)
                part[...] = 0  # free for the samples cap ahead
        np.clip(acc, -32768, 32767, out=pcm, casting="unsafe")
        self._head = (h + n) % cap
        src = memoryview(pcm).cast("B")  # type: ignore[arg-type]  # (ndarray has the buffer protocol)
        bpf, F = 2 * self.channels, self.frame
        sr, tb, fmt, layout = self.sample_rate, self.time_base, self._fmt, self._layout
        out: list[av.AudioFrame] = []
        for k in range(0, n, F):
            m = min(F, n - k)
            f = av.AudioFrame(format=fmt, layout=layout, samples=m)
            memoryview(f.planes[0])[:m * bpf] = src[k * bpf:(k + m) * bpf]
            f.sample_rate = sr
            f.pts = t0 + k
            f.time_base = tb
            out.append(f)
        return out

    async def _emit_span(self, n: int) -> None:
        t0 = self._out_t
        assert t0 is not None
        # Advance first: data arriving while the batch is mixed is late for it.
        self._out_t = t0 + n
        if n >= self.frame * _OFFLOAD_WINDOWS:
            frames = await self.offload(self._mix, t0, n)
        else:
            frames = self._mix(t0, n)
        self.windows += len(frames)
        out = self.outputs["out"]
        for f in frames:
            await out.emit(f)
        self._flush_pending()
        self._retire()

    def _retire(self) -> None:
        """Free the rows of departed inputs whose data has all been mixed."""
        for name, st in list(self._states.items()):
            if st.eos and not st.pending and (st.end is None or st.end <= self._out_t):  # type: ignore[operator]
                self._buf[st.row] = 0
                self._free_rows.append(st.row)
                self._free_rows.sort(reverse=True)  # reuse low rows: fewer rows to sum
                st.row = -1
                del self._states[name]
                self._rows = max((s.row + 1 for s in self._states.values()), default=0)

    # -- waiting -------------------------------------------------------------
    def _drain(self, states: list[_Input], limit: int | None = None, ahead: bool = False) -> int:
        """Take what is queued: everything (``ahead``), or until an input's data reaches
        ``limit`` (None: until its first data), so that inputs far ahead wait upstream.

        The common frame (packed s16 in the mix layout and rate, time base 1/rate, right
        after the input's previous data, inside the buffer) is copied straight into the
        input's row here: this loop runs for every input frame, so it reads each PyAV
        attribute at most once and never builds the time base (a Fraction per read).
        Anything else goes through ``_take``, which handles every case."""
        got = 0
        sr, bpf, layout = self.sample_rate, 2 * self.channels, self.layout
        out_t, head, cap = self._out_t, self._head, self._cap  # only _mix changes them
        for st in states:
            if st.eos:
                continue
            get, meta = st.port.get_nowait, st.port.meta
            end, off, flat = st.end, st.offset or 0, self._direct(st)
            taken = 0
            while ahead or end is None or (limit is not None and end < limit):
                item = get()
                if item is None:
                    break
                got += 1
                if flat is not None and type(item) is _AudioFrame:
                    pts = item.pts
                    # ``time`` is pts * time_base as a float, computed in C: equal to
                    # pts / rate (pts != 0) only when time_base is 1/rate, since any other
                    # int32 rational differs by far more than the float rounding.
                    if pts and item.time == pts / sr:
                        start = pts + off
                        n = item.samples
                        rel = start - out_t  # type: ignore[operator]
                        if (start == end and rel >= 0 and rel + n <= cap and item.sample_rate == sr
                                and item.format.name == "s16" and item.layout.name == layout
                                and (not meta or meta.get("channel", "both") == "both")):
                            pos = head + rel
                            if pos >= cap:
                                pos -= cap
                            if pos + n <= cap:  # else it wraps: _take splits it
                                pos *= bpf
                                nb = n * bpf
                                plane = item.planes[0]
                                if plane.buffer_size == nb:
                                    flat[pos:pos + nb] = plane
                                else:  # padded line
                                    flat[pos:pos + nb] = memoryview(plane)[:nb]
                                end = st.end = start + n
                                taken += 1
                                continue
                self._take(st, item)
                if st.eos:
                    break
                end, off, flat = st.end, st.offset or 0, self._direct(st)
            st.frames += taken
        return got

    def _direct(self, st: _Input) -> memoryview | None:
        """The input's row as bytes if its frames may be copied in by ``_drain`` itself
        (what decides it changes only in ``_take``)."""
        ok = st.resampler is None and not st.pending and self._out_t is not None
        return st.flat if ok and not (self.live and st.offset is None) else None

    # -- run -------------------------------------------------------------
    async def run(self) -> None:
        if self.live:
            await self._run_live()
        else:
            await self._run_files()

    async def _run_files(self) -> None:
        sr, F = self.sample_rate, self.frame
        while True:
            self._sync_inputs()
            states = list(self._states.values())
            if self._out_t is None:
                waiting = [st for st in states if st.end is None and not st.eos]
                if waiting:
                    if not self._drain(waiting):
                        await self._waiter.wait([st.port for st in waiting])
                    continue
                starts = [st.pending[0][0] for st in states if st.pending]
                if not starts:
                    return  # nothing linked, or every input ended without data
                self._out_t = min(starts)
                self._flush_pending()
            horizon = self._out_t + F + round(_READ_AHEAD * sr)
            behind = [st for st in states if not st.eos and (st.end is None or st.end < horizon)]
            got = self._drain(behind, horizon)
            active = [st for st in states if not st.eos]
            if active:
                ready = min(st.end if st.end is not None else self._out_t for st in active)
                n = (ready - self._out_t) // F * F
            else:
                ends = [st.end for st in states if st.end is not None]
                n = max(ends, default=self._out_t) - self._out_t
                if n <= 0:
                    return
            if n > 0:
                await self._emit_span(min(n, F * _BATCH_WINDOWS))
            elif not got:
                await self._waiter.wait([st.port for st in behind if not st.eos])

    async def _run_live(self) -> None:
        assert self.graph is not None
        clock = self.graph.clock
        sr, F = self.sample_rate, self.frame
        now = clock.now()
        self._out_t = 0 if now < self.latency else int(now * sr) // F * F
        stop_at: float | None = None
        while True:
            self._sync_inputs()
            self._drain(list(self._states.values()), ahead=True)
            self._flush_pending()
            now = clock.now()
            if self._stop and stop_at is None:
                # The recording ends where stop was asked: windows after it would only be
                # silence while the sources disconnect.
                stop_at = now
            end = None if stop_at is None else max(self._out_t, int(stop_at * sr) // F * F)
            if end is not None and self._out_t >= end:
                return
            # Window [t, t+F) is due at clock time t + latency, whatever has arrived.
            late_by = int((now - self.latency) * sr) - self._out_t
            ahead = (_LIVE_WINDOWS - 1) * F  # (to the last window before the end, once stopping)
            if end is not None:
                ahead = max(0, min(ahead, end - self._out_t - F))
            if late_by >= ahead:
                span = min(late_by // F + 1, _BATCH_WINDOWS) * F
                if end is not None:
                    span = min(span, end - self._out_t)
                await self._emit_span(span)
                continue
            deadline = (self._out_t + ahead) / sr + self.latency
            await self._waiter.wait([], max(0.0, deadline - clock.now()))

    def stats(self) -> dict[str, Any]:
        return {"inputs": len(self._states), "joined": self.joined, "late_dropped": self.late_dropped,
                "windows": self.windows}
