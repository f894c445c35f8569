"""Video passthrough into a room (RoomSink with encoded H.264, what RTMP passthrough uses)
against the real livekit-server: a subscriber's decoded frames are bit-identical to the
publisher's own stream decoded here, which a re-encode anywhere on the way could not give;
a stream with B-frames is refused in plain words."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import av
import numpy as np
import pytest
from livekit import rtc

from lkmedia.core import Graph, GraphError
from lkmedia.dev.stack import DevStack
from lkmedia.nodes.encode import VideoEncoder
from lkmedia.sinks.file import FileSink
from lkmedia.sinks.room import RoomSink, VideoPublishing
from lkmedia.sources.file import FileSource
from lkmedia.sources.synthetic import SyntheticSource

W, H = 640, 360


async def _clip(path: Path, profile: str) -> Path:
    g = Graph()
    src = g.add(SyntheticSource(width=W, height=H, fps=30, duration=8, audio=False))
    g.chain(src.out("video"), VideoEncoder("libx264", width=W, height=H, fps=30, bitrate=1_500_000,
                                           keyframe_interval=1, profile=profile),
            g.add(FileSink(path)))
    await g.run()
    return path


def _reference(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="yuv420p")[:H] for f in c.decode(video=0)]  # the Y plane


async def _subscribe(stack: DevStack, room: str, seconds: float) -> tuple[list[np.ndarray], rtc.Room]:
    viewer = rtc.Room()
    got: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()
    viewer.on("track_subscribed", lambda t, *_: got.done() or got.set_result(t))
    await viewer.connect(stack.url, stack.token("viewer", room))
    track = await asyncio.wait_for(got, 15)
    frames: list[np.ndarray] = []
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.I420)

    async def read() -> None:
        async for ev in stream:
            f = ev.frame
            frames.append(np.frombuffer(f.data, np.uint8)[: f.width * f.height].reshape(f.height, f.width).copy())

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), seconds)
    await stream.aclose()
    return frames, viewer


async def test_the_subscriber_decodes_the_publishers_own_bitstream(livekit_stack: DevStack, room_name: str,
                                                                  tmp_path: Path) -> None:
    clip = await _clip(tmp_path / "baseline.mp4", "baseline")
    ref = _reference(clip)
    g = Graph()
    src = g.add(FileSource(clip, decode=False, audio=False, realtime=True))
    sink = g.add(RoomSink(livekit_stack.url, livekit_stack.token("passthrough", room_name),
                          video=VideoPublishing(codec="h264", simulcast=False, max_bitrate=3_000_000), audio=None))
    g.link(src.out("video"), sink.inp("video"))
    await g.start()
    try:
        frames, viewer = await _subscribe(livekit_stack, room_name, 4)
        await viewer.disconnect()
    finally:
        await g.stop()
    stats = sink.stats()["passthrough"]
    matched = sum(any(np.array_equal(f, r) for r in ref) for f in frames)
    print(f"passthrough: {len(frames)} frames received, {matched} bit-identical to the publisher's stream "
          f"decoded here; sent {stats}")
    assert len(frames) >= 60 and frames[0].shape == (H, W)
    assert matched == len(frames)
    assert stats["rejected"] == 0


async def test_a_stream_with_b_frames_is_refused(livekit_stack: DevStack, room_name: str, tmp_path: Path) -> None:
    clip = await _clip(tmp_path / "main.mp4", "main")
    g = Graph()
    src = g.add(FileSource(clip, decode=False, audio=False, realtime=True))
    sink = g.add(RoomSink(livekit_stack.url, livekit_stack.token("bframes", room_name),
                          video=VideoPublishing(codec="h264", simulcast=False), audio=None))
    g.link(src.out("video"), sink.inp("video"))
    with pytest.raises(GraphError, match="B-frames"):
        await asyncio.wait_for(g.run(), 20)
