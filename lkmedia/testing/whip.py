"""WHIP test material: an offer nothing can receive, and FFmpeg's WHIP muxer as a client."""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from livekit import api

from .rooms import AUDIO, published_tracks


@dataclass
class WhipClient:
    """A running WHIP client (FFmpeg 8's WHIP muxer, lkmedia.dev.whip_client)."""

    proc: asyncio.subprocess.Process
    err: str = ""     # the end of its stderr, once it has ended

    async def finish(self, timeout: float) -> int | None:
        """Waits for the client to end by itself; its exit code."""
        _, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.err = err.decode()[-2000:]
        return self.proc.returncode


@contextlib.asynccontextmanager
async def whip_client(url: str, key: str, seconds: int, *, p256: bool = False,
                      env: dict[str, str] | None = None) -> AsyncIterator[WhipClient]:
    """A client sending ``seconds`` of media to ``url`` with bearer ``key`` (``env``: more of
    its LKM_WHIP_* settings); killed (-9) at the block's end if it is still running (``err``
    then holds its stderr)."""
    full = {**os.environ, **(env or {}), "LKM_WHIP_TOKEN": key, **({"LKM_WHIP_P256": "1"} if p256 else {})}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lkmedia.dev.whip_client", url, str(seconds),
                                                env=full, stderr=asyncio.subprocess.PIPE)
    client = WhipClient(proc)
    try:
        yield client
    finally:
        if proc.returncode is None:
            proc.kill()
            _, err = await proc.communicate()
            client.err = err.decode()[-2000:]


#: A WHIP offer whose only codec (H.265) lkmedia's transcoding receiver cannot take.
OFFER_NOTHING_USABLE = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=video 9 UDP/TLS/RTP/SAVPF 100
c=IN IP4 0.0.0.0
a=mid:0
a=sendonly
a=rtcp-mux
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF
a=setup:actpass
a=rtpmap:100 H265/90000
"""


async def replace_silent_whips(lkapi: api.LiveKitAPI, room: str, clients: dict[str, WhipClient],
                                start: Callable[[str], Awaitable[WhipClient]], *, patience: float = 45) -> None:
    """Waits until every WHIP client in ``clients`` (identity -> client) has published its
    track. One that has not within ``patience`` seconds is killed and replaced by a new one
    under a new identity, at most twice: FFmpeg's WHIP muxer now and then never gets through
    ICE (11 of 12 published, once in CI)."""
    for _ in range(3):
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            have = set((await published_tracks(lkapi, room, 0, AUDIO)).values())
            missing = [who for who in clients if who not in have]
            if not missing:
                return
            await asyncio.sleep(0.5)
        for who in missing:
            old = clients.pop(who)
            if old.proc.returncode is None:
                old.proc.kill()
            _, err = await old.proc.communicate()
            print(f"\n{who} had not published in {patience:g} s (exit {old.proc.returncode}): {err.decode()[-500:]}")
            clients[f"{who}r"] = await start(f"{who}r")
    raise AssertionError(f"WHIP clients that never published: {missing}")


async def whips_one_at_a_time(lkapi: api.LiveKitAPI, room: str, names: Iterable[str],
                              start: Callable[[str], Awaitable[WhipClient]]) -> dict[str, WhipClient]:
    """WHIP clients ``start(name)`` into ``room``, each one's track published (a silent one
    replaced, as ``replace_silent_whips`` does) before the next starts.

    livekit-server v1.13.5 deadlocks a room (every later join hangs) when a track is
    published there while a WHIP participant is in it and another participant joins or
    publishes: ``Room.onTrackPublished`` holds the room's read lock while it subscribes the
    WHIP participants synchronously, which takes the read lock again, behind a writer that
    waits for it (seen in the server's goroutines through /debug/pprof: thousands of
    StartSession calls waiting in Room.Hold). Ten WHIP clients starting at once did it."""
    clients: dict[str, WhipClient] = {}
    for who in names:
        one = {who: await start(who)}
        await replace_silent_whips(lkapi, room, one, start)
        clients.update(one)
    return clients
