"""RTMP ingest with the real ffmpeg CLI as the publisher: RtmpServer checks the key, the
accepted stream goes through an FlvPipe into FlvSource (PyAV), and what comes out is
checked against the clip (codecs, size, frame count, duration). Refusals, a publisher
killed mid-stream, garbage on the port and RTMPS too. Loopback only."""
from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest

from lkmedia.core import Graph
from lkmedia.rtmp import Limits, PublishRefused, PublishRequest, RtmpServer, RtmpSession
from lkmedia.rtmp.flv import FlvPipe
from lkmedia.rtmp.tls import tls_context
from lkmedia.sources.flv import FlvSource
from lkmedia.testing.media import av_clip
from tests.unit.test_file_source import Collect

pytestmark = pytest.mark.integration

KEY = "sk_Zt4qLm9Xw2"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """H.264 (B-frames, 2 s GOP) + AAC stereo 48 kHz: 3 s at 320x240/25 fps, and 20 s for a drop."""
    d = tmp_path_factory.mktemp("rtmp")
    return {name: av_clip(d / f"{name}.mp4", seconds, gop=50, extra=("-bf", "2", "-b:a", "96k"))
            for name, seconds in (("short", 3), ("long", 20))}


class Ingest:
    """Validator + session handler: an accepted stream runs FlvSource -> collectors."""

    def __init__(self, decode: bool = True) -> None:
        self.decode = decode
        self.requests: list[PublishRequest] = []
        self.sessions: list[RtmpSession] = []
        self.results: list[dict[str, Any]] = []
        self.done = asyncio.Event()

    async def validate(self, req: PublishRequest) -> Any:
        self.requests.append(req)
        if req.stream_key != KEY:
            raise PublishRefused("no ingress has this stream key")
        return "IN_test"

    async def on_session(self, s: RtmpSession) -> None:
        self.sessions.append(s)
        pipe = FlvPipe()
        await pipe.open()
        g = Graph()
        src = g.add(FlvSource(pipe.read_fd, decode=self.decode))
        video, audio = g.add(Collect("video")), g.add(Collect("audio"))
        g.link(src.out("video"), video)
        g.link(src.out("audio"), audio)

        async def feed() -> None:
            try:
                await s.pipe_to(pipe)
            finally:
                pipe.close()

        _, errors = await asyncio.gather(feed(), g.run())
        self.results.append({"video": video.items, "audio": audio.items, "errors": errors,
                             "streams": dict(src._streams)})
        self.done.set()


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[RtmpServer, Ingest]]:
    ing = Ingest()
    async with RtmpServer(ing.validate, ing.on_session, host="127.0.0.1", port=0) as server:
        yield server, ing


async def _push(clip: Path, url: str, *extra: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec("ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", *extra,
                                             "-f", "flv", url, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode or 0, err.decode(errors="replace")


def _check_clip_media(result: dict[str, Any], seconds: float) -> None:
    video, audio = result["video"], result["audio"]
    assert result["errors"] == []
    assert result["streams"]["video"].codec_context.name == "h264"
    assert result["streams"]["audio"].codec_context.name == "aac"
    assert abs(len(video) - 25 * seconds) <= 1
    v0 = video[0]
    assert isinstance(v0, av.VideoFrame) and (v0.width, v0.height, v0.format.name) == (320, 240, "yuv420p")
    pts = [f.pts for f in video]
    assert pts == sorted(pts) and abs((pts[-1] - pts[0]) / 90_000 - (seconds - 0.04)) < 0.05
    assert all(f.sample_rate == 48_000 and f.layout.name == "stereo" for f in audio)
    assert abs(sum(f.samples for f in audio) / 48_000 - seconds) < 0.05


async def test_ffmpeg_publish_is_decoded_through_pyav(ingest: tuple[RtmpServer, Ingest],
                                                      clips: dict[str, Path]) -> None:
    server, ing = ingest
    rc, err = await _push(clips["short"], f"rtmp://127.0.0.1:{server.port}/live/{KEY}")
    assert rc == 0, err
    await asyncio.wait_for(ing.done.wait(), 10)
    [req] = ing.requests
    assert (req.stream_key, req.app, req.publish_type) == (KEY, "live", "live")
    assert req.tc_url == f"rtmp://127.0.0.1:{server.port}/live"
    [s] = ing.sessions
    assert s.clean_end and s.end_reason == "the publisher ended the stream"
    _check_clip_media(ing.results[0], 3.0)


async def test_ffmpeg_publish_as_packets(clips: dict[str, Path]) -> None:
    ing = Ingest(decode=False)
    async with RtmpServer(ing.validate, ing.on_session, host="127.0.0.1", port=0) as server:
        rc, err = await _push(clips["short"], f"rtmp://127.0.0.1:{server.port}/app/{KEY}")
        assert rc == 0, err
        await asyncio.wait_for(ing.done.wait(), 10)
    res = ing.results[0]
    video, audio = res["video"], res["audio"]
    assert all(isinstance(p, av.Packet) for p in video + audio)
    assert len(video) == 75 and sum(p.is_keyframe for p in video) == 2
    assert video[0].stream.codec_context.name == "h264" and audio[0].stream.codec_context.name == "aac"
    assert any(p.pts != p.dts for p in video)  # B-frames: composition offsets survive the trip


async def test_wrong_key_is_refused_before_any_media(ingest: tuple[RtmpServer, Ingest], clips: dict[str, Path],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    server, ing = ingest
    rc, err = await _push(clips["short"], f"rtmp://127.0.0.1:{server.port}/live/not-the-key")
    assert rc != 0 and "no ingress has this stream key" in err  # FFmpeg prints the error status
    assert [r.stream_key for r in ing.requests] == ["not-the-key"]
    assert ing.sessions == [] and server.refused == 1 and server.accepted == 0
    assert "not-the-key" not in caplog.text
    rc, err = await _push(clips["short"], f"rtmp://127.0.0.1:{server.port}/live/{KEY}")
    assert rc == 0, err


async def test_publisher_killed_mid_stream(ingest: tuple[RtmpServer, Ingest], clips: dict[str, Path]) -> None:
    server, ing = ingest
    p = await asyncio.create_subprocess_exec("ffmpeg", "-v", "error", "-re", "-i", str(clips["long"]), "-c", "copy",
                                             "-f", "flv", f"rtmp://127.0.0.1:{server.port}/live/{KEY}")
    await asyncio.sleep(2.5)
    p.send_signal(signal.SIGKILL)
    await p.wait()
    await asyncio.wait_for(ing.done.wait(), 10)
    [s] = ing.sessions
    assert not s.clean_end and s.end_reason.startswith("the publisher disconnected without ending the stream")
    res = ing.results[0]
    assert res["errors"] == []  # the stream just ends: what arrived is decoded
    assert 25 <= len(res["video"]) <= 80
    ing.done.clear()
    rc, err = await _push(clips["short"], f"rtmp://127.0.0.1:{server.port}/live/{KEY}")  # still serving
    assert rc == 0, err
    await asyncio.wait_for(ing.done.wait(), 10)
    _check_clip_media(ing.results[1], 3.0)


async def test_garbage_on_the_port_then_ffmpeg(ingest: tuple[RtmpServer, Ingest], clips: dict[str, Path],
                                               caplog: pytest.LogCaptureFixture) -> None:
    server, ing = ingest
    for junk in (b"GET / HTTP/1.0\r\n\r\n", b"\x03" + bytes(1536) + bytes(1536) + b"\xff" * 4000):
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(junk)
        await w.drain()
        await asyncio.wait_for(r.read(), 5)
        w.close()
    await asyncio.sleep(0.1)
    assert "not RTMP: the connection starts with text" in caplog.text
    assert caplog.text.count("connection ended") == 2
    rc, err = await _push(clips["short"], f"rtmp://127.0.0.1:{server.port}/live/{KEY}")
    assert rc == 0, err
    await asyncio.wait_for(ing.done.wait(), 10)
    _check_clip_media(ing.results[0], 3.0)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return str(crt), str(key)


async def test_rtmps(clips: dict[str, Path], cert: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    ing = Ingest()
    async with RtmpServer(ing.validate, ing.on_session, host="127.0.0.1", port=0, ssl_context=tls_context(*cert),
                          limits=Limits(handshake_timeout=3.0)) as server:
        assert server.scheme == "rtmps"
        rc, err = await _push(clips["short"], f"rtmp://127.0.0.1:{server.port}/live/{KEY}")  # plain to TLS
        assert rc != 0
        r, w = await asyncio.open_connection("127.0.0.1", server.port)  # TLS with nonsense in it
        w.write(b"\x16\x03\x01\x00\x05hello" + bytes(100))
        await w.drain()
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        rc, err = await _push(clips["short"], f"rtmps://127.0.0.1:{server.port}/live/{KEY}")
        assert rc == 0, err
        await asyncio.wait_for(ing.done.wait(), 10)
    [req] = ing.requests
    assert req.secure and req.stream_key == KEY
    assert "plain RTMP sent to the RTMPS port (use rtmps://, or the RTMP port)" in caplog.text
    assert "the TLS handshake failed" in caplog.text
    _check_clip_media(ing.results[0], 3.0)


@pytest.mark.parametrize("sink", ["rtmp2sink", "rtmpsink"])
async def test_gstreamer_publishers(sink: str) -> None:
    """Two more independent clients: GStreamer's own RTMP client (rtmp2sink) and librtmp
    (rtmpsink; the library OBS's RTMP output grew from). Both end cleanly (exit 0)."""
    ing = Ingest()
    async with RtmpServer(ing.validate, ing.on_session, host="127.0.0.1", port=0) as server:
        pipeline = (f"videotestsrc num-buffers=75 ! video/x-raw,format=I420,width=320,height=240,framerate=25/1 ! "
                    f"x264enc tune=zerolatency ! h264parse ! flvmux name=m streamable=true ! "
                    f"{sink} location=rtmp://127.0.0.1:{server.port}/live/{KEY} "
                    f"audiotestsrc num-buffers=150 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=2 ! "
                    f"avenc_aac ! aacparse ! m.")
        p = await asyncio.create_subprocess_exec("gst-launch-1.0", "-q", *pipeline.split(),
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(p.communicate(), 60)
        assert p.returncode == 0, out.decode(errors="replace")
        await asyncio.wait_for(ing.done.wait(), 10)
    [s] = ing.sessions
    assert s.clean_end
    _check_clip_media(ing.results[0], 3.0)
