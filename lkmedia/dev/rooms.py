"""A participant as a subscriber in its room sees it: a hidden livekit.rtc participant that
waits for it to publish, and (``watch_media``) subscribes to its tracks for a moment and
counts what it decodes. Used by the ingress demo and the tests of what publishes into a
room (ingress, RoomSink, WHIP)."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import api, rtc


@dataclass(frozen=True)
class SeenTrack:
    kind: str  # "audio" | "video"
    mime_type: str
    simulcast: bool
    name: str = ""
    width: int = 0  # as published (video)
    height: int = 0


@dataclass(frozen=True)
class SeenParticipant:
    identity: str
    kind: int  # lkm.ParticipantInfo.Kind (rtc.ParticipantKind has the same values)
    tracks: tuple[SeenTrack, ...]
    name: str = ""


@dataclass
class ReceivedTrack:
    """What a subscriber decoded from one track in ``seconds``."""

    kind: str
    mime_type: str
    frames: int = 0
    seconds: float = 0.0
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # video: (width, height) -> frames
    samples: int = 0  # audio: per channel, at sample_rate
    sample_rate: int = 0
    first_frame_after: float | None = None  # seconds from the subscription


def _token(api_key: str, api_secret: str, room: str, identity: str) -> str:
    return (api.AccessToken(api_key, api_secret).with_identity(f"watch-{identity}")
            .with_grants(api.VideoGrants(room_join=True, room=room, hidden=True, can_publish=False,
                                         can_subscribe=True))
            .to_jwt())


def _seen(p: rtc.RemoteParticipant) -> SeenParticipant:
    return SeenParticipant(p.identity, int(p.kind), tuple(
        SeenTrack("audio" if t.kind == rtc.TrackKind.KIND_AUDIO else "video", t.mime_type, t.simulcasted, t.name,
                  t.width, t.height)
        for t in p.track_publications.values()), p.name)


async def _wait_participant(r: rtc.Room, identity: str, tracks: int, timeout: float,
                            check: Callable[[], None] | None) -> rtc.RemoteParticipant:
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        p = r.remote_participants.get(identity)
        if p is not None and len(p.track_publications) >= tracks:
            return p
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{identity} was not seen with {tracks} tracks in {timeout:g} s")
        await asyncio.sleep(0.1)


async def watch_tracks(url: str, api_key: str, api_secret: str, room: str, identity: str, tracks: int, *,
                       timeout: float = 20, check: Callable[[], None] | None = None) -> SeenParticipant:
    """``identity`` once a hidden subscriber in ``room`` (livekit.rtc, signalling) sees it with
    ``tracks`` published tracks (TimeoutError after ``timeout``). For WHIP participants:
    livekit-server's ListParticipants (its participant store) missed one for the whole of a
    7 s session about one time in ten here, while its own subscribers saw it at once."""
    r = rtc.Room()
    await r.connect(url, _token(api_key, api_secret, room, identity), rtc.RoomOptions(auto_subscribe=False))
    try:
        return _seen(await _wait_participant(r, identity, tracks, timeout, check))
    finally:
        await r.disconnect()


def _stream(pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant, track: Any = None) -> Any:
    """A frame stream for ``pub``: from its track, or, before it is subscribed, from the
    participant's track of its source. Attached before the subscription, the stream gets the
    first key frame; made after it, it missed it about one time in three, and the picture
    came about a second late (livekit-server throttles key frame requests)."""
    if track is None:
        if pub.kind == rtc.TrackKind.KIND_VIDEO:
            return rtc.VideoStream.from_participant(participant=part, track_source=pub.source)
        return rtc.AudioStream.from_participant(participant=part, track_source=pub.source, sample_rate=48_000,
                                                num_channels=2)
    if pub.kind == rtc.TrackKind.KIND_VIDEO:
        return rtc.VideoStream(track)
    return rtc.AudioStream(track, sample_rate=48_000, num_channels=2)


async def _receive(pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant, stream: Any,
                   rec: ReceivedTrack, t0: float, deadline: float, latest: float) -> None:
    """Counts until ``deadline``; video, if no frame at the published size came by then,
    until one does or ``latest`` (a subscriber's simulcast layer can start low and climb)."""
    loop = asyncio.get_running_loop()
    top = (pub.width, pub.height)
    while stream is None and pub.track is None:  # subscribed, not yet bound
        if loop.time() >= latest:
            return
        await asyncio.sleep(0.02)
    if stream is None:
        stream = _stream(pub, part, pub.track)
    it = stream.__aiter__()
    try:
        while (left := (deadline if top in rec.sizes or rec.kind == "audio" else latest) - loop.time()) > 0:
            try:
                ev = await asyncio.wait_for(it.__anext__(), left)
            except (TimeoutError, StopAsyncIteration):
                break
            now = loop.time()
            if rec.first_frame_after is None:
                rec.first_frame_after = now - t0
            rec.frames += 1
            f = ev.frame
            if rec.kind == "video":
                size = (f.width, f.height)
                rec.sizes[size] = rec.sizes.get(size, 0) + 1
            else:
                rec.samples += f.samples_per_channel
                rec.sample_rate = f.sample_rate
    finally:
        rec.seconds = loop.time() - t0
        # A participant stream never gets its end event from the FFI once disposed (the
        # aclose waits for it forever): do not wait long.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stream.aclose(), 1.0)


async def watch_media(url: str, api_key: str, api_secret: str, room: str, identity: str, tracks: int, *,
                      seconds: float = 2.0, up_to: float | None = None, timeout: float = 20,
                      check: Callable[[], None] | None = None) -> tuple[SeenParticipant, list[ReceivedTrack]]:
    """As ``watch_tracks``, then subscribes to each of the participant's tracks (asking for
    the highest simulcast layer) for ``seconds`` and counts the frames it decodes (video: at
    which sizes; audio: how many samples, as 48 kHz stereo). Video goes on, up to ``up_to``
    seconds in all, until a frame at its published size has come: livekit-server may start a
    new subscriber on a lower layer and move it up once its bandwidth probe allows."""
    r = rtc.Room()
    await r.connect(url, _token(api_key, api_secret, room, identity), rtc.RoomOptions(auto_subscribe=False))
    try:
        p = await _wait_participant(r, identity, tracks, timeout, check)
        seen = _seen(p)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        received: list[ReceivedTrack] = []
        jobs = []
        for pub in list(p.track_publications.values()):
            rec = ReceivedTrack("audio" if pub.kind == rtc.TrackKind.KIND_AUDIO else "video", pub.mime_type)
            early = _stream(pub, p) if pub.source != rtc.TrackSource.SOURCE_UNKNOWN else None
            pub.set_subscribed(True)
            if rec.kind == "video" and pub.simulcasted:
                pub.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
            received.append(rec)
            jobs.append(_receive(pub, p, early, rec, t0, t0 + seconds, t0 + max(seconds, up_to or seconds)))
        await asyncio.gather(*jobs)
        return seen, received
    finally:
        await r.disconnect()
