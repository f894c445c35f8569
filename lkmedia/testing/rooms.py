"""Waiting on a room, for the tests of what publishes into one (ingress, RoomSink, WHIP):
a participant with its tracks, and a participant egress that records it. The hidden
subscriber (watch_tracks, watch_media) lives in lkmedia.dev.rooms, which the ingress demo
uses too; its watch_tracks here fails the test with an AssertionError on a timeout."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from livekit import api
from livekit.protocol import egress as lk
from livekit.protocol import models as lkm

from ..dev.rooms import ReceivedTrack, SeenParticipant, SeenTrack, watch_media
from ..dev.rooms import watch_tracks as _watch_tracks
from .egress import TERMINAL, S, wait_egress

__all__ = ["ReceivedTrack", "SeenParticipant", "SeenTrack", "published_tracks", "record_participant",
           "sizes_per_quality", "wait_tracks", "watch_media", "watch_tracks"]

AUDIO, VIDEO = lkm.TrackType.AUDIO, lkm.TrackType.VIDEO


async def published_tracks(lkapi: api.LiveKitAPI, room: str, n: int, kind: int = AUDIO, *, timeout: float = 30,
                           detail: Callable[[], str] | None = None) -> dict[str, str]:
    """Once ``room`` has ``n`` published tracks of ``kind`` (AUDIO or VIDEO), all of them:
    track sid -> publisher identity. On a timeout an AssertionError says how many there
    were, from whom, and ``detail()`` (a publisher's log, say)."""
    deadline = time.monotonic() + timeout
    while True:
        out: dict[str, str] = {}
        with contextlib.suppress(api.TwirpError):  # (the room is not there yet)
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            out = {t.sid: p.identity for p in res.participants for t in p.tracks if t.type == kind}
            if len(out) >= n:
                return out
        assert time.monotonic() < deadline, (
            f"{n} {lkm.TrackType.Name(kind).lower()} tracks not published in {room} within {timeout:g} s: "
            f"{len(out)}, from {sorted(set(out.values()))[:12]}{'; ' + detail() if detail else ''}")
        await asyncio.sleep(0.25)


async def wait_tracks(lkapi: api.LiveKitAPI, room: str, identity: str, tracks: int, *, timeout: float = 20,
                      check: Callable[[], None] | None = None) -> lkm.ParticipantInfo:
    """``identity`` once it has published ``tracks`` tracks in ``room``; ``check`` runs at
    each poll (to fail early, e.g. when the publisher has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        with contextlib.suppress(api.TwirpError):
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            for p in res.participants:
                if p.identity == identity and len(p.tracks) >= tracks:
                    return p
        assert time.monotonic() < deadline, f"{identity} did not publish {tracks} tracks in {timeout:g} s"
        await asyncio.sleep(0.2)


async def record_participant(lkapi: api.LiveKitAPI, room: str, identity: str, seconds: float,
                             filepath: str) -> lk.EgressInfo:
    """A participant egress of ``identity`` (H264_720P_30 MP4) for ``seconds`` after ACTIVE;
    its final EgressInfo, COMPLETE."""
    info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
        room_name=room, identity=identity, preset=lk.H264_720P_30,
        file_outputs=[lk.EncodedFileOutput(filepath=filepath)]))
    await wait_egress(lkapi, info.egress_id, {int(S.EGRESS_ACTIVE)}, 30)
    await asyncio.sleep(seconds)
    await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
    done = await wait_egress(lkapi, info.egress_id, {int(s) for s in TERMINAL}, 30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    return done


async def watch_tracks(url: str, api_key: str, api_secret: str, room: str, identity: str, tracks: int, *,
                       timeout: float = 20, check: Callable[[], None] | None = None) -> SeenParticipant:
    """lkmedia.dev.rooms.watch_tracks, failing the test (AssertionError) when it times out."""
    try:
        return await _watch_tracks(url, api_key, api_secret, room, identity, tracks, timeout=timeout, check=check)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


async def sizes_per_quality(url: str, token: str, sid: str) -> dict[str, tuple[int, int]]:
    """A livekit.rtc subscriber (``token``: its join token) asks for each simulcast layer
    in turn and reports the size of the frames it then decodes. The top layer gets longer:
    a publisher sends it only once its bandwidth estimate has ramped up to it (in CI, under
    load, HIGH was still 640x360 after 10 s)."""
    from livekit import rtc

    room_ = rtc.Room()
    await room_.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
    try:
        pub = next(pb for rp in room_.remote_participants.values() for s, pb in rp.track_publications.items()
                   if s == sid)
        got: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()

        def subscribed(track: rtc.Track, *_: Any) -> None:
            if not got.done():
                got.set_result(track)

        room_.on("track_subscribed", subscribed)
        pub.set_subscribed(True)
        track = await asyncio.wait_for(got, 10)
        stream = rtc.VideoStream(track)
        out: dict[str, tuple[int, int]] = {}
        try:
            for name, q, want, wait in (("LOW", rtc.VideoQuality.VIDEO_QUALITY_LOW, 180, 10),
                                        ("MEDIUM", rtc.VideoQuality.VIDEO_QUALITY_MEDIUM, 360, 10),
                                        ("HIGH", rtc.VideoQuality.VIDEO_QUALITY_HIGH, 720, 30)):
                pub.set_video_quality(q)
                deadline = time.monotonic() + wait
                async for ev in stream:
                    out[name] = (ev.frame.width, ev.frame.height)
                    if ev.frame.height == want or time.monotonic() > deadline:
                        break
        finally:
            await stream.aclose()
        return out
    finally:
        await room_.disconnect()
