"""WHIP into a room against the real livekit-server, with a client nobody here wrote
(FFmpeg 8's WHIP muxer, through PyAV: lkmedia.dev.whip_client): without transcoding the
offer is proxied to livekit-server's own WHIP endpoint; with transcoding aiortc decodes and
the session publishes simulcast H.264 and Opus (the client given a P-256 DTLS certificate:
FFmpeg's own choice, P-224, is refused by aiortc's OpenSSL); the client's DELETE ends the
session INACTIVE; bad requests and an offer with no codec we can receive (aiortc's answer)
are refused in plain words while the server goes on serving."""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from livekit import api
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from lkmedia.dev.stack import DevStack
from lkmedia.ingress.whip import WhipRefused, WhipServer, WhipSessions
from lkmedia.testing.rooms import SeenParticipant, wait_tracks, watch_tracks
from lkmedia.testing.whip import OFFER_NOTHING_USABLE

IS = lki.IngressState.Status
KEY = "whipkey123"
RESTART = "a=ice-ufrag:Rst1\r\na=ice-pwd:restartrestartrestartrest\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
TRICKLE = "a=ice-ufrag:Trk1\r\na=ice-pwd:tricklettricklettrickle\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n" \
          "a=candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host\r\n"


class Rig:
    def __init__(self, stack: DevStack, room: str, transcode: bool) -> None:
        self.info = lki.IngressInfo(ingress_id="IN_whip", stream_key=KEY, room_name=room,
                                    participant_identity="whipper", participant_name="WHIP publisher",
                                    input_type=lki.WHIP_INPUT, enable_transcoding=transcode, reusable=True)
        self.states: list[lki.IngressState] = []
        self.sessions = WhipSessions(stack.url, stack.api_key, stack.api_secret, self.lookup,
                                     on_state=lambda _info, s: self.states.append(s))
        self.server = WhipServer(0, self.sessions.publish, self.sessions.delete, host="127.0.0.1",
                                 patch=self.sessions.patch)

    async def lookup(self, key: str) -> lki.IngressInfo:
        if key != KEY:
            raise WhipRefused(404, "no ingress has this stream key")
        return self.info

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/w"


@contextlib.asynccontextmanager
async def rig(stack: DevStack, room: str, transcode: bool) -> AsyncIterator[Rig]:
    r = Rig(stack, room, transcode)
    await r.server.start()
    try:
        yield r
    finally:
        await r.server.stop()
        await r.sessions.close()


@contextlib.asynccontextmanager
async def push(url: str, seconds: float, p256: bool = False) -> AsyncIterator[asyncio.subprocess.Process]:
    """FFmpeg's WHIP muxer publishing for ``seconds`` in a child process (killed if the
    test ends before it does). ``p256``: with a P-256 DTLS certificate, which aiortc's
    OpenSSL needs (lkmedia.dev.whip_client.p256_certificate)."""
    env = {**os.environ, "LKM_WHIP_TOKEN": KEY, **({"LKM_WHIP_P256": "1"} if p256 else {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lkmedia.dev.whip_client", url, str(seconds), env=env,
        stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _alive(client: asyncio.subprocess.Process) -> Callable[[], None]:
    def alive() -> None:
        if client.returncode is not None:
            raise AssertionError("the WHIP client exited")
    return alive


async def _client_failed(client: asyncio.subprocess.Process) -> None:
    if client.returncode is not None:
        _, err = await client.communicate()
        raise AssertionError(f"the WHIP client exited {client.returncode}: {err.decode()[-4000:]}") from None


async def _participant(lkapi: api.LiveKitAPI, room: str, tracks: int, client: asyncio.subprocess.Process
                       ) -> lkm.ParticipantInfo:
    """The participant as ListParticipants gives it (published through livekit.rtc)."""
    try:
        return await wait_tracks(lkapi, room, "whipper", tracks, check=_alive(client))
    except AssertionError:
        await _client_failed(client)
        raise


async def _seen(stack: DevStack, room: str, tracks: int, client: asyncio.subprocess.Process) -> SeenParticipant:
    """The participant as a subscriber in the room sees it (livekit-server's own WHIP
    participants: its ListParticipants can miss them, see watch_tracks)."""
    try:
        return await watch_tracks(stack.url, stack.api_key, stack.api_secret, room, "whipper", tracks,
                                  check=_alive(client))
    except AssertionError:
        await _client_failed(client)
        raise


async def _gone(lkapi: api.LiveKitAPI, room: str, timeout: float = 15) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(api.TwirpError):
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            if not any(p.identity == "whipper" for p in res.participants):
                return time.monotonic() - t0
        await asyncio.sleep(0.2)
    raise AssertionError(f"whipper still in the room {timeout:g} s after the client left")


async def test_without_transcoding_the_offer_goes_to_livekit_servers_own_whip(livekit_stack: DevStack,
                                                                              room_name: str) -> None:
    async with rig(livekit_stack, room_name, transcode=False) as r, livekit_stack.api() as lkapi:
        async with push(r.url, 10) as client:
            p = await _seen(livekit_stack, room_name, 2, client)
            assert p.kind == lkm.ParticipantInfo.Kind.INGRESS
            assert sorted(t.mime_type.lower() for t in p.tracks) == ["audio/opus", "video/h264"]
            assert not next(t for t in p.tracks if t.kind == "video").simulcast  # the client's own
            # PATCH goes to livekit-server's own resource: trickle ICE (If-Match: the ETag) with
            # credentials that are not the client's is refused there, in its words; an ICE restart
            # (If-Match: *) is answered with the SFU's new ufrag/pwd and ETag
            (res,) = r.sessions.resources.values()
            assert res.etag
            async with aiohttp.ClientSession() as http:
                frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
                url = f"{r.url}/{KEY}/{res.resource_id}"
                async with http.patch(url, data=TRICKLE, headers={**frag, "If-Match": res.etag}) as resp:
                    text = await resp.text()
                    assert resp.status == 400 and "ice credential mismatch" in text, (resp.status, text)
                async with http.patch(url, data=RESTART, headers={**frag, "If-Match": "*"}) as resp:
                    body = await resp.text()
                    assert resp.status == 200 and "a=ice-ufrag:" in body and "a=ice-pwd:" in body, (resp.status, body)
                    assert resp.headers.get("ETag") and resp.content_type == "application/trickle-ice-sdpfrag"
            _, err = await asyncio.wait_for(client.communicate(), 30)
            assert client.returncode == 0, err.decode()
        left = await _gone(lkapi, room_name)
    print(f"WHIP proxy: publisher gone from the room {left:.2f} s after the client's DELETE")
    assert [IS.Name(s.status) for s in r.states] == ["ENDPOINT_PUBLISHING", "ENDPOINT_INACTIVE"]
    assert not r.sessions.resources


async def test_with_transcoding_aiortc_decodes_and_the_session_publishes_simulcast(livekit_stack: DevStack,
                                                                                   room_name: str) -> None:
    async with rig(livekit_stack, room_name, transcode=True) as r, livekit_stack.api() as lkapi:
        async with push(r.url, 8, p256=True) as client:
            p = await _participant(lkapi, room_name, 2, client)
            video = next(t for t in p.tracks if t.type == lkm.TrackType.VIDEO)
            audio = next(t for t in p.tracks if t.type == lkm.TrackType.AUDIO)
            assert audio.mime_type == "audio/opus" and video.mime_type == "video/H264" and video.simulcast
            # the client's 640x360 published as it is (never scaled up to the preset's 1280x720),
            # in the layers the SDK makes for that size
            assert max((la.width, la.height) for la in video.layers) == (640, 360) and len(video.layers) == 2
            _, err = await asyncio.wait_for(client.communicate(), 30)
            assert client.returncode == 0, err.decode()
        await _gone(lkapi, room_name)
    names = [IS.Name(s.status) for s in r.states]
    print(f"WHIP transcoding states: {names}")
    assert names == ["ENDPOINT_BUFFERING", "ENDPOINT_PUBLISHING", "ENDPOINT_PUBLISHING", "ENDPOINT_INACTIVE"]
    assert r.states[-1].error == "" and r.states[-1].resource_id.startswith("WH_")




async def test_bad_requests_are_refused_in_plain_words_and_the_server_goes_on(livekit_stack: DevStack,
                                                                              room_name: str) -> None:
    async with rig(livekit_stack, room_name, transcode=True) as r, aiohttp.ClientSession() as http:
        sdp = {"Content-Type": "application/sdp"}
        cases = [
            (f"{r.url}/{KEY}", OFFER_NOTHING_USABLE, sdp, 400, "no audio or video codec lkmedia can receive"),
            (f"{r.url}/wrongkey", OFFER_NOTHING_USABLE, sdp, 404, "no ingress has this stream key"),
            (r.url, OFFER_NOTHING_USABLE, sdp, 401, "no stream key"),
            (f"{r.url}/{KEY}", "hello", {"Content-Type": "text/plain"}, 415, "must be sent as application/sdp"),
        ]
        for url, body, headers, status, words in cases:
            async with http.post(url, data=body, headers=headers) as resp:
                text = await resp.text()
                assert (resp.status, words in text) == (status, True), (url, resp.status, text)
        frag = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
        async with http.patch(f"{r.url}/{KEY}/WH_x", data=RESTART, headers=frag) as resp:
            assert resp.status == 404, resp.status  # no such session
        async with http.patch(f"{r.url}/{KEY}/WH_x", data=RESTART) as resp:
            assert resp.status == 415, resp.status  # not an sdpfrag
        async with http.get(f"http://127.0.0.1:{r.server.port}/health") as resp:
            assert resp.status == 200
        assert not r.sessions.resources
        # ... and a good publisher right after is served.
        r.info.enable_transcoding = False
        async with push(r.url, 10) as client:
            await _seen(livekit_stack, room_name, 2, client)
            await asyncio.wait_for(client.communicate(), 30)
            assert client.returncode == 0


@pytest.mark.parametrize("path", ["/w/somekey", "/w/somekey/WH_123"])
def test_the_stream_key_stays_out_of_logs(path: str) -> None:
    from lkmedia.ingress.whip import _safe_path

    assert "somekey" not in _safe_path(path)


def test_udp_candidates_come_first_in_a_proxied_answer() -> None:
    from lkmedia.ingress.whip import udp_first

    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
           "a=candidate:1 1 tcp 1671430143 127.0.0.1 7881 typ host tcptype passive\r\n"
           "a=candidate:2 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n"
           "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
           "a=candidate:3 1 TCP 1 127.0.0.1 7881 typ host\r\na=candidate:4 1 udp 2 127.0.0.1 50000 typ host\r\n")
    lines = udp_first(sdp).splitlines()
    cands = [x.split()[0] + " " + x.split()[2].lower() for x in lines if x.startswith("a=candidate")]
    assert cands == ["a=candidate:2 udp", "a=candidate:1 tcp", "a=candidate:4 udp", "a=candidate:3 tcp"]
    assert lines.index("a=end-of-candidates") > lines.index(next(x for x in lines if x.startswith("a=candidate:1")))
