"""WebSocketSink against a real local `websockets` server: PCM byte counts, beep
positions, mute messages around a Gap, reconnect, and a refused URL that fails only
its own branch."""
from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from lkmedia.core import Caps, Gap, Graph, LinkError, Source
from lkmedia.nodes.encode import AudioEncoder
from lkmedia.sinks.websocket import WebSocketSink
from lkmedia.sources.synthetic import SyntheticSource


class Recorder:
    """A local WebSocket server keeping every message of every connection."""

    def __init__(self, close_first_after: int | None = None) -> None:
        self.connections: list[list[Any]] = []
        self.headers: list[str | None] = []
        self.paths: list[str] = []
        self.close_first_after = close_first_after
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        msgs: list[Any] = []
        self.connections.append(msgs)
        self.headers.append(ws.request.headers.get("Content-Type"))
        self.paths.append(ws.request.path)
        first = len(self.connections) == 1
        async for m in ws:
            msgs.append(m)
            if first and self.close_first_after is not None and len(msgs) >= self.close_first_after:
                await ws.close(1011, "going away")
                return

    def pcm(self) -> bytes:
        return b"".join(m for c in self.connections for m in c if isinstance(m, bytes))


async def started(rec: Recorder) -> AsyncIterator[Recorder]:
    async with serve(rec.handler, "127.0.0.1", 0) as server:
        rec.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/audio?token=s3cret"
        yield rec


@pytest.fixture
async def server() -> AsyncIterator[Recorder]:
    async for rec in started(Recorder()):
        yield rec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def onsets(pcm: bytes, rate: int, channels: int) -> list[float]:
    x = np.abs(np.frombuffer(pcm, np.int16).reshape(-1, channels).astype(np.int32).mean(axis=1))
    loud = np.flatnonzero(x > 3000)
    return [float(i) / rate for k, i in enumerate(loud) if k == 0 or i - loud[k - 1] > 0.3 * rate]


@pytest.mark.parametrize("rate,channels", [(None, None), (16_000, 1)])
async def test_pcm_bytes_and_beeps_reach_the_server(server: Recorder, rate: int | None, channels: int | None) -> None:
    g = Graph()
    sink = WebSocketSink(server.url, sample_rate=rate, channels=channels)
    g.link(SyntheticSource(duration=3.0, video=False, sample_rate=48_000, channels=2), sink)
    assert await g.run() == []
    await asyncio.sleep(0.05)
    out_rate, out_ch = rate or 48_000, channels or 2
    pcm = server.pcm()
    expected = 3.0 * out_rate * 2 * out_ch
    assert abs(len(pcm) - expected) <= 0.01 * expected, (len(pcm), expected)
    assert server.headers == ["audio/x-raw"] and server.paths == ["/audio?token=s3cret"]
    beeps = onsets(pcm, out_rate, out_ch)
    assert len(beeps) == 3 and all(abs(t - round(t)) < 0.005 for t in beeps), beeps
    r = sink.result
    assert r.bytes_sent == len(pcm) and r.sample_rate == out_rate and r.channels == out_ch
    assert abs(r.duration - 3.0) < 0.03 and r.reconnects == 0 and r.dropped_bytes == 0
    assert "s3cret" not in str(r)


class MutingSource(Source):
    """1 s of tone, a muted Gap for 1 s, then 1 s of tone (48 kHz stereo s16)."""

    def __init__(self) -> None:
        super().__init__("muting")
        self.add_output("out", Caps("audio", sample_rate=48_000, layout="stereo", sample_fmt="s16"))

    def frame(self, start: int, n: int = 960) -> av.AudioFrame:
        t = (start + np.arange(n)) / 48_000
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        f = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None, :], format="s16", layout="stereo")
        f.sample_rate, f.pts, f.time_base = 48_000, start, Fraction(1, 48_000)
        return f

    async def run(self) -> None:
        for start in range(0, 48_000, 960):
            await self.emit(self.frame(start))
        await self.emit(Gap(1.0, 2.0, muted=True))
        for start in range(96_000, 144_000, 960):
            await self.emit(self.frame(start))


async def test_mute_and_unmute_messages_surround_a_muted_gap(server: Recorder) -> None:
    g = Graph()
    sink = WebSocketSink(server.url)
    g.link(MutingSource(), sink)
    assert await g.run() == []
    await asyncio.sleep(0.05)
    msgs = server.connections[0]
    texts = [(i, m) for i, m in enumerate(msgs) if isinstance(m, str)]
    assert [json.loads(m) for _, m in texts] == [{"muted": True}, {"muted": False}]
    assert texts[0][1] == '{"muted":true}'  # egress's exact JSON
    (mi, _), (ui, _) = texts
    before = sum(len(m) for m in msgs[:mi])
    after = sum(len(m) for m in msgs[ui + 1:])
    assert before == after == 48_000 * 4
    assert mi + 1 == ui  # nothing is sent while muted
    assert sink.result.mute_messages == 2


async def test_refused_url_fails_only_its_branch(server: Recorder) -> None:
    g = Graph()
    src = SyntheticSource(duration=2.0, video=False)
    bad = WebSocketSink(f"ws://127.0.0.1:{free_port()}/x?key=topsecret", name="bad")
    good = WebSocketSink(server.url, name="good")
    g.link(src, bad)
    g.link(src, good)
    errors = await g.run()
    assert [e.node for e in errors] == ["bad"] and errors[0].scope == "branch"
    msg = str(errors[0])
    assert "cannot connect to ws://127.0.0.1:" in msg and "?***" in msg and "topsecret" not in msg
    await asyncio.sleep(0.05)
    assert len(server.pcm()) == 2 * 48_000 * 4 and good.result.bytes_sent == 2 * 48_000 * 4


async def test_reconnects_after_a_drop() -> None:
    async for rec in started(Recorder(close_first_after=10)):
        g = Graph()
        sink = WebSocketSink(rec.url)
        sink.reconnect_backoff = 0.05
        events: list[str] = []

        def listen(node: Any, event: str, fields: dict[str, Any], seen: list[str] = events) -> None:
            seen.append(event)

        g.listen(listen)
        g.link(SyntheticSource(duration=2.0, video=False, live=True), sink)
        assert await g.run() == []
        await asyncio.sleep(0.05)
        assert len(rec.connections) == 2 and sink.result.reconnects == 1
        assert "disconnected" in events and "reconnected" in events
        expected = 2 * 48_000 * 4
        # At most what was in flight when the server hung up is lost.
        assert 0.9 * expected <= len(rec.pcm()) <= expected


async def test_gives_up_after_reconnect_attempts() -> None:
    rec = Recorder(close_first_after=5)
    gen = started(rec)
    await gen.__anext__()
    g = Graph()
    sink = WebSocketSink(rec.url, name="ws")
    sink.reconnect_backoff, sink.reconnect_attempts = 0.05, 2

    async def close_server_soon() -> None:
        while not rec.connections or len(rec.connections[0]) < 5:
            await asyncio.sleep(0.01)
        await gen.aclose()

    g.link(SyntheticSource(duration=3.0, video=False, live=True), sink)
    closer = asyncio.ensure_future(close_server_soon())
    errors = await asyncio.wait_for(g.run(), 10)
    await closer
    assert [e.node for e in errors] == ["ws"]
    assert "2 reconnect attempts failed" in str(errors[0]) and "s3cret" not in str(errors[0])


def test_bad_urls_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ws:// or wss://.*http://example.com/\?\*\*\*"):
        WebSocketSink("http://example.com/?token=abc")
    with pytest.raises(ValueError, match="channels"):
        WebSocketSink("ws://example.com", channels=6)
    g = Graph()
    g.chain(SyntheticSource(duration=1, video=False), AudioEncoder("aac", name="aac"),
            WebSocketSink("ws://example.com", name="ws"))
    with pytest.raises(LinkError, match="aac.*ws.*raw PCM.*before the audio encoder"):
        g.build()
    g2 = Graph()
    g2.link(SyntheticSource(width=320, height=240, duration=1, audio=False), WebSocketSink("ws://example.com"))
    with pytest.raises(LinkError, match="audio only"):
        g2.build()
