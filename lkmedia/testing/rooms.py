"""Waiting on a room, for the tests of what publishes into one (ingress, RoomSink, WHIP):
a participant with its tracks, and a participant egress that records it."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit import api
from livekit.protocol import egress as lk
from livekit.protocol import models as lkm

from .egress import TERMINAL, S, wait_egress


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


@dataclass(frozen=True)
class SeenTrack:
    kind: str  # "audio" | "video"
    mime_type: str
    simulcast: bool


@dataclass(frozen=True)
class SeenParticipant:
    identity: str
    kind: int  # lkm.ParticipantInfo.Kind
    tracks: tuple[SeenTrack, ...]


async def watch_tracks(url: str, api_key: str, api_secret: str, room: str, identity: str, tracks: int, *,
                       timeout: float = 20, check: Callable[[], None] | None = None) -> SeenParticipant:
    """``identity`` once a hidden subscriber in ``room`` (livekit.rtc, signalling) sees it with
    ``tracks`` published tracks. For WHIP participants: livekit-server's ListParticipants
    (its participant store) missed one for the whole of a 7 s session about one time in ten
    here, while its own subscribers saw it at once."""
    from livekit import rtc

    token = (api.AccessToken(api_key, api_secret).with_identity(f"watch-{identity}")
             .with_grants(api.VideoGrants(room_join=True, room=room, hidden=True, can_publish=False))
             .to_jwt())
    r = rtc.Room()
    await r.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if check is not None:
                check()
            p = r.remote_participants.get(identity)
            if p is not None and len(p.track_publications) >= tracks:
                return SeenParticipant(identity, int(p.kind), tuple(
                    SeenTrack("audio" if t.kind == rtc.TrackKind.KIND_AUDIO else "video", t.mime_type, t.simulcasted)
                    for t in p.track_publications.values()))
            assert time.monotonic() < deadline, f"{identity} was not seen with {tracks} tracks in {timeout:g} s"
            await asyncio.sleep(0.1)
    finally:
        await r.disconnect()


async def sizes_per_quality(url: str, token: str, sid: str) -> dict[str, tuple[int, int]]:
    """A livekit.rtc subscriber (``token``: its join token) asks for each simulcast layer
    in turn and reports the size of the frames it then decodes."""
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
            for name, q, want in (("LOW", rtc.VideoQuality.VIDEO_QUALITY_LOW, 180),
                                  ("MEDIUM", rtc.VideoQuality.VIDEO_QUALITY_MEDIUM, 360),
                                  ("HIGH", rtc.VideoQuality.VIDEO_QUALITY_HIGH, 720)):
                pub.set_video_quality(q)
                deadline = time.monotonic() + 10
                async for ev in stream:
                    out[name] = (ev.frame.width, ev.frame.height)
                    if ev.frame.height == want or time.monotonic() > deadline:
                        break
        finally:
            await stream.aclose()
        return out
    finally:
        await room_.disconnect()
