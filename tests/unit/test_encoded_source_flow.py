"""EncodedTrackSource's hand-over of packets onto its edges (no network: the frame
callback is driven directly)."""
from __future__ import annotations

import asyncio

import pytest

from lkmedia.core import Edge, Policy
from lkmedia.lkrtc import EncodedFrame, RemoteTrack
from lkmedia.sources.livekit_encoded import EncodedTrackSource

OPUS_20MS = bytes([0xF8, 0xFF, 0xFE])  # one 20 ms SILK frame (TOC + payload)


@pytest.mark.timeout(20)
async def test_frames_stay_in_order_when_the_edge_frees_while_the_backlog_drains() -> None:
    """A frame that arrives while the pump waits for room must not overtake the frame the
    pump holds (CI: an OGG track egress failed with EINVAL, its muxer handed a packet that
    went back in time)."""
    src = EncodedTrackSource("ws://127.0.0.1:1", "token", track_id="TR_1", kind="audio")
    out = src.outs["audio"]
    edge = Edge(out.port, None, capacity=2, policy=Policy.BLOCK)
    out.port.edges.append(edge)
    out.pump = asyncio.get_running_loop().create_task(src._pump(out))
    on_frame = src._frame_handler(out)
    track = RemoteTrack("TR_1", "audio", "p", "PA_1", "opus", "", "audio/opus")
    out.track = track  # (subscribed)
    src._offset = 0.0
    sent = 0

    def frame() -> None:
        nonlocal sent
        on_frame(track, EncodedFrame(OPUS_20MS, sent * 960, True, 0.0, time=1.0 + sent * 0.02))
        sent += 1

    received: list[int] = []
    for _ in range(3):  # two on the edge, one in the backlog
        frame()
    await asyncio.sleep(0)  # the pump takes it from the backlog and waits for room
    for _ in range(20):
        received.append((await edge.get()).pts)  # room for one: the pump's putter is woken...
        frame()  # ...but a frame arrives before the pump runs
        await asyncio.sleep(0)
    while len(received) < sent:
        received.append((await asyncio.wait_for(edge.get(), 5)).pts)
    out.ended = True
    out.wake.set()
    await out.pump
    assert received == sorted(received), received
    assert len(received) == sent
