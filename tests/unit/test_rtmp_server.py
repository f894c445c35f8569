"""RtmpServer on loopback with a scripted publisher (lkmedia.testing.rtmp_client): the key
reaches the validator before the publish is answered, refusals carry an error status and
read nothing more, every way a connection can go wrong ends only that connection."""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lkmedia.rtmp import Limits, PublishRefused, PublishRequest, RtmpServer, RtmpSession, amf0
from lkmedia.rtmp.chunks import ACK, AGGREGATE, AUDIO, DATA_AMF0, USER_CONTROL, VIDEO, WINDOW_ACK_SIZE
from lkmedia.rtmp.flv import FlvTag
from lkmedia.testing.rtmp_client import RtmpTestClient


class Recorder:
    """A validator that accepts one key, and a session handler that keeps every tag."""

    def __init__(self, key: str = "GOODKEY", delay: float = 0.0) -> None:
        self.key, self.delay = key, delay
        self.requests: list[PublishRequest] = []
        self.sessions: list[RtmpSession] = []
        self.tags: list[FlvTag] = []
        self.ended = asyncio.Event()

    async def validate(self, req: PublishRequest) -> Any:
        self.requests.append(req)
        await asyncio.sleep(self.delay)
        if req.stream_key != self.key:
            raise PublishRefused("no ingress has this stream key")
        return {"ingress_id": "IN_test"}

    async def on_session(self, s: RtmpSession) -> None:
        self.sessions.append(s)
        try:
            async for tag in s.tags():
                self.tags.append(tag)
        finally:
            self.ended.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[RtmpServer, Recorder]]:
    rec = Recorder()
    server = RtmpServer(rec.validate, rec.on_session, host="127.0.0.1", port=0,
                        limits=Limits(media_timeout=1.0, handshake_timeout=1.0, publish_timeout=2.0))
    async with server:
        yield server, rec


async def _publish_ok(server: RtmpServer, rec: Recorder) -> None:
    """A complete, well-behaved session: the server is still serving."""
    c = await RtmpTestClient.connect(server.port)
    assert (await c.publish(rec.key))["code"] == "NetStream.Publish.Start"
    c.send(VIDEO, 0, b"\x17\x00\x00\x00\x00")
    await c.unpublish()
    await asyncio.wait_for(rec.ended.wait(), 5)
    c.close()


async def test_accepted_publish_gives_flv_tags(served: tuple[RtmpServer, Recorder]) -> None:
    server, rec = served
    c = await RtmpTestClient.connect(server.port)
    status = await c.publish("GOODKEY", app="live")
    assert status == {"level": "status", "code": "NetStream.Publish.Start", "description": "Start publishing"}
    [req] = rec.requests
    assert (req.stream_key, req.app, req.publish_type, req.secure) == ("GOODKEY", "live", "live", False)
    assert "GOODKEY" not in repr(req)
    meta = amf0.encode("onMetaData", amf0.EcmaArray(width=320.0, height=240.0))
    c.send(DATA_AMF0, 0, amf0.encode("@setDataFrame") + meta)
    c.send(VIDEO, 0, b"\x17\x00seq")
    c.send(AUDIO, 0, b"\xaf\x00cfg")
    c.send(AUDIO, 0x01000000, b"\xaf\x01big-ts")  # an extended timestamp through the whole path
    inner = FlvTag(AUDIO, 7000, b"\xaf\x01a").encode() + FlvTag(VIDEO, 7033, b"\x27\x01v").encode()
    c.send(AGGREGATE, 0x01000100, inner)
    await c.unpublish()
    await asyncio.wait_for(rec.ended.wait(), 5)
    [s] = rec.sessions
    assert s.accepted == {"ingress_id": "IN_test"} and s.clean_end
    assert s.end_reason == "the publisher ended the stream"
    assert [(t.type, t.timestamp, t.data) for t in rec.tags] == [
        (18, 0, meta), (9, 0, b"\x17\x00seq"), (8, 0, b"\xaf\x00cfg"), (8, 0x01000000, b"\xaf\x01big-ts"),
        (8, 0x01000100, b"\xaf\x01a"), (9, 0x01000100 + 33, b"\x27\x01v")]
    assert server.accepted == 1 and server.refused == 0


async def test_refused_key_gets_an_error_status_and_nothing_is_read(
        served: tuple[RtmpServer, Recorder], caplog: pytest.LogCaptureFixture) -> None:
    server, rec = served
    c = await RtmpTestClient.connect(server.port)
    await c.command("connect", {"app": "live"})
    await c.reply()
    await c.command("createStream", None)
    await c.reply()
    # the publish and media right behind it, without waiting for the answer
    await c.command("publish", None, "live/WRONGKEY", "live", stream_id=1, csid=8)
    for i in range(50):
        c.send(VIDEO, i * 40, b"\x17\x01" + bytes(1000))
    await c.w.drain()
    while (r := await c.reply())[0] != "onStatus":
        pass
    assert r[3] == {"level": "error", "code": "NetStream.Publish.BadName",
                    "description": "no ingress has this stream key"}
    assert await c.closed_by_server()
    assert [q.stream_key for q in rec.requests] == ["WRONGKEY"]  # the last path element, as Go takes it
    assert rec.sessions == [] and rec.tags == [] and server.refused == 1
    assert "WRONGKEY" not in caplog.text and "{WR...EY}" in caplog.text
    await _publish_ok(server, rec)


async def test_empty_key_slow_or_failing_validator(served: tuple[RtmpServer, Recorder]) -> None:
    server, rec = served
    c = await RtmpTestClient.connect(server.port)
    st = await c.publish("")
    assert st["code"] == "NetStream.Publish.BadName" and st["description"] == "missing stream key"
    assert rec.requests == []  # never asked

    async def broken(req: PublishRequest) -> Any:
        raise RuntimeError("redis down")

    async def slow(req: PublishRequest) -> Any:
        await asyncio.sleep(10)

    for validate, words in ((broken, "could not be checked"), (slow, "could not be checked in time")):
        s2 = RtmpServer(validate, rec.on_session, host="127.0.0.1", port=0, limits=Limits(validate_timeout=0.3))
        async with s2:
            c = await RtmpTestClient.connect(s2.port)
            st = await c.publish("ANYKEY")
            assert st["level"] == "error" and st["description"].startswith("the stream key " + words)
            assert await c.closed_by_server()
    assert rec.sessions == []


async def test_validation_holds_the_publish(served: tuple[RtmpServer, Recorder]) -> None:
    server, rec = served
    rec.delay = 0.5
    c = await RtmpTestClient.connect(server.port)
    t0 = asyncio.get_running_loop().time()
    assert (await c.publish("GOODKEY"))["code"] == "NetStream.Publish.Start"
    assert asyncio.get_running_loop().time() - t0 >= 0.5
    await c.unpublish()
    await asyncio.wait_for(rec.ended.wait(), 5)


async def test_publisher_gone_while_its_key_is_checked(served: tuple[RtmpServer, Recorder]) -> None:
    """The session still starts and ends at once, so whoever counted it live learns it ended."""
    server, rec = served
    rec.delay = 0.5
    c = await RtmpTestClient.connect(server.port)
    await c.command("connect", {"app": "live"})
    await c.reply()
    await c.command("publish", None, "GOODKEY", "live", stream_id=1, csid=8)
    c.writer.transport.abort()
    await asyncio.wait_for(rec.ended.wait(), 5)
    [s] = rec.sessions
    assert s.end_reason.startswith("the publisher disconnected") and rec.tags == []


async def test_stalled_and_dropped_publishers_end_their_session(served: tuple[RtmpServer, Recorder]) -> None:
    server, rec = served
    c = await RtmpTestClient.connect(server.port)
    await c.publish("GOODKEY")
    c.send(VIDEO, 0, b"\x17\x00x")
    await c.w.drain()
    await asyncio.wait_for(rec.ended.wait(), 5)  # media_timeout is 1 s
    assert rec.sessions[0].end_reason == "no data from the publisher for 1 s" and not rec.sessions[0].clean_end
    assert rec.sessions[0].error == rec.sessions[0].end_reason
    assert len(rec.tags) == 1
    rec.ended.clear()
    c = await RtmpTestClient.connect(server.port)
    await c.publish("GOODKEY")
    c.send(AUDIO, 0, b"\xaf\x01" + bytes(500))
    await c.w.drain()
    c.writer.transport.abort()  # gone mid-stream, no unpublish
    await asyncio.wait_for(rec.ended.wait(), 5)
    assert rec.sessions[1].end_reason.startswith("the publisher disconnected without ending the stream")
    assert rec.sessions[1].error == ""  # a drop is the end of the stream, not a failure
    rec.ended.clear()
    await _publish_ok(server, rec)


@pytest.mark.parametrize("garbage, words", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not RTMP: the connection starts with text ('G'...)"),
    (b"\x16\x03\x01\x02\x00" + bytes(600), "not RTMP: a TLS handshake on the plain RTMP port"),
    (b"\x00" * 2000, "not RTMP: the first byte is 0x00"),
])
async def test_garbage_before_the_handshake(served: tuple[RtmpServer, Recorder], caplog: pytest.LogCaptureFixture,
                                            garbage: bytes, words: str) -> None:
    server, rec = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    with caplog.at_level(logging.INFO, logger="lkmedia.rtmp"):
        writer.write(garbage)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        await asyncio.sleep(0.05)
    assert f"connection ended: {words}" in caplog.text
    writer.close()
    await _publish_ok(server, rec)


async def test_garbage_after_the_handshake_and_mid_stream(served: tuple[RtmpServer, Recorder],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    server, rec = served
    c = await RtmpTestClient.connect(server.port)
    c.writer.write(b"\x44" + bytes(20))  # a format-1 header on a chunk stream never opened
    await c.writer.drain()
    assert await c.closed_by_server()
    await asyncio.sleep(0.05)
    assert "starts with a format-1 header" in caplog.text
    c = await RtmpTestClient.connect(server.port)
    await c.command("connect", {"app": "live"})
    await c.reply()
    c.send(VIDEO, 0, b"\x17\x00x")  # media before any publish
    await c.w.drain()
    assert await c.closed_by_server()
    await asyncio.sleep(0.05)
    assert "media sent before a publish was accepted" in caplog.text
    c = await RtmpTestClient.connect(server.port)
    await c.publish("GOODKEY")
    c.send(VIDEO, 0, b"\x17\x00x")
    c.writer.write(bytes([0x40 | 30]) + b"\xff" * 20)  # a format-1 header on a chunk stream never opened
    await c.writer.drain()
    await asyncio.wait_for(rec.ended.wait(), 5)
    assert rec.sessions[0].end_reason == "protocol error: chunk stream 30 starts with a format-1 header (no full header yet)"
    assert rec.sessions[0].error == rec.sessions[0].end_reason
    assert len(rec.tags) == 1
    rec.ended.clear()
    await _publish_ok(server, rec)


async def test_random_bytes_never_escape_a_connection(served: tuple[RtmpServer, Recorder],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    server, rec = served
    rnd = random.Random(10)
    for i in range(40):
        c = await RtmpTestClient.connect(server.port)
        if i % 2:  # inside a valid connection, after connect
            await c.command("connect", {"app": "live"})
            await c.reply()
        junk = bytearray(rnd.randbytes(rnd.randint(1, 3000)))
        junk[0] = rnd.choice([0x03, 0x14, 0x43, 0x83, 0xC3, junk[0]])
        c.writer.write(bytes(junk))
        await c.writer.drain()
        c.writer.write_eof()
        assert await c.closed_by_server()
        c.close()
    await asyncio.sleep(0.1)
    assert "internal error" not in caplog.text and "Traceback" not in caplog.text
    await _publish_ok(server, rec)


async def test_handshake_and_publish_timeouts(served: tuple[RtmpServer, Recorder],
                                              caplog: pytest.LogCaptureFixture) -> None:
    server, rec = served
    _, w1 = await asyncio.open_connection("127.0.0.1", server.port)  # connects, says nothing
    c = await RtmpTestClient.connect(server.port)  # shakes hands, never publishes
    assert await c.closed_by_server(timeout=5)
    await asyncio.sleep(1.2)
    assert caplog.text.count("no publish within the time allowed") == 2
    w1.close()


async def test_pings_acks_and_a_player(served: tuple[RtmpServer, Recorder]) -> None:
    server, rec = served
    c = await RtmpTestClient.connect(server.port)
    c.w.write(2, WINDOW_ACK_SIZE, 0, 0, (1000).to_bytes(4, "big"))
    c.w.write(2, USER_CONTROL, 0, 0, b"\x00\x06\x00\x00\x01\x02")
    await c.command("connect", {"app": "live"})
    seen: dict[int, bytes] = {}
    async with asyncio.timeout(5):
        while USER_CONTROL not in seen or ACK not in seen:
            m = await c.r.read_message()
            seen.setdefault(m.type_id, m.payload)
            if len(seen) == 3:  # the connect answer is out: send enough for an acknowledgement
                await c.command("releaseStream", None, "x" * 1200)
    assert seen[USER_CONTROL] == b"\x00\x07\x00\x00\x01\x02"  # ping response
    assert int.from_bytes(seen[ACK], "big") >= 1000
    await c.command("play", None, "stream")
    while (r := await c.reply())[0] != "onStatus":
        pass
    assert r[3]["code"] == "NetStream.Play.Failed"
    assert await c.closed_by_server()


async def test_the_server_ends_a_session() -> None:
    reasons: list[str] = []

    async def one_tag_then_close(s: RtmpSession) -> None:
        async for _ in s.tags():
            s.close("ended by DeleteIngress")
        reasons.append(s.end_reason)

    async with RtmpServer(Recorder().validate, one_tag_then_close, host="127.0.0.1", port=0) as server:
        c = await RtmpTestClient.connect(server.port)
        await c.publish("GOODKEY")
        c.send(VIDEO, 0, b"\x17\x00x")
        await c.w.drain()
        assert await c.closed_by_server()
        for _ in range(50):
            if reasons:
                break
            await asyncio.sleep(0.05)
    assert reasons == ["ended by DeleteIngress"]


async def test_connection_limit() -> None:
    rec = Recorder()
    async with RtmpServer(rec.validate, rec.on_session, host="127.0.0.1", port=0,
                          limits=Limits(max_connections=1)) as server:
        first = await RtmpTestClient.connect(server.port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(r2.read(), 5) == b""
        assert (await first.publish("GOODKEY"))["code"] == "NetStream.Publish.Start"
        w2.close()
        first.close()
