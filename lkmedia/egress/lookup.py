"""What a job looks up in its room before it subscribes: its participant (participant
egress) or its track's participant, kind and codec (track egress).

livekit-server answers ListParticipants from its Redis participant store (unless its
``api.enable_psrpc_for_get_list_participants`` is on), and that store can miss a published
track until something else about its participant changes: each new track stores a snapshot
of its participant from a goroutine of its own, and a snapshot taken before the
participant's next track was added can land last
(tests/integration/livekit/test_participant_store.py). A track the store has not listed
after ``ASK_ROOM_AFTER`` s is looked for in the room itself: the participant list a join
gets (the job's own token, hidden; it leaves at once).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TypeVar

from livekit import api
from livekit.protocol import models as lkm

from ..lkrtc.signal import SignalClient, SignalError
from .errors import EgressError

T = TypeVar("T")
ASK_ROOM_AFTER = 1.5  # seconds without the track in ListParticipants before the room is asked
POLL = 0.25


class RoomLookup:
    """One job's lookups in ``room`` (``stopped``: the job was stopped meanwhile)."""

    def __init__(self, ws_url: str, api_key: str, api_secret: str, room: str, token: str,
                 stopped: asyncio.Event) -> None:
        self.ws_url, self.room, self.token = ws_url, room, token
        self._key, self._secret = api_key, api_secret
        self._stopped = stopped

    def _api(self) -> api.LiveKitAPI:
        http = self.ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        return api.LiveKitAPI(http, self._key, self._secret)

    async def _listed(self, lkapi: api.LiveKitAPI) -> list[lkm.ParticipantInfo]:
        try:
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=self.room))
        except api.TwirpError as e:
            # (with psrpc on, the room answers: not_found, or no answer at all, before it exists)
            if e.code in ("not_found", "unavailable"):
                return []
            raise
        return list(res.participants)

    async def participant(self, identity: str, wait: float) -> lkm.ParticipantInfo | None:
        """As the Go egress: wait for the participant to be in the room, then fail naming it.
        Its ParticipantInfo (None if the job was stopped meanwhile)."""
        deadline = time.monotonic() + wait
        async with self._api() as lkapi:
            while True:
                found = next((p for p in await self._listed(lkapi) if p.identity == identity), None)
                if found is not None or self._stopped.is_set():
                    return found
                if time.monotonic() >= deadline:
                    raise EgressError(f"participant {identity} not found in room {self.room!r} "
                                      f"(waited {wait:g} s)", "not_found")
                await asyncio.sleep(POLL)

    async def with_video(self, identity: str, has_video: Callable[[lkm.ParticipantInfo], bool],
                         wait: float) -> lkm.ParticipantInfo | None:
        """The participant once ``has_video`` says it has its video listed, or as last
        seen after ``wait`` s: a participant is listed as soon as it joins, each track once
        its media arrives (and the store can miss one), and a participant egress decides on
        its video's codec and size."""
        seen: lkm.ParticipantInfo | None = None

        def pick(listed: list[lkm.ParticipantInfo]) -> lkm.ParticipantInfo | None:
            nonlocal seen
            p = next((p for p in listed if p.identity == identity), None)
            seen = p or seen
            return p if p is not None and has_video(p) else None

        start = time.monotonic()
        async with self._api() as lkapi, contextlib.aclosing(self._look(lkapi, pick)) as looks:
            async for found in looks:
                if found is not None or self._stopped.is_set() or time.monotonic() - start >= wait:
                    return found or seen
        return seen  # (not reached: the looks never end)

    async def track(self, track_id: str, wait: float) -> dict[str, str]:
        """The track's participant, kind, codec and source. A track published a moment ago
        is listed a little later (~0.5 s): look again for ``wait`` seconds."""
        start = time.monotonic()
        async with self._api() as lkapi, \
                contextlib.aclosing(self._look(lkapi, lambda listed: _track(listed, track_id))) as looks:
            async for found in looks:
                if found is not None:
                    return found
                if self._stopped.is_set():  # stopped while it looked: run() ends it ABORTED
                    break
                if time.monotonic() - start >= wait:
                    raise EgressError(f"track {track_id} not found in room {self.room!r}", "not_found")
        return {"identity": "", "kind": "audio", "codec": "opus", "track_id": track_id}

    async def _look(self, lkapi: api.LiveKitAPI,
                    pick: Callable[[list[lkm.ParticipantInfo]], T | None]) -> AsyncGenerator[T | None, None]:
        """What ``pick`` finds in the store's list, every ``POLL`` s; where it finds nothing
        in a room that exists, past ``ASK_ROOM_AFTER`` s (then every twice that: a join is
        not free), in the room's own list."""
        ask_at = time.monotonic() + ASK_ROOM_AFTER
        while True:
            listed = await self._listed(lkapi)
            found = pick(listed)
            if found is None and listed and time.monotonic() >= ask_at:
                ask_at = time.monotonic() + 2 * ASK_ROOM_AFTER
                found = pick(await room_participants(self.ws_url, self.token))
            yield found
            await asyncio.sleep(POLL)


async def room_participants(ws_url: str, token: str) -> list[lkm.ParticipantInfo]:
    """The participants as the room has them (a join's list; then leave), [] if the join
    failed. ``token``: a hidden one, so that nobody sees the join."""
    client = SignalClient(ws_url, token)
    try:
        join = await client.connect()
    except SignalError:
        return []
    finally:
        await client.close()
    return list(join.other_participants)


def _track(participants: Iterable[lkm.ParticipantInfo], track_id: str) -> dict[str, str] | None:
    for p in participants:
        for t in p.tracks:
            if t.sid == track_id:
                kind = "audio" if t.type == lkm.TrackType.AUDIO else "video"
                codec = (t.mime_type.split("/", 1)[-1] or ("opus" if kind == "audio" else "vp8")).lower()
                return {"identity": p.identity, "kind": kind, "codec": codec, "track_id": t.sid,
                        "track_type": kind, "track_source": lkm.TrackSource.Name(t.source).lower()}
    return None
