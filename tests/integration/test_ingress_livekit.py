"""RTMP ingest against an unmodified livekit-server v1.13.5: an ingress created through the
API (or `lk ingress create`) gives a stream key that lkmedia's RTMP server checks with
IOInfo.GetIngressInfo before accepting the publish; the session's IngressState reaches
livekit-server (ListIngress, webhooks); refusals, a disabled ingress, a second publisher,
DeleteIngress while live. The media goes into PyAV here (publishing into the room is the
job's, still to come). Loopback only; the ffmpeg CLI publishes."""
from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import ingress as lk

from lkmedia.core import Graph
from lkmedia.dev.lk import run_lk
from lkmedia.dev.stack import DevStack, free_port
from lkmedia.ingress import state as states
from lkmedia.ingress.spec import IngressSpec
from lkmedia.rtmp import Limits, RtmpSession
from lkmedia.rtmp.flv import FlvPipe
from lkmedia.service.ingress import IngressService, Report
from lkmedia.service.ingress_config import parse_ingress_config
from lkmedia.sources.flv import FlvSource
from lkmedia.testing.media import av_clip
from tests.unit.test_file_source import Collect

pytestmark = pytest.mark.integration
S = lk.IngressState.Status


class Hooks(http.server.BaseHTTPRequestHandler):
    events: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("event", "").startswith("ingress_"):
            Hooks.events.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """livekit-server with ingress.rtmp_base_url pointing at our RTMP port, webhooks to us,
    and the clips ffmpeg publishes (H.264 + AAC, 3 s and 30 s)."""
    d = tmp_path_factory.mktemp("ingress")
    clips = {name: av_clip(d / f"{name}.flv", seconds) for name, seconds in (("short", 3), ("long", 30))}
    hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    rtmp_port = free_port()
    stack = DevStack(webhook_urls=[f"http://127.0.0.1:{hooks.server_address[1]}/"],
                     config={"ingress": {"rtmp_base_url": f"rtmp://127.0.0.1:{rtmp_port}/live"}})
    stack.start()
    try:
        yield {"stack": stack, "rtmp_port": rtmp_port, "clips": clips}
    finally:
        stack.cleanup()
        hooks.shutdown()


class Decode:
    """The session runner: FLV -> PyAV frames; PUBLISHING once video frames come out."""

    def __init__(self) -> None:
        self.frames: list[int] = []
        self.started = asyncio.Event()

    async def __call__(self, spec: IngressSpec, session: RtmpSession, report: Report) -> str:
        pipe = FlvPipe()
        await pipe.open()
        g = Graph()
        src = g.add(FlvSource(pipe.read_fd))
        video = g.add(Collect("video"))
        g.link(src.out("video"), video)
        self.started.set()

        async def feed() -> None:
            try:
                await session.pipe_to(pipe)
            finally:
                pipe.close()

        async def publishing() -> None:
            while not video.items:
                await asyncio.sleep(0.05)
            st = lk.IngressState.FromString(states.buffering(spec.resource_id).SerializeToString())
            await report(states.set_status(st, S.ENDPOINT_PUBLISHING))

        watch = asyncio.create_task(publishing())
        try:
            _, errors = await asyncio.gather(feed(), g.run())
        finally:
            watch.cancel()
        self.frames.append(len(video.items))
        return "; ".join(str(e) for e in errors)


@pytest.fixture
async def service(rig: dict[str, Any]) -> AsyncIterator[tuple[IngressService, Decode]]:
    stack: DevStack = rig["stack"]
    body = (f"api_key: {stack.api_key}\napi_secret: {stack.api_secret}\nws_url: {stack.url}\n"
            f"redis:\n  address: {stack.redis_address}\nrtmp_port: {rig['rtmp_port']}\nwhip_port: -1\n")
    runner = Decode()
    svc = IngressService(parse_ingress_config(body, env={}), runner, host="127.0.0.1", limits=Limits(media_timeout=3))
    async with svc:
        yield svc, runner


async def _create(stack: DevStack, **kw: Any) -> lk.IngressInfo:
    async with stack.api() as a:
        return await a.ingress.create_ingress(lk.CreateIngressRequest(
            input_type=lk.IngressInput.RTMP_INPUT, name="cam", room_name=f"room-{time.monotonic_ns()}",
            participant_identity="cam-1", participant_name="Camera", **kw))


async def _state(stack: DevStack, ingress_id: str) -> lk.IngressState:
    async with stack.api() as a:
        res = await a.ingress.list_ingress(lk.ListIngressRequest(ingress_id=ingress_id))
    return res.items[0].state


async def _wait_state(stack: DevStack, ingress_id: str, statuses: set[int], timeout: float = 15) -> lk.IngressState:
    deadline = time.monotonic() + timeout
    while True:
        st = await _state(stack, ingress_id)
        if st.status in statuses and (st.ended_at or st.status not in (S.ENDPOINT_INACTIVE,)):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"ingress state {st} never reached {statuses}")
        await asyncio.sleep(0.1)


async def _push(clip: Path, url: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec("ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f",
                                             "flv", url, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(p.communicate(), 90)
    return p.returncode or 0, err.decode(errors="replace")


def _hooks(ingress_id: str) -> list[tuple[str, int]]:
    return [(e["event"], S.Value(e["ingressInfo"].get("state", {}).get("status", "ENDPOINT_INACTIVE")))
            for e in Hooks.events if e["ingressInfo"]["ingressId"] == ingress_id]


async def test_created_key_is_accepted_states_follow_and_it_is_reusable(
        rig: dict[str, Any], service: tuple[IngressService, Decode]) -> None:
    stack, clip = rig["stack"], rig["clips"]["short"]
    info = await _create(stack)
    assert info.url == f"rtmp://127.0.0.1:{rig['rtmp_port']}/live" and info.stream_key
    rc, err = await _push(clip, f"{info.url}/{info.stream_key}")
    assert rc == 0, err
    first = await _wait_state(stack, info.ingress_id, {S.ENDPOINT_INACTIVE})
    assert first.resource_id.startswith("RT_") and not first.error
    assert 0 < first.started_at < first.ended_at and first.updated_at >= first.ended_at
    assert service[1].frames == [75]
    rc, err = await _push(clip, f"{info.url}/{info.stream_key}")  # the same key again
    assert rc == 0, err
    deadline = time.monotonic() + 15
    while (second := await _state(stack, info.ingress_id)).resource_id == first.resource_id:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    second = await _wait_state(stack, info.ingress_id, {S.ENDPOINT_INACTIVE})
    assert second.started_at > first.ended_at and service[1].frames == [75, 75]
    deadline = time.monotonic() + 10
    while [e for e, _ in _hooks(info.ingress_id)].count("ingress_ended") < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _hooks(info.ingress_id) == [("ingress_started", S.ENDPOINT_PUBLISHING),
                                       ("ingress_ended", S.ENDPOINT_INACTIVE)] * 2


async def test_unknown_key_is_refused_before_any_media(rig: dict[str, Any],
                                                       service: tuple[IngressService, Decode]) -> None:
    rc, err = await _push(rig["clips"]["short"], f"rtmp://127.0.0.1:{rig['rtmp_port']}/live/not-a-key")
    assert rc != 0 and "ingress does not exist" in err, err
    assert not service[1].started.is_set()


async def test_disabled_ingress_ends_error(rig: dict[str, Any], service: tuple[IngressService, Decode]) -> None:
    stack = rig["stack"]
    info = await _create(stack, enabled=False)
    rc, err = await _push(rig["clips"]["short"], f"{info.url}/{info.stream_key}")
    assert rc != 0 and "ingress disabled" in err, err
    st = await _wait_state(stack, info.ingress_id, {S.ENDPOINT_ERROR})
    assert st.error == "ingress disabled" and st.resource_id.startswith("RT_")
    assert not service[1].started.is_set()


async def test_second_publisher_update_and_delete_while_live(rig: dict[str, Any],
                                                      service: tuple[IngressService, Decode]) -> None:
    stack = rig["stack"]
    info = await _create(stack)
    url = f"{info.url}/{info.stream_key}"
    first = asyncio.create_task(_push(rig["clips"]["long"], url))
    await _wait_state(stack, info.ingress_id, {S.ENDPOINT_PUBLISHING})
    rc, err = await _push(rig["clips"]["short"], url)
    assert rc != 0 and "already publishing" in err, err
    assert (await _state(stack, info.ingress_id)).status == S.ENDPOINT_PUBLISHING  # the first keeps it
    async with stack.api() as a:  # UpdateIngress while live: the session ends, the ingress stays
        await a.ingress.update_ingress(lk.UpdateIngressRequest(ingress_id=info.ingress_id, name="renamed"))
    rc, _ = await asyncio.wait_for(first, 15)
    assert rc != 0
    st = await _wait_state(stack, info.ingress_id, {S.ENDPOINT_INACTIVE})
    assert not st.error
    first = asyncio.create_task(_push(rig["clips"]["long"], url))
    await asyncio.sleep(0.5)
    await _wait_state(stack, info.ingress_id, {S.ENDPOINT_PUBLISHING})
    async with stack.api() as a:
        t0 = time.monotonic()
        await a.ingress.delete_ingress(lk.DeleteIngressRequest(ingress_id=info.ingress_id))  # our handler answers
    rc, _ = await asyncio.wait_for(first, 15)
    assert rc != 0 and time.monotonic() - t0 < 10  # the publisher was cut off, not left to finish 30 s
    assert service[0].live == {}


async def test_lk_cli_created_ingress(rig: dict[str, Any], service: tuple[IngressService, Decode],
                                      tmp_path: Path) -> None:
    stack = rig["stack"]
    req = tmp_path / "ingress.json"
    req.write_text(json.dumps({"input_type": 0, "name": "cli", "room_name": "cli-room",
                               "participant_identity": "cli-cam"}))
    out = await asyncio.to_thread(run_lk, stack, "ingress", "create", str(req))
    assert out.returncode == 0, out.stderr
    async with stack.api() as a:
        items = (await a.ingress.list_ingress(lk.ListIngressRequest(room_name="cli-room"))).items
    [info] = [i for i in items if i.participant_identity == "cli-cam"]
    assert info.ingress_id in out.stdout + out.stderr
    rc, err = await _push(rig["clips"]["short"], f"{info.url}/{info.stream_key}")
    assert rc == 0, err
    await _wait_state(stack, info.ingress_id, {S.ENDPOINT_INACTIVE})


async def test_ingress_internal_endpoints_with_livekit_server(rig: dict[str, Any],
                                                             service: tuple[IngressService, Decode]) -> None:
    """CreateIngress for a URL makes livekit-server call our IngressInternal.StartIngress
    (affinity, no topic); we store it with IOInfo.CreateIngress as Go does. ListActiveIngress
    answers every caller (MULTI)."""
    from lkmedia.rpc import RpcClient, RpcError
    from lkmedia.rpc.ingress import INGRESS_INTERNAL, IngressInternalServer
    from lkmedia.rpc.messages import ListActiveIngressRequest, ListActiveIngressResponse, ingress_info_of

    svc = service[0]
    assert svc.bus is not None and svc.io is not None
    io, seen = svc.io, []

    async def start_ingress(req: Any, ctx: Any) -> lk.IngressInfo:
        info = ingress_info_of(req)
        assert info is not None
        seen.append(info)
        info.state.CopyFrom(states.buffering("UR_test12345678"))
        try:
            await io.create_ingress(info)
        except RpcError as e:  # Go tolerates "unavailable" here
            assert e.code == "unavailable", e
        return info

    internal = IngressInternalServer(svc.bus, start_ingress=start_ingress, affinity=lambda _req: 1.0,
                                     list_sessions=lambda: [("IN_live", "RT_live")])
    await internal.start()
    try:
        async with rig["stack"].api() as a:
            info = await a.ingress.create_ingress(lk.CreateIngressRequest(
                input_type=lk.IngressInput.URL_INPUT, url="http://127.0.0.1:9/clip.mp4", name="pull",
                room_name="pull-room", participant_identity="puller"))
            assert [i.url for i in seen] == ["http://127.0.0.1:9/clip.mp4"] and seen[0].ingress_id == info.ingress_id
            assert info.state.status == S.ENDPOINT_BUFFERING and info.state.resource_id == "UR_test12345678"
            stored = (await a.ingress.list_ingress(lk.ListIngressRequest(ingress_id=info.ingress_id))).items
            assert stored and stored[0].url == "http://127.0.0.1:9/clip.mp4"
        async with RpcClient(svc.bus, INGRESS_INTERNAL) as client:
            [res] = await client.call_multi("ListActiveIngress", ListActiveIngressRequest(),
                                            ListActiveIngressResponse, topic="", timeout=1.0)
        assert isinstance(res, ListActiveIngressResponse) and list(res.ingress_ids) == ["IN_live"]
        assert [(s.ingress_id, s.resource_id) for s in res.ingress_sessions] == [("IN_live", "RT_live")]
    finally:
        await internal.close()
