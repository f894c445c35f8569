"""The pieces joined by hand, as the job process will join them: the ffmpeg CLI publishes
RTMP to lkmedia's ingress front door (key checked with livekit-server), the service relays
the publish to a child process over the loopback relay, and the child runs an IngressSession
(RoomSink) into the room. The ingress participant appears with simulcast video and audio;
livekit-server records PUBLISHING, then INACTIVE when the publisher ends.

The child here is a plain subprocess, not the worker core's job process (that path is
tests/integration/livekit/test_ingress_service.py): it reads its launch on stdin and prints
each state as a line of JSON."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from lkmedia.dev.stack import DevStack, free_port
from lkmedia.ingress.kind import IngressKind
from lkmedia.ingress.spec import IngressSpec
from lkmedia.rtmp import Limits, RtmpSession
from lkmedia.service.ingress import IngressService, Report
from lkmedia.service.ingress_config import parse_ingress_config
from lkmedia.service.ingress_relay import FlvRelay
from lkmedia.testing.media import av_clip

IS = lki.IngressState.Status

CHILD = """
import asyncio, base64, json, sys
from livekit.protocol import ingress as lki
from lkmedia.ingress.recipe import input_source
from lkmedia.ingress.session import IngressSession
from lkmedia.ingress.spec import IngressLaunch, IngressSpec

def emit(state):
    print(json.dumps({"state": base64.b64encode(state.SerializeToString()).decode()}), flush=True)

async def main():
    d = json.loads(sys.stdin.readline())
    info = lki.IngressInfo.FromString(base64.b64decode(d["info"]))
    spec = IngressSpec(info.ingress_id, d["resource_id"], "rtmp", info, True)
    launch = IngressLaunch(spec, d["ws_url"], d["token"], d["relay_url"], d["relay_headers"])
    session = IngressSession(info, input_source(launch), launch.ws_url, launch.token,
                             resource_id=spec.resource_id, on_state=emit)
    await session.run()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return av_clip(tmp_path_factory.mktemp("rtmp-room") / "clip.flv", 8, size="1280x720", rate=30, pattern="testsrc2")


async def test_rtmp_publish_into_a_room(clip: Path, tmp_path: Path) -> None:
    rtmp_port = free_port()
    stack = DevStack(config={"ingress": {"rtmp_base_url": f"rtmp://127.0.0.1:{rtmp_port}/live"}})
    await asyncio.to_thread(stack.start)
    child_py = tmp_path / "child.py"
    child_py.write_text(CHILD)
    states: list[int] = []
    try:
        body = (f"api_key: {stack.api_key}\napi_secret: {stack.api_secret}\nws_url: {stack.url}\n"
                f"redis:\n  address: {stack.redis_address}\nrtmp_port: {rtmp_port}\nwhip_port: -1\n")
        conf = parse_ingress_config(body, env={})
        kind = IngressKind(conf)
        relay = FlvRelay(0)

        async def run_session(spec: IngressSpec, session: RtmpSession, report: Report) -> str:
            ticket = relay.offer(spec.resource_id, session)
            launch = kind.launch(spec, ticket.url, ticket.headers)
            child = await asyncio.create_subprocess_exec(
                sys.executable, str(child_py), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env={**os.environ})
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(json.dumps({
                "info": base64.b64encode(spec.info.SerializeToString()).decode(), "resource_id": spec.resource_id,
                "ws_url": launch.ws_url, "token": launch.token, "relay_url": launch.relay_url,
                "relay_headers": launch.relay_headers}).encode() + b"\n")
            await child.stdin.drain()
            last = lki.IngressState()
            while line := await child.stdout.readline():
                last = lki.IngressState.FromString(base64.b64decode(json.loads(line)["state"]))
                states.append(last.status)
                if last.status == IS.ENDPOINT_PUBLISHING:
                    await report(last)
            await child.wait()
            return last.error if last.status == IS.ENDPOINT_ERROR else ""

        async with relay, IngressService(conf, run_session, host="127.0.0.1", limits=Limits()):
            async with stack.api() as lkapi:
                info = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
                    input_type=lki.IngressInput.RTMP_INPUT, name="cam", room_name="rtmp-room",
                    participant_identity="cam-1", participant_name="Camera"))
                push = await asyncio.create_subprocess_exec(
                    "ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv",
                    f"{info.url}/{info.stream_key}", stderr=asyncio.subprocess.PIPE)
                seen: dict[str, Any] = {}
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not seen:
                    res = await lkapi.room.list_participants(api.ListParticipantsRequest(room="rtmp-room"))
                    for p in res.participants:
                        kinds = {t.type for t in p.tracks}
                        if p.identity == "cam-1" and {lkm.TrackType.VIDEO, lkm.TrackType.AUDIO} <= kinds:
                            seen["p"] = p
                    await asyncio.sleep(0.3)
                assert seen, "the ingress participant never published video and audio"
                mid = await lkapi.ingress.list_ingress(lki.ListIngressRequest(ingress_id=info.ingress_id))
                _, err = await asyncio.wait_for(push.communicate(), 60)
                assert push.returncode == 0, err.decode()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    st = (await lkapi.ingress.list_ingress(lki.ListIngressRequest(
                        ingress_id=info.ingress_id))).items[0].state
                    if st.status == IS.ENDPOINT_INACTIVE and st.ended_at:
                        break
                    await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(stack.cleanup)
    p = seen["p"]
    assert p.kind == lkm.ParticipantInfo.Kind.INGRESS and p.name == "Camera"
    assert p.attributes.get("ingress.ingressID") == info.ingress_id
    video = next(t for t in p.tracks if t.type == lkm.TrackType.VIDEO)
    assert (video.width, video.height) == (1280, 720) and video.simulcast and len(video.layers) == 3
    assert mid.items[0].state.status == IS.ENDPOINT_PUBLISHING
    assert st.status == IS.ENDPOINT_INACTIVE and not st.error
    assert states[0] == IS.ENDPOINT_BUFFERING and IS.ENDPOINT_PUBLISHING in states
