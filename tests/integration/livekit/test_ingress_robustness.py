"""``lkmedia ingress`` (a real process, as in test_ingress_service) against inputs a production
service meets: an FLV whose codecs are unusual but decodable (transcoded like any other), an
FLV whose codec nobody can decode (the session ends ERROR naming it, the service keeps
serving the next push), and the input's measured bitrates in IngressState."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import models as lkm

from lkmedia.dev.procs import cpu_seconds
from lkmedia.rtmp.flv import AUDIO, SCRIPT, VIDEO, FlvTag
from lkmedia.testing.media import av_clip
from lkmedia.testing.rtmp_client import RtmpTestClient

from . import test_ingress_service as service
from .test_ingress_service import (
    IS,
    Node,
    _available,
    _create_rtmp,
    _participant,
    _push,
    _state,
    _wait,
)

node, lkapi = service.node, service.lkapi  # this module's own node (its fixtures, module-scoped)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ingress-robustness")
    flash = d / "flash.flv"  # Sorenson H.263 + MP3: what old Flash encoders sent
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100", "-t", "6",
                    "-c:v", "flv1", "-q:v", "5", "-c:a", "libmp3lame", "-ar", "44100", "-ac", "2", str(flash)],
                   check=True, timeout=120)
    return {"good": av_clip(d / "good.flv", 5, size="640x360", rate=30),
            "flash": flash,
            "hd": av_clip(d / "hd.flv", 24, size="1280x720", rate=30, pattern="testsrc2")}


def flv_tags(path: Path) -> list[FlvTag]:
    """The tags of an FLV file, in order."""
    b = path.read_bytes()
    pos, tags = 9 + 4, []
    while pos + 11 <= len(b):
        n = int.from_bytes(b[pos + 1:pos + 4], "big")
        ts = int.from_bytes(b[pos + 4:pos + 7], "big") | (b[pos + 7] << 24)
        tags.append(FlvTag(b[pos] & 0x1F, ts, b[pos + 11:pos + 11 + n]))
        pos += 11 + n + 4
    return tags


def with_codec(tags: list[FlvTag], kind: int, codec_id: int) -> list[FlvTag]:
    """``tags`` with every ``kind`` (AUDIO, VIDEO) tag's FLV codec ID replaced."""
    shift = 4 if kind == AUDIO else 0
    mask = 0x0F if kind == AUDIO else 0xF0
    return [FlvTag(t.type, t.timestamp, bytes(((t.data[0] & mask) | (codec_id << shift),)) + t.data[1:])
            if t.type == kind and t.data else t for t in tags]


async def _publish_tags(node: Node, key: str, tags: list[FlvTag]) -> bool:
    """Publish ``tags`` paced by their timestamps; True if the server closed the connection
    before they were all sent (or within 10 s of the last)."""
    node.secrets.append(key)
    for _ in range(3):  # (this machine's CPUs are shared: the node may refuse a moment for load)
        await _available(node)
        c = await RtmpTestClient.connect(node.rtmp_port)
        status = await c.publish(key)
        if status["code"] == "NetStream.Publish.Start" or "capacity" not in str(status):
            break
        c.close()
        await asyncio.sleep(2)
    try:
        assert status["code"] == "NetStream.Publish.Start", status
        t0 = time.monotonic()
        for t in tags:
            delay = t0 + t.timestamp / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if c.reader.at_eof():
                return True
            c.send(t.type, t.timestamp, t.data, csid={AUDIO: 4, VIDEO: 6, SCRIPT: 5}[t.type])
            try:
                await c.w.drain()
            except ConnectionError:
                return True
        return await c.closed_by_server(10)
    finally:
        c.close()


async def _served(node: Node, lkapi: Any, clip: Path, info: Any) -> tuple[asyncio.subprocess.Process, Any]:
    """ffmpeg pushing ``clip`` to ``info``'s key, once its session is PUBLISHING (pushed again
    if the node refused it for load: this machine's CPUs are shared with other test runs)."""
    after = (await _state(lkapi, info.ingress_id)).updated_at
    for _ in range(3):
        push = await _push(node, clip, info.stream_key)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = await _state(lkapi, info.ingress_id)
            if st.updated_at > after and st.status in (IS.ENDPOINT_PUBLISHING, IS.ENDPOINT_ERROR):
                break
            await asyncio.sleep(0.1)
        if st.status == IS.ENDPOINT_ERROR and st.error == "server capacity exceeded":
            await push.wait()
            after = st.updated_at
            await asyncio.sleep(2)
            continue
        assert st.status == IS.ENDPOINT_PUBLISHING, (IS.Name(st.status), st.error)
        return push, st
    raise AssertionError("the node refused the push three times for load")


async def test_unusual_but_decodable_codecs_are_transcoded(node: Node, lkapi: Any, media: dict[str, Path]) -> None:
    """Sorenson H.263 video and MP3 audio (the Go ingress takes only H.264 and AAC): FFmpeg
    decodes both, so the session publishes them like any other input."""
    info = await _create_rtmp(lkapi, "rob-flash", "flash")
    push, _ = await _served(node, lkapi, media["flash"], info)
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_PUBLISHING})
    p = await _participant(lkapi, "rob-flash", "flash")
    assert {t.type for t in p.tracks} == {lkm.TrackType.VIDEO, lkm.TrackType.AUDIO}
    assert st.audio.mime_type == "audio/mpeg" and st.audio.sample_rate == 44100 and st.audio.channels == 2
    assert (st.video.width, st.video.height) == (320, 240) and st.video.mime_type == "video/x-flash-video"
    _, err = await asyncio.wait_for(push.communicate(), 60)
    assert push.returncode == 0, err.decode()
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE, IS.ENDPOINT_ERROR})
    assert st.status == IS.ENDPOINT_INACTIVE and not st.error, st.error


@pytest.mark.parametrize(("kind", "codec_id", "words"), [(VIDEO, 1, "video codec: JPEG (FLV video codec ID 1)"),
                                                          (AUDIO, 15, "(FLV audio codec ID 15)")])
async def test_an_undecodable_codec_ends_error_naming_it_and_the_next_push_is_served(
        node: Node, lkapi: Any, media: dict[str, Path], kind: int, codec_id: int, words: str) -> None:
    info = await _create_rtmp(lkapi, f"rob-bad-{codec_id}", "bad")
    tags = with_codec(flv_tags(media["good"]), kind, codec_id)
    seen: list[int] = []
    closed = await _publish_tags(node, info.stream_key, tags)
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_ERROR, IS.ENDPOINT_INACTIVE}, seen=seen)
    assert st.status == IS.ENDPOINT_ERROR, (IS.Name(st.status), st.error)
    assert "unsupported" in st.error and words in st.error, st.error
    assert "Traceback" not in st.error and "http://" not in st.error, st.error
    assert IS.ENDPOINT_PUBLISHING not in seen, [IS.Name(s) for s in seen]
    assert closed  # the publisher is told: its connection is closed
    assert node.proc.poll() is None

    push, _ = await _served(node, lkapi, media["good"], info)  # the same key, the same node: served
    _, err = await asyncio.wait_for(push.communicate(), 60)
    assert push.returncode == 0, err.decode()
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE, IS.ENDPOINT_ERROR})
    assert st.status == IS.ENDPOINT_INACTIVE and not st.error, st.error


def _measured(clip: Path) -> dict[str, float]:
    """Each stream's bits per second in ``clip`` (its packets' sizes over its duration)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "packet=codec_type,size,pts_time",
                          "-of", "csv=p=0", str(clip)], check=True, capture_output=True, text=True).stdout
    sizes: dict[str, int] = {}
    times: dict[str, list[float]] = {}
    for line in out.splitlines():
        kind, pts, size = line.split(",")[:3]
        sizes[kind] = sizes.get(kind, 0) + int(size)
        times.setdefault(kind, []).append(float(pts))
    rates = {}
    for kind, ts in times.items():
        span = (max(ts) - min(ts)) * len(ts) / (len(ts) - 1)
        rates[kind] = sizes[kind] * 8 / span
    return rates


async def test_input_bitrates_are_measured_and_refreshed(node: Node, lkapi: Any, media: dict[str, Path]) -> None:
    real = _measured(media["hd"])
    info = await _create_rtmp(lkapi, "rob-rates", "rates")
    push, first = await _served(node, lkapi, media["hd"], info)
    try:
        v, a = first.video, first.audio
        assert v.mime_type == "video/h264" and (v.width, v.height) == (1280, 720) and abs(v.framerate - 30) < 0.1, v
        assert a.mime_type == "audio/aac" and a.sample_rate == 48000 and a.channels == 2, a
        assert v.average_bitrate > 0 and a.average_bitrate > 0, (v, a)
        deadline = time.monotonic() + 25  # refreshed while it publishes (every 10 s)
        st = first
        while time.monotonic() < deadline:
            st = await _state(lkapi, info.ingress_id)
            if st.status == IS.ENDPOINT_PUBLISHING and st.updated_at > first.updated_at + 5e9:
                break  # (not the second track's PUBLISHING, a moment after the first's)
            await asyncio.sleep(0.5)
        assert st.status == IS.ENDPOINT_PUBLISHING and st.updated_at > first.updated_at + 5e9, st
        assert st.started_at == first.started_at and st.resource_id == first.resource_id
        assert len(st.tracks) == 2 and st.video.width == 1280 and st.audio.channels == 2
        got = {"video": st.video.average_bitrate, "audio": st.audio.average_bitrate}
        print(f"\nbitrates: clip {real['video'] / 1000:.0f}/{real['audio'] / 1000:.0f} kbps, refreshed state "
              f"{got['video'] / 1000:.0f}/{got['audio'] / 1000:.0f} kbps (video/audio)")
        for kind in ("video", "audio"):
            assert abs(got[kind] - real[kind]) <= 0.3 * real[kind], (kind, got[kind], real[kind])
        _, err = await asyncio.wait_for(push.communicate(), 60)
        assert push.returncode == 0, err.decode()
    finally:
        if push.returncode is None:
            push.kill()
            await push.wait()
    final = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE, IS.ENDPOINT_ERROR})
    assert final.status == IS.ENDPOINT_INACTIVE and not final.error, final.error
    for kind, s in (("video", final.video), ("audio", final.audio)):
        assert abs(s.average_bitrate - real[kind]) <= 0.3 * real[kind], (kind, s.average_bitrate, real[kind])
    print(f"final state {final.video.average_bitrate / 1000:.0f}/{final.audio.average_bitrate / 1000:.0f} kbps")
    deadline = time.monotonic() + 5  # the refreshes are not new sessions: one started, one ended
    while len(node.hooks(info.ingress_id)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert node.hooks(info.ingress_id) == [("ingress_started", IS.ENDPOINT_PUBLISHING),
                                           ("ingress_ended", IS.ENDPOINT_INACTIVE)]


async def test_a_publisher_killed_mid_stream_ends_its_session_and_the_key_is_served_again(
        node: Node, lkapi: Any, media: dict[str, Path]) -> None:
    """ffmpeg SIGKILLed while publishing: the session ends INACTIVE (the publisher went away:
    for a reusable RTMP ingress that is not an error, as in Go), its job process exits, and
    the same key is served at once."""
    info = await _create_rtmp(lkapi, "rob-kill", "killed")
    push, _ = await _served(node, lkapi, media["hd"], info)
    await asyncio.sleep(2)
    job = max(node.job_pids(), key=cpu_seconds)  # the session's (a spare is idle)
    push.kill()
    await push.wait()
    t0 = time.monotonic()
    st = await _wait(lkapi, info.ingress_id, {IS.ENDPOINT_INACTIVE, IS.ENDPOINT_ERROR})
    took = time.monotonic() - t0
    print(f"\npublisher SIGKILLed mid-stream: {IS.Name(st.status)} {took:.2f} s later ({st.error or 'no error'})")
    assert st.status == IS.ENDPOINT_INACTIVE and not st.error and took < 5, (IS.Name(st.status), st.error, took)
    deadline = time.monotonic() + 10
    while job in node.job_pids() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert job not in node.job_pids(), (job, node.job_pids())  # its job process is gone
    push, _ = await _served(node, lkapi, media["good"], info)
    _, err = await asyncio.wait_for(push.communicate(), 60)
    assert push.returncode == 0, err.decode()


async def test_garbage_on_the_rtmp_port_is_dropped_and_the_service_serves_on(
        node: Node, lkapi: Any, media: dict[str, Path]) -> None:
    """Random bytes (no RTMP handshake) on rtmp_port: the connection is closed, no session
    begins, and the next real publish is served."""
    import os

    info = await _create_rtmp(lkapi, "rob-garbage", "after-garbage")
    before = await _state(lkapi, info.ingress_id)
    # not RTMP at all; an HTTP request; a valid handshake followed by random chunk bytes
    for junk in (b"\xff" + os.urandom(4000), b"GET / HTTP/1.0\r\n\r\n",
                 b"\x03" + bytes(1536) + bytes(1536) + b"\xff" * 4000):
        r, w = await asyncio.open_connection("127.0.0.1", node.rtmp_port)
        w.write(junk)
        with contextlib.suppress(ConnectionError):
            await w.drain()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(r.read(), 15)  # to EOF: the server closed it
        w.close()
    assert node.proc.poll() is None and node.http(node.health_port, "/")[0] == 200
    assert (await _state(lkapi, info.ingress_id)).updated_at == before.updated_at  # nothing began
    push, _ = await _served(node, lkapi, media["good"], info)
    _, err = await asyncio.wait_for(push.communicate(), 60)
    assert push.returncode == 0, err.decode()
