"""WHIP through `lkmedia ingress` (a real process, as in test_ingress_service, with this
module's own node): without transcoding the offer goes to livekit-server's own WHIP
endpoint (PUBLISHING, INACTIVE at the client's DELETE, at livekit-server's notify when the
client vanishes, or at the Go ingress's DeleteWHIPResource RPC; ICERestartWHIPResource and
PATCH answered by livekit-server); with transcoding the session's own job process answers
the offer with aiortc and publishes simulcast; an offer with no usable codec is refused in
plain words. The client is FFmpeg 8's WHIP muxer (lkmedia.dev.whip_client)."""
from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from typing import Any

from google.protobuf.empty_pb2 import Empty
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from lkmedia.rpc import RedisBus
from lkmedia.rpc.client import RpcClient
from lkmedia.rpc.messages import (
    DeleteWHIPResourceRequest,
    ICERestartWHIPResourceRequest,
    ICERestartWHIPResourceResponse,
)
from lkmedia.testing.rooms import SeenParticipant, watch_tracks
from lkmedia.testing.whip import OFFER_NOTHING_USABLE, whip_client

from . import test_ingress_service as service
from .test_ingress_service import IS, Node, _available, _state, _wait

node, lkapi = service.node, service.lkapi  # this module's own node (its fixtures, module-scoped)


async def _seen(node: Node, room: str, identity: str) -> SeenParticipant:
    """A participant livekit-server's own WHIP endpoint made, as a subscriber sees it (its
    ListParticipants can miss those: lkmedia.testing.rooms.watch_tracks)."""
    s = node.stack
    return await watch_tracks(s.url, s.api_key, s.api_secret, room, identity, 2, timeout=30)


async def test_whip_without_transcoding_is_proxied(node: Node, lkapi: Any) -> None:
    """WHIP (FFmpeg 8's WHIP muxer) to the service's whip_port: the offer goes to
    livekit-server's own WHIP endpoint; PUBLISHING, then INACTIVE at the client's DELETE."""
    info = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.WHIP_INPUT, name="whip", room_name="svc-whip", participant_identity="whipper"))
    assert info.url == f"http://127.0.0.1:{node.whip_port}/w"
    node.secrets.append(info.stream_key)
    await _available(node)
    async with whip_client(info.url, info.stream_key, 10) as client:
        seen: list[int] = []
        await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING}, seen=seen)
        try:  # (10 s of media: a client done before its tracks are listed would fail this)
            p = await _seen(node, "svc-whip", "whipper")
        except AssertionError:
            if client.proc.returncode is None:
                raise
            code = await client.finish(5)
            raise AssertionError(f"the WHIP client exited {code}: {client.err}") from None
        assert p.kind == lkm.ParticipantInfo.Kind.INGRESS
        assert await client.finish(30) == 0, client.err[-500:]
        st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE}, seen=seen)
    while seen and seen[0] == IS.ENDPOINT_INACTIVE:
        seen.pop(0)
    assert IS.ENDPOINT_PUBLISHING in seen and seen[-1] == IS.ENDPOINT_INACTIVE, seen
    assert st.resource_id.startswith("WH_") and not st.error and st.ended_at >= st.started_at > 0

    # a client that vanishes without its DELETE: livekit-server says the connection closed
    await _available(node)
    async with whip_client(info.url, info.stream_key, 60) as client:
        await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
        await _seen(node, "svc-whip", "whipper")
    assert client.proc.returncode == -9, client.err[-500:]
    t0 = time.monotonic()
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE}, timeout=60)
    print(f"\nWHIP client killed: INACTIVE {time.monotonic() - t0:.1f} s later (livekit-server's notify)")

    # the Go ingress's WHIP resource RPCs on the resource's topic: an ICE restart answered
    # by livekit-server through the proxy, then DeleteWHIPResource ends the session INACTIVE
    await _available(node)
    bus = RedisBus(node.stack.redis_address)
    await bus.start()
    rpc = RpcClient(bus, "IngressHandler")
    await rpc.start()
    try:
        async with whip_client(info.url, info.stream_key, 60):
            live = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
            await _seen(node, "svc-whip", "whipper")
            res = await rpc.call("ICERestartWHIPResource", ICERestartWHIPResourceRequest(
                resource_id=live.resource_id, stream_key=info.stream_key, user_fragment="Rst1",
                password="restartrestartrestartrest", if_match="*"), ICERestartWHIPResourceResponse,
                topic=live.resource_id, timeout=10)
            assert "a=ice-ufrag:" in res.trickle_ice_sdpfrag and res.etag, res
            await rpc.call("DeleteWHIPResource", DeleteWHIPResourceRequest(
                resource_id=live.resource_id, stream_key=info.stream_key), Empty, topic=live.resource_id, timeout=10)
            st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE}, timeout=20)
            assert st.resource_id == live.resource_id and not st.error, st
    finally:
        await rpc.close()
        await bus.close()


async def test_whip_with_transcoding_runs_in_its_own_job_process(node: Node, lkapi: Any) -> None:
    """WHIP with transcoding: the session's job process answers the offer with aiortc,
    decodes, and publishes simulcast H.264 and Opus; the client's DELETE ends it INACTIVE and
    its process is gone. (The client has a P-256 DTLS certificate, which aiortc needs.)"""
    info = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.WHIP_INPUT, name="whip-t", room_name="svc-whip-t", participant_identity="whipt",
        enable_transcoding=True))
    node.secrets.append(info.stream_key)
    await _available(node)
    before = set(node.job_pids())
    t0 = time.monotonic()
    async with whip_client(info.url, info.stream_key, 8, p256=True) as client:
        seen: list[int] = []
        await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING}, seen=seen)
        t_pub = time.monotonic() - t0
        p = await _seen(node, "svc-whip-t", "whipt")
        video = next(t for t in p.tracks if t.kind == "video")
        audio = next(t for t in p.tracks if t.kind == "audio")
        assert video.mime_type.lower() == "video/h264" and video.simulcast, p
        assert audio.mime_type.lower() == "audio/opus", p
        # no ICE restart for a transcoding session (aiortc has none): 422 in plain words
        live = await _state(lkapi, info.ingress_id)
        req = urllib.request.Request(f"{info.url}/{info.stream_key}/{live.resource_id}", data=b"a=ice-ufrag:x\r\n",
                                     headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"},
                                     method="PATCH")
        status, text = await asyncio.to_thread(_send, req)
        assert status == 422 and "aiortc cannot restart ICE" in text, (status, text)
        # one more process than before: the session's (the worker's spare became it, and a new spare came)
        deadline = time.monotonic() + 5
        while len(node.job_pids()) <= len(before) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert len(node.job_pids()) == len(before) + 1, (before, node.job_pids())
        assert await client.finish(30) == 0, client.err[-1000:]
        st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE}, seen=seen)
    print(f"\nWHIP transcoding through the service: PUBLISHING {t_pub:.2f} s after the client started; "
          f"states {[IS.Name(s) for s in seen]}")
    assert IS.ENDPOINT_BUFFERING in seen or IS.ENDPOINT_PUBLISHING in seen, seen
    assert st.resource_id.startswith("WH_") and not st.error and st.ended_at >= st.started_at > 0
    deadline = time.monotonic() + 10
    while len(node.job_pids()) > len(before) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert len(node.job_pids()) == len(before), (before, node.job_pids())  # the session's process is gone


async def test_a_whip_offer_with_no_usable_codec_ends_error_and_the_service_goes_on(node: Node, lkapi: Any) -> None:
    """An offer whose only codec aiortc cannot receive (H.265), to a transcoding WHIP
    ingress: 400 in plain words, the session's job ends it ERROR with the same words."""
    info = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.WHIP_INPUT, name="whip-bad", room_name="svc-whip-bad", participant_identity="bad",
        enable_transcoding=True))
    node.secrets.append(info.stream_key)
    await _available(node)
    req = urllib.request.Request(f"{info.url}/{info.stream_key}", data=OFFER_NOTHING_USABLE.encode(),
                                 headers={"Content-Type": "application/sdp"}, method="POST")
    status, text = await asyncio.to_thread(_send, req)
    assert status == 400 and "no audio or video codec lkmedia can receive" in text, (status, text)
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_ERROR})
    assert "no audio or video codec lkmedia can receive" in st.error, st
    assert node.proc.poll() is None and node.http(node.health_port, "/")[0] == 200


def _send(req: urllib.request.Request) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
