"""An ingress session pulling an RTSP stream into a room, against the real livekit-server
and a real RTSP server (GStreamer's gst-rtsp-server, lkmedia/dev/rtsp_server.py, run by
the system Python): its live H.264 + AAC, over RTP interleaved on the RTSP connection, is
published (H.264 720p, Opus) and a subscriber decodes both; the states go BUFFERING ->
PUBLISHING -> COMPLETE when the server ends the stream; an unreachable server ends in ERROR
naming the URL (without its credentials) within seconds. RTSPS (TLS) too."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

import lkmedia
from lkmedia.dev.stack import DevStack, free_port
from lkmedia.ingress.presets import ingress_token
from lkmedia.ingress.session import IngressSession, url_source
from lkmedia.sources.file import SourceOpenError
from lkmedia.sources.rtsp import RtspSource, split_transport
from lkmedia.testing.rooms import wait_tracks, watch_media

IS = lki.IngressState.Status
STREAM_SECONDS = 8
SERVER = Path(lkmedia.__file__).parent / "dev" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with gi (python3-gi)


def _serve(*args: str) -> Iterator[str]:
    """Runs lkmedia/dev/rtsp_server.py with ``args`` and yields the URL it prints."""
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail("gst-rtsp-server is not installed for the system Python: "
                    "apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 (scripts/setup.sh --test)\n"
                    + check.stderr[-500:])
    proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(15)
    try:
        if not line or not line[0].startswith("rtsp"):
            proc.kill()
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"the RTSP server did not start: {err[-1000:]}")
        yield line[0].strip()
    finally:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def rtsp_url() -> Iterator[str]:
    """An RTSP server whose /test is a STREAM_SECONDS-long live 1280x720 H.264 + AAC stream,
    from its start for each client."""
    yield from _serve(str(STREAM_SECONDS))


@pytest.fixture(scope="module")
def rtsps_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same server over TLS (RTSPS) with a self-signed certificate, 640x360."""
    d = tmp_path_factory.mktemp("rtsps")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    yield from _serve(str(STREAM_SECONDS), "640x360", "--tls", str(crt), str(key))


def _info(room: str, url: str) -> lki.IngressInfo:
    return lki.IngressInfo(ingress_id="IN_rtsp", room_name=room, participant_identity="pulled",
                           participant_name="RTSP camera", input_type=lki.URL_INPUT, url=url, reusable=False)


def _session(stack: DevStack, info: lki.IngressInfo, states: list[lki.IngressState]) -> IngressSession:
    return IngressSession(info, url_source(info.url), stack.url,
                          ingress_token(stack.api_key, stack.api_secret, info), resource_id="RT_test",
                          on_state=states.append)


def test_an_rtsp_url_gets_a_live_source_over_tcp() -> None:
    src = url_source("rtsp://user:secret@camera.example:8554/live?transport=udp&channel=1")
    assert isinstance(src, RtspSource) and not src.realtime and src.live
    assert src.options["rtsp_transport"] == "udp" and src.options["timeout"] == "10000000"
    assert src.options["analyzeduration"] == "100000"
    assert src.url == "rtsp://user:secret@camera.example:8554/live?channel=1"
    assert "secret" not in src.display and "secret" not in repr(src)
    assert split_transport("rtsps://cam/x")[1] == "tcp"
    assert split_transport("rtsp://cam/x?transport=bogus") == ("rtsp://cam/x?transport=bogus", "tcp")
    assert not isinstance(url_source("https://example.com/a.mp4"), RtspSource)


async def test_an_rtsp_stream_is_published_then_complete(livekit_stack: DevStack, room_name: str,
                                                         rtsp_url: str) -> None:
    states: list[lki.IngressState] = []
    session = _session(livekit_stack, _info(room_name, rtsp_url), states)
    t0 = time.monotonic()
    task = asyncio.create_task(session.run())
    async with livekit_stack.api() as lkapi:
        tracks = (await wait_tracks(lkapi, room_name, "pulled", 2)).tracks
    published_after = time.monotonic() - t0
    video = next(t for t in tracks if t.type == lkm.TrackType.VIDEO)
    assert video.mime_type == "video/H264" and sorted((la.width, la.height) for la in video.layers)[-1] == (1280, 720)
    seen, received = await watch_media(livekit_stack.url, livekit_stack.api_key, livekit_stack.api_secret,
                                       room_name, "pulled", 2, seconds=2.0, up_to=4.0)
    got = {r.kind: r for r in received}
    print(f"RTSP: both tracks published {published_after:.2f} s after the start; a subscriber decoded "
          f"{got['video'].frames} video frames {dict(got['video'].sizes)} and {got['audio'].samples} "
          f"audio samples in {got['video'].seconds:.1f} s")
    # The count is the in-process subscriber's, on a box the session's encoders and the RTSP
    # server's x264 share (2 cores here: 47-48 frames of 720p in 2 s, 22 under load): proof of media.
    assert got["video"].frames >= 10 and (1280, 720) in got["video"].sizes, got
    assert got["audio"].samples >= 48_000, got
    final = await asyncio.wait_for(task, STREAM_SECONDS + 10)
    names = [IS.Name(s.status) for s in states]
    assert [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n] == [
        "ENDPOINT_BUFFERING", "ENDPOINT_PUBLISHING", "ENDPOINT_COMPLETE"], names
    assert final.status == IS.ENDPOINT_COMPLETE and final.error == "", final.error
    assert final.resource_id == "RT_test" and final.room_id.startswith("RM_")
    assert sorted(t.type for t in final.tracks) == [lkm.TrackType.AUDIO, lkm.TrackType.VIDEO]
    assert (final.video.mime_type, final.video.width, final.video.height) == ("video/h264", 1280, 720)
    assert (final.audio.mime_type, final.audio.sample_rate, final.audio.channels) == ("audio/aac", 48_000, 2)
    assert final.video.average_bitrate > 100_000 and final.audio.average_bitrate > 30_000, final
    took = (final.ended_at - final.started_at) / 1e9
    print(f"RTSP: BUFFERING -> COMPLETE in {took:.2f} s for a {STREAM_SECONDS} s live stream; measured "
          f"{final.video.average_bitrate / 1000:.0f} / {final.audio.average_bitrate / 1000:.0f} kbps (video / audio)")
    # Live, not paced again: it ends with the server's stream (a second of setup at most).
    assert STREAM_SECONDS - 0.5 < took < STREAM_SECONDS + 3
    assert published_after < 5, published_after


async def test_an_rtsps_stream_is_published_then_complete(livekit_stack: DevStack, room_name: str,
                                                          rtsps_url: str) -> None:
    """RTSPS (TLS; the certificate is self-signed: FFmpeg does not verify by default)."""
    assert rtsps_url.startswith("rtsps://")
    states: list[lki.IngressState] = []
    task = asyncio.create_task(_session(livekit_stack, _info(room_name, rtsps_url), states).run())
    seen, received = await watch_media(livekit_stack.url, livekit_stack.api_key, livekit_stack.api_secret,
                                       room_name, "pulled", 2, seconds=2.0, up_to=8.0)
    got = {r.kind: r for r in received}
    print(f"RTSPS: a subscriber decoded {got['video'].frames} video frames {dict(got['video'].sizes)} and "
          f"{got['audio'].samples} audio samples in {got['video'].seconds:.1f} s")
    assert got["video"].frames >= 10 and (640, 360) in got["video"].sizes, got
    assert got["audio"].samples >= 48_000, got
    final = await asyncio.wait_for(task, STREAM_SECONDS + 10)
    assert final.status == IS.ENDPOINT_COMPLETE and final.error == "", final.error
    assert (final.video.mime_type, final.video.width, final.video.height) == ("video/h264", 640, 360)
    assert final.audio.mime_type == "audio/aac"


async def test_an_unreachable_rtsp_server_ends_in_error_naming_it(livekit_stack: DevStack, room_name: str) -> None:
    states: list[lki.IngressState] = []
    port = free_port()
    url = f"rtsp://cam:hunter2@127.0.0.1:{port}/x"
    t0 = time.monotonic()
    final = await asyncio.wait_for(_session(livekit_stack, _info(room_name, url), states).run(), 15)
    took = time.monotonic() - t0
    print(f"unreachable RTSP server: '{final.error}' after {took:.1f} s")
    assert [IS.Name(s.status) for s in states] == ["ENDPOINT_BUFFERING", "ENDPOINT_ERROR"]
    assert final.status == IS.ENDPOINT_ERROR and f"cannot open rtsp://***@127.0.0.1:{port}/x: " in final.error, final.error
    assert "hunter2" not in final.error and "refused" in final.error.lower(), final.error


def test_a_silent_rtsp_server_fails_the_open_within_the_timeout() -> None:
    """A server that accepts the connection and never answers (a wrong port, a hung camera)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"rtsp://cam:hunter2@127.0.0.1:{listener.getsockname()[1]}/x"
        src = RtspSource(url, timeout=2.0)
        t0 = time.monotonic()
        with pytest.raises(SourceOpenError) as e:
            src.open()
        took = time.monotonic() - t0
    print(f"silent RTSP server: '{e.value}' after {took:.1f} s")
    assert 1.5 < took < 5 and "no answer within 2 s" in str(e.value) and "hunter2" not in str(e.value)
