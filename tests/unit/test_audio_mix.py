"""AudioMixer: sums on the timestamp timeline, joins and leaves, routing, live deadlines."""
from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from lkmedia.core import EOS, Caps, Gap, Graph, Sink, Source
from lkmedia.nodes.audio_mix import AudioMixer

SR = 48_000


def tone(freq: float, amp: int, n: int, channels: int = 2, start: int = 0) -> np.ndarray:
    """int16 sine, shape (n, channels); the phase counts from sample ``start``."""
    t = np.arange(start, start + n)
    x = np.round(amp * np.sin(2 * np.pi * freq * t / SR)).astype(np.int16)
    return np.repeat(x[:, None], channels, axis=1)


class PcmSource(Source):
    """Sends ``pcm`` (n, channels) int16 as packed s16 frames from pts ``start`` (samples).

    live: frame k is sent at graph-clock time of its end (like a real capture).
    stall_after: stop sending (without EOS) after this many samples, until stopped.
    gap: (from, to) samples sent as a Gap item instead of frames.
    """

    def __init__(self, pcm: np.ndarray, start: int = 0, frame: int = 960, live: bool = False,
                 stall_after: int | None = None, gap: tuple[int, int] | None = None,
                 rate: int = SR, fmt: str = "s16", name: str | None = None) -> None:
        super().__init__(name)
        self.pcm, self.start, self.frame, self.live = pcm, start, frame, live
        self.stall_after, self.gap, self.rate, self.fmt = stall_after, gap, rate, fmt
        self.layout = "stereo" if pcm.shape[1] == 2 else "mono"
        self.add_output("out", Caps("audio", sample_rate=rate, layout=self.layout, sample_fmt=fmt))

    def make(self, k: int, chunk: np.ndarray) -> av.AudioFrame:
        if self.fmt == "fltp":
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.T.astype(np.float32) / 32768),
                                           format="fltp", layout=self.layout)
        else:
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.reshape(1, -1)), format="s16",
                                           layout=self.layout)
        f.sample_rate = self.rate
        f.pts = self.start + k
        f.time_base = Fraction(1, self.rate)
        return f

    async def run(self) -> None:
        clock = self.graph.clock  # type: ignore[union-attr]
        n = len(self.pcm)
        k = 0
        while k < n and not self.stop_requested:
            if self.stall_after is not None and k >= self.stall_after:
                await self.wait_stop()
                return
            if self.gap and self.gap[0] <= k < self.gap[1]:
                await self.emit(Gap((self.start + self.gap[0]) / self.rate, (self.start + self.gap[1]) / self.rate))
                k = self.gap[1]
                continue
            m = min(self.frame, n - k)
            if self.live:
                await clock.sleep_until((self.start + k + m) / self.rate)
            await self.emit(self.make(k, self.pcm[k:k + m]))
            k += m


class Collect(Sink):
    """Keeps every frame with the graph-clock time it arrived."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.frames: list[av.AudioFrame] = []
        self.arrivals: list[float] = []

    async def run(self) -> None:
        port = next(iter(self.inputs.values()))
        while (item := await port.get()) is not EOS:
            self.frames.append(item)
            self.arrivals.append(self.graph.clock.now())  # type: ignore[union-attr]

    def pcm(self, channels: int = 2) -> np.ndarray:
        return np.concatenate([f.to_ndarray().reshape(-1, channels) for f in self.frames])


def check_contiguous(frames: list[av.AudioFrame], first: int = 0) -> None:
    pts = first
    for f in frames:
        assert f.pts == pts and f.time_base == Fraction(1, SR) and f.format.name == "s16"
        pts += f.samples


async def run_mix(*sources: Source, mixer: AudioMixer | None = None, routes: list[str] | None = None) -> tuple[AudioMixer, Collect]:
    g = Graph()
    mix = mixer or AudioMixer()
    out = Collect()
    for i, s in enumerate(sources):
        edge = g.link(s, mix)
        if routes:
            mix.set_channel(edge.dst, routes[i])  # type: ignore[arg-type]
    g.link(mix, out)
    await asyncio.wait_for(g.run(), 20)
    return mix, out


async def test_two_tones_sum_at_their_offsets() -> None:
    a = tone(440, 8000, SR)  # 0 .. 1 s
    b = tone(1000, 5000, SR, start=0)  # 0.5 .. 1.5 s
    mix, out = await run_mix(PcmSource(a), PcmSource(b, start=SR // 2, frame=1024))
    check_contiguous(out.frames)
    got = out.pcm()
    assert len(got) == SR * 3 // 2
    expect = np.zeros((SR * 3 // 2, 2), np.int32)
    expect[:SR] += a
    expect[SR // 2:] += b
    assert np.array_equal(got, expect.astype(np.int16))
    assert mix.stats() == {"inputs": 0, "joined": 2, "late_dropped": 0, "windows": 150}


async def test_sum_clips_instead_of_wrapping() -> None:
    loud = np.full((4800, 2), 30000, np.int16)
    _, out = await run_mix(PcmSource(loud), PcmSource(loud), PcmSource(-loud))
    assert (out.pcm() == 30000).all()  # summed in 32 bits: no wrap in between
    _, out = await run_mix(PcmSource(loud), PcmSource(loud))
    assert out.pcm().max() == 32767


async def test_input_leaving_does_not_stall_the_mix() -> None:
    a = tone(300, 6000, SR // 4)  # leaves at 0.25 s
    b = tone(700, 6000, 2 * SR)
    _, out = await run_mix(PcmSource(a), PcmSource(b))
    got = out.pcm()
    assert len(got) == 2 * SR
    assert np.array_equal(got[SR // 4:], b[SR // 4:])
    check_contiguous(out.frames)


async def test_late_joiner_starts_the_output_at_the_first_pts() -> None:
    # Only input starts at 2 s: the output starts there, not at 0 (no leading silence).
    a = tone(300, 6000, SR // 2)
    _, out = await run_mix(PcmSource(a, start=2 * SR))
    check_contiguous(out.frames, first=2 * SR)
    assert np.array_equal(out.pcm(), a)


async def test_gap_is_silence_and_does_not_stall() -> None:
    a = tone(300, 6000, SR)
    b = tone(900, 4000, SR)
    _, out = await run_mix(PcmSource(a, gap=(9600, 28800)), PcmSource(b))
    got = out.pcm()
    expect = a.astype(np.int32) + b
    expect[9600:28800] = b[9600:28800]
    assert np.array_equal(got, expect.astype(np.int16))


async def test_left_right_routing_for_dual_channel() -> None:
    agent = tone(500, 7000, SR // 2, channels=1)
    other = tone(800, 7000, SR // 2, channels=2)  # downmixed to mono for its side
    _, out = await run_mix(PcmSource(agent), PcmSource(other), routes=["left", "right"])
    got = out.pcm()
    assert np.array_equal(got[:, 0], agent[:, 0])
    # Stereo -> mono is FFmpeg's downmix: same waveform, maybe scaled.
    r = got[:, 1].astype(np.float64)
    ref = other[:, 0].astype(np.float64)
    scale = float(r @ ref / (ref @ ref))
    assert 0.45 < scale < 1.05
    assert np.max(np.abs(r - scale * ref)) < 3


async def test_other_formats_are_resampled() -> None:
    a = tone(440, 8000, 44_100)  # 1 s at 44.1 kHz, float planar
    _, out = await run_mix(PcmSource(a, rate=44_100, fmt="fltp", frame=1024))
    check_contiguous(out.frames)
    got = out.pcm()
    assert abs(len(got) - SR) <= 480
    mid = got[SR // 4:3 * SR // 4, 0].astype(np.float64)
    assert abs(np.sqrt(np.mean(mid ** 2)) - 8000 / np.sqrt(2)) < 100


class TimedSource(PcmSource):
    """PcmSource whose frames carry pts in ``tb`` (from sample ``switch`` on: ``tb2``), or
    whose lines are padded (``align``): the mixer must place them all exactly."""

    def __init__(self, pcm: np.ndarray, tb: Fraction = Fraction(1, SR), tb2: Fraction | None = None,
                 switch: int = 0, align: int = 0, **kw: Any) -> None:
        super().__init__(pcm, **kw)
        self.tb, self.tb2, self.switch, self.align = tb, tb2, switch, align

    def make(self, k: int, chunk: np.ndarray) -> av.AudioFrame:
        if self.align:
            f = av.AudioFrame(format="s16", layout=self.layout, samples=len(chunk), align=self.align)
            nb = chunk.size * 2
            assert f.planes[0].buffer_size > nb  # really padded
            memoryview(f.planes[0])[:nb] = chunk.tobytes()
            f.sample_rate = self.rate
        else:
            f = super().make(k, chunk)
        tb = self.tb2 if self.tb2 is not None and k >= self.switch else self.tb
        t = Fraction(self.start + k, self.rate) / tb
        assert t.denominator == 1  # exact in that time base
        f.pts, f.time_base = int(t), tb
        return f


async def test_long_mix_is_exact_across_time_bases_padding_and_the_ring_end() -> None:
    """4 s through a ring of ~1.5 s (it wraps twice), frames of odd sizes that straddle
    its end, pts in other time bases (one switching mid-stream), padded lines, a gap
    after a wrap (stale samples there must not come back): the output is exactly the
    sum, wherever each frame was copied in."""
    n = 4 * SR
    gap = (100_000, 130_000)
    srcs = [
        (TimedSource(tone(310, 3000, n), frame=1000, gap=gap), 0),
        (TimedSource(tone(520, 3000, n - 4800), frame=800, tb=Fraction(1, 90_000), start=4800), 4800),
        (TimedSource(tone(730, 3000, n - 9600), frame=960, tb=Fraction(1, 1000),
                     tb2=Fraction(1, 90_000), switch=SR, start=9600), 9600),
        (TimedSource(tone(940, 3000, n - 960), frame=1001, align=64, start=960), 960),
        (TimedSource(tone(150, 3000, n, channels=1), frame=480), 0),  # resampled to stereo
    ]
    mixer = AudioMixer()
    mix, out = await run_mix(*(s for s, _ in srcs), mixer=mixer)
    assert 2 * mixer._cap < n  # the ring did wrap
    check_contiguous(out.frames)
    expect = np.zeros((n, 2), np.int32)
    for src, at in srcs[:4]:
        expect[at:at + len(src.pcm)] += src.pcm
    expect[gap[0]:gap[1]] -= srcs[0][0].pcm[gap[0]:gap[1]]
    got = out.pcm().astype(np.int32)
    assert len(got) == n
    mono = got - expect  # what is left is the mono input, on both channels
    assert np.array_equal(mono[:, 0], mono[:, 1])
    ref = srcs[4][0].pcm[:, 0].astype(np.float64)
    scale = float(mono[:, 0] @ ref / (ref @ ref))
    assert 0.6 < scale < 1.05 and np.max(np.abs(mono[:, 0] - scale * ref)) < 3
    assert mix.stats() == {"inputs": 0, "joined": 5, "late_dropped": 0, "windows": 400}


class FrameSource(Source):
    def __init__(self, frames: list[av.AudioFrame]) -> None:
        super().__init__()
        self.frames = frames
        self.add_output("out", Caps("audio", sample_rate=SR, layout="stereo", sample_fmt="s16"))

    async def run(self) -> None:
        for f in self.frames:
            await self.emit(f)


async def test_time_base_counts_even_when_pts_look_contiguous() -> None:
    """The second frame's pts (960) equals where the first ended, but in 1/24000 it is
    sample 1920: it lands there, with silence in between."""
    a, b = tone(300, 5000, 960), tone(600, 5000, 960)
    fa, fb = TimedSource(a).make(0, a), TimedSource(b).make(0, b)
    fb.pts, fb.time_base = 960, Fraction(1, 24_000)
    _, out = await run_mix(FrameSource([fa, fb]))
    check_contiguous(out.frames)
    assert np.array_equal(out.pcm(), np.concatenate([a, np.zeros_like(a), b]))


async def test_no_inputs_non_live_ends() -> None:
    g = Graph()
    mix, out = AudioMixer(), Collect()
    g.link(mix, out)
    await asyncio.wait_for(g.run(), 5)
    assert out.frames == []


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="channels must be 1 or 2"):
        AudioMixer(channels=6)
    with pytest.raises(ValueError, match="sample_rate"):
        AudioMixer(sample_rate=100)
    with pytest.raises(ValueError, match="frame_ms"):
        AudioMixer(frame_ms=0)
    mono = AudioMixer(channels=1)
    port = mono.add_input("x")
    with pytest.raises(ValueError, match="needs a stereo mix"):
        mono.set_channel(port, "left")
    with pytest.raises(ValueError, match="channel must be one of"):
        AudioMixer().set_channel(AudioMixer().add_input("y"), "middle")


def test_raw_audio_only() -> None:
    assert "raw audio" in (AudioMixer().accept_input(Caps("video")) or "")
    assert "decode it first" in (AudioMixer().accept_input(Caps("audio", encoded=True, codec="aac")) or "")


# -- live ------------------------------------------------------------------

async def run_live(seconds: float, *sources: Source, latency: float = 0.1,
                   join: tuple[float, Source] | None = None) -> tuple[AudioMixer, Collect]:
    g = Graph()
    mix = AudioMixer(live=True, latency=latency)
    out = Collect()
    for s in sources:
        g.link(s, mix)
    g.link(mix, out)
    await g.start()
    if join is not None:
        await asyncio.sleep(join[0])
        g.link(join[1], mix)
    await asyncio.sleep(seconds - (join[0] if join else 0))
    await asyncio.wait_for(g.stop(5), 10)
    return mix, out


def on_time(out: Collect, latency: float) -> None:
    """Each window [t, t+10ms) arrived at clock t + latency: never early, nearly always
    within 60 ms (a loaded CI machine may delay a few wake-ups, never by much)."""
    lateness = [at - (f.pts / SR + latency) for f, at in zip(out.frames, out.arrivals)]
    assert min(lateness) >= -0.005, min(lateness)
    assert sorted(lateness)[int(len(lateness) * 0.9)] <= 0.06, lateness
    assert max(lateness) <= 0.3, lateness


async def test_live_stalled_input_keeps_the_mix_on_time() -> None:
    a = tone(440, 8000, 10 * SR)
    _mix, out = await run_live(0.8, PcmSource(a, live=True, stall_after=SR // 5), latency=0.2)
    check_contiguous(out.frames)
    assert len(out.frames) >= 55  # 0.6 s of 10 ms windows at least
    on_time(out, 0.2)
    got = out.pcm()
    assert np.array_equal(got[:SR // 5], a[:SR // 5])  # what arrived in time is mixed
    assert not got[SR // 5:].any()  # then silence, on time


async def test_live_windows_go_out_a_few_at_a_time() -> None:
    """One wake-up (and one encoder hop after it) per few windows, not per window: the
    10 ms windows arrive in bursts (a burst's windows within a few ms of each other)."""
    _mix, out = await run_live(0.8, PcmSource(tone(440, 8000, 10 * SR), live=True), latency=0.1)
    check_contiguous(out.frames)
    bursts = 1 + sum(b - a > 0.005 for a, b in zip(out.arrivals, out.arrivals[1:]))
    assert len(out.frames) >= 50 and bursts <= len(out.frames) / 3, (len(out.frames), bursts)


async def test_live_with_no_inputs_emits_silence() -> None:
    _mix, out = await run_live(0.5)
    check_contiguous(out.frames)
    assert len(out.frames) >= 35
    on_time(out, 0.1)
    assert not out.pcm().any()


async def test_live_input_joining_while_running_lands_at_its_pts() -> None:
    a = tone(300, 5000, 10 * SR)
    b = tone(900, 5000, SR // 5)
    joiner = PcmSource(b, start=int(0.35 * SR), live=True)  # graph-clock pts: starts at 0.35 s
    mix, out = await run_live(1.0, PcmSource(a, live=True), latency=0.25, join=(0.3, joiner))
    got = out.pcm()
    s = int(0.35 * SR)
    assert mix.stats()["joined"] == 2
    assert np.array_equal(got[:s], a[:s])
    assert np.array_equal(got[s:s + SR // 5], (a[s:s + SR // 5].astype(np.int32) + b).astype(np.int16))
    on_time(out, 0.25)


class LateSource(Source):
    """Sends 0.1 s of audio stamped at pts 0 only at clock time 0.4 s: all of it late."""

    def __init__(self) -> None:
        super().__init__()
        self.add_output("out", Caps("audio", sample_rate=SR, layout="stereo"))

    async def run(self) -> None:
        await self.graph.clock.sleep_until(0.4)  # type: ignore[union-attr]
        for k in range(0, SR // 10, 960):
            f = av.AudioFrame.from_ndarray(np.full((1, 1920), 9000, np.int16), format="s16", layout="stereo")
            f.sample_rate, f.pts, f.time_base = SR, k, Fraction(1, SR)
            await self.emit(f)
        await self.wait_stop()


async def test_live_late_data_is_dropped_and_counted() -> None:
    mix, out = await run_live(0.7, LateSource(), latency=0.1)
    assert mix.stats()["late_dropped"] == 5
    assert not out.pcm().any()
    check_contiguous(out.frames)


def test_mix_core_mixes_sixteen_inputs_in_half_second_spans() -> None:
    """The mixing core on 16 stereo inputs, 2 s in 0.5 s spans, without the event loop.
    Its speed is measured in bench/ (``python3 bench/run.py --only mix``), not here."""
    mix = AudioMixer()
    ports: list[Any] = [mix.add_input(f"in{i}") for i in range(16)]
    for p in ports:
        p.edge = object()  # type: ignore[assignment]  # only marks the port as linked
    mix._sync_inputs()
    mix._out_t = 0
    frames = [PcmSource(tone(200 + 50 * i, 1000, 960)).make(0, tone(200 + 50 * i, 1000, 960)) for i in range(16)]
    out = []
    for k in range(0, 2 * SR, 960):
        for st, f in zip(mix._states.values(), frames):
            mix._place(st, k, mix._pcm(f))
        if (k + 960) % 24000 == 0:  # what _emit_span does, without the event loop
            start = mix._out_t
            mix._out_t += 24000
            out.extend(mix._mix(start, 24000))
            mix._flush_pending()
    assert len(out) == 200
