"""StreamSink against a real nginx-rtmp (and an ffmpeg SRT listener): what arrives is
probed from nginx's recordings; statuses, reconnects and redaction are checked."""
from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

import lkmedia.sinks.stream_url as stream_mod
from lkmedia.core import Graph
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import decode_errors, probe
from lkmedia.sinks.file import FileSink
from lkmedia.sinks.stream import PacketQueue, StreamSink, StreamURLError, parse_stream_url, redact_url
from lkmedia.sources.synthetic import SyntheticSource
from lkmedia.testing.rtmp_server import NginxRtmp, free_port

pytestmark = pytest.mark.integration

FPS = 30
KEY_A = "live_stream_key_AAAA1111"
KEY_B = "live_stream_key_BBBB2222"
KEY_C = "live_stream_key_CCCC3333"
KEY_REFUSED = "live_stream_key_REFUSED9"


def make_graph(seconds: float) -> tuple[Graph, VideoEncoder, AudioEncoder]:
    g = Graph()
    src = SyntheticSource(width=640, height=360, fps=FPS, duration=seconds, live=True)
    v = VideoEncoder(width=640, height=360, fps=FPS, bitrate=600_000, keyframe_interval=1)
    a = AudioEncoder("aac")
    g.link(src.out("video"), v)
    g.link(src.out("audio"), a)
    return g, v, a


def feed(g: Graph, v: VideoEncoder, a: AudioEncoder, *sinks: Any) -> None:
    for s in sinks:
        g.link(v, s)
        g.link(a, s)


def record_events(g: Graph) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    g.listen(lambda node, ev, f: events.append({"node": node.name, **f}) if ev == "stream" else None)
    return events


def assert_stream(path: str, seconds: float, tol: float = 0.5) -> None:
    p = probe(path)
    assert p.stream("video").codec == "h264"
    assert p.stream("audio").codec == "aac"
    assert p.duration is not None and abs(p.duration - seconds) <= tol, (path, p.duration, seconds)
    frames = p.stream("video").frames or 0
    assert abs(frames - seconds * FPS) <= tol * FPS, (path, frames)
    assert decode_errors(path) == ""


def no_secrets(text: str, *keys: str) -> None:
    for k in keys:
        assert k not in text, f"stream key leaked: {text[:300]}"


async def test_two_destinations_get_the_whole_stream(rtmp_server: NginxRtmp) -> None:
    g, v, a = make_graph(6.0)
    sink = StreamSink([rtmp_server.url(KEY_A), rtmp_server.url(KEY_B)])
    feed(g, v, a, sink)
    events = record_events(g)
    assert await g.run() == []
    for key in (KEY_A, KEY_B):
        files = rtmp_server.recordings(key)
        assert len(files) == 1
        assert_stream(files[0], 6.0)
    res = sink.result.streams
    assert [d.status for d in res] == ["FINISHED", "FINISHED"]
    assert all(d.retries == 0 and d.error is None and d.dropped == 0 for d in res)
    assert all(d.started_at and d.ended_at and 4.5 < d.duration < 7.5 for d in res)
    assert {e["status"] for e in events} == {"ACTIVE", "FINISHED"}
    assert res[0].url == f"rtmp://127.0.0.1:{rtmp_server.port}/live/{{liv...111}}"
    no_secrets(repr(res) + repr(events), KEY_A, KEY_B)


async def test_refused_destination_fails_alone(rtmp_server: NginxRtmp, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    refused = f"rtmp://127.0.0.1:{free_port()}/live/{KEY_REFUSED}"
    g, v, a = make_graph(5.0)
    mp4 = FileSink(tmp_path / "x.mp4")
    mixed = StreamSink([rtmp_server.url(KEY_A), refused], idle_timeout=2.0, name="mixed")
    lonely = StreamSink([refused], idle_timeout=2.0, name="lonely")
    feed(g, v, a, mp4, mixed, lonely)
    events = record_events(g)
    t0 = time.monotonic()
    errors = await g.run()  # branch errors are returned, not raised
    assert time.monotonic() - t0 < 12.0, "a refused destination stalled the graph"
    # The recording and the good stream are complete.
    p = probe(str(tmp_path / "x.mp4"))
    assert abs((p.duration or 0) - 5.0) <= 0.2 and abs((p.stream("video").frames or 0) - 150) <= 2
    assert decode_errors(str(tmp_path / "x.mp4")) == ""
    assert_stream(rtmp_server.recordings(KEY_A)[0], 5.0)
    # The refused one is FAILED (after RECONNECTING) in both sinks; only the sink with
    # nothing else to stream to ends, with a branch-scoped error.
    for s in (mixed, lonely):
        bad = next(d for d in s.result.streams if d.url.endswith("ED9}"))
        assert bad.status == "FAILED" and bad.retries >= 1 and bad.packets == 0
        assert "Connection refused" in bad.error
        assert bad.url.endswith("/live/{liv...ED9}")
    assert [d.status for d in mixed.result.streams] == ["FINISHED", "FAILED"]
    assert [(e.node, e.scope) for e in errors] == [("lonely", "branch")]
    assert "every stream destination failed" in str(errors[0]) and "{liv...ED9}" in str(errors[0])
    statuses = [e["status"] for e in events if e["node"] == "mixed" and e["url"].endswith("ED9}")]
    assert statuses[0] == "RECONNECTING" and statuses[-1] == "FAILED"
    no_secrets(repr(events) + repr(errors) + repr(mixed.result) + repr(lonely.result) + caplog.text,
               KEY_A, KEY_REFUSED)


async def test_stalled_destination_is_abandoned(rtmp_server: NginxRtmp) -> None:
    """A server that accepts TCP but never answers (FFmpeg would wait forever, holding the
    GIL): it is RECONNECTING, then FAILED after idle_timeout; nothing else waits."""
    silent = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    accept = asyncio.get_running_loop().run_in_executor(None, lambda: conns.append(silent.accept()[0]))
    stalled = f"rtmp://127.0.0.1:{silent.getsockname()[1]}/live/{KEY_B}"
    try:
        g, v, a = make_graph(5.0)
        sink = StreamSink([rtmp_server.url(KEY_A), stalled], idle_timeout=2.0)
        feed(g, v, a, sink)
        t0 = time.monotonic()
        assert await g.run() == []
        assert time.monotonic() - t0 < 8.0
        good, bad = sink.result.streams
        assert good.status == "FINISHED" and bad.status == "FAILED" and bad.retries >= 1
        assert "timed out" in bad.error and KEY_B not in repr(bad)
        assert_stream(rtmp_server.recordings(KEY_A)[0], 5.0)
    finally:
        await accept
        for c in conns:
            c.close()
        silent.close()


async def test_add_and_remove_while_running(rtmp_server: NginxRtmp) -> None:
    g, v, a = make_graph(6.0)
    sink = StreamSink([rtmp_server.url(KEY_A), rtmp_server.url(KEY_B)])
    feed(g, v, a, sink)
    await g.start()
    await asyncio.sleep(2.0)
    shown = sink.add_url(rtmp_server.url(KEY_C))
    assert KEY_C not in shown
    with pytest.raises(StreamURLError, match="already streaming"):
        sink.add_url(rtmp_server.url(KEY_C))
    await asyncio.sleep(1.0)
    removed = sink.remove_url(rtmp_server.url(KEY_B))
    assert removed.url == redact_url(rtmp_server.url(KEY_B))
    assert await g.wait() == []
    res = {d.url: d for d in sink.destinations()}
    assert {d.status for d in res.values()} == {"FINISHED"}
    assert_stream(rtmp_server.recordings(KEY_A)[0], 6.0)
    # B stopped ~3 s in, cleanly (decodes); C joined ~2 s in at a keyframe.
    b = rtmp_server.recordings(KEY_B)[0]
    assert 2.3 <= (probe(b).duration or 0) <= 3.6 and decode_errors(b) == ""
    c = rtmp_server.recordings(KEY_C)[0]
    pc = probe(c)
    assert 2.8 <= pc.stream("video").frames / FPS <= 4.2 and decode_errors(c) == ""  # type: ignore[operator]
    with av.open(c) as ct:
        first = next(ct.demux(ct.streams.video[0]))
        assert first.is_keyframe


async def test_reconnects_after_server_restart(rtmp_server: NginxRtmp) -> None:
    g, v, a = make_graph(6.0)
    sink = StreamSink([rtmp_server.url(KEY_A)], idle_timeout=10.0)
    feed(g, v, a, sink)
    events = record_events(g)
    await g.start()
    await asyncio.sleep(2.0)
    await asyncio.to_thread(rtmp_server.restart, 0.5)
    assert await g.wait() == []
    statuses = [e["status"] for e in events]
    i = statuses.index("RECONNECTING")
    assert "ACTIVE" in statuses[:i] and "ACTIVE" in statuses[i:] and statuses[-1] == "FINISHED"
    d = sink.result.streams[0]
    assert d.retries >= 1 and d.last_retry_at > 0 and d.status == "FINISHED"
    before, after = rtmp_server.recordings(KEY_A)
    for f in (before, after):
        assert probe(f).has("video") and probe(f).has("audio") and decode_errors(f) == ""
    # Media after the restart: nginx keeps the sender's clock, so it ends near 6 s.
    pa = probe(after)
    assert pa.stream("video").frames >= 2.0 * FPS  # type: ignore[operator]
    assert abs((pa.duration or 0) - 6.0) <= 0.5


async def test_srt_destination(tmp_path: Path) -> None:
    assert stream_mod.srt_ffmpeg() is not None, "the ffmpeg CLI has no libsrt (scripts/setup.sh installs Debian's)"
    port, out = free_port(), tmp_path / "srt.ts"
    listener = await asyncio.create_subprocess_exec(
        "ffmpeg", "-y", "-v", "error", "-f", "mpegts", "-i", f"srt://127.0.0.1:{port}?mode=listener",
        "-c", "copy", "-f", "mpegts", str(out), stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        g, v, a = make_graph(4.0)
        sink = StreamSink([f"srt://127.0.0.1:{port}?streamid=publish:{KEY_A}"])
        feed(g, v, a, sink)
        assert await g.run() == []
        await asyncio.wait_for(listener.wait(), 15)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
    d = sink.result.streams[0]
    assert d.status == "FINISHED" and KEY_A not in repr(d)
    p = probe(str(out))
    assert {s.codec for s in p.streams} == {"h264", "aac"}
    assert p.stream("video").frames == 4 * FPS
    assert abs((p.duration or 0) - 4.0) <= 0.5 and decode_errors(str(out)) == ""


async def test_srt_without_ffmpeg_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_mod, "_srt_ffmpeg", False)
    monkeypatch.setenv("PATH", "/nonexistent")
    g, v, a = make_graph(1.0)
    sink = StreamSink([f"srt://127.0.0.1:{free_port()}"])
    feed(g, v, a, sink)
    errors = await g.run()
    d = sink.result.streams[0]
    assert d.status == "FAILED" and "ffmpeg" in d.error and "libsrt" in d.error
    assert [e.scope for e in errors] == ["branch"]
    monkeypatch.setattr(stream_mod, "_srt_ffmpeg", False)


def test_url_validation_and_redaction() -> None:
    u = parse_stream_url("rtmps://a.rtmp.youtube.com:443/live2/abcd-efgh-ijkl live=1")
    assert u.redacted == "rtmps://a.rtmp.youtube.com:443/live2/{abc...jkl} live=1"
    assert parse_stream_url("mux://secretmuxkey").redacted == "rtmps://global-live.mux.com:443/app/{sec...key}"
    assert redact_url("rtmp://h/app/ab") == "rtmp://h/app/{...}"
    s = parse_stream_url("srt://1.2.3.4:9000?streamid=mysecretid&latency=200")
    assert s.redacted == "srt://1.2.3.4:9000?streamid={mys...tid}&latency=200"
    for bad, why in [("rtmp://host/onlyapp", "app/stream_key"), ("http://x/y/z", "unsupported"),
                     ("srt://host", "host:port"), ("", "empty"), ("rtmp://host:99999/app/key", "port")]:
        with pytest.raises(StreamURLError, match=why) as e:
            StreamSink([bad])
        assert isinstance(e.value, ValueError)
    with pytest.raises(StreamURLError) as e:
        parse_stream_url("rtmp://host/topsecretkey")
    assert "topsecretkey" not in str(e.value)


def test_queue_is_bounded_and_restarts_at_a_keyframe() -> None:
    q = PacketQueue(seconds=1.5, has_video=True, from_keyframe=False)
    for i in range(301):  # 10 s of 30 fps video, keyframe every second, nobody reading
        p = av.Packet(b"\0" * 10)
        p.pts, p.time_base, p.is_keyframe = i * 3000, Fraction(1, 90000), i % 30 == 0
        q.put("video", p)
        assert len(q) <= 1.5 * 30 + 1
    items = q.get(0) or []
    assert items and items[0][1].is_keyframe and q.dropped + len(items) == 301
    assert q.dropped >= 250
