"""``lkmedia ingress`` as a real process, driven by an unmodified livekit-server over Redis:
RTMP pushes from the ffmpeg CLI (ingresses made with livekit-api and with the lk CLI), URL
pulls through StartIngress, DeleteIngress while publishing, a job process killed with
SIGKILL, health and metrics. Each session runs in its own job process under the worker core.

Prints two figures: ffmpeg start -> PUBLISHING, and the CPU the job process spends per
second of 720p30 RTMP media."""
from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from lkmedia.dev.lk import run_lk
from lkmedia.dev.procs import child_pids, cpu_seconds
from lkmedia.dev.stack import DevStack, free_port
from lkmedia.probe import assert_av_sync, av_offsets
from lkmedia.testing.egress import egress_service
from lkmedia.testing.media import av_clip, flash_beep_clip
from lkmedia.testing.rooms import record_participant, sizes_per_quality

IS = lki.IngressState.Status
CLIP_SECONDS = 8


@dataclass
class Node:
    stack: DevStack
    proc: subprocess.Popen[bytes]
    rtmp_port: int
    whip_port: int
    health_port: int
    prometheus_port: int
    log: Path
    secrets: list[str] = field(default_factory=list)  # stream keys: never in the service's log
    webhooks: list[dict[str, Any]] = field(default_factory=list)

    def hooks(self, ingress_id: str) -> list[tuple[str, int]]:
        return [(e["event"], IS.Value(e["ingressInfo"].get("state", {}).get("status", "ENDPOINT_INACTIVE")))
                for e in list(self.webhooks) if e["ingressInfo"]["ingressId"] == ingress_id]

    def job_pids(self) -> list[int]:
        """The service's job processes (the spare included)."""
        return child_pids(self.proc.pid)

    def http(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ingress-service")
    return {"short": av_clip(d / "short.flv", CLIP_SECONDS, size="1280x720", rate=30, pattern="testsrc2"),
            "long": av_clip(d / "long.flv", 40, size="640x360", rate=30),
            "mp4": av_clip(d / "clip.mp4", 6, size="640x360", rate=30, extra=("-movflags", "+faststart"))}


@pytest.fixture(scope="module")
def http_base(clips: dict[str, Path]) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                             functools.partial(Quiet, directory=str(clips["mp4"].parent)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    d = tmp_path_factory.mktemp("ingress-node")
    rtmp_port, whip_port, health_port, prom_port, relay_port = (free_port(), free_port(), free_port(), free_port(),
                                                                free_port())
    webhooks: list[dict[str, Any]] = []

    class Hooks(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("event", "").startswith("ingress_"):
                webhooks.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    stack = DevStack(webhook_urls=[f"http://127.0.0.1:{hooks.server_address[1]}/"], workdir=d / "stack",
                     config={"ingress": {"rtmp_base_url": f"rtmp://127.0.0.1:{rtmp_port}/live",
                                         "whip_base_url": f"http://127.0.0.1:{whip_port}/w"}})
    stack.start()
    body = (f"api_key: {stack.api_key}\napi_secret: {stack.api_secret}\nws_url: {stack.url}\n"
            f"redis:\n  address: {stack.redis_address}\nrtmp_port: {rtmp_port}\nwhip_port: {whip_port}\n"
            f"http_relay_port: {relay_port}\nhealth_port: {health_port}\nprometheus_port: {prom_port}\n"
            "cpu_cost:\n  rtmp_cpu_cost: 0.05\n  url_cpu_cost: 0.05\n  whip_cpu_cost: 0.05\n"
            "  whip_bypass_transcoding_cpu_cost: 0.05\n  min_idle_ratio: 0.01\n")
    log = d / "ingress.log"
    env = {**os.environ, "INGRESS_CONFIG_BODY": body, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lkmedia", "ingress"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    n = Node(stack, proc, rtmp_port, whip_port, health_port, prom_port, log, webhooks=webhooks)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "ready" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "ready" in log.read_text(), log.read_text()
        yield n
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stack.cleanup()
        hooks.shutdown()
        hooks.server_close()
        text = log.read_text()
        assert stack.api_secret not in text and "Bearer" not in text
        for key in n.secrets:
            assert key not in text
        print(f"\n--- lkmedia ingress log (last lines) ---\n{text[-3000:]}")


@pytest.fixture
async def lkapi(node: Node) -> AsyncIterator[Any]:
    async with node.stack.api() as c:
        yield c


async def _state(lkapi: Any, ingress_id: str) -> lki.IngressState:
    res = await lkapi.ingress.list_ingress(lki.ListIngressRequest(ingress_id=ingress_id))
    return res.items[0].state if res.items else lki.IngressState()


async def _wait(lkapi: Any, ingress_id: str, statuses: set[int], timeout: float = 30.0,
                seen: list[int] | None = None) -> lki.IngressState:
    deadline = time.monotonic() + timeout
    st = lki.IngressState()
    while time.monotonic() < deadline:
        st = await _state(lkapi, ingress_id)
        if seen is not None and (not seen or seen[-1] != st.status):
            seen.append(st.status)
        if st.status in statuses and (st.ended_at or st.status in (IS.ENDPOINT_BUFFERING, IS.ENDPOINT_PUBLISHING)):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"{ingress_id}: still {IS.Name(st.status)} ({st.error}) after {timeout:g} s")


async def _participant(lkapi: Any, room: str, identity: str, timeout: float = 30.0) -> lkm.ParticipantInfo:
    deadline = time.monotonic() + timeout
    seen: list[str] = []  # what the server listed, each change once (for the failure's message)
    while time.monotonic() < deadline:
        res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        now = ", ".join(f"{p.identity}: {sorted(lkm.TrackType.Name(t.type) for t in p.tracks)}"
                        for p in res.participants) or "nobody"
        if not seen or seen[-1] != now:
            seen.append(now)
        for p in res.participants:
            kinds = {t.type for t in p.tracks}
            if p.identity == identity and {lkm.TrackType.VIDEO, lkm.TrackType.AUDIO} <= kinds:
                return p
        await asyncio.sleep(0.2)
    raise AssertionError(f"{identity} never published video and audio in {room}; the server listed, in turn: "
                         + " -> ".join(seen))


async def _available(node: Node) -> None:
    deadline = time.monotonic() + 30
    while node.http(node.health_port, "/availability")[0] != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def _push(node: Node, clip: Path, key: str) -> asyncio.subprocess.Process:
    """ffmpeg publishing ``clip`` in real time, once the node says it can take a session (as
    a load balancer would ask it: this machine's CPUs are shared with other test runs)."""
    node.secrets.append(key)
    await _available(node)
    return await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv",
        f"rtmp://127.0.0.1:{node.rtmp_port}/live/{key}", stderr=asyncio.subprocess.PIPE)


async def _create_rtmp(lkapi: Any, room: str, identity: str) -> lki.IngressInfo:
    info: lki.IngressInfo = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.RTMP_INPUT, name="cam", room_name=room, participant_identity=identity,
        participant_name="Camera"))
    return info


async def test_rtmp_sessions_in_job_processes(node: Node, lkapi: Any, clips: dict[str, Path]) -> None:
    info = await _create_rtmp(lkapi, "svc-rtmp", "cam-1")
    assert info.url == f"rtmp://127.0.0.1:{node.rtmp_port}/live"
    spare = set(node.job_pids())
    cpu0 = {pid: cpu_seconds(pid) for pid in spare}
    await _available(node)  # (not counted in the time to PUBLISHING)
    t0 = time.monotonic()
    push = await _push(node, clips["short"], info.stream_key)
    seen: list[int] = []
    await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING}, seen=seen)
    to_publishing = time.monotonic() - t0
    p = await _participant(lkapi, "svc-rtmp", "cam-1")
    status, metrics = node.http(node.prometheus_port, "/metrics")
    _, err = await asyncio.wait_for(push.communicate(), 60)
    assert push.returncode == 0, err.decode()
    job_cpu = max((cpu_seconds(pid) - cpu0[pid], pid) for pid in spare)
    final = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE}, seen=seen)
    while seen and seen[0] == IS.ENDPOINT_INACTIVE:  # as created, before the push
        seen.pop(0)
    order = [IS.ENDPOINT_BUFFERING, IS.ENDPOINT_PUBLISHING, IS.ENDPOINT_INACTIVE]
    assert IS.ENDPOINT_PUBLISHING in seen and seen[-1] == IS.ENDPOINT_INACTIVE, seen
    assert all(x in order for x in seen) and seen == sorted(seen, key=order.index), seen
    assert not final.error and final.resource_id.startswith("RT_") and final.ended_at >= final.started_at
    assert p.kind == lkm.ParticipantInfo.Kind.INGRESS and p.name == "Camera"
    video = next(t for t in p.tracks if t.type == lkm.TrackType.VIDEO)
    audio = next(t for t in p.tracks if t.type == lkm.TrackType.AUDIO)
    assert (video.width, video.height) == (1280, 720) and video.simulcast and len(video.layers) == 3
    assert audio.mime_type.lower() == "audio/opus"
    assert status == 200 and 'livekit_ingress_requests{node_id="' in metrics
    assert 'transcoding="true",type="rtmp"} 1' in metrics
    print(f"\nRTMP: ffmpeg start -> PUBLISHING {to_publishing:.2f} s; job process CPU "
          f"{job_cpu[0] / CLIP_SECONDS:.2f} s per media second (720p30 in, 3 layers out)")

    # the same key again: a new session in a new job process
    push = await _push(node, clips["short"], info.stream_key)
    again = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
    assert again.resource_id != final.resource_id
    await asyncio.wait_for(push.communicate(), 60)
    await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE})
    deadline = time.monotonic() + 5
    while len(node.hooks(info.ingress_id)) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert node.hooks(info.ingress_id) == [("ingress_started", IS.ENDPOINT_PUBLISHING),
                                           ("ingress_ended", IS.ENDPOINT_INACTIVE)] * 2


async def test_lk_cli_ingress_and_delete_while_publishing(node: Node, lkapi: Any, clips: dict[str, Path],
                                                          tmp_path: Path) -> None:
    req = tmp_path / "ingress.json"
    req.write_text(json.dumps({"input_type": 0, "name": "lk-made", "room_name": "svc-lk",
                               "participant_identity": "lk-cam", "participant_name": "lk camera"}))
    res = await asyncio.to_thread(run_lk, node.stack, "ingress", "create", str(req))
    assert res.returncode == 0, res.stderr
    items = (await lkapi.ingress.list_ingress(lki.ListIngressRequest(room_name="svc-lk"))).items
    assert len(items) == 1 and items[0].input_type == lki.IngressInput.RTMP_INPUT
    info = items[0]
    push = await _push(node, clips["long"], info.stream_key)
    try:
        await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
        await _participant(lkapi, "svc-lk", "lk-cam")
        await lkapi.ingress.delete_ingress(lki.DeleteIngressRequest(ingress_id=info.ingress_id))
        await asyncio.wait_for(push.wait(), 15)  # the publisher is disconnected
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            res2 = await lkapi.room.list_participants(api.ListParticipantsRequest(room="svc-lk"))
            if not any(p.identity == "lk-cam" for p in res2.participants):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the ingress participant stayed after DeleteIngress")
        with pytest.raises(api.TwirpError, match="does not exist"):
            await lkapi.ingress.list_ingress(lki.ListIngressRequest(ingress_id=info.ingress_id))
    finally:
        if push.returncode is None:
            push.kill()
            await push.wait()


async def test_url_pull(node: Node, lkapi: Any, http_base: str) -> None:
    await _available(node)  # else the node answers StartIngress with affinity -1, as Go's would
    info = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.URL_INPUT, name="pull", room_name="svc-url", participant_identity="puller",
        url=f"{http_base}/clip.mp4"))
    seen: list[int] = []
    await _participant(lkapi, "svc-url", "puller")
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_COMPLETE, IS.ENDPOINT_ERROR}, seen=seen)
    assert st.status == IS.ENDPOINT_COMPLETE and not st.error, st.error
    assert st.resource_id.startswith("UR_") and IS.ENDPOINT_PUBLISHING in seen

    await _available(node)
    bad = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.URL_INPUT, name="bad", room_name="svc-url", participant_identity="nobody",
        url="http://127.0.0.1:1/missing.mp4"))
    st = await _wait(lkapi, bad.ingress_id, {IS.ENDPOINT_COMPLETE, IS.ENDPOINT_ERROR})
    assert st.status == IS.ENDPOINT_ERROR and "127.0.0.1:1/missing.mp4" in st.error, st.error

    # DeleteIngress while pulling: the job is stopped, the participant leaves
    await _available(node)
    gone = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.URL_INPUT, name="deleted", room_name="svc-url-del",
        participant_identity="deleted", url=f"{http_base}/clip.mp4"))
    await _participant(lkapi, "svc-url-del", "deleted")
    await lkapi.ingress.delete_ingress(lki.DeleteIngressRequest(ingress_id=gone.ingress_id))
    deadline = time.monotonic() + 4  # well before the 6 s clip would end
    while time.monotonic() < deadline:
        res = await lkapi.room.list_participants(api.ListParticipantsRequest(room="svc-url-del"))
        if not res.participants:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the pulled participant stayed after DeleteIngress")


async def test_health_and_metrics(node: Node) -> None:
    assert node.http(node.health_port, "/") == (200, "Healthy")
    await _available(node)  # the machine's CPUs are shared: the node may be busy a moment
    assert node.http(node.health_port, "/availability") == (200, "Available")
    status, page = node.http(node.prometheus_port, "/")
    assert status == 200
    assert re.search(r'^livekit_ingress_available\{node_id="[^"]+"\} 1$', page, re.M), page
    assert 'livekit_node_cpu_load{node_id="' in page and 'node_type="INGRESS"' in page


async def test_job_process_killed(node: Node, lkapi: Any, clips: dict[str, Path]) -> None:
    info = await _create_rtmp(lkapi, "svc-kill", "victim")
    push = await _push(node, clips["long"], info.stream_key)
    try:
        await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
        cpu0 = {pid: cpu_seconds(pid) for pid in node.job_pids()}
        await asyncio.sleep(1.5)
        busy = max(cpu0, key=lambda pid: cpu_seconds(pid) - cpu0[pid])  # the session's process works
        os.kill(busy, signal.SIGKILL)
        st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_ERROR}, timeout=20)
        assert "killed by signal 9" in st.error and "Traceback" not in st.error, st.error
        assert info.stream_key not in st.error
    finally:
        if push.returncode is None:
            push.kill()
            await push.wait()
    push = await _push(node, clips["short"], info.stream_key)
    await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
    await asyncio.wait_for(push.communicate(), 60)
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE})
    assert not st.error
    assert node.proc.poll() is None


async def test_rtmp_flash_beep_reaches_every_layer_in_sync(node: Node, lkapi: Any, tmp_path: Path) -> None:
    """The issue's RTMP must-show through the service: the ffmpeg CLI pushes the 720p30
    flash/beep clip; a subscriber decodes each simulcast layer at its size; a participant
    egress of the ingress participant has its flashes and beeps within 60 ms."""
    clip = await asyncio.to_thread(flash_beep_clip, tmp_path / "flash_beep.flv", 45)  # (HIGH may take 30 s)
    info = await _create_rtmp(lkapi, "svc-av", "av-cam")
    push = await _push(node, clip, info.stream_key)
    try:
        await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
        p = await _participant(lkapi, "svc-av", "av-cam")
        video = next(t for t in p.tracks if t.type == lkm.TrackType.VIDEO)
        assert sorted((la.width, la.height) for la in video.layers) == [(320, 180), (640, 360), (1280, 720)]
        sizes = await sizes_per_quality(node.stack.url, node.stack.token("viewer", "svc-av"), video.sid)
        async with egress_service(node.stack, tmp_path) as _svc:
            done = await record_participant(lkapi, "svc-av", "av-cam", 7, "rtmp-av.mp4")
    finally:
        if push.returncode is None:
            push.kill()
        await push.wait()
    (f,) = done.file_results
    offsets = av_offsets(f.location)
    print(f"\nRTMP through the service: sizes per layer {sizes}; A/V offsets in a participant egress (ms): "
          f"{[round(o * 1000, 1) for o in offsets]}")
    assert sizes == {"LOW": (320, 180), "MEDIUM": (640, 360), "HIGH": (1280, 720)}, sizes
    assert len(offsets) >= 4, offsets
    assert_av_sync(offsets, tolerance=0.060)


async def test_sigterm_drains(node: Node, lkapi: Any, clips: dict[str, Path]) -> None:
    """Last: the service stops. SIGTERM: no new sessions (unavailable), the live one runs to
    its end, then the process exits."""
    info = await _create_rtmp(lkapi, "svc-drain", "drained")
    push = await _push(node, clips["short"], info.stream_key)
    await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
    node.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert node.http(node.health_port, "/availability")[0] == 503
    assert node.proc.poll() is None
    _, err = await asyncio.wait_for(push.communicate(), 60)
    assert push.returncode == 0, err.decode()
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE})
    assert not st.error
    assert await asyncio.to_thread(node.proc.wait, 30) == 0
    assert not node.job_pids()  # no job process left behind
