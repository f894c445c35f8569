"""LiveKit sources against a real livekit-server: the synthetic publisher's flash/beep
A/V received as PyAV frames, recorded, probed for duration and A/V sync, and a
publisher that drops for 2 s and rejoins recorded as one continuous file (egress #210)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import av
import pytest
from livekit import api

from lkmedia.core import EOS, Gap, Graph, Node
from lkmedia.dev.lk import LkLoadTest
from lkmedia.dev.publisher import PublisherProcess
from lkmedia.dev.stack import DevStack, find_binary
from lkmedia.nodes.audio_mix import AudioMixer
from lkmedia.nodes.convert import FpsConverter
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import assert_av_sync, av_offsets, decode_errors, probe
from lkmedia.sinks.file import FileSink
from lkmedia.sources.livekit import RoomSource, TrackSource

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The longest a returning track takes to show again once its publisher is back: a missed
# first key frame waits out livekit-server's 500 ms key-frame throttle (see the drop test).
RESUBSCRIBE_WORST = 0.8


class Collect(Node):
    """Keeps every item of every input, per input port. Not a Sink, so that a graph
    whose inputs all appear at run time (RoomSource) builds, as with a mixer."""

    dynamic_inputs = True

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.items: dict[str, list[Any]] = {}

    def input_added(self, port: Any) -> None:
        self._new.set()

    async def setup(self) -> None:
        self._new = asyncio.Event()

    async def run(self) -> None:
        done: set[str] = set()
        tasks: dict[str, asyncio.Task[None]] = {}

        async def drain(port: Any) -> None:
            got = self.items.setdefault(port.name, [])
            while (item := await port.get()) is not EOS:
                got.append(item)
            done.add(port.name)

        while True:
            for port in list(self.inputs.values()):
                if port.name not in tasks:
                    tasks[port.name] = asyncio.create_task(drain(port))
            self._new.clear()
            wait = asyncio.create_task(self._new.wait())
            await asyncio.wait([wait, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
            wait.cancel()
            if len(done) == len(tasks) and not self._new.is_set():
                break
        await asyncio.gather(*tasks.values())

    def frames(self, port: str) -> list[Any]:
        return [x for x in self.items.get(port, []) if not isinstance(x, Gap)]


def seconds(frames: list[Any]) -> list[float]:
    return [float(f.pts * f.time_base) for f in frames]


async def test_stack_answers_the_api(livekit_stack: DevStack, room_name: str) -> None:
    async with livekit_stack.api() as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=room_name))
        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
        assert room_name in [r.name for r in rooms.rooms]
        await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
    assert livekit_stack.url.startswith("ws://127.0.0.1:")
    assert livekit_stack.running


async def test_track_source_receives_av(livekit_stack: DevStack, room_name: str,
                                        publisher: PublisherProcess) -> None:
    g = Graph()
    src = g.add(TrackSource(livekit_stack.url, livekit_stack.token("rec", room_name),
                            participant_identity="pub", wait_timeout=10))
    sink = g.add(Collect())
    g.link(src.out("video"), sink)
    g.link(src.out("audio"), sink)
    await g.start()
    await asyncio.sleep(3.0)
    await g.stop()
    video, audio = sink.frames("in0"), sink.frames("in1")
    assert len(video) > 40, f"only {len(video)} video frames in 3 s"
    heard = sum(f.samples for f in audio) / 48_000
    assert heard > 1.5, f"only {heard:.2f} s of audio in 3 s ({len(audio)} frames)"
    v, a = seconds(video), seconds(audio)
    assert all(x < y for x, y in zip(v, v[1:])), "video timestamps must increase"
    assert all(x < y for x, y in zip(a, a[1:])), "audio timestamps must increase"
    assert (video[0].width, video[0].height, video[0].format.name) == (640, 360, "yuv420p")
    assert (audio[0].sample_rate, audio[0].layout.name, audio[0].format.name) == (48_000, "stereo", "s16")
    assert abs(v[0] - a[0]) < 1.0, "audio and video start on the same clock"
    # The sink's video edge was made live (drop oldest) by the source.
    assert src.out("video").edges[0].policy.value == "drop-oldest"


async def test_room_source_links_tracks_as_they_appear(livekit_stack: DevStack, room_name: str) -> None:
    g = Graph()
    room = g.add(RoomSource(livekit_stack.url, livekit_stack.token("rec", room_name)))
    sink = g.add(Collect())
    room.on_track(kind="video", link=sink)
    room.on_track(kind="audio", link=sink)
    await g.start()  # nobody in the room yet: no outputs
    assert not room.outputs
    async with PublisherProcess(livekit_stack.url, livekit_stack.token("late", room_name)):
        await asyncio.sleep(3.0)
    await g.stop()
    assert sorted(room.outputs) == ["audio:late:microphone", "video:late:camera"]
    counts = {p: len(sink.frames(p)) for p in sink.items}
    assert len(counts) == 2 and min(counts.values()) > 30, counts


async def _record(stack: DevStack, room: str, path: Path, seconds_: float,
                  during: Any = None) -> tuple[float, Graph]:
    g = Graph()
    src = g.add(TrackSource(stack.url, stack.token("rec", room), participant_identity="pub", wait_timeout=10))
    mp4 = g.add(FileSink(path))
    # As an egress recipe does: constant frame rate before the encoder (a returning
    # participant's first frames can come in a burst).
    g.chain(src.out("video"), FpsConverter(30), VideoEncoder("libx264", width=640, height=360, fps=30,
                                                             bitrate=1_500_000), mp4)
    # Audio through a live mixer, which turns the source's gaps into silence.
    g.chain(src.out("audio"), AudioMixer(live=True), AudioEncoder("aac"), mp4)
    await g.start()
    t0 = time.monotonic()
    if during is not None:
        await during()
    await asyncio.sleep(max(0.0, seconds_ - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    errors = await g.stop()
    assert not errors, errors
    return elapsed, g


async def test_recording_is_in_sync(livekit_stack: DevStack, room_name: str, publisher: PublisherProcess,
                                    tmp_path: Path) -> None:
    out = tmp_path / "rec.mp4"
    elapsed, _ = await _record(livekit_stack, room_name, out, 5.0)
    p = probe(str(out))
    assert p.has("video") and p.has("audio")
    assert p.duration is not None and abs(p.duration - elapsed) <= 0.5, (p.duration, elapsed)
    offsets = av_offsets(str(out))
    assert len(offsets) >= 3, f"flash/beep pairs found: {offsets}"
    assert_av_sync(offsets, subscriptions=1)
    assert decode_errors(str(out)) == ""


def _largest_hole(path: Path, kind: str) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0] if kind == "video" else c.streams.audio[0]
        times = sorted(float(pk.pts * pk.time_base) for pk in c.demux(s) if pk.pts is not None)
    return max(b - a for a, b in zip(times, times[1:]))


@pytest.mark.parametrize("mode", ["rejoin", "republish"])
async def test_drop_and_return_is_one_recording(livekit_stack: DevStack, room_name: str,
                                                publisher: PublisherProcess, tmp_path: Path,
                                                mode: str) -> None:
    out = tmp_path / "rec.mp4"

    async def drop() -> None:
        await asyncio.sleep(2.0)
        await publisher.drop_for(2.0, mode=mode)

    elapsed, g = await _record(livekit_stack, room_name, out, 8.0, drop)
    p = probe(str(out))
    assert p.has("video") and p.has("audio")
    assert p.duration is not None and abs(p.duration - elapsed) <= 0.5, (p.duration, elapsed)
    assert decode_errors(str(out)) == ""
    # The source said where the publisher was away; the mixer filled that with silence
    # and the frame-rate converter held the last picture, so the file has no hole.
    src = next(n for n in g.nodes.values() if isinstance(n, TrackSource))
    for kind in ("audio", "video"):
        away = src.stats()[f"{kind}.gap_seconds"]
        # 2 s away plus the rejoin (~0.15 s, counted in the publisher's absence) plus our
        # resubscription: 0.0-0.15 s after the publisher is back (bench/rejoin.py). About one
        # rejoin in 20 the receiver misses the first key frame and livekit-server's key-frame
        # throttle (one request per 500 ms per track) makes that 0.65 s: the bound allows it.
        assert 1.5 < away <= max(2.5, publisher.last_absence + RESUBSCRIBE_WORST), (
            f"{kind} away {away:.2f} s, publisher absent {publisher.last_absence:.2f} s")
        assert _largest_hole(out, kind) < 0.2
    offsets = av_offsets(str(out))
    assert len(offsets) >= 3, f"flash/beep pairs found: {offsets}"
    assert_av_sync(offsets, subscriptions=2)


async def test_mute_becomes_a_muted_gap(livekit_stack: DevStack, room_name: str,
                                        publisher: PublisherProcess) -> None:
    g = Graph()
    src = g.add(TrackSource(livekit_stack.url, livekit_stack.token("rec", room_name),
                            participant_identity="pub", kind="audio", wait_timeout=10))
    sink = g.add(Collect())
    g.link(src.out("audio"), sink)
    await g.start()
    await asyncio.sleep(1.5)
    await publisher.set_muted(True, "audio")
    await asyncio.sleep(1.5)
    await publisher.set_muted(False, "audio")
    await asyncio.sleep(1.5)
    await g.stop()
    items = sink.items["in0"]
    gaps = [i for i, x in enumerate(items) if isinstance(x, Gap)]
    assert gaps and all(items[i].muted for i in gaps), [items[i] for i in gaps]
    assert any(not isinstance(x, Gap) for x in items[gaps[-1]:]), "audio resumes after unmute"
    muted = sum(items[i].end - items[i].start for i in gaps)
    assert 0.8 < muted < 2.5, f"muted for {muted:.2f} s"
    t = [float(x.pts * x.time_base) for x in items if not isinstance(x, Gap)]
    assert all(a < b for a, b in zip(t, t[1:]))


async def test_room_source_takes_an_lk_publisher(livekit_stack: DevStack, room_name: str) -> None:
    """`lk perf load-test` (the Go SDK, media nobody here made) as the publisher. Audio
    only: with lk v2.18.2 against this server its video publisher never publishes (the
    server logs no video track; seen with vp8/h264, simulcast or not)."""
    find_binary("lk")  # StackError names the missing binary (scripts/install_livekit.sh builds it)
    g = Graph()
    room = g.add(RoomSource(livekit_stack.url, livekit_stack.token("rec", room_name)))
    sink = g.add(Collect())
    room.on_track(kind="audio", link=sink)
    await g.start()
    with LkLoadTest(livekit_stack, room_name, video_publishers=0, audio_publishers=1) as lk:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(len(sink.frames(p)) for p in sink.items) < 150:
            await asyncio.sleep(0.5)
        assert lk.proc is not None and lk.proc.poll() is None, lk.log_path.read_text()[-2000:]
    await g.stop()
    assert [p for p in room.outputs if p.startswith("audio:lk_pub_")], sorted(room.outputs)
    frames = [f for p in sink.items for f in sink.frames(p)]
    assert len(frames) >= 150, f"{len(frames)} audio frames from lk"
    t = seconds(frames)
    assert all(a < b for a, b in zip(t, t[1:]))
    assert frames[0].sample_rate == 48_000
