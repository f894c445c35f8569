"""RTMP passthrough through `lkmedia ingress` (``rtmp_passthrough: true``) against the real
livekit-server: the ffmpeg CLI pushes H.264 without B-frames; a subscriber in the room
decodes frames bit-identical to the publisher's own stream decoded here (a re-encode on the
way could not give that), at the publisher's size, with Opus audio; the session's job
process spends a fraction of a core. A stream with B-frames (x264's and OBS's default)
ends ERROR saying so and what to change, and the node serves the next publish."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from livekit import rtc
from livekit.protocol import ingress as lki

from lkmedia.dev.ingress_demo import PORTS, IngressProcess
from lkmedia.dev.procs import child_pids, cpu_seconds
from lkmedia.dev.stack import DevStack, free_port

IS = lki.IngressState.Status
W, H, SECONDS = 640, 360, 10


def _clip(path: Path, bframes: int) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(SECONDS),
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "30",
                    "-bf", str(bframes), "-threads", "1", "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path)],
                   check=True)
    return path


@dataclass
class Node:
    stack: DevStack
    service: IngressProcess
    rtmp_port: int

    def job_pids(self) -> list[int]:
        return child_pids(self.service.proc.pid)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    ports = {name: free_port() for name in PORTS}
    stack = DevStack(config={"ingress": {"rtmp_base_url": f"rtmp://127.0.0.1:{ports['rtmp']}/live"}})
    stack.start()
    service = IngressProcess(stack, ports, tmp_path_factory.mktemp("passthrough-node") / "ingress.log",
                             extra="rtmp_passthrough: true\n")
    try:
        asyncio.run(service.wait_ready(30))
        yield Node(stack, service, ports["rtmp"])
    finally:
        service.stop(30)
        stack.cleanup()
        print(f"\n--- lkmedia ingress log (last lines) ---\n{service.tail(20)}")


@contextlib.asynccontextmanager
async def _push(node: Node, clip: Path, key: str) -> AsyncIterator[asyncio.subprocess.Process]:
    p = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv",
        f"rtmp://127.0.0.1:{node.rtmp_port}/live/{key}", stdin=asyncio.subprocess.DEVNULL)
    try:
        yield p
    finally:
        if p.returncode is None:
            p.kill()
        await p.wait()


async def _create(node: Node, room: str, identity: str) -> lki.IngressInfo:
    async with node.stack.api() as lkapi:
        return await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
            input_type=lki.IngressInput.RTMP_INPUT, name=identity, room_name=room, participant_identity=identity))


async def _wait(node: Node, ingress_id: str, statuses: set[int], timeout: float = 30) -> lki.IngressState:
    deadline = time.monotonic() + timeout
    st = lki.IngressState()
    async with node.stack.api() as lkapi:
        while time.monotonic() < deadline:
            res = await lkapi.ingress.list_ingress(lki.ListIngressRequest(ingress_id=ingress_id))
            st = res.items[0].state
            if st.status in statuses:
                return st
            await asyncio.sleep(0.1)
    raise AssertionError(f"{ingress_id}: still {IS.Name(st.status)} ({st.error}) after {timeout:g} s")


def _reference(path: Path) -> set[bytes]:
    """The Y plane of every frame of the clip's own H.264, decoded here."""
    with av.open(str(path)) as c:
        return {f.to_ndarray(format="yuv420p")[:H].tobytes() for f in c.decode(video=0)}


async def test_the_room_gets_the_publishers_own_h264(node: Node, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "nob.flv", bframes=0)
    ref = _reference(clip)
    info = await _create(node, "pass-room", "passer")
    viewer = rtc.Room()
    video: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()
    kinds: dict[str, str] = {}

    def on_track(track: rtc.Track, pub: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant) -> None:
        kinds[pub.mime_type.lower()] = "simulcast" if pub.simulcasted else "single"
        if track.kind == rtc.TrackKind.KIND_VIDEO and not video.done():
            video.set_result(track)

    viewer.on("track_subscribed", on_track)
    await viewer.connect(node.stack.url, node.stack.token("viewer", "pass-room"))
    frames: list[np.ndarray] = []
    try:
        async with _push(node, clip, info.stream_key):
            t0 = time.monotonic()
            await _wait(node, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
            t_pub = time.monotonic() - t0
            (job,) = node.job_pids() or [0]
            cpu0, wall0 = cpu_seconds(job), time.monotonic()
            stream = rtc.VideoStream(await asyncio.wait_for(video, 15), format=rtc.VideoBufferType.I420)

            async def read() -> None:
                async for ev in stream:
                    f = ev.frame
                    frames.append(np.frombuffer(f.data, np.uint8)[: f.width * f.height]
                                  .reshape(f.height, f.width).copy())

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read(), 5)
            await stream.aclose()
            cpu = (cpu_seconds(job) - cpu0) / (time.monotonic() - wall0)
        st = await _wait(node, info.ingress_id, {IS.ENDPOINT_INACTIVE, IS.ENDPOINT_ERROR})
    finally:
        await viewer.disconnect()
    matched = sum(f.tobytes() in ref for f in frames)
    print(f"\nRTMP passthrough: PUBLISHING {t_pub:.2f} s into the push; {len(frames)} frames "
          f"received, {matched} bit-identical to the publisher's H.264 decoded here; tracks {kinds}; "
          f"job process {cpu:.3f} CPU s per s")
    assert st.status == IS.ENDPOINT_INACTIVE and not st.error, st
    assert st.video.mime_type == "video/h264" and (st.video.width, st.video.height) == (W, H)
    assert len(frames) >= 60 and frames[0].shape == (H, W)
    assert matched == len(frames)
    assert kinds == {"video/h264": "single", "audio/opus": "single"}, kinds
    assert job and cpu < 0.3, cpu  # decode + Opus encode of the audio only, no video codec work


async def test_b_frames_end_the_session_saying_what_to_change(node: Node, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "b.flv", bframes=3)
    info = await _create(node, "pass-b", "bframes")
    async with _push(node, clip, info.stream_key):
        st = await _wait(node, info.ingress_id, {IS.ENDPOINT_ERROR})
    assert "B-frames" in st.error and "bframes=0" in st.error, st.error
    # ... and the node serves the next publish on the same key
    good = _clip(tmp_path / "nob.flv", bframes=0)
    async with _push(node, good, info.stream_key):
        st = await _wait(node, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
    assert st.status == IS.ENDPOINT_PUBLISHING and not st.error
