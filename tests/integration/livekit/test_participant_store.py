"""livekit-server answers ListParticipants from its Redis participant store (unless
``api.enable_psrpc_for_get_list_participants``), and that store can go stale: each newly
published track writes a snapshot of its participant from its own goroutine
(``handleTrackPublished`` runs in ``go func()``), so the snapshot taken before the second
track was added can land last. The participant is then listed without a track it publishes
for as long as nothing else about it changes. Seen here: a bench publisher's two tracks,
and an ingress's audio, unlisted for a whole session while both were being received.

The store below is set to that outcome by hand; the room itself knows the track."""
from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis
from livekit import api
from livekit.protocol import egress as lk

from lkmedia.dev.publisher import PublisherProcess
from lkmedia.dev.stack import DevStack
from lkmedia.probe import probe
from lkmedia.testing.egress import S, egress_service, wait_egress
from lkmedia.testing.rooms import wait_tracks

ROOM = "stale-store"


async def _forget_tracks(stack: DevStack, room: str, identity: str, tracks: int = 1) -> str:
    """Store ``identity`` in livekit-server's participant store as it was before it
    published (once it has ``tracks``); returns the sid of its first track."""
    async with stack.api() as lkapi:
        p = await wait_tracks(lkapi, room, identity, tracks)
    track_id = p.tracks[0].sid
    del p.tracks[:]
    host, port = stack.redis_address.rsplit(":", 1)
    r = aioredis.Redis(host=host, port=int(port))
    try:
        await r.hset(f"room_participants:{room}", identity, p.SerializeToString())
    finally:
        await r.aclose()
    return track_id


async def _record(lkapi: api.LiveKitAPI, info: lk.EgressInfo) -> lk.EgressInfo:
    """ACTIVE (not FAILED), 3 s, StopEgress: the final EgressInfo, COMPLETE."""
    cur = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE, S.EGRESS_FAILED}, timeout=30)
    assert cur.status == S.EGRESS_ACTIVE, cur.error
    await asyncio.sleep(3)
    await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
    done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    return done


async def test_a_track_egress_finds_a_track_the_participant_store_does_not_list(tmp_path: Path) -> None:
    stack = DevStack(config={"api": {"enable_psrpc_for_get_list_participants": False}},
                     workdir=tmp_path / "stack")
    stack.start()
    pub = PublisherProcess(stack.url, stack.token("pub", ROOM), video=False)
    try:
        await pub.start()
        track_id = await _forget_tracks(stack, ROOM, "pub")
        async with egress_service(stack, tmp_path) as _svc, stack.api() as lkapi:
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
            assert [len(p.tracks) for p in res.participants] == [0], "the store was not made stale"
            done = await _record(lkapi, await lkapi.egress.start_track_egress(lk.TrackEgressRequest(
                room_name=ROOM, track_id=track_id, file=lk.DirectFileOutput(filepath="track"))))
        (f,) = done.file_results
        assert probe(f.location).stream("audio").codec == "opus"
        assert f.duration / 1e9 > 2.0, f.duration
    finally:
        await pub.stop()
        stack.cleanup()


async def test_a_participant_egress_decides_on_the_video_the_room_has(tmp_path: Path) -> None:
    """Listed without its video, a participant publishing H.264 at the output's size was
    transcoded: the job decided on what the store said."""
    stack = DevStack(config={"api": {"enable_psrpc_for_get_list_participants": False}},
                     workdir=tmp_path / "stack")
    stack.start()
    pub = PublisherProcess(stack.url, stack.token("pub", ROOM), video_codec="h264")
    try:
        await pub.start()
        await _forget_tracks(stack, ROOM, "pub", 2)
        async with egress_service(stack, tmp_path) as _svc, stack.api() as lkapi:
            done = await _record(lkapi, await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=ROOM, identity="pub", advanced=lk.EncodingOptions(width=640, height=360, framerate=30),
                file_outputs=[lk.EncodedFileOutput(filepath="pub.mp4")])))
        assert "passthrough: the publisher's h264 video written as it arrived" in done.details, done.details
    finally:
        await pub.stop()
        stack.cleanup()
