"""RoomSink (what an ingress session publishes with) against the real livekit-server: a
graph's flash/beep A/V published with an ingress token arrives as an INGRESS participant
with simulcast video at each layer's size and Opus audio; recorded by lkmedia's own
participant egress, A/V stays within the ingress's 60 ms."""
from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from lkmedia.core import Graph, NodeError
from lkmedia.dev.stack import DevStack
from lkmedia.ingress.presets import INGRESS_ID_ATTRIBUTE, audio_publishing, ingress_token, video_plan
from lkmedia.probe import assert_av_sync, av_offsets, decode_errors, probe
from lkmedia.service.egress import EgressService
from lkmedia.sinks.room import RoomError, RoomSink, VideoPublishing
from lkmedia.sources.synthetic import SyntheticSource
from lkmedia.testing.egress import egress_service
from lkmedia.testing.rooms import record_participant, sizes_per_quality, wait_tracks


@pytest.fixture
async def service(livekit_stack: DevStack, tmp_path: Path) -> AsyncIterator[EgressService]:
    async with egress_service(livekit_stack, tmp_path) as svc:
        yield svc


def _info(room: str, identity: str = "ingress-cam") -> lki.IngressInfo:
    return lki.IngressInfo(ingress_id="IN_test", room_name=room, participant_identity=identity,
                           participant_name="Ingress camera", input_type=lki.RTMP_INPUT)


@contextlib.asynccontextmanager
async def publishing(stack: DevStack, info: lki.IngressInfo, published: list[tuple[str, str, float]]
                     ) -> AsyncIterator[RoomSink]:
    """Synthetic 720p30 flash/beep A/V -> RoomSink with the default presets, for the block."""
    plan = video_plan(info.video if info.HasField("video") else None)
    g = Graph()
    src = g.add(SyntheticSource(width=plan.width, height=plan.height, fps=plan.fps, live=True))
    sink = RoomSink(stack.url, ingress_token(stack.api_key, stack.api_secret, info), video=plan.publishing,
                    audio=audio_publishing(info.audio if info.HasField("audio") else None),
                    on_published=lambda kind, sid: published.append((kind, sid, time.monotonic())))
    g.add(sink)
    g.link(src.out("video"), sink.inp("video"))
    g.link(src.out("audio"), sink.inp("audio"))
    await g.start()
    try:
        yield sink
    finally:
        errors = await g.stop()
        assert not errors, errors


async def test_published_as_an_ingress_participant_with_simulcast_layers(livekit_stack: DevStack,
                                                                          room_name: str) -> None:
    published: list[tuple[str, str, float]] = []
    async with publishing(livekit_stack, _info(room_name), published) as sink, livekit_stack.api() as lkapi:
        p = await wait_tracks(lkapi, room_name, "ingress-cam", 2)
        assert p.kind == lkm.ParticipantInfo.Kind.INGRESS and p.attributes[INGRESS_ID_ATTRIBUTE] == "IN_test"
        assert p.name == "Ingress camera"
        video = next(t for t in p.tracks if t.type == lkm.TrackType.VIDEO)
        audio = next(t for t in p.tracks if t.type == lkm.TrackType.AUDIO)
        assert sorted(k for k, _, _ in published) == ["audio", "video"]
        assert sink.tracks == {"video": video.sid, "audio": audio.sid}
        assert audio.mime_type == "audio/opus"  # (stereo: the Python SDK cannot mark a track stereo)
        assert video.mime_type == "video/H264" and video.simulcast
        layers = sorted((la.width, la.height) for la in video.layers)
        assert layers == [(320, 180), (640, 360), (1280, 720)], layers
        sizes = await sizes_per_quality(livekit_stack.url, livekit_stack.token("viewer", room_name), video.sid)
    print(f"simulcast sizes received per quality: {sizes}")
    assert sizes == {"LOW": (320, 180), "MEDIUM": (640, 360), "HIGH": (1280, 720)}


async def test_recorded_by_a_participant_egress_keeps_audio_and_video_in_sync(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    published: list[tuple[str, str, float]] = []
    async with publishing(livekit_stack, _info(room_name), published), livekit_stack.api() as lkapi:
        await wait_tracks(lkapi, room_name, "ingress-cam", 2)
        done = await record_participant(lkapi, room_name, "ingress-cam", 7, "ingress.mp4")
    (f,) = done.file_results
    p = probe(f.location)
    assert p.has("video") and p.has("audio") and decode_errors(f.location) == ""
    offsets = av_offsets(f.location)
    print(f"A/V offsets, RoomSink -> livekit-server -> participant egress (ms): "
          f"{[round(o * 1000, 1) for o in offsets]}")
    assert len(offsets) >= 4, offsets
    assert_av_sync(offsets, tolerance=0.060)


async def test_a_room_that_cannot_be_joined_fails_naming_it(livekit_stack: DevStack, room_name: str) -> None:
    g = Graph()
    src = g.add(SyntheticSource(width=320, height=180, live=True, audio=False))
    sink = g.add(RoomSink(livekit_stack.url, "not-a-token", video=VideoPublishing(), audio=None))
    sink.connect_timeout = 5
    g.link(src.out("video"), sink.inp("video"))
    with pytest.raises(NodeError, match="could not join the room at ws://127.0.0.1:[0-9]+: .*401") as e:
        await g.start()
    assert isinstance(e.value.__cause__, RoomError) and "not-a-token" not in str(e.value)
    await g.cancel()
